"""Throughput of the evaluation protocol and the harness's own overhead per trial.

Run: `make perf` (or `.venv/bin/python -m pytest benchmarks/perf`). Compare ratios within one run:
the machine is shared and noisy.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from harness.evaluate import accuracy, train_model
from harness.specs import DistilledSet
from harness.trial import Recipe

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def digits():
    from harness_vision.datasets import load_digits

    return load_digits("train", None), load_digits("test", None)


@pytest.mark.parametrize("arch", ["mlp", "convnet"])
def test_train_one_epoch_on_100_images(benchmark, digits, arch):
    from harness_vision import archs

    (x, y), _ = digits
    dset = DistilledSet(x[:100], F.one_hot(y[:100], 10).float())
    model = getattr(archs, f"build_{arch}")((1, 8, 8), 10)
    recipe = Recipe(arch=arch, epochs=1, batch_size=256)
    benchmark.group = "eval-primitives"
    benchmark(train_model, model, dset, recipe, torch.Generator().manual_seed(0), CPU)


@pytest.mark.parametrize("arch", ["mlp", "convnet"])
def test_test_accuracy_on_digits_test_split(benchmark, digits, arch):
    from harness_vision import archs

    _, (xt, yt) = digits
    model = getattr(archs, f"build_{arch}")((1, 8, 8), 10)
    benchmark.group = "eval-primitives"
    benchmark(accuracy, model, xt, yt)


@pytest.mark.parametrize("journal", ["wal", "rollback"])
def test_mlflow_logging_of_one_trial(benchmark, tracking_uri, tmp_path, monkeypatch, journal):
    """Driver-side cost of logging one finished trial (params, its dataset inputs, metrics, curves,
    artifacts, and a run per recipe: two recipes, as most grids evaluate). ``journal``: the store as
    the harness sets it up (write-ahead log, harness.sqlite_store) or as sqlite's default leaves it
    (a rollback journal, synced on every commit), for the ratio."""
    import sqlite3

    import harness.tracking
    from harness.runner import RecipeResult, TrialResult
    from harness.tracking import Tracker
    from harness.trial import Trial

    benchmark.group = "mlflow" if journal == "wal" else "mlflow-rollback"
    if journal == "rollback":
        with sqlite3.connect(tracking_uri[len("sqlite:///"):]) as connection:
            connection.execute("PRAGMA journal_mode=DELETE")
        monkeypatch.setattr(harness.tracking, "write_ahead", lambda engine: None)
    tracker = Tracker(tracking_uri)
    exp = tracker.experiment_id("perf")
    parent = tracker.start_bench(exp, "bench/perf", {}, {})
    art = tmp_path / "a"
    art.mkdir()
    DistilledSet(torch.randn(100, 1, 8, 8), torch.eye(10).repeat(10, 1)).save(art / "distilled.safetensors")
    recipes = (Recipe(arch="mlp"), Recipe(arch="lenet"))
    # the data fingerprints the plan gives every trial (harness.plan): its runs log them as dataset inputs
    trial = Trial("random", "digits", "digits", "mlp", 10, 100, 0, (), recipes,
                  data=(("fingerprint", "train 1797:0123456789ab test 1797:ba9876543210"),))
    core = {"acc_mean": 50.0, "acc_std": 1.0, "acc_random": 45.0, "gain": 5.0}
    result = TrialResult(trial, "passed", metrics={**core, "distill_seconds": 1.0, "eval_seconds": 2.0},
                         per_model={r.label: [50.0] * 5 for r in recipes},
                         recipes=[RecipeResult(r.label, r.params(), {**core, "eval_seconds": 1.0}, [50.0] * 5,
                                               "vectorised", 0, 1000) for r in recipes],
                         curves=[(i, {"loss": 1.0 / (i + 1)}) for i in range(200)], artifacts_dir=str(art))
    benchmark.pedantic(tracker.log_trial, args=(exp, parent, result), rounds=5, iterations=1)
    calls = count_requests(tracker, lambda: tracker.log_trial(exp, parent, result))
    benchmark.extra_info["requests"] = len(calls)
    benchmark.extra_info["by_request"] = {name: [sum(1 for n, _ in calls if n == name),
                                                 sum(t for n, t in calls if n == name)] for name, _ in calls}


def count_requests(tracker, action) -> list[tuple[str, float]]:
    """The MLflow client calls (store requests) ``action`` makes through ``tracker.client``, each with
    its duration in seconds."""
    import time

    calls, real = [], tracker.client

    class Timing:
        def __getattr__(self, name):
            attr = getattr(real, name)
            if not callable(attr):
                return attr

            def call(*args, **kwargs):
                start = time.perf_counter()
                try:
                    return attr(*args, **kwargs)
                finally:
                    calls.append((name, time.perf_counter() - start))
            return call

    tracker.client = Timing()
    try:
        action()
    finally:
        tracker.client = real
    return calls


def test_mlflow_one_request(benchmark, tracking_uri):
    """One store request alone (a tag on an existing run): the unit of the per-trial cost above."""
    from harness.tracking import Tracker

    benchmark.group = "mlflow-request"
    tracker = Tracker(tracking_uri)
    run = tracker.client.create_run(tracker.experiment_id("perf")).info.run_id
    benchmark.pedantic(tracker.client.set_tag, args=(run, "k", "v"), rounds=20, iterations=1, warmup_rounds=2)
