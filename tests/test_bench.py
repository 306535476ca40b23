"""End to end: grid -> distill -> evaluate -> real MLflow sqlite store -> report, in-process and via the CLI."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import pytest

from cli_in_process import run_harness
from harness.bench import run_bench
from harness.grid import build_grid
from harness.report import leaderboard, runs_frame, write_report
from harness.specs import DistilledSet
from harness.tracking import Tracker

REPO = Path(__file__).resolve().parents[1]


def tiny_doc(**eval_overrides):
    return {
        "name": "tiny-bench",
        "seeds": [0, 1],
        "device": "cpu",
        "grid": [{"distiller": ["random", "means", "crashes", "nan"], "dataset": ["tiny"],
                  "arch": ["tiny-mlp"], "ipc": [2]}],
        "eval": {"models": 2, "epochs": 3, "optimizers": ["sgd", "distilled"], **eval_overrides},
        "distillers": {"means": {"smoothing": 0.1}},
    }


@pytest.fixture
def bench(tiny_plugins, tracking_uri, tmp_path):
    def run(doc=None, **kw):
        grid = build_grid(doc or tiny_doc(), tiny_plugins, source="tiny.toml")
        return grid, run_bench(grid, tiny_plugins, tracking_uri=tracking_uri, data_dir=tmp_path, **kw)

    return run


def children(tracking_uri, name="tiny-bench"):
    tracker = Tracker(tracking_uri)
    return tracker, tracker.trial_runs(tracker.experiment_id(name, create=False))


@pytest.mark.slow
def test_failing_trials_are_recorded_and_the_grid_goes_on(bench, tracking_uri):
    grid, outcome = bench()
    assert len(grid.trials) == 8
    assert (outcome.passed, outcome.failed, outcome.skipped) == (4, 4, 0)
    assert not outcome.ok
    tracker, runs = children(tracking_uri)
    by_status = {}
    for r in runs:
        by_status.setdefault(r.info.status, []).append(r)
    assert len(by_status["FINISHED"]) == 4 and len(by_status["FAILED"]) == 4
    errors = {r.data.params["distiller"]: r.data.tags["error"] for r in by_status["FAILED"]}
    assert errors["crashes"] == "RuntimeError: deliberate failure for tests"
    assert "NaN" in errors["nan"]
    failed = by_status["FAILED"][0]
    assert "error.txt" in [a.path for a in tracker.client.list_artifacts(failed.info.run_id)]


def test_runs_are_nested_named_and_comparable(bench, tracking_uri):
    grid, outcome = bench()
    tracker, runs = children(tracking_uri)
    parent = tracker.client.get_run(outcome.parent_run_id)
    assert parent.data.tags["run_kind"] == "bench"
    assert parent.info.status == "FAILED"  # some trials failed
    assert parent.data.metrics["trials_passed"] == 4
    assert {r.data.tags["mlflow.parentRunId"] for r in runs} == {outcome.parent_run_id}
    assert {r.info.run_name for r in runs} == {t.label for t in grid.trials}
    assert "random/tiny/tiny-mlp/ipc2/seed0" in {r.info.run_name for r in runs}
    param_keys = {frozenset(r.data.params) for r in runs}
    assert len(param_keys) == 1  # identical param keys across children: MLflow's compare view lines up
    keys = next(iter(param_keys))
    assert {"distiller", "dataset", "base_dataset", "arch", "ipc", "n", "seed", "eval.optimizer", "eval.epochs"} <= keys
    passed = [r for r in runs if r.info.status == "FINISHED"]
    for r in passed:
        m = r.data.metrics
        for k in ("acc_mean", "acc_std", "acc_random", "gain", "distill_seconds", "eval_seconds", "peak_mem_mb"):
            assert k in m, k
        assert not [k for k in m if k.startswith("acc_mean/")]  # recipe-free names only: no NaN columns in Compare
        assert m["peak_mem_mb"] > 0 and m["distill_seconds"] >= 0 and 0 <= m["acc_mean"] <= 100
        assert m["gain"] == pytest.approx(m["acc_mean"] - m["acc_random"])
        tags = r.data.tags
        assert tags["acc_unit"] == "percent"
        assert len(tags["trial_key"]) == 16 and tags["device"] == "cpu" and tags["torch_version"]
        assert tags["eval.mode/tiny-mlp/sgd"] == "vectorised"  # auto: an MLP on CPU
        assert tags["version.distill-harness"] == "0.1.0" and "version.tests-plugins" in tags
        if r.data.params["distiller"] == "random":
            assert tags["version.harness-distillers"] == "0.1.0"
            assert r.data.params["cfg.smoothing"] == "-"  # another distiller's field: same keys, no value
        else:
            assert r.data.params["cfg.smoothing"] == "0.1"


@pytest.mark.slow
def test_eval_mode_vectorised_gives_the_sequential_accuracies_and_is_tagged(bench, tracking_uri):
    doc = tiny_doc()
    doc["grid"][0]["distiller"] = ["random", "means"]
    bench({**doc, "eval_mode": "sequential"})
    _, runs = children(tracking_uri)
    sequential = {r.info.run_name: r.data.metrics["acc_mean"] for r in runs}
    bench({**doc, "name": "tiny-bench-vec", "eval_mode": "vectorised"})
    _, runs = children(tracking_uri, "tiny-bench-vec")
    assert {r.info.run_name: r.data.metrics["acc_mean"] for r in runs} == pytest.approx(sequential, abs=1e-9)
    assert {r.data.tags["eval.mode/tiny-mlp/sgd"] for r in runs} == {"vectorised"}
    assert {r.data.tags["eval.mode/tiny-mlp/distilled"] for r in runs
            if "eval.mode/tiny-mlp/distilled" in r.data.tags} <= {"sequential: optimizer distilled"}


def test_every_recipe_run_has_the_same_keys_and_covers_its_evaluation(bench, tracking_uri):
    """One run per trial x recipe under the trial's run: any selection of them compares without NaN."""
    bench()
    tracker, trials = children(tracking_uri)
    recipe_runs = tracker.recipe_runs(tracker.experiment_id("tiny-bench", create=False))
    finished = {r.info.run_id: r for r in trials if r.info.status == "FINISHED"}
    assert {r.data.tags["mlflow.parentRunId"] for r in recipe_runs} == set(finished)  # failed trials: none
    assert len(recipe_runs) == 2 + 2 * 2  # random: sgd; means: sgd and distilled; 2 seeds
    assert len({frozenset(r.data.metrics) for r in recipe_runs}) == 1
    assert {"acc_mean", "acc_std", "acc_random", "gain", "distill_seconds", "eval_seconds",
            "n_distilled"} <= set(recipe_runs[0].data.metrics)
    assert len({frozenset(r.data.params) for r in recipe_runs}) == 1
    for r in recipe_runs:
        trial, m, p = finished[r.data.tags["mlflow.parentRunId"]], r.data.metrics, r.data.params
        assert r.info.status == "FINISHED" and r.data.tags["run_kind"] == "eval"
        assert r.info.run_name == f"{trial.info.run_name} {p['eval.recipe']}"
        assert p["eval.recipe"] == f"{p['eval.arch']}/{p['eval.optimizer']}" and p["seed"] == trial.data.params["seed"]
        assert m["gain"] == pytest.approx(m["acc_mean"] - m["acc_random"]) and 0 <= m["acc_mean"] <= 100
        assert m["distill_seconds"] == trial.data.metrics["distill_seconds"]
        accs = json.loads(r.data.tags["acc_models"])
        assert len(accs) == 2 and sum(accs) / 2 == pytest.approx(m["acc_mean"], abs=1e-3)
        # a run's duration is its evaluation's, inside its trial's; the trial's covers distill + eval
        assert r.info.end_time - r.info.start_time >= 1000 * m["eval_seconds"] - 2
        assert trial.info.start_time <= r.info.start_time and r.info.end_time <= trial.info.end_time
        if p["eval.optimizer"] == "sgd":  # the trial's own run repeats its first recipe's results
            assert m["acc_mean"] == trial.data.metrics["acc_mean"] and m["acc_random"] == trial.data.metrics["acc_random"]
    for trial in finished.values():
        t = trial.data.metrics
        assert trial.info.end_time - trial.info.start_time >= 1000 * (t["distill_seconds"] + t["eval_seconds"]) - 2


