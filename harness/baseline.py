"""The random real subset: the baseline every grid row is compared against (and the `random`
distiller's algorithm, shared so both draw subsets the same way)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .specs import DistilledSet


def class_counts_per_budget(num_classes: int, ipc: int | None, n: int, generator: torch.Generator) -> list[int]:
    """How many examples each class gets: ``ipc`` each, or ``n`` spread evenly (extras at random)."""
    if ipc is not None:
        return [ipc] * num_classes
    counts = [n // num_classes] * num_classes
    for c in torch.randperm(num_classes, generator=generator)[: n % num_classes].tolist():
        counts[c] += 1
    return counts


def random_subset(x: torch.Tensor, y: torch.Tensor, num_classes: int, ipc: int | None, n: int,
                  generator: torch.Generator) -> DistilledSet:
    """A class-balanced random subset of real examples with one-hot labels."""
    counts = class_counts_per_budget(num_classes, ipc, n, generator)
    y_cpu = y.cpu()
    picked = []
    for c, k in enumerate(counts):
        if k == 0:
            continue
        idx = (y_cpu == c).nonzero().flatten()
        if len(idx) < k:
            raise ValueError(f"class {c} has {len(idx)} examples, fewer than the {k} requested")
        picked.append(idx[torch.randperm(len(idx), generator=generator)[:k]])
    index = torch.cat(picked).to(x.device)
    return DistilledSet(
        x=x[index].clone(),
        y=F.one_hot(y[index], num_classes).float(),
        meta={"source": "random real subset", "indices": index.tolist() if len(index) <= 1000 else None},
    )
