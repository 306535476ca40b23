"""The local sqlite store in write-ahead-log mode: commits without a sync each, and once a bench is
done its ``.db`` file alone holds every run (a copy of the file is the whole store)."""

from __future__ import annotations

import shutil
import sqlite3

from harness.bench import run_bench
from harness.grid import build_grid
from harness.tracking import Tracker

DOC = {"name": "wal", "device": "cpu",
       "grid": [{"distiller": ["random", "means"], "dataset": ["tiny"], "arch": ["tiny-mlp"], "ipc": [1]}],
       "eval": {"models": 1, "epochs": 1}}


def test_a_bench_leaves_every_run_in_the_db_file_of_its_write_ahead_store(tiny_plugins, tracking_uri, tmp_path):
    db = tracking_uri[len("sqlite:///"):]
    outcome = run_bench(build_grid(DOC, tiny_plugins), tiny_plugins, tracking_uri=tracking_uri, data_dir=tmp_path)
    assert (outcome.passed, outcome.failed) == (2, 0)
    with sqlite3.connect(db) as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    copy = tmp_path / "copy" / "mlflow.db"
    copy.parent.mkdir()
    shutil.copy(db, copy)  # the file alone, without the log beside it
    tracker = Tracker(f"sqlite:///{copy}")
    runs = tracker.trial_runs(tracker.experiment_id("wal", create=False))
    assert sorted(r.info.status for r in runs) == ["FINISHED", "FINISHED"]
    assert all(r.data.metrics.get("acc_mean") is not None for r in runs)
    tracker.close()


def test_the_drivers_connections_commit_without_a_sync_each(tracking_uri):
    tracker = Tracker(tracking_uri)
    with tracker._engine().connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert connection.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL: synced at checkpoints
    tracker.close()
