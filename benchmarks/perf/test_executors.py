"""The process executor with 2 workers, and the ray executor on a local 2-CPU cluster, vs inline on a CPU-bound grid of 4 trials (target >= 1.7x on
this 2-core machine): digits, `dm` (1,500 iterations, ~15-20 s a trial: a worker's start-up, ~5 s, is paid once per worker) at ipc 1 and 10 over 2 seeds, MLP, DC protocol
(5 models x 300 epochs). Each round runs inline, process and ray (fresh stores), timed apart and
kept in ``extra_info`` (paired); Ray's overhead per trial is (ray - process) / trials, both running 2
trials at once (its cluster start-up included: it is part of what a user waits for). The same round
also runs the bare trial function without any harness (``bare_trials.py``): the 4 trials one after
another in this process (``bare``), and as 2 spawned processes of 2 trials, one thread each, their
start-up included (``bare2``): bare / bare2 is what 2 processes can gain on this machine at all,
the ceiling for any executor's speed-up. Run: `make perf` or
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
    benchmark.extra_info.update(inline=[], process=[], ray=[], bare=[], bare2=[], workers=2, trials=4)
    rounds = iter(range(100))

    def bare(two_processes: bool) -> None:
        import multiprocessing

        from bare_trials import run_trials

        if not two_processes:
            run_trials(GRID, [0, 1, 2, 3], str(tmp_path), torch.get_num_threads())
            return
        spawn = multiprocessing.get_context("spawn")
        workers = [spawn.Process(target=run_trials, args=(GRID, half, str(tmp_path), 1)) for half in ([0, 2], [1, 3])]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
            assert w.exitcode == 0

    def paired():
        for name in ("bare", "bare2"):
            threads = torch.get_num_threads()
            start = time.perf_counter()
            bare(name == "bare2")
            benchmark.extra_info[name].append(time.perf_counter() - start)
            torch.set_num_threads(threads)
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