@pytest.mark.slow
def test_distilled_recipe_only_where_step_sizes_are_learned(bench, tracking_uri):
    bench()
    tracker, _ = children(tracking_uri)
    recipe_runs = tracker.recipe_runs(tracker.experiment_id("tiny-bench", create=False))
    distilled = [r for r in recipe_runs if r.data.params["eval.optimizer"] == "distilled"]
    assert {r.data.params["distiller"] for r in distilled} == {"means"}
    # its baseline: a random real subset replaying the set's learned step sizes (the DD code's random_train)
    assert all(0 <= r.data.metrics["acc_random"] <= 100 for r in distilled)


def test_artifacts_hold_a_loadable_safetensors_set_and_figures(bench, tracking_uri, tmp_path):
    bench()
    tracker, runs = children(tracking_uri)
    run = next(r for r in runs if r.data.params["distiller"] == "means" and r.info.status == "FINISHED")
    names = {a.path for a in tracker.client.list_artifacts(run.info.run_id)}
    assert {"distilled.safetensors", "labels.png", "images.png", "trial.json"} <= names
    local = tracker.client.download_artifacts(run.info.run_id, "distilled.safetensors", str(tmp_path))
    dset = DistilledSet.load(local)
    assert dset.x.shape == (6, 1, 4, 4) and dset.y.shape == (6, 3) and dset.lrs is not None and dset.init_state
    assert tracker.uri.endswith("mlflow.db")
    assert run.info.artifact_uri.startswith(Path(tracker.uri[len("sqlite:///"):]).parent.as_uri())


