"""Conformance kit for plugin authors: a tiny dataset, a tiny architecture, and ``check_distiller``.

Use it in your plugin's tests::

    from harness.testing import check_distiller
    def test_my_distiller():
        check_distiller(MyDistiller)

Everything here runs on CPU in well under a second per call.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from .specs import (ArchitectureSpec, DatasetSpec, DistilledSet, DistillTask, TrialSpec, capabilities_of,
                    carries_init, check_trial)
from .specs import validate_distiller_class as _static_check

TINY_SHAPE = (1, 4, 4)
TINY_CLASSES = 3


def _tiny_load(split: str, data_dir: Any, per_class: int | None = None):
    """Three well-separated Gaussian blobs on a 1x4x4 "image" (fixed seed per split)."""
    import torch

    per_class = per_class or (30 if split == "train" else 20)
    g = torch.Generator().manual_seed(0 if split == "train" else 1)
    centers = torch.randn(TINY_CLASSES, *TINY_SHAPE, generator=torch.Generator().manual_seed(42)) * 2
    y = torch.arange(TINY_CLASSES).repeat_interleave(per_class)
    x = centers[y] + 0.5 * torch.randn(len(y), *TINY_SHAPE, generator=g)
    return x, y


def tiny_dataset(name: str = "tiny") -> DatasetSpec:
    """A 3-class, 1x4x4 synthetic dataset: 90 train / 60 test examples."""
    return DatasetSpec(name, TINY_CLASSES, TINY_SHAPE, modality="image", load=_tiny_load,
                       description="3 Gaussian blobs on a 1x4x4 grid (tests only)")


def _build_tiny(input_shape, num_classes):
    from torch import nn

    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), 16), nn.ReLU(), nn.Linear(16, num_classes))


def tiny_arch(name: str = "tiny-mlp") -> ArchitectureSpec:
    """A 2-layer MLP with 16 hidden units, for any modality; declares penultimate features."""
    return ArchitectureSpec(name, ("image", "text"), _build_tiny, "16-unit MLP (tests only)", features=True)


def make_task(distiller: type, ipc: int | None = 2, n: int | None = None, seed: int = 0,
              base: bool = False, **config: Any) -> DistillTask:
    """A :class:`DistillTask` on the tiny dataset (CPU), with ``config`` overriding Config fields."""
    return _make_task(distiller, ipc, n, seed, base, **config)[0]


def _make_task(distiller: type, ipc: int | None = 2, n: int | None = None, seed: int = 0,
               base: bool = False, **config: Any) -> tuple[DistillTask, Any]:
    import torch

    from .checkpoint import ModelCounter
    from .init import distill_init, init_model
    from .trial import derive_seed

    cfg = distiller.Config(**config)
    scheme = distill_init(cfg)
    x, y = _tiny_load("train", None)
    if n is None:
        n = ipc * TINY_CLASSES
    else:
        ipc = None
    counter = ModelCounter()

    def make_model():
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(seed, "distill-model", counter.next()))
            return init_model(_build_tiny(TINY_SHAPE, TINY_CLASSES), scheme)

    torch.manual_seed(derive_seed(seed, "global"))
    task = DistillTask(
        x=x, y=y, num_classes=TINY_CLASSES, ipc=ipc, n=n,
        make_model=make_model, config=cfg, device=torch.device("cpu"),
        generator=torch.Generator().manual_seed(derive_seed(seed, "distill")),
        base=_tiny_load("train", None, per_class=10) if base else None, dataset="tiny", seed=seed,
    )
    return task, counter


class _Interrupted(BaseException):
    """The simulated crash of :func:`check_resume`."""


def check_resume(distiller: type, crash_after: int, ipc: int = 2, **config: Any) -> DistilledSet:
    """Assert that ``distiller`` resumes exactly from a mid-trial checkpoint: run it uninterrupted,
    then again with a checkpoint after every step and a crash inside its ``crash_after``-th logged
    step, then resumed from the checkpoint; the two final sets must be identical (CPU). For
    distillers that use ``task.checkpoint`` / ``task.restore``. Returns the set."""
    import tempfile
    from pathlib import Path

    import torch

    from .checkpoint import Checkpoints

    full = distiller().distill(make_task(distiller, ipc=ipc, **config)).detached()
    with tempfile.TemporaryDirectory() as tmp:
        def attached() -> DistillTask:
            task, counter = _make_task(distiller, ipc=ipc, **config)
            Checkpoints(Path(tmp) / "trial", every_seconds=None, every_steps=1).attach(task, counter)
            return task

        task = attached()
        logged: list[int] = []

        def crash(step: int, **metrics: float) -> None:
            logged.append(step)
            if len(logged) == crash_after:
                raise _Interrupted
        task._log = crash
        try:
            distiller().distill(task)
        except _Interrupted:
            pass
        assert len(logged) == crash_after, f"the distiller logged {len(logged)} steps, fewer than crash_after"
        resumed_task = attached()
        assert resumed_task.restore() is not None, "no checkpoint was saved: does distill call task.checkpoint?"
        resumed = distiller().distill(attached()).detached()
    for name in ("x", "y", "lrs"):
        a, b = getattr(full, name), getattr(resumed, name)
        assert (a is None) == (b is None) and (a is None or torch.equal(a, b)), \
            f"the resumed run's {name} differs from the uninterrupted run's"
    assert resumed.meta == full.meta, "the resumed run's meta differs from the uninterrupted run's"
    return resumed


def check_distiller(distiller: type, ipc: int = 2, **config: Any) -> DistilledSet:
    """Run ``distiller`` on the tiny task and assert it honours the contract.

    Checks: the class shape (name, Config with defaults, capabilities), that ``check_trial``
    accepts the tiny trial, a well-formed and finite
    DistilledSet of the right size (unless the distiller ignores the budget), labels as
    distributions when labels are not learned, CPU determinism for a seed, a safetensors round
    trip, and that the protocol can train a model on the result. Returns the distilled set.
    """
    import tempfile
    from pathlib import Path

    import torch

    from .evaluate import evaluate
    from .trial import Recipe

    _static_check(distiller)
    caps = capabilities_of(distiller)
    assert dataclasses.is_dataclass(distiller.Config())
    n = None if caps.ignores_budget else ipc * TINY_CLASSES
    spec = tiny_dataset()
    try:  # what `harness validate` asks the method before any compute
        check_trial(distiller, distiller.Config(**config),
                    TrialSpec(spec, tiny_arch(), n, None if n is None else ipc, spec))
    except ValueError as exc:
        raise AssertionError(f"check_trial refused the tiny {ipc}-per-class trial: {exc}") from None
    logged: list[tuple[int, dict]] = []
    task = make_task(distiller, ipc=ipc, **config)
    task._log = lambda step, **m: logged.append((step, m))
    out = distiller().distill(task)
    assert isinstance(out, DistilledSet), f"distill() returned {type(out).__name__}, not a DistilledSet"
    out = out.detached()
    out.check(TINY_SHAPE, TINY_CLASSES)
    if not caps.ignores_budget:
        assert out.n == ipc * TINY_CLASSES, f"expected {ipc * TINY_CLASSES} examples for ipc={ipc}, got {out.n}"
    if not caps.learns_labels:
        assert bool((out.y >= 0).all()) and torch.allclose(out.y.sum(1), torch.ones(out.n)), \
            "labels that are not learned must be distributions (non-negative rows summing to 1)"
    if caps.learns_lr:
        assert out.lrs is not None, "capabilities.learns_lr is set but the set carries no lrs"
    if carries_init(distiller, task.config):
        assert out.init_state, "this config distils for a known init, but the set carries no init_state"

    again = distiller().distill(make_task(distiller, ipc=ipc, **config)).detached()
    same = torch.equal(out.x, again.x) and torch.equal(out.y, again.y)
    same = same and (out.lrs is None) == (again.lrs is None) and (out.lrs is None or torch.equal(out.lrs, again.lrs))
    state, state2 = out.init_state or {}, again.init_state or {}
    same = same and state.keys() == state2.keys() and all(torch.equal(state[k], state2[k]) for k in state)
    assert same, "not deterministic on CPU for a fixed seed (x, y, lrs or init_state differ)"

    with tempfile.TemporaryDirectory() as tmp:
        loaded = DistilledSet.load(out.save(Path(tmp) / "set.safetensors"))
    assert torch.equal(loaded.x, out.x) and torch.equal(loaded.y, out.y)

    test = _tiny_load("test", None)
    result = evaluate(out, Recipe(arch="tiny-mlp", epochs=5, models=1), lambda: _build_tiny(TINY_SHAPE, TINY_CLASSES),
                      test, seed=0, device=torch.device("cpu"))
    assert 0.0 <= result.mean <= 1.0
    return out
