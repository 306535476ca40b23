"""The harness's overhead on a grid: `run_bench` (plan, MLflow runs, live curves, artifacts, the
leaderboard) vs the bare trial function `run_trial` over the same bound trials.

Grid: digits (8x8), `random` and `dm` (50 iterations) at ipc 1 and 10, MLP, 2 models x 100 epochs:
4 trials of a few seconds each. overhead = bench / bare - 1 (target <= 3%).
Run: `make perf` or `.venv/bin/python -m pytest benchmarks/perf/test_harness_overhead.py`.
"""

from __future__ import annotations

import shutil

import pytest
import torch

GRID = {
    "name": "perf-overhead", "seeds": [0], "device": "cpu", "checkpoint_every": 0,
    "grid": [{"distiller": ["random", "dm"], "dataset": ["digits"], "arch": ["mlp"], "ipc": [1, 10]}],
    "eval": {"models": 2, "epochs": 100}, "distillers": {"dm": {"iterations": 50}},
}


@pytest.fixture(scope="module")
def grid():
    from harness.grid import build_grid
    from harness.plugins import load_plugins

    plugins = load_plugins()
    return build_grid(GRID, plugins, source="perf"), plugins


@pytest.mark.parametrize("how", ["bare", "bench"])
def test_grid_wall_time(benchmark, grid, how, tmp_path, _mlflow_template):
    from rich.console import Console

    from harness.bench import run_bench
    from harness.plan import prepare
    from harness.runner import TrialContext, run_trial

    g, plugins = grid
    benchmark.group = "harness-overhead"
    rounds = iter(range(100))

    def bare():
        plan = prepare(g, plugins, tmp_path, "cpu")
        ctx = TrialContext(plan.data, plan.device)
        for bound in plan.trials:
            result = run_trial(bound, ctx)
            assert result.passed, result.error
            shutil.rmtree(result.artifacts_dir, ignore_errors=True)

    def bench():
        store = tmp_path / f"mlflow-{next(rounds)}.db"
        shutil.copy(_mlflow_template, store)
        outcome = run_bench(g, plugins, tracking_uri=f"sqlite:///{store}", data_dir=tmp_path, device="cpu",
                            console=Console(quiet=True))
        assert outcome.passed == len(g.trials)

    benchmark.pedantic(bare if how == "bare" else bench, rounds=3, iterations=1)