@pytest.mark.slow
def test_parent_run_gets_the_summary_table(bench, tracking_uri, tmp_path):
    _, outcome = bench()
    tracker, _ = children(tracking_uri)
    names = {a.path for a in tracker.client.list_artifacts(outcome.parent_run_id)}
    assert {"summary.json", "summary.md"} <= names
    table = json.loads(Path(tracker.client.download_artifacts(outcome.parent_run_id, "summary.json", str(tmp_path))).read_text())
    assert "distiller" in table["columns"] and len(table["data"]) == len(outcome.board)


@pytest.mark.slow
def test_rerun_skips_finished_trials_and_retries_failed_ones(bench, tracking_uri):
    bench()
    grid, second = bench()
    assert (second.skipped, second.passed, second.failed) == (4, 0, 4)
    _, runs = children(tracking_uri)
    assert len(runs) == 12  # 8 + the 4 failed ones retried
    _, fresh = bench(resume=False)
    assert fresh.skipped == 0


def test_random_baseline_is_computed_once_per_budget_seed_and_recipe(bench, monkeypatch):
    import harness.evaluate as ev

    calls = []
    real = ev.evaluate

    def counting(dset, recipe, *a, **k):
        calls.append((dset.meta.get("source"), recipe.label))
        return real(dset, recipe, *a, **k)

    monkeypatch.setattr(ev, "evaluate", counting)
    doc = tiny_doc()
    doc["grid"][0]["distiller"] = ["random", "means"]
    bench(doc)
    baseline = [c for c in calls if c[0] == "random real subset"]
    # per seed: random's own eval + 1 shared sgd baseline + means' "distilled" baseline (its own step sizes)
    assert len(baseline) == 2 * 3


def test_report_aggregates_over_seeds_and_writes_tables(bench, tracking_uri, tmp_path):
    bench()
    tracker = Tracker(tracking_uri)
    board = leaderboard(runs_frame(tracker, "tiny-bench"))
    row = board[(board.distiller == "means") & (board.recipe == "tiny-mlp/sgd")].iloc[0]
    assert row.seeds == 2 and row.failed == 0 and 0 <= row.acc_mean <= 100
    failed = board[board.distiller == "crashes"].iloc[0]
    assert failed.seeds == 0 and failed.failed == 2
    assert "tiny-mlp/distilled" in set(board[board.distiller == "means"].recipe)
    assert set(board.protocol) == {"3 ep x 2, init default", "learned steps x 2, init default"}
    md, csv = write_report(board, tmp_path / "out", "tiny-bench", "harness report --experiment tiny-bench")
    text = md.read_text()
    assert "harness report --experiment tiny-bench" in text and "FAILED" in text and "means" in text
    assert csv.read_text().splitlines()[0].startswith("dataset,base_dataset,arch,budget,recipe,protocol,distiller")
    (tmp_path / "out" / "tiny-bench.notes.md").write_text("## What the papers claim\n")
    md, _ = write_report(board, tmp_path / "out", "tiny-bench", "harness report --experiment tiny-bench")
    assert md.read_text().endswith("## What the papers claim\n") and "| means |" in md.read_text()


def test_report_keeps_trials_that_differ_only_in_config_apart(bench, tracking_uri, tmp_path):
    """Two configs of one distiller are two rows (with the differing fields named), never averaged
    together as if they were seeds."""
    table = {"dataset": ["tiny"], "arch": ["tiny-mlp"], "ipc": [2], "distiller": ["means", "random"]}
    doc = {"name": "tiny-bench", "seeds": [0], "device": "cpu",
           "eval": {"models": 1, "epochs": 2},
           "grid": [table, {**table, "distiller": ["means"], "distillers": {"means": {"smoothing": 0.3}}}]}
    bench(doc)
    board = leaderboard(runs_frame(Tracker(tracking_uri), "tiny-bench"))
    means = board[board.distiller == "means"]
    assert sorted(means.variant) == ["smoothing=0.0", "smoothing=0.3"]
    assert list(means.seeds) == [1, 1]
    assert list(board[board.distiller == "random"].variant) == [""]  # one config: no variant shown
    md, _ = write_report(board, tmp_path / "out", "tiny-bench", "harness report")
    text = md.read_text()
    assert "| means (smoothing=0.3) |" in text and "| means (smoothing=0.0) |" in text and "| random |" in text


