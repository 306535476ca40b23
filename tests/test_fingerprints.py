"""Data fingerprints: a trial run on other data never stands for this one (resume, report)."""

from __future__ import annotations

import dataclasses

import torch

from harness.data import fingerprint
from harness.tracking import GRID_KEY, TRIAL_KEY, Tracker


def _doc(name: str = "fp") -> dict:
    return {"name": name, "device": "cpu",
            "grid": [{"distiller": ["random"], "dataset": ["tiny"], "arch": ["tiny-mlp"], "ipc": [1]}],
            "eval": {"epochs": 1, "models": 1}}


def test_fingerprint_sees_size_labels_and_content_and_is_cheap_to_repeat():
    x = torch.randn(500, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    y = torch.arange(500) % 3
    base = fingerprint(x, y)
    assert base == fingerprint(x.clone(), y.clone()) and base.startswith("500:")
    assert fingerprint(x[:499], y[:499]) != base  # truncated
    assert fingerprint(x, y.roll(1)) != base  # relabelled
    assert fingerprint(x + 1, y) != base  # other content (every sampled row changes)


def test_the_key_carries_the_data_and_the_grid_key_does_not(tiny_plugins):
    from harness.grid import build_grid

    [trial] = build_grid(_doc(), tiny_plugins).trials
    assert trial.key == trial.grid_key  # no data loaded yet: what `report --grid` computes
    a = dataclasses.replace(trial, data=(("fingerprint", "train 90:aaa test 60:bbb"),))
    b = dataclasses.replace(trial, data=(("fingerprint", "train 90:ccc test 60:bbb"),))
    assert a.grid_key == b.grid_key == trial.grid_key and len({a.key, b.key, trial.key}) == 3
    assert a.params()["data.fingerprint"] == "train 90:aaa test 60:bbb"


def test_a_run_on_other_data_does_not_block_a_rerun_and_the_report_shows_the_newest(tiny_plugins, tracking_uri):
    from harness.bench import run_bench
    from harness.grid import build_grid
    from harness.report import runs_frame

    grid = build_grid(_doc(), tiny_plugins)
    first = run_bench(grid, tiny_plugins, tracking_uri=tracking_uri)
    assert first.passed == 1
    assert run_bench(grid, tiny_plugins, tracking_uri=tracking_uri).skipped == 1  # same data: finished

    spec = tiny_plugins.datasets.get("tiny")
    load = spec.load

    def other_data(split, ctx):  # the same dataset name, other files
        x, y = load(split, ctx)
        return x + 0.5, y

    object.__setattr__(spec, "load", other_data)  # (frozen spec; restored below)
    try:
        again = run_bench(grid, tiny_plugins, tracking_uri=tracking_uri)
    finally:
        object.__setattr__(spec, "load", load)
    assert (again.passed, again.skipped) == (1, 0)
    tracker = Tracker(tracking_uri)
    runs = tracker.trial_runs(tracker.experiment_id("fp", create=False))
    assert len(runs) == 2 and len({r.data.tags[TRIAL_KEY] for r in runs}) == 2
    assert len({r.data.tags[GRID_KEY] for r in runs}) == 1
    assert len({r.data.params["data.fingerprint"] for r in runs}) == 2
    frame = runs_frame(tracker, "fp", {grid.trials[0].grid_key})
    assert list(frame["run_id"]) == [runs[0].info.run_id]  # one row: the newest run


def test_runs_from_before_fingerprints_still_count_as_finished(tiny_plugins, tracking_uri, capsys):
    from harness.bench import run_bench
    from harness.grid import build_grid

    grid = build_grid(_doc("legacy"), tiny_plugins)
    assert run_bench(grid, tiny_plugins, tracking_uri=tracking_uri).passed == 1
    tracker = Tracker(tracking_uri)
    [run] = tracker.trial_runs(tracker.experiment_id("legacy", create=False))
    # what a run logged before fingerprints looks like: its trial key is the grid key, no grid_key tag
    tracker.client.set_tag(run.info.run_id, TRIAL_KEY, run.data.tags[GRID_KEY])
    tracker.client.delete_tag(run.info.run_id, GRID_KEY)
    capsys.readouterr()
    again = run_bench(grid, tiny_plugins, tracking_uri=tracking_uri)
    assert (again.passed, again.skipped) == (0, 1)
    assert "1 finished trial(s) predate data fingerprints" in capsys.readouterr().out


    assert run_bench(grid, tiny_plugins, tracking_uri=tracking_uri, resume=False).passed == 1  # --no-resume
