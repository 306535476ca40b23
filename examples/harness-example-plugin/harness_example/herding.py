"""``example-herding``: herding selection of real examples per class (Welling 2009; iCaRL 2017).

Herding (Welling, "Herding dynamical weights to learn", ICML 2009) with a linear kernel, in the
greedy form iCaRL uses to build its exemplar sets (Rebuffi et al., "iCaRL: Incremental Classifier
and Representation Learning", CVPR 2017, Algorithm 4). For each class ``c`` with examples
``phi_1..phi_m`` (vectors in the chosen space) and class mean ``mu = mean_i phi_i``::

    for k = 1..K:   p_k = argmin_{i not yet chosen} || mu - (phi_i + sum_{j<k} p_j) / k ||

i.e. each step adds the example that brings the running mean of the chosen set closest to the
class mean. The chosen examples are returned unchanged (real inputs) with one-hot labels: the
method learns neither inputs nor labels. It needs no randomness: the selection is a pure function
of the data (and, in the "features" space, of the seeded random network from ``task.make_model()``);
ties go to the lowest index.

Budget: ``task.ipc`` examples per class, or, for an ``n = [...]`` grid, ``task.n`` spread evenly over
the classes with the remainder given to random classes (the same rule as the random baseline).
"""

from __future__ import annotations

from dataclasses import dataclass

from harness import Capabilities, Distiller, DistilledSet

SPACES = ("input", "features")


class ExampleHerding(Distiller):
    """Herding (Welling 2009, as in iCaRL): per class, greedily match the class mean with real examples."""

    name = "example-herding"
    # Honest capabilities: real examples (no learned inputs), one-hot labels (no learned labels),
    # no step sizes, no cross-dataset base pool. n < num_classes works (some classes get none),
    # exactly as for the random baseline.
    capabilities = Capabilities(fewer_than_classes=True)

    @dataclass
    class Config:
        space: str = "input"
        """Where means are matched: "input" (the raw input tensors, flattened) or "features" (the
        penultimate activations of a randomly initialised ``task.make_model()`` network, read with
        :class:`harness.Features`; the architecture must declare ``features=True``)."""

        normalize: bool = False
        """L2-normalise every example's vector before herding (iCaRL normalises its features)."""

        batch_size: int = 1024
        """Examples per forward pass when computing "features" (memory only; no effect on the result)."""

        def __post_init__(self):
            if self.space not in SPACES:
                raise ValueError(f"space must be one of {', '.join(repr(s) for s in SPACES)}, got {self.space!r}")
            if not isinstance(self.batch_size, int) or self.batch_size < 1:
                raise ValueError(f"batch_size must be a positive int, got {self.batch_size!r}")

    @classmethod
    def check_trial(cls, config, spec) -> None:
        """Refuse "features" space on an architecture without declared penultimate features, before
        any compute (the harness calls this from ``validate`` and ``bench``)."""
        super().check_trial(config, spec)
        if config.space == "features" and not spec.arch.features:
            raise ValueError(f"space = 'features' needs an architecture that declares penultimate features; "
                             f"'{spec.arch.name}' does not (use space = 'input', or such an architecture)")

    def distill(self, task) -> DistilledSet:
        import torch
        import torch.nn.functional as F

        from harness import class_counts_per_budget

        cfg = task.config
        counts = class_counts_per_budget(task.num_classes, task.ipc, task.n, task.generator)
        vectors = self.embed(task, cfg).to("cpu", torch.float64)  # selection on CPU: same on every device
        if cfg.normalize:
            vectors = F.normalize(vectors, dim=1)
        labels = task.y.cpu()
        task.expect_steps(task.num_classes)
        picked = []
        for c, k in enumerate(counts):
            members = (labels == c).nonzero().flatten()
            if k > len(members):
                raise ValueError(f"class {c} has {len(members)} examples, fewer than the {k} requested")
            chosen, gap = herd(vectors[members], k)
            picked.append(members[chosen])
            task.log(c, mean_gap=gap, selected=float(k))  # one step per class
        index = torch.cat(picked)
        return DistilledSet(
            x=task.x[index.to(task.x.device)].clone(),
            y=F.one_hot(task.y[index.to(task.y.device)], task.num_classes).float(),
            meta={"source": "herding", "space": cfg.space, "normalize": cfg.normalize,
                  "indices": index.tolist() if len(index) <= 1000 else None},
        )

    @staticmethod
    def embed(task, cfg):
        """The vectors herding works on: flattened inputs, or random-network features."""
        import torch

        from harness import Features

        if cfg.space == "input":
            return task.x.flatten(1)
        features = Features(task.make_model().eval())  # penultimate activations
        with torch.no_grad():
            return torch.cat([features(task.x[i : i + cfg.batch_size])
                              for i in range(0, len(task.x), cfg.batch_size)])


def herd(vectors, k: int):
    """Greedy herding of ``k`` rows of ``vectors`` [m, d] without replacement.

    Returns ``(indices, gap)``: the chosen row indices in selection order, and the final distance
    ``||mean(vectors) - mean(vectors[indices])||`` (0.0 when ``k == 0``).
    """
    import torch

    m = len(vectors)
    mu = vectors.mean(0)
    running = torch.zeros_like(mu)
    available = torch.ones(m, dtype=torch.bool)
    chosen: list[int] = []
    for step in range(1, k + 1):
        dist = (mu - (running + vectors) / step).pow(2).sum(1)
        dist[~available] = float("inf")
        i = int(torch.argmin(dist))  # the first minimum: deterministic tie-breaking
        chosen.append(i)
        available[i] = False
        running += vectors[i]
    gap = float((mu - running / k).norm()) if k else 0.0
    return torch.tensor(chosen, dtype=torch.long), gap