def failed_means_run(bench, tracking_uri, monkeypatch, distill, ipc=2):
    """Run `means` (its distill replaced by ``distill``) beside `random`: the grid must go on, with
    `means` FAILED and `random` FINISHED. Returns the failed run."""
    import plugins_for_tests

    monkeypatch.setattr(plugins_for_tests.ClassMeans, "distill", distill)
    doc = {"name": "tiny-bench", "seeds": [0], "device": "cpu", "eval": {"models": 1, "epochs": 1},
           "grid": [{"distiller": ["means", "random"], "dataset": ["tiny"], "arch": ["tiny-mlp"], "ipc": [ipc]}]}
    _, outcome = bench(doc)
    assert (outcome.passed, outcome.failed) == (1, 1)
    _, runs = children(tracking_uri)
    [failed] = [r for r in runs if r.info.status == "FAILED"]
    assert failed.data.params["distiller"] == "means"
    return failed


@pytest.mark.parametrize("rows, expected", [(slice(None), "returned 90 examples for a budget of 6 (ipc=2)"),
                                           (slice(0, 0), "returned 0 examples for a budget of 6 (ipc=2)")],
                         ids=["whole-training-set", "empty"])
def test_a_set_off_budget_fails_its_trial_and_the_grid_goes_on(bench, tracking_uri, monkeypatch, rows, expected):
    """The harness enforces the budget: a set bigger (e.g. the whole training set for ipc = 1) or
    smaller than ipc x C would otherwise be FINISHED and top its table."""

    def off_budget(self, task):
        import torch

        y = torch.nn.functional.one_hot(task.y[rows], task.num_classes).float()
        return DistilledSet(task.x[rows].clone(), y)

    failed = failed_means_run(bench, tracking_uri, monkeypatch, off_budget)
    assert failed.data.tags["error"] == f"TrialError: distiller 'means' {expected}; a distilled set must have exactly the budget's size"


def test_a_distiller_calling_sys_exit_fails_only_its_trial(bench, tracking_uri, monkeypatch):
    def exits(self, task):
        sys.exit(0)

    failed = failed_means_run(bench, tracking_uri, monkeypatch, exits, ipc=1)
    assert failed.data.tags["error"] == "SystemExit: distiller code called sys.exit(0)"


def test_one_seed_shows_no_std():
    import pandas as pd

    from harness.report import board_cells

    row = dict(dataset="d", base_dataset="d", arch="a", budget="n=5", recipe="a/sgd", protocol="p", distiller="x",
               variant="", acc_mean=90.2, acc_std=0.0, random_mean=80.0, gain_mean=10.2, gain_std=0.0,
               failed=0, distill_s=1.0, eval_s=1.0)
    one, three = board_cells(pd.DataFrame([{**row, "seeds": 1}, {**row, "seeds": 3, "acc_std": 0.5}]))
    assert one[6:9] == ["90.20", "80.00", "10.20"]
    assert three[6] == "90.20 ± 0.50" and three[8] == "10.20 ± 0.00"


def test_report_on_a_missing_experiment_is_a_clear_error(tracking_uri):
    from harness.errors import HarnessError

    with pytest.raises(HarnessError, match="no MLflow experiment named 'nope'"):
        runs_frame(Tracker(tracking_uri), "nope")


