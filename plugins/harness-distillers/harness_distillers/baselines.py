"""The two baselines every grid has: a random real subset and the full training set."""

from __future__ import annotations

from dataclasses import dataclass

from harness import Capabilities, Distiller, DistilledSet


class RandomSubset(Distiller):
    """Class-balanced random subset of real training examples with hard labels."""

    name = "random"
    capabilities = Capabilities(fewer_than_classes=True)

    @dataclass(frozen=True)
    class Config:
        pass  # no hyperparameters: ipc (or n) and the seed define the subset

    def distill(self, task) -> DistilledSet:
        from harness import random_subset

        task.expect_steps(1)
        dset = random_subset(task.x, task.y, task.num_classes, task.ipc, task.n, task.generator)
        task.log(0, examples=dset.n)
        return dset


class Full(Distiller):
    """The whole training set with hard labels: the upper reference (ignores ipc/n)."""

    name = "full"
    capabilities = Capabilities(ignores_budget=True)

    @dataclass(frozen=True)
    class Config:
        pass

    def distill(self, task) -> DistilledSet:
        import torch.nn.functional as F

        task.expect_steps(1)
        task.log(0, examples=len(task.x))
        return DistilledSet(task.x, F.one_hot(task.y, task.num_classes).float(), meta={"source": "full training set"})
