"""Evaluation's K = 5 models trained one after another vs at once (harness/vectorised.py).

Training only (the test pass is the same code on both paths): LeNet on a 10-ipc MNIST-shaped set
(100 images, 1x28x28) for 20 epochs, ConvNet-3 (width 128, instance norm) on a 10-ipc
Fashion-MNIST-shaped set for 2 epochs, MLP (width 128) for 20 epochs; batch 256 (one step an
epoch), SGD as in the DC protocol. Compare the modes of one architecture within one run.

``vectorised`` batches layer by layer (harness.vectorised.layered_forward: all three archs are
built of such layers); ``vmap`` is the same training through ``vmap(functional_call)``, the path
any other model takes. ``ceiling``: ONE model trained on the K sets at once (K x 100 images, one
step an epoch): the same arithmetic as K models with none of their per-model overhead, so
sequential / ceiling bounds what any way of training the K models together can gain on this machine.
Run: `make perf` or `.venv/bin/python -m pytest benchmarks/perf/test_eval_modes.py`.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from harness.evaluate import train_model
from harness.specs import DistilledSet
from harness.trial import Recipe
from harness.vectorised import train_together

CPU = torch.device("cpu")
K = 5
CASES = {"lenet": 20, "mlp": 20, "convnet": 2}  # arch -> epochs per round


def models_and_set(arch: str):
    from harness_vision import archs

    torch.manual_seed(0)
    models = [getattr(archs, f"build_{arch}")((1, 28, 28), 10) for _ in range(K)]
    g = torch.Generator().manual_seed(0)
    dset = DistilledSet(torch.randn(100, 1, 28, 28, generator=g), F.one_hot(torch.arange(100) % 10, 10).float())
    return models, dset


@pytest.mark.parametrize("mode", ["sequential", "vectorised", "vmap", "ceiling"])
@pytest.mark.parametrize("arch", list(CASES))
def test_train_k_models(benchmark, arch, mode):
    models, dset = models_and_set(arch)
    recipe = Recipe(arch=arch, epochs=CASES[arch], models=K)
    benchmark.group = f"eval-{arch}"
    benchmark.extra_info.update(models=K, epochs=CASES[arch], images=100)

    def sequential():
        for k, m in enumerate(models):
            train_model(m, dset, recipe, torch.Generator().manual_seed(k), CPU)

    def vectorised(batching="auto"):
        train_together(models, dset, recipe, [torch.Generator().manual_seed(k) for k in range(K)], CPU,
                       batching=batching)

    big = DistilledSet(dset.x.repeat(K, 1, 1, 1), dset.y.repeat(K, 1))
    wide = Recipe(arch=arch, epochs=CASES[arch], models=1, batch_size=K * recipe.batch_size)

    def ceiling():
        train_model(models[0], big, wide, torch.Generator().manual_seed(0), CPU)

    run = {"sequential": sequential, "vectorised": vectorised, "vmap": lambda: vectorised("vmap"),
           "ceiling": ceiling}[mode]
    benchmark.pedantic(run, rounds=3, iterations=1, warmup_rounds=1)
