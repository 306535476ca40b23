"""Loading a dataset in a fresh process (what each `harness bench` and each worker of the process
and Ray executors pays before its first trial), and decoding a text set into `examples.txt` (each
text trial's artifact).

The load is timed inside a child process around the two `load` calls (train and test), after its
imports of torch and the plugins, so interpreter start-up is not part of it; the child prints the
seconds and they are kept per round in ``extra_info["load"]`` (the benchmark's own figure is the
whole child process).
Run: `make perf` or `.venv/bin/python -m pytest benchmarks/perf/test_data_load.py`.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

CHILD = """
import sys, time
import torch
from harness.plugins import load_plugins
spec = load_plugins().datasets.get(sys.argv[1])
start = time.perf_counter()
for split in ("train", "test"):
    spec.load(split, None)
print(time.perf_counter() - start)
"""


@pytest.mark.parametrize("dataset", ["digits", "mnist-subset", "rotten-tomatoes"])
def test_first_load_in_a_fresh_process(benchmark, dataset):
    benchmark.group = "data-cold-load"
    benchmark.extra_info["load"] = []

    def run():
        out = subprocess.run([sys.executable, "-c", CHILD, dataset], capture_output=True, text=True, check=True)
        benchmark.extra_info["load"].append(float(out.stdout.split()[-1]))

    benchmark.pedantic(run, rounds=3, iterations=1)


def test_text_examples_of_500_real_sentences(benchmark, tmp_path):
    """`examples.txt` of a set of 500 real sentences (a `random` or `full` text trial shows its first 500)."""
    import torch

    from harness.data import DataCache
    from harness.plugins import load_plugins

    plugins = load_plugins()
    data = DataCache(plugins, tmp_path, torch.device("cpu"))
    x, _ = data.get("rotten-tomatoes", "train")  # as trials see it: embedded sentences [N, L, dim]
    spec = plugins.datasets.get("rotten-tomatoes")
    spec.decode(x[:2], data.ctx)  # the nearest-word table is built once per process: not timed
    benchmark.group = "artifacts"
    benchmark.pedantic(spec.decode, args=(x[:500], data.ctx), rounds=3, iterations=1)
