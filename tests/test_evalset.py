"""``harness eval``: sets made elsewhere, evaluated under the grid's protocol as ``file`` trials;
malformed files and sets that do not fit the dataset are one line, exit 2, before any compute."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import save_file

from cli_in_process import run_harness
from harness.tracking import Tracker

RECIPES = 'name = "ev"\ndevice = "cpu"\nseeds = [0, 1]\n[eval]\nmodels = 2\nepochs = 5\n'
GRID = RECIPES + ('[distillers.dm]\niterations = 5\n'
                  '[[grid]]\ndistiller = "dm"\ndataset = "digits"\narch = "mlp"\nipc = 2\n')


def runs(uri: str, experiment: str) -> list:
    tracker = Tracker(uri)
    return tracker.trial_runs(tracker.experiment_id(experiment, create=False))


def test_a_set_from_an_earlier_run_scores_what_its_trial_scored(tmp_path, tracking_uri):
    """Same set, recipe and seed: `harness eval` reproduces the bench trial's accuracy exactly, and
    logs the random baseline at the set's budget beside it, in the bench's own experiment."""
    (tmp_path / "g.toml").write_text(GRID)
    (tmp_path / "recipes.toml").write_text(RECIPES)
    bench = run_harness("bench", "g.toml", "--tracking-uri", tracking_uri, cwd=tmp_path)
    assert bench.returncode == 0, bench.stderr
    tracker = Tracker(tracking_uri)
    seed0 = next(r for r in runs(tracking_uri, "ev") if r.data.params["seed"] == "0")
    artifact = tracker.client.download_artifacts(seed0.info.run_id, "distilled.safetensors", str(tmp_path))

    proc = run_harness("eval", artifact, "--dataset", "digits", "--arch", "mlp", "--grid", "recipes.toml",
                       "--seeds", "0", "--tracking-uri", tracking_uri, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    evaluated = [r for r in runs(tracking_uri, "ev") if r.data.params["distiller"] == "file"]
    assert len(evaluated) == 1
    run = evaluated[0]
    assert run.info.status == "FINISHED" and run.data.params["budget"] == "ipc=2"  # from the set's labels
    assert run.data.metrics["acc_mean"] == seed0.data.metrics["acc_mean"]
    assert run.data.metrics["acc_random"] == seed0.data.metrics["acc_random"]

    again = run_harness("eval", artifact, "--dataset", "digits", "--arch", "mlp", "--grid", "recipes.toml",
                        "--seeds", "0", "--tracking-uri", tracking_uri, cwd=tmp_path)
    assert again.returncode == 0 and "0 passed, 0 failed, 1 skipped" in again.stdout  # resumable like bench


def test_class_index_labels_from_another_tool(tmp_path, tracking_uri):
    x = torch.randn(30, 1, 8, 8)
    save_file({"x": x, "y": torch.arange(10).repeat(3)}, str(tmp_path / "other.safetensors"),
              metadata={"meta": json.dumps({"method": "another tool"})})
    proc = run_harness("eval", "other.safetensors", "--dataset", "digits", "--arch", "mlp",
                       "--tracking-uri", tracking_uri, "--device", "cpu", cwd=tmp_path,
                       env={"HARNESS_DATA_DIR": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr
    (run,) = runs(tracking_uri, "eval")
    assert run.data.params["budget"] == "ipc=3" and math.isfinite(run.data.metrics["gain"])


def _write(path, **tensors):
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))


@pytest.mark.parametrize("make, fragment", [
    (lambda p: p.write_text("not a tensor file"), "not a readable safetensors file"),
    (lambda p: _write(p, x=torch.zeros(10, 1, 8, 8)), "no tensor 'y'; a distilled set needs 'x' and 'y'"),
    (lambda p: _write(p, x=torch.zeros(10, 1, 28, 28), y=torch.eye(10)),
     "x has shape [10, 1, 28, 28], but the dataset's inputs are [1, 8, 8]"),
    (lambda p: _write(p, x=torch.zeros(10, 1, 8, 8), y=torch.zeros(10, 4)), "y has shape [10, 4]; expected [10, 10]"),
    (lambda p: _write(p, x=torch.full((10, 1, 8, 8), float("nan")), y=torch.eye(10)), "x contains NaN or inf"),
    (lambda p: _write(p, x=torch.zeros(10, 1, 8, 8), y=torch.arange(10) + 5), "class indices must be integers in 0..9"),
])
def test_malformed_or_mismatched_sets_are_one_line_exit_2(tmp_path, make, fragment):
    make(tmp_path / "bad.safetensors")
    proc = run_harness("eval", "bad.safetensors", "--dataset", "digits", "--arch", "mlp", cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and fragment in proc.stderr, proc.stderr


def test_recipes_the_set_cannot_serve_are_refused_before_compute(tmp_path):
    _write(tmp_path / "s.safetensors", x=torch.zeros(10, 1, 8, 8), y=torch.eye(10))
    (tmp_path / "r.toml").write_text('[eval]\noptimizers = ["sgd", "distilled"]\n')
    proc = run_harness("eval", "s.safetensors", "--dataset", "digits", "--arch", "mlp", "--grid", "r.toml", cwd=tmp_path)
    assert proc.returncode == 2 and "has no 'lrs' tensor" in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
    (tmp_path / "g.toml").write_text(GRID)
    proc = run_harness("eval", "s.safetensors", "--dataset", "digits", "--arch", "mlp", "--grid", "g.toml", cwd=tmp_path)
    assert proc.returncode == 2 and "takes only" in proc.stderr and "not distillers, grid" in proc.stderr, proc.stderr
