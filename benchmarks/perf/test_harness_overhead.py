"""The harness's overhead on a grid: `run_bench` (plan, MLflow runs, live curves, artifacts, the
leaderboard) vs the bare trial function `run_trial` over the same bound trials.

Grid: digits (8x8), `random` and `dm` (200 iterations) at ipc 1 and 10, MLP, evaluated under the DC
protocol (5 models x 300 epochs): 4 trials of a few seconds each on this CPU, short for a
distillation trial, so the harness's fixed costs weigh more here than in real grids.
After one unrecorded warm-up round, each round runs the bare trials and then the bench (fresh
store), timed apart and kept in ``extra_info`` (paired: both see the same machine load); overhead =
the median over rounds of bench / bare - 1 (target <= 3%).
Run: `make perf` or `.venv/bin/python -m pytest benchmarks/perf/test_harness_overhead.py`.
"""

from __future__ import annotations

import shutil

import pytest

GRID = {
    "name": "perf-overhead", "seeds": [0], "device": "cpu", "checkpoint_every": 0,
    "grid": [{"distiller": ["random", "dm"], "dataset": ["digits"], "arch": ["mlp"], "ipc": [1, 10]}],
    "eval": {"models": 5, "epochs": 300}, "distillers": {"dm": {"iterations": 200}},
}


@pytest.fixture(scope="module")
def grid():
    from harness.grid import build_grid
    from harness.plugins import load_plugins

    plugins = load_plugins()
    return build_grid(GRID, plugins, source="perf"), plugins


def test_grid_wall_time(benchmark, grid, tmp_path, _mlflow_template):
    import time

    from rich.console import Console

    from bare_trials import run_plan

    from harness.bench import run_bench
    from harness.plan import prepare

    g, plugins = grid
    benchmark.group = "harness-overhead"
    benchmark.extra_info.update(bare=[], bench=[], trials=len(g.trials))
    rounds = iter(range(100))

    def bare():
        run_plan(prepare(g, plugins, tmp_path, "cpu"))

    def bench():
        store = tmp_path / f"mlflow-{next(rounds)}.db"
        shutil.copy(_mlflow_template, store)
        outcome = run_bench(g, plugins, tracking_uri=f"sqlite:///{store}", data_dir=tmp_path, device="cpu",
                            console=Console(quiet=True))
        assert outcome.passed == len(g.trials)

    def paired():
        for name, run in (("bare", bare), ("bench", bench)):
            start = time.perf_counter()
            run()
            benchmark.extra_info[name].append(time.perf_counter() - start)

    # One unrecorded round first: the first bare run pays this process's one-time costs (the data's
    # first load, lazy imports, first kernels), which made every first round's overhead negative.
    bare()
    bench()
    benchmark.pedantic(paired, rounds=3, iterations=1)
