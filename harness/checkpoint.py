"""Mid-trial checkpoints: a long distillation survives a crash, a kill or a power cut.

A distiller that can offers its state after an outer step with ``task.checkpoint(step, state_fn)``
and asks for a saved one with ``task.restore()`` before its loop (see :class:`harness.DistillTask`).
The harness decides when a save is due (every ``checkpoint_every`` seconds, and on demand in tests:
``every_steps``) and adds what it owns: the state of ``task.generator``, of torch's global RNG and
how many models ``task.make_model()`` has built, so a resumed run draws exactly what an
uninterrupted one would: on CPU its final set is the same, bit for bit.

Files: ``<root>/<trial key>/state.safetensors`` (every tensor; no pickle) and ``skeleton.json``
(the nesting, numbers and strings), written to a temporary folder and renamed, so a crash while
saving leaves the previous checkpoint intact. ``root``: ``$HARNESS_CHECKPOINT_DIR``, else
``~/.cache/distill-harness/checkpoints``. When distillation ends, its set and what the run records
of it (seconds, peak memory, curve points) replace the state (``finished.safetensors`` +
``finished.json``), so a trial interrupted while it is evaluated resumes at evaluation instead of
distilling again. A trial's folder is removed when the trial ends (FINISHED or FAILED) and kept when
it is interrupted.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable

CHECKPOINT_ENV = "HARNESS_CHECKPOINT_DIR"
DEFAULT_EVERY_SECONDS = 600.0


def checkpoint_root() -> Path:
    return Path(os.environ.get(CHECKPOINT_ENV) or Path.home() / ".cache" / "distill-harness" / "checkpoints")


class ModelCounter:
    """How many models ``task.make_model()`` has built: the seed of the next one (restorable)."""

    def __init__(self) -> None:
        self.count = 0

    def next(self) -> int:
        self.count += 1
        return self.count - 1


# -- nested state <-> (tensors, JSON skeleton) -----------------------------------------------------
def flatten(tree: Any) -> tuple[dict[str, Any], Any]:
    """Split a nested structure (dicts with str/int keys, lists, tuples, tensors, numbers, strings,
    None) into a flat ``{name: tensor}`` and a JSON-able skeleton that references them."""
    import torch

    tensors: dict[str, Any] = {}

    def walk(node: Any) -> Any:
        if isinstance(node, torch.Tensor):
            name = f"t{len(tensors)}"
            tensors[name] = node.detach().cpu().contiguous()
            return {"__tensor__": name}
        if isinstance(node, dict):
            return {"__dict__": [[k, walk(v)] for k, v in node.items()]}
        if isinstance(node, tuple):
            return {"__tuple__": [walk(v) for v in node]}
        if isinstance(node, list):
            return [walk(v) for v in node]
        if node is None or isinstance(node, (bool, int, float, str)):
            return node
        raise TypeError(f"checkpoint state cannot hold a {type(node).__name__}; use tensors, numbers, "
                        f"strings, lists and dicts")

    return tensors, walk(tree)


def unflatten(tensors: dict[str, Any], skeleton: Any) -> Any:
    if isinstance(skeleton, list):
        return [unflatten(tensors, v) for v in skeleton]
    if isinstance(skeleton, dict):
        if "__tensor__" in skeleton:
            return tensors[skeleton["__tensor__"]]
        if "__tuple__" in skeleton:
            return tuple(unflatten(tensors, v) for v in skeleton["__tuple__"])
        return {k: unflatten(tensors, v) for k, v in skeleton["__dict__"]}
    return skeleton


class Checkpoints:
    """The checkpoints of one trial, in ``folder``."""

    def __init__(self, folder: Path, every_seconds: float | None = DEFAULT_EVERY_SECONDS,
                 every_steps: int | None = None):
        self.folder = Path(folder)
        self.every_seconds, self.every_steps = every_seconds, every_steps
        self._last = time.monotonic()
        self.saved = 0
        self.failures = 0  # saves that failed (the trial went on without them)
        self.earlier_seconds = 0.0  # distillation time of the runs before a restore, up to their checkpoint
        self._started = 0.0  # set by attach(): when this run's distillation started

    def due(self, step: int) -> bool:
        if self.every_steps and step % self.every_steps == 0:
            return True
        return self.every_seconds is not None and time.monotonic() - self._last >= self.every_seconds

    def save(self, step: int, state: dict, harness: dict) -> None:
        from safetensors.torch import save_file

        tensors, skeleton = flatten({"step": step, "state": state, "harness": harness})
        self.folder.parent.mkdir(parents=True, exist_ok=True)
        partial = self.folder.with_name(f".{self.folder.name}.partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir()
        save_file(tensors, str(partial / "state.safetensors"))
        (partial / "skeleton.json").write_text(json.dumps(skeleton), encoding="utf-8")
        old = self.folder.with_name(f".{self.folder.name}.old")
        if self.folder.exists():
            self.folder.rename(old)
        partial.rename(self.folder)
        shutil.rmtree(old, ignore_errors=True)
        self._last = time.monotonic()
        self.saved += 1

    def load(self) -> dict | None:
        """``{"step", "state", "harness"}`` of the last checkpoint, or None."""
        from safetensors.torch import load_file

        if not (self.folder / "skeleton.json").is_file():
            return None
        tensors = load_file(str(self.folder / "state.safetensors"))
        return unflatten(tensors, json.loads((self.folder / "skeleton.json").read_text(encoding="utf-8")))

    def clear(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)

    def save_finished(self, dset: Any, record: dict) -> bool:
        """Keep a finished distillation (its set and ``record``: JSON) until the trial is logged;
        the mid-run state goes (the set supersedes it). Written beside, then renamed: atomic. A save
        that fails (disk full, read-only) only costs the shortcut: False, and the trial goes on."""
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            dset.save(self.folder / ".finished.safetensors.partial")
            (self.folder / ".finished.json.partial").write_text(json.dumps(record), encoding="utf-8")
            (self.folder / ".finished.safetensors.partial").rename(self.folder / "finished.safetensors")
            (self.folder / ".finished.json.partial").rename(self.folder / "finished.json")
            for name in ("state.safetensors", "skeleton.json"):
                (self.folder / name).unlink(missing_ok=True)
        except OSError:
            self.failures += 1
            return False
        return True

    def load_finished(self) -> tuple[Any, dict] | None:
        """``(DistilledSet, record)`` of a finished distillation kept by :meth:`save_finished`, or None."""
        from .specs import DistilledSet

        if not (self.folder / "finished.json").is_file():
            return None
        record = json.loads((self.folder / "finished.json").read_text(encoding="utf-8"))
        return DistilledSet.load(self.folder / "finished.safetensors"), record

    def attach(self, task: Any, counter: ModelCounter) -> None:
        """Wire ``task.checkpoint`` / ``task.restore`` to these checkpoints."""
        import torch

        self._started = time.monotonic()

        def checkpoint(step: int, state_fn: Callable[[], dict]) -> None:
            if self.due(step):
                seconds = self.earlier_seconds + time.monotonic() - self._started
                try:
                    self.save(step, state_fn(), {"generator": task.generator.get_state(),
                                                 "torch_rng": torch.get_rng_state(), "models_built": counter.count,
                                                 "seconds": seconds})
                except OSError:  # a full or read-only disk: the trial goes on, only less resumable
                    self.failures += 1
                    self._last = time.monotonic()

        def restore() -> tuple[int, dict] | None:
            saved = self.load()
            if saved is None:
                return None
            harness = saved["harness"]
            task.generator.set_state(harness["generator"])
            torch.set_rng_state(harness["torch_rng"])
            counter.count = int(harness["models_built"])
            self.earlier_seconds = float(harness.get("seconds", 0.0))  # absent in checkpoints made before it was kept
            return int(saved["step"]), saved["state"]

        task._checkpoint, task._restore = checkpoint, restore
