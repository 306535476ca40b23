"""Penultimate features: what a network's classifier sees (DM's embedding, LD-RR's backbone, herding).

An architecture declares ``ArchitectureSpec(features=True)`` when its model ends in a linear
classifier: the last ``nn.Linear`` in module order takes the feature vector and its output is the
model's output. :func:`check_features` proves a declaration on a built model (the plan runs it for
every declared architecture a grid uses), and :class:`Features` reads the features of any such model
without knowing its structure.
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch import nn


class _Reached(Exception):
    """Raised by the pre-hook once the classifier's input is captured: nothing after it runs."""


class Features:
    """The penultimate features of ``model``: the input of its classifier (its last ``nn.Linear``),
    flattened to ``[batch, dim]``. A view: it shares the model's modules and parameters.

    ``features(x)`` runs the model up to its classifier (the classifier itself does not run);
    ``parameters()`` are the model's parameters without the classifier's (the backbone).
    """

    def __init__(self, model: nn.Module):
        linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
        if not linears:
            raise TypeError(f"{type(model).__name__} has no nn.Linear classifier, so it has no penultimate "
                            f"features; use an architecture whose spec declares features=True")
        self.model, self.classifier = model, linears[-1]
        self.dim = int(self.classifier.in_features)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        seen: list[torch.Tensor] = []

        def capture(_module: nn.Module, args: tuple) -> None:
            seen.append(args[0])
            raise _Reached

        handle = self.classifier.register_forward_pre_hook(capture)
        try:
            self.model(x)
        except _Reached:
            pass
        finally:
            handle.remove()
        if not seen:
            raise TypeError(f"{type(self.model).__name__}'s forward never reached its last nn.Linear")
        return seen[0].flatten(1)

    def parameters(self) -> Iterator[nn.Parameter]:
        own = {id(p) for p in self.classifier.parameters()}
        return (p for p in self.model.parameters() if id(p) not in own)

    def train(self, mode: bool = True) -> "Features":
        self.model.train(mode)
        return self

    def eval(self) -> "Features":
        return self.train(False)


def check_features(model: nn.Module, example: torch.Tensor) -> None:
    """Raise ValueError unless ``model``'s output on ``example`` is its last ``nn.Linear`` applied to
    :class:`Features` of it (what ``ArchitectureSpec(features=True)`` declares)."""
    try:
        features = Features(model)
    except TypeError as exc:
        raise ValueError(str(exc)) from None
    model.eval()
    with torch.no_grad():
        out = model(example)
        via = features.classifier(features(example))
    if out.shape != via.shape or not torch.allclose(out, via, rtol=1e-5, atol=1e-6):
        raise ValueError("its output is not its last nn.Linear applied to the features before it "
                         "(declare features=False, or make the classifier the model's final layer)")
