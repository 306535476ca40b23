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


def class_balanced_indices(y: torch.Tensor, classes: list[int], counts: list[int], generator: torch.Generator,
                           what: str = "examples") -> torch.Tensor:
    """Rows of ``y`` (CPU long tensor): for each class in ``classes`` (in that order), the first
    ``count`` of a random permutation of that class's rows. The one class-balanced draw of the
    harness: the random baseline, the ``random`` distiller and LD's base examples all use it, so for
    the same generator state they pick the same rows."""
    picked = []
    for c, k in zip(classes, counts):
        if k == 0:
            continue
        rows = (y == c).nonzero().flatten()
        if len(rows) < k:
            raise ValueError(f"class {c} has {len(rows)} examples, fewer than the {k} {what} requested")
        picked.append(rows[torch.randperm(len(rows), generator=generator)[:k]])
    return torch.cat(picked) if picked else torch.empty(0, dtype=torch.long)


def random_subset(x: torch.Tensor, y: torch.Tensor, num_classes: int, ipc: int | None, n: int,
                  generator: torch.Generator) -> DistilledSet:
    """A class-balanced random subset of real examples with one-hot labels."""
    counts = class_counts_per_budget(num_classes, ipc, n, generator)
    index = class_balanced_indices(y.cpu(), list(range(num_classes)), counts, generator).to(x.device)
    return DistilledSet(
        x=x[index].clone(),
        y=F.one_hot(y[index], num_classes).float(),
        meta={"source": "random real subset", "indices": index.tolist() if len(index) <= 1000 else None},
    )


def spread_over_steps(subset: DistilledSet, steps: int) -> DistilledSet:
    """Reorder a class-grouped subset so each of its ``steps`` consecutive batches (the layout the
    "distilled" recipe replays, :func:`harness.evaluate._replay_learned_steps`) holds an even share
    of every class, as the DD code's ``random_train`` baseline builds its steps."""
    if steps <= 1:
        return subset
    labels = subset.y.argmax(1)
    chunk = torch.empty_like(labels)
    for c in labels.unique():
        rows = (labels == c).nonzero().flatten()
        chunk[rows] = torch.arange(len(rows)) * steps // len(rows)
    order = torch.sort(chunk, stable=True).indices
    return DistilledSet(subset.x[order], subset.y[order], meta=dict(subset.meta))