# -- the CLI, as a user runs it --------------------------------------------------------------------
@pytest.mark.slow
def test_cli_bench_then_report_on_the_quick_grid(tracking_uri, tmp_path):
    """The README's quick grid, scaled to seconds: real digits, real plugins, real sqlite store."""
    grid = REPO / "benchmarks" / "grids" / "quick.toml"
    args = ["--set", "eval.epochs=2", "--set", "eval.models=1", "--set", "seeds=[0]", "--set", "distillers.dm.iterations=5",
            "--set", "distillers.dc.iterations=2", "--tracking-uri", tracking_uri, "--device", "cpu"]
    harness_cli = run_harness  # in this process (tests/cli_in_process.py)
    res = harness_cli("bench", str(grid), *args, cwd=tmp_path)
    assert res.returncode == 0, res.stderr + res.stdout
    assert "6 passed, 0 failed" in res.stdout  # random and dm at ipc 1 and 10, dc at 1, full
    # the page that opens on the runs (MLflow 3's UI otherwise starts in its GenAI view)
    assert "#/experiments/" in res.stdout and "?workflowType=machine_learning" in res.stdout
    assert not (tmp_path / "results").exists() or not list((tmp_path / "results").glob("*.db"))
    again = harness_cli("bench", str(grid), *args, cwd=tmp_path)
    assert "0 passed, 0 failed, 6 skipped" in again.stdout
    rep = harness_cli("report", "--experiment", "quick", "--tracking-uri", tracking_uri, "--out", str(tmp_path / "r"),
                      cwd=tmp_path)
    assert rep.returncode == 0, rep.stderr
    md = (tmp_path / "r" / "quick.md").read_text()
    assert "| digits | mlp | ipc=1 | mlp/sgd | 2 ep x 1, init default | random |" in md and "| full |" in md
    # piped (not a terminal): markdown with full names on stdout, the file note on stderr
    assert "| digits | mlp | ipc=1 | mlp/sgd | 2 ep x 1, init default | random |" in rep.stdout
    assert "wrote " in rep.stderr and "wrote " not in rep.stdout
    import csv as csv_module
    import io
    import json

    rep = harness_cli("report", "--experiment", "quick", "--tracking-uri", tracking_uri, "--out", str(tmp_path / "r"),
                      "--format", "csv", cwd=tmp_path)
    rows = list(csv_module.DictReader(io.StringIO(rep.stdout)))
    assert {r["distiller"] for r in rows} == {"random", "dm", "dc", "full"} and all(r["acc_std"] == "" for r in rows)  # one seed
    rep = harness_cli("report", "--experiment", "quick", "--tracking-uri", tracking_uri, "--out", str(tmp_path / "r"),
                      "--format", "json", cwd=tmp_path)
    doc = json.loads(rep.stdout)
    assert doc["accuracy_unit"] == "percent"
    full = next(r for r in doc["rows"] if r["distiller"] == "full")
    random_ipc1 = next(r for r in doc["rows"] if r["distiller"] == "random" and r["budget"] == "ipc=1")
    assert full["acc_std"] is None and full["to_full"] == 0.0  # n/a for one seed; the full row is its own reference
    assert random_ipc1["to_full"] == pytest.approx(full["acc_mean"] - random_ipc1["acc_mean"])
    experiment = Tracker(tracking_uri).client.get_experiment_by_name("quick")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # the UI opens on runs
    # --grid: only the trials the grid (with the same overrides) defines; none for other overrides
    rep = harness_cli("report", "--grid", str(grid), *args[:10], "--tracking-uri", tracking_uri,
                      "--out", str(tmp_path / "g"), cwd=tmp_path)
    assert rep.returncode == 0, rep.stderr
    assert (tmp_path / "g" / "quick.md").read_text().count("| digits |") == md.count("| digits |")
    assert "harness report --grid" in (tmp_path / "g" / "quick.md").read_text()
    rep = harness_cli("report", "--grid", str(grid), "--set", "seeds=[5]", "--tracking-uri", tracking_uri,
                      "--out", str(tmp_path / "h"), cwd=tmp_path)
    assert "has no trial runs yet" in rep.stderr


def test_cli_default_store_is_sqlite_under_results(tmp_path, mlflow_template):
    """Without --tracking-uri the store is sqlite:///results/mlflow.db (relative to the cwd)."""
    (tmp_path / "results").mkdir()
    import shutil

    shutil.copy(mlflow_template, tmp_path / "results" / "mlflow.db")
    grid = tmp_path / "g.toml"
    grid.write_text('name = "dflt"\n[[grid]]\ndistiller = ["random"]\ndataset = ["digits"]\narch = ["mlp"]\n'
                    'ipc = [1]\n[eval]\nepochs = 1\nmodels = 1\n')
    res = run_harness("bench", str(grid), "--device", "cpu", cwd=tmp_path, env={"MLFLOW_TRACKING_URI": None})
    assert res.returncode == 0, res.stderr + res.stdout
    assert (tmp_path / "results" / "mlartifacts" / "dflt").is_dir()
    assert not (tmp_path / "mlruns").exists()
    tracker = Tracker(f"sqlite:///{tmp_path / 'results' / 'mlflow.db'}")
    assert len(tracker.trial_runs(tracker.experiment_id("dflt", create=False))) == 1


@pytest.mark.slow
def test_cli_exit_code_is_1_when_a_trial_fails(tmp_path, tracking_uri, tests_plugin_env):
    """A faulty third-party distiller (exposed through a real entry point) fails; the grid finishes."""
    grid = tmp_path / "g.toml"
    grid.write_text('name = "faulty"\n[[grid]]\ndistiller = ["crashes", "random"]\ndataset = ["tiny"]\n'
                    'arch = ["tiny-mlp"]\nipc = [1]\n[eval]\nepochs = 1\nmodels = 1\n')
    res = run_harness("bench", str(grid), "--tracking-uri", tracking_uri, cwd=tmp_path, env=tests_plugin_env)
    assert res.returncode == 1, res.stderr + res.stdout
    assert "1 passed, 1 failed" in res.stdout
    assert "FAILED RuntimeError: deliberate failure for tests" in res.stdout
    assert "Traceback" not in res.stdout + res.stderr


