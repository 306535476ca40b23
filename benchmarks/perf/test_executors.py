"""The process executor with 2 workers, and the ray executor on a local 2-CPU cluster, vs inline on a CPU-bound grid of 4 trials (target >= 1.7x on
this 2-core machine): digits, `dm` (1,500 iterations, ~15-20 s a trial: a worker's start-up, ~5 s, is paid once per worker) at ipc 1 and 10 over 2 seeds, MLP, DC protocol
(5 models x 300 epochs). Each round runs inline, process and ray (fresh stores), timed apart and
kept in ``extra_info`` (paired); Ray's overhead per trial is (ray - process) / trials, both running 2
trials at once (its cluster start-up included: it is part of what a user waits for). Run: `make perf` or
`.venv/bin/python -m pytest benchmarks/perf/test_executors.py`.
"""

from __future__ import annotations

import shutil
import time

GRID = {
    "name": "perf-executors", "seeds": [0, 1], "device": "cpu", "checkpoint_every": 0,
    "grid": [{"distiller": ["dm"], "dataset": ["digits"], "arch": ["mlp"], "ipc": [1, 10]}],
    "eval": {"models": 5, "epochs": 300}, "distillers": {"dm": {"iterations": 1500}},
}


def test_process_vs_inline(benchmark, tmp_path, _mlflow_template):
    import torch
    from rich.console import Console

    from harness.bench import run_bench
    from harness.grid import build_grid
    from harness.plugins import load_plugins

    plugins = load_plugins()
    benchmark.group = "executors"
    benchmark.extra_info.update(inline=[], process=[], ray=[], workers=2, trials=4)
    rounds = iter(range(100))

    def paired():
        for executor in ("inline", "process", "ray"):
            store = tmp_path / f"mlflow-{next(rounds)}.db"
            shutil.copy(_mlflow_template, store)
            grid = build_grid({**GRID, "executor": executor}, plugins)
            threads = torch.get_num_threads()
            start = time.perf_counter()
            outcome = run_bench(grid, plugins, tracking_uri=f"sqlite:///{store}", data_dir=tmp_path, device="cpu",
                                console=Console(quiet=True), workers=2 if executor == "process" else None)
            benchmark.extra_info[executor].append(time.perf_counter() - start)
            torch.set_num_threads(threads)
            assert outcome.passed == len(grid.trials)

    benchmark.pedantic(paired, rounds=2, iterations=1)
