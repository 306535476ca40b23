"""Store faults: a corrupted or full store is one line before compute; a store lost mid-grid loses no
finished trial (spooled, then logged by the next bench or `harness sync`, never recomputed)."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from cli_in_process import run_harness
from conftest import free_port, start_mlflow_server, stop_mlflow_server
from driver_zygote import run_driver
from test_lifecycle import all_runs, running_trial, start_driver, wait_for, write_grid

from harness.spool import pending
from harness.tracking import Tracker, is_transient


def harness(*args: str, cwd: Path, env: dict, timeout: float = 900) -> subprocess.CompletedProcess:
    """``harness ARGS`` in a driver process of its own (tests/driver_zygote.py)."""
    return run_driver(list(args), {**os.environ, **env}, cwd, timeout)


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stdout + proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


def test_a_corrupted_store_is_one_line_naming_it_before_compute(tmp_path, tests_plugin_env):
    db = tmp_path / "broken.db"
    db.write_bytes(b"this is not an sqlite database" * 100)
    grid = write_grid(tmp_path, steps=1, seconds=0.0)
    line = one_error_line(harness("bench", str(grid), "--tracking-uri", f"sqlite:///{db}", cwd=tmp_path,
                                  env=tests_plugin_env))
    assert f"cannot use MLflow tracking store sqlite:///{db}" in line and "not a database" in line


@pytest.mark.parametrize("fault", ["full", "read-only"])
def test_a_full_or_read_only_store_is_one_line_before_compute(tmp_path, tests_plugin_env, mlflow_template, fault):
    mount = tmp_path / "small"
    mount.mkdir()
    size = mlflow_template.stat().st_size + 64 * 1024
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)],
                      capture_output=True).returncode != 0:
        pytest.skip("mounting a small tmpfs is not allowed here (needs root), so no full or read-only disk")
    try:
        shutil.copy(mlflow_template, mount / "mlflow.db")
        if fault == "full":
            fd = os.open(mount / "filler", os.O_WRONLY | os.O_CREAT)
            try:  # fill what is left
                while os.write(fd, b"\0" * 4096):
                    pass
            except OSError:
                pass
            finally:
                os.close(fd)
        else:
            subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
        grid = write_grid(tmp_path, steps=1, seconds=0.0)
        line = one_error_line(harness("bench", str(grid), "--tracking-uri", f"sqlite:///{mount / 'mlflow.db'}",
                                      cwd=tmp_path, env=tests_plugin_env))
        assert f"cannot use MLflow tracking store sqlite:///{mount / 'mlflow.db'}" in line
        assert ("full" if fault == "full" else "Read-only file system") in line, line
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True)


def test_a_failed_log_spools_the_finished_trial_and_the_next_bench_logs_it_without_recomputing(
        tiny_plugins, tracking_uri, monkeypatch, capsys):
    from harness.bench import run_bench
    from harness.errors import HarnessError
    from harness.grid import build_grid

    doc = {"name": "spooled", "device": "cpu", "seeds": [0, 1],
           "grid": [{"distiller": ["means"], "dataset": ["tiny"], "arch": ["tiny-mlp"], "ipc": [1]}],
           "eval": {"epochs": 1, "models": 1}}
    grid = build_grid(doc, tiny_plugins)
    real = Tracker.finish_trial

    def store_gone(self, *args, **kwargs):
        raise ConnectionError("Connection refused")

    monkeypatch.setattr("harness.tracking.RETRY_WAITS", (0.0,))
    monkeypatch.setattr(Tracker, "finish_trial", store_gone)
    with pytest.raises(HarnessError, match=r"failed while logging trial means/tiny/tiny-mlp/ipc1/seed0 .*"
                                           r"its results are kept in .* and logged by the next `harness bench`"):
        run_bench(grid, tiny_plugins, tracking_uri=tracking_uri)
    assert len(pending(Tracker(tracking_uri).uri)) == 1

    monkeypatch.setattr(Tracker, "finish_trial", real)
    calls = []
    import plugins_for_tests

    original = plugins_for_tests.ClassMeans.distill
    monkeypatch.setattr(plugins_for_tests.ClassMeans, "distill", lambda self, task: calls.append(task.seed) or
                        original(self, task))
    outcome = run_bench(grid, tiny_plugins, tracking_uri=tracking_uri)
    assert "logged 1 spooled trial(s)" in capsys.readouterr().out
    assert calls == [1]  # seed 0 was logged from the spool, not recomputed
    assert (outcome.passed, outcome.skipped) == (1, 1)
    tracker = Tracker(tracking_uri)
    runs = tracker.trial_runs(tracker.experiment_id("spooled", create=False))
    assert sorted(r.info.status for r in runs) == ["FINISHED", "FINISHED"]
    assert len({r.data.tags["trial_key"] for r in runs}) == 2
    recipe_runs = tracker.recipe_runs(tracker.experiment_id("spooled", create=False))  # the spooled one's too
    assert sorted(r.data.tags["mlflow.parentRunId"] for r in recipe_runs) == sorted(r.info.run_id for r in runs)
    assert not pending(tracker.uri)


@pytest.mark.slow(60)
def test_a_tracking_server_lost_mid_grid_loses_nothing(tmp_path, tests_plugin_env, mlflow_template):
    """A real `mlflow server` stopped while a trial runs and restarted: the finished trial is spooled,
    `harness sync` logs it into its own run, and the rerun only computes the trial never finished."""
    port = free_port()
    server, uri = start_mlflow_server(tmp_path, port, template=mlflow_template)
    # each trial runs until the server is gone (the file `stopped` exists), then ends within a step
    stopped = tmp_path / "stopped"
    grid = write_grid(tmp_path, steps=50, seconds=0.02, seeds=[0, 1], until=str(stopped))
    # curves streamed every second (the trial is computing once points arrive), retries short: the
    # server is gone for good until the test restarts it
    env = {**tests_plugin_env, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "HARNESS_STREAM_SECONDS": "1",
           "HARNESS_STORE_RETRY_WAITS": "0.2,0.2"}
    try:
        proc = start_driver(grid, uri, env, tmp_path)
        try:
            run = wait_for(lambda: running_trial(uri), "the first trial's run to be RUNNING")
            tracker = Tracker(uri)  # its first curve points arrive ~1 s into the trial: it is computing
            wait_for(lambda: tracker.client.get_metric_history(run.info.run_id, "distill/loss"), "streamed points")
            stop_mlflow_server(server, hard=True)  # gone at once, while the trial runs
            stopped.touch()
            out, err = proc.communicate(timeout=900)
        finally:
            proc.kill()
        assert proc.returncode == 2, out + err
        assert "Traceback" not in out + err and len(err.splitlines()) == 1
        assert "its results are kept in" in err and "seed0" in err
        server, uri = start_mlflow_server(tmp_path, port, template=mlflow_template)
        sync = run_harness("sync", "--tracking-uri", uri, cwd=tmp_path, env=env)  # in this process: the driver's was the point
        assert sync.returncode == 0 and "logged 1 of 1 spooled trial(s)" in sync.stdout, sync.stdout + sync.stderr
        rerun = run_harness("bench", str(grid), "--tracking-uri", uri, cwd=tmp_path, env={**env, "SLEEPER_SECONDS": "0"})
        assert rerun.returncode == 0, rerun.stdout + rerun.stderr
        assert "2 trials, 1 already finished, 1 to run" in rerun.stdout
        trials = [r for r in all_runs(uri) if r.data.tags["run_kind"] == "trial"]
        assert sorted(r.info.status for r in trials) == ["FINISHED", "FINISHED"]  # seed 0 ended in its own run
        assert {r.info.status for r in all_runs(uri)} <= {"FINISHED", "KILLED"}  # the dead parent was reaped
    finally:
        stop_mlflow_server(server)


def test_transient_errors_are_told_apart_from_bad_requests():
    assert is_transient(ConnectionError("x"))
    assert is_transient(RuntimeError("HTTPConnectionPool: Max retries exceeded with url"))
    assert is_transient(RuntimeError("(sqlite3.OperationalError) database is locked"))
    assert not is_transient(ValueError("Invalid parameter value"))


def test_a_trial_with_many_points_params_and_tags_is_logged_within_mlflows_batch_limits(tracking_uri):
    """MLflow refuses a request over 1,000 entities (metrics + params + tags): a trial whose unsent
    curve points, per-model accuracies and tags exceed that is logged in several requests."""
    from harness.runner import TrialResult
    from harness.trial import Recipe, Trial

    tracker = Tracker(tracking_uri)
    exp = tracker.experiment_id("limits")
    trial = Trial("random", "digits", "digits", "mlp", 10, 100, 0, tuple((f"f{i}", i) for i in range(150)),
                  (Recipe(arch="mlp"),))
    result = TrialResult(trial, "passed", metrics={"acc_mean": 0.5}, per_model={"mlp/sgd": [0.5] * 5},
                         curves=[(i, {"loss": 1.0, "err": 0.5}) for i in range(1500)],
                         tags={f"t{i}": "x" for i in range(150)})
    run_id = tracker.log_trial(exp, "", result)
    run = tracker.client.get_run(run_id)
    assert run.info.status == "FINISHED" and len(run.data.params) >= 150 and "t149" in run.data.tags
    assert len(tracker.client.get_metric_history(run_id, "distill/loss")) == 1500


def test_a_spooled_trial_logged_again_never_duplicates_its_recipe_runs(tracking_uri):
    """Logging a spooled trial into its run after a crash part-way through its recipe runs logs only
    the recipes missing, once each."""
    from harness.runner import RecipeResult, TrialResult
    from harness.trial import Recipe, Trial

    recipes = (Recipe(arch="mlp"), Recipe(arch="mlp", optimizer="adam"))
    trial = Trial("random", "digits", "digits", "mlp", 10, 100, 0, (), recipes)
    core = {"acc_mean": 50.0, "acc_std": 1.0, "acc_random": 45.0, "gain": 5.0}
    result = TrialResult(trial, "passed", metrics=dict(core), recipes=[
        RecipeResult(r.label, r.params(), {**core, "eval_seconds": 1.0}, [50.0], "sequential", 0, 1000) for r in recipes])
    first = Tracker(tracking_uri)
    exp = first.experiment_id("respool")
    run_id = first.start_trial(exp, "", trial)
    first._log_recipes(run_id, dataclasses.replace(result, recipes=result.recipes[:1]))  # the driver died here
    again = Tracker(tracking_uri)  # the next driver: the run is not one it opened
    again.finish_trial(run_id, result)
    labels = sorted(r.data.tags["recipe"] for r in again.recipe_runs(exp))
    assert labels == ["mlp/adam", "mlp/sgd"]


def test_a_trial_being_logged_does_not_hold_up_another_starting(tracking_uri):
    """Store requests are made one at a time, never a whole trial's logging at once: while one thread
    is between the requests that log a finished trial (held here after its recipe runs), another
    starts and claims a trial, as the slots of the process and Ray executors do."""
    import threading

    from harness.runner import RecipeResult, TrialResult
    from harness.trial import Recipe, Trial

    tracker = Tracker(tracking_uri)
    exp = tracker.experiment_id("threads")
    recipe = Recipe(arch="mlp")
    first, second = (Trial("random", "digits", "digits", "mlp", 10, 100, seed, (), (recipe,)) for seed in (0, 1))
    run_id = tracker.start_trial(exp, "", first)
    assert tracker.claim(exp, first.key, run_id) is None
    core = {"acc_mean": 50.0, "acc_std": 1.0, "acc_random": 45.0, "gain": 5.0}
    result = TrialResult(first, "passed", metrics=dict(core), recipes=[
        RecipeResult(recipe.label, recipe.params(), dict(core), [50.0], "sequential", 0, 1000)])
    between, go_on, resumed = threading.Event(), threading.Event(), []
    log_recipes = tracker._log_recipes

    def held_between_requests(*args):
        log_recipes(*args)
        between.set()
        resumed.append(go_on.wait(60))  # False: nobody got a request through meanwhile

    tracker._log_recipes = held_between_requests
    logging = threading.Thread(target=tracker.finish_trial, args=(run_id, result))
    logging.start()
    assert between.wait(120)
    other = tracker.start_trial(exp, "", second)
    assert tracker.claim(exp, second.key, other) is None
    go_on.set()
    logging.join(120)
    assert resumed == [True]
    assert tracker.client.get_run(run_id).info.status == "FINISHED"
    assert tracker.client.get_run(other).info.status == "RUNNING"