@pytest.mark.slow
def test_http_tracking_server_via_env(tmp_path, mlflow_template):
    """MLFLOW_TRACKING_URI pointing at a real `mlflow server` (bound to 127.0.0.1)."""
    from conftest import free_port, start_mlflow_server, stop_mlflow_server

    server, uri = start_mlflow_server(tmp_path, free_port(), template=mlflow_template)
    try:
        grid = tmp_path / "g.toml"
        grid.write_text('name = "remote"\n[[grid]]\ndistiller = ["random"]\ndataset = ["digits"]\narch = ["mlp"]\n'
                        'ipc = [1]\n[eval]\nepochs = 1\nmodels = 1\n')
        res = run_harness("bench", str(grid), "--device", "cpu", cwd=tmp_path, env={"MLFLOW_TRACKING_URI": uri})
        assert res.returncode == 0, res.stderr + res.stdout
        tracker = Tracker(uri)
        runs = tracker.trial_runs(tracker.experiment_id("remote", create=False))
        assert len(runs) == 1 and runs[0].info.status == "FINISHED"
        names = {a.path for a in tracker.client.list_artifacts(runs[0].info.run_id)}
        assert "distilled.safetensors" in names
        assert not (tmp_path / "results").exists()  # nothing written to the local default store
    finally:
        stop_mlflow_server(server)


def test_an_architecture_that_cannot_take_the_input_fails_before_compute(tiny_plugins, tracking_uri, tmp_path):
    from harness.errors import ConfigError

    doc = {"grid": [{"distiller": ["random"], "dataset": ["digits"], "arch": ["lenet"], "ipc": [1]}]}
    grid = build_grid(doc, tiny_plugins)
    with pytest.raises(ConfigError, match="architecture 'lenet' cannot take dataset 'digits' \\(1x8x8\\)"):
        run_bench(grid, tiny_plugins, tracking_uri=tracking_uri, data_dir=tmp_path)
    tracker = Tracker(tracking_uri)
    assert tracker.experiment_id("grid", create=False) is None  # nothing was created or run


def test_cross_dataset_label_distillation_end_to_end(bench, tracking_uri, tmp_path):
    """LD with base examples from another dataset: inputs from the base, labels in the target's space."""
    doc = {"name": "tiny-bench", "device": "cpu",
           "grid": [{"distiller": ["ld"], "dataset": ["tiny"], "base_dataset": ["tiny-letters"],
                     "arch": ["tiny-mlp"], "ipc": [2]}],
           "eval": {"models": 1, "epochs": 2}, "distillers": {"ld": {"outer_steps": 3}}}
    grid, outcome = bench(doc)
    assert outcome.passed == 1, outcome
    tracker, [run] = children(tracking_uri)
    assert run.info.run_name == "ld/tiny-letters->tiny/tiny-mlp/ipc2/seed0"
    assert run.data.params["base_dataset"] == "tiny-letters" and run.data.params["dataset"] == "tiny"
    dset = DistilledSet.load(tracker.client.download_artifacts(run.info.run_id, "distilled.safetensors", str(tmp_path)))
    assert dset.y.shape == (6, 3)  # target label space: tiny's 3 classes
    from plugins_for_tests import _tiny_letters

    base_x, _ = _tiny_letters("train", None)
    assert all(((base_x == xi).flatten(1).all(1)).any() for xi in dset.x)  # every input is a base example
    assert dset.meta["base_dataset"] == "tiny-letters"


def test_test_subset_is_fixed_stratified_and_checked_before_compute(tiny_plugins, tmp_path):
    """eval.test_size: the same class-stratified subset for every trial; too large -> ConfigError."""
    import torch

    from harness.data import DataCache, check_budgets
    from harness.errors import ConfigError
    from harness.grid import build_grid

    data = DataCache(tiny_plugins, tmp_path, torch.device("cpu"))
    x, y = data.test("tiny", 0)
    assert len(y) == 60  # 0 = the whole split
    xs, ys = data.test("tiny", 31)
    assert len(ys) == 31 and torch.bincount(ys).tolist() in ([11, 10, 10], [10, 11, 10], [10, 10, 11])
    rows = {tuple(r) for r in x.flatten(1).tolist()}
    assert all(tuple(r) in rows for r in xs.flatten(1).tolist())
    again = DataCache(tiny_plugins, tmp_path, torch.device("cpu")).test("tiny", 31)
    assert torch.equal(again[0], xs) and torch.equal(again[1], ys)

    doc = {"grid": [{"distiller": ["random"], "dataset": ["tiny"], "arch": ["tiny-mlp"], "ipc": [1]}],
           "eval": {"test_size": 61}}
    grid = build_grid(doc, tiny_plugins)
    assert grid.trials[0].recipes[0].test_size == 61
    with pytest.raises(ConfigError, match=r"eval.test_size = 61 exceeds the 60 test examples of 'tiny'; use "
                                          r"test_size <= 60 \(0 = all\)"):
        check_budgets(grid.trials, tiny_plugins, data)


