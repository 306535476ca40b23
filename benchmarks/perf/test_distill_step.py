"""Time of distiller outer steps on the seeds-mnist setting (mnist-subset, LeNet, CPU).

Each round runs ``distill`` from scratch (set-up included) with ``SHORT`` and with ``LONG`` outer
steps (``outer_steps``; ``iterations`` for dm and dc); the report takes the cost of one outer step
as the difference over ``LONG - SHORT`` steps, so set-up (splits, validation, the first model) is
not counted as stepping. dc runs at IPC 1, where the
DC code's loops are (1, 1): one DC iteration at IPC 10 is 10 matching steps and 450 inner epochs. Compare distillers within one run: the machine is shared and noisy.
Run: `make perf` or `.venv/bin/python -m pytest benchmarks/perf/test_distill_step.py`.
"""

from __future__ import annotations

import pytest
import torch

from harness.specs import DistillTask

SHORT, LONG = 1, 4


@pytest.fixture(scope="module")
def mnist():
    from harness_vision.datasets import load_mnist_subset

    return load_mnist_subset("train", None)


def task_for(cls, mnist, ipc, **config):
    from harness_vision.archs import build_lenet

    x, y = mnist
    counter = iter(range(1 << 20))

    def make_model():
        torch.manual_seed(next(counter))
        return build_lenet((1, 28, 28), 10)

    return DistillTask(x=x, y=y, num_classes=10, ipc=ipc, n=ipc * 10, make_model=make_model,
                       config=cls.Config(**config), device=torch.device("cpu"),
                       generator=torch.Generator().manual_seed(0))


def distillers():
    from harness_distillers.dc import DC, DCWithDSA
    from harness_distillers.dd import DD
    from harness_distillers.dm import DM
    from harness_distillers.ld import LD
    from harness_distillers.ld_rr import LDRR
    from harness_distillers.sldd import SLDD

    return [("sldd-n10-steps1", SLDD, 1, "outer_steps", {"steps": 1}), ("dd-n10-steps1", DD, 1, "outer_steps", {"steps": 1}),
            ("ld-ipc10", LD, 10, "outer_steps", {}), ("ld-rr-ipc10", LDRR, 10, "outer_steps", {}),
            ("dm-ipc10", DM, 10, "iterations", {}), ("dc-ipc1", DC, 1, "iterations", {}),
            ("dsa-ipc1", DCWithDSA, 1, "iterations", {})]


@pytest.mark.parametrize("steps", [SHORT, LONG])
@pytest.mark.parametrize("label,cls,ipc,budget,config", distillers(), ids=[d[0] for d in distillers()])
def test_outer_steps(benchmark, mnist, label, cls, ipc, budget, config, steps):
    benchmark.group = "outer-step"
    benchmark.extra_info.update(distiller=label, outer_steps=steps)
    benchmark.pedantic(lambda: cls().distill(task_for(cls, mnist, ipc, **{budget: steps}, **config)),
                       rounds=3, iterations=1, warmup_rounds=1)