def test_report_protocol_names_a_test_subset_and_dsa(bench, tracking_uri):
    doc = tiny_doc()
    doc["eval"] = {**doc.get("eval", {}), "test_size": 30, "augment": "dsa"}
    doc["seeds"] = [0]
    doc["grid"][0]["distiller"] = ["random"]
    bench(doc)
    board = leaderboard(runs_frame(Tracker(tracking_uri), "tiny-bench"))
    assert set(board.protocol) == {"3 ep x 2, init default, test 30"}
    assert set(board.recipe) == {"tiny-mlp/sgd/dsa"}


def test_datasets_that_decode_their_inputs_get_an_examples_text_artifact(bench, tracking_uri, tmp_path):
    doc = tiny_doc()
    doc["seeds"] = [0]
    doc["grid"][0].update(distiller=["means"], dataset=["tiny-text"])
    bench(doc)
    tracker, runs = children(tracking_uri)
    [run] = runs
    names = {a.path for a in tracker.client.list_artifacts(run.info.run_id)}
    assert "examples.txt" in names and "images.png" not in names
    text = Path(tracker.client.download_artifacts(run.info.run_id, "examples.txt", str(tmp_path))).read_text()
    lines = text.splitlines()
    assert len(lines) == 6 and lines[0].startswith("[0] (0 ") and all(" w" in line for line in lines)


def test_report_for_a_grid_leaves_out_runs_of_its_earlier_versions(bench, tracking_uri, tiny_plugins):
    """Editing a grid (here: fewer seeds, another epoch count) changes trial keys; the old runs stay
    in MLflow but `harness report --grid` reports only the trials the grid defines now."""
    doc = tiny_doc()
    doc["grid"][0]["distiller"] = ["random"]
    bench(doc)
    doc["seeds"], doc["eval"]["epochs"] = [0], 2
    grid, _ = bench(doc)
    tracker = Tracker(tracking_uri)
    assert len(runs_frame(tracker, "tiny-bench")) == 3  # 2 old + 1 new
    frame = runs_frame(tracker, "tiny-bench", {t.key for t in grid.trials})
    assert len(frame) == 1 and frame.iloc[0]["seed"] == 0 and str(frame.iloc[0]["eval_epochs"]) == "2"


def test_experiments_are_tagged_to_open_on_runs_in_the_mlflow_ui(tracking_uri):
    """New experiments and ones made before the tag get MLflow's model-training kind; a kind
    someone chose stays."""
    tracker = Tracker(tracking_uri)
    kind = "mlflow.experimentKind"
    new = tracker.experiment_id("fresh")
    older = tracker.client.create_experiment("older")
    chosen = tracker.client.create_experiment("chosen", tags={kind: "genai_development"})
    assert tracker.experiment_id("older") == older and tracker.experiment_id("chosen") == chosen
    tags = {e: tracker.client.get_experiment(e).tags.get(kind) for e in (new, older, chosen)}
    assert tags == {new: "custom_model_development", older: "custom_model_development", chosen: "genai_development"}


def test_a_bench_shorter_than_the_sampling_interval_still_gets_system_metrics(tracking_uri, monkeypatch):
    """MLflow's monitor logs after its first interval only: a bench that ends sooner (or whose
    monitor thread a busy machine starves) would have none; the harness logs one sample at the end."""
    from harness.tracking import Tracker

    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "3600")
    tracker = Tracker(tracking_uri)
    parent = tracker.start_bench(tracker.experiment_id("short"), "bench/short", {}, {})
    tracker.system_metrics(parent).finish()
    assert "system/cpu_utilization_percentage" in tracker.client.get_run(parent).data.metrics


def test_mlflow_sees_datasets_the_grid_a_description_and_system_metrics(tracking_uri, tmp_path, monkeypatch):
    """What MLflow users look for: each trial's datasets as inputs (fingerprint as digest, role as
    context), the resolved grid and a description on the parent, system metrics when asked."""
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")
    (tmp_path / "g.toml").write_text('name = "mlf"\ndevice = "cpu"\n[[grid]]\ndistiller = "random"\ndataset = "digits"\n'
                                     'arch = "mlp"\nipc = 1\n[eval]\nmodels = 1\nepochs = 2\n')
    proc = run_harness("bench", "g.toml", "--set", "eval.epochs=3", "--system-metrics", "--tracking-uri", tracking_uri,
                       cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    tracker = Tracker(tracking_uri)
    exp = tracker.experiment_id("mlf", create=False)
    (trial,) = tracker.trial_runs(exp)
    inputs = {(d.dataset.name, next(t.value for t in d.tags if t.key == "mlflow.data.context"), d.dataset.digest)
              for d in trial.inputs.dataset_inputs}
    assert {(name, context) for name, context, _ in inputs} == {("digits", "train"), ("digits", "test")}
    assert all(":" in digest for _, _, digest in inputs)  # n:hash, harness.data.fingerprint
    (parent,) = [r for r in tracker.client.search_runs([exp]) if r.data.tags.get("run_kind") == "bench"]
    assert "**mlf**: 1 trial(s) run here" in parent.data.tags["mlflow.note.content"]
    (tmp_path / "dl").mkdir()
    grid = json.loads(open(tracker.client.download_artifacts(parent.info.run_id, "grid.json", str(tmp_path / "dl"))).read())
    assert grid["eval"]["epochs"] == 3  # resolved: the override is in
    assert any(k.startswith("system/") for k in parent.data.metrics), sorted(parent.data.metrics)
    plots = {a.path for a in tracker.client.list_artifacts(parent.info.run_id, "plots")}
    assert "plots/digits-accuracy-vs-budget.png" in plots  # the leaderboard's plots on the parent run


def test_dataset_inputs_never_fail_a_trial_start(tracking_uri, tiny_plugins):
    """Two drivers creating the same dataset row at once collide in MLflow (UNIQUE constraint): the
    retry links to the winner's row, and inputs that still fail are left out, never the trial."""
    from harness.grid import build_grid

    trial = build_grid({"grid": [{"distiller": "random", "dataset": "tiny", "arch": "tiny-mlp", "ipc": 1}]},
                       tiny_plugins).trials[0]
    trial = dataclasses.replace(trial, data=(("fingerprint", "train 40:aaaa test 20:bbbb"),))
    tracker = Tracker(tracking_uri)
    exp = tracker.experiment_id("inputs")
    calls = []
    real = tracker.client.log_inputs

    def collide_once(run_id, datasets):
        calls.append(run_id)
        if len(calls) == 1:
            raise RuntimeError("UNIQUE constraint failed: datasets.experiment_id, datasets.name, datasets.digest")
        return real(run_id, datasets=datasets)

    tracker.client.log_inputs = collide_once
    run_id = tracker.start_trial(exp, "", trial)
    assert len(calls) == 2 and len(tracker.client.get_run(run_id).inputs.dataset_inputs) == 2
    tracker.client.log_inputs = lambda run_id, datasets: (_ for _ in ()).throw(RuntimeError("store says no"))
    assert tracker.start_trial(exp, "", trial)  # started without its inputs


def test_runs_logged_before_recipe_runs_still_report_in_percent(bench, tracking_uri):
    """Stores made before recipe runs hold fractions under ``acc_mean/<recipe>`` on the trial run
    (no ``acc_unit`` tag); they report beside new runs, converted to percent."""
    bench()
    tracker = Tracker(tracking_uri)
    exp = tracker.experiment_id("tiny-bench", create=False)
    new = next(r for r in tracker.trial_runs(exp) if r.data.params["distiller"] == "random" and r.info.status == "FINISHED")
    old = tracker.client.create_run(exp, tags={"run_kind": "trial", "grid_key": "legacy", "trial_key": "legacy",
                                               "acc_models": json.dumps({"tiny-mlp/sgd": [0.5, 0.6]})}).info.run_id
    for k, v in {**new.data.params, "seed": 7}.items():
        tracker.client.log_param(old, k, v)
    for k, v in {"acc_mean/tiny-mlp/sgd": 0.55, "acc_random/tiny-mlp/sgd": 0.5, "gain/tiny-mlp/sgd": 0.05,
                 "distill_seconds": 1.0, "eval_seconds": 1.0}.items():
        tracker.client.log_metric(old, k, v)
    tracker.client.set_terminated(old, "FINISHED")
    frame = runs_frame(tracker, "tiny-bench")
    legacy = frame[frame.run_id == old].iloc[0]
    assert legacy["acc_mean/tiny-mlp/sgd"] == pytest.approx(55.0) and legacy["per_model"] == {"tiny-mlp/sgd": [50.0, 60.0]}
    fresh = frame[frame.run_id == new.info.run_id].iloc[0]
    assert fresh["acc_mean/tiny-mlp/sgd"] == pytest.approx(new.data.metrics["acc_mean"])  # from its recipe run
    row = leaderboard(frame).query("distiller == 'random' and recipe == 'tiny-mlp/sgd'").iloc[0]
    assert row.seeds == 3 and 0 <= row.acc_mean <= 100
