"""``harness eval``: evaluate distilled sets made elsewhere under the grid's protocol.

A set made by another tool, a paper's release converted to safetensors, or an earlier run's
``distilled.safetensors`` artifact is read by the ``file`` distiller (registered by the core): its
"distillation" loads the file and checks it is the one validated (same SHA-256). So each set becomes
an ordinary trial: the same evaluation recipes, seeds, random-subset baseline at the set's budget,
MLflow runs beside the distilled ones, reports and resume. The file format is docs/distilled-set-format.md.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigError, TrialError
from .specs import Capabilities, Distiller

FILE_DISTILLER = "file"
RECIPE_KEYS = {"name", "seeds", "device", "trial_timeout", "checkpoint_every", "eval_mode", "autocast", "compile",
               "eval"}  # what a --grid file may set for `harness eval` (no [[grid]] tables: the sets are given)


class FromFile(Distiller):
    """A distilled set made elsewhere, read from a safetensors file (harness eval)."""

    name = FILE_DISTILLER
    capabilities = Capabilities(learns_inputs=True, learns_labels=True, learns_lr=True, fewer_than_classes=True,
                                known_init=True)

    @dataclass(frozen=True)
    class Config:
        path: str = ""
        """The safetensors file (docs/distilled-set-format.md)."""
        sha256: str = ""
        """Its content hash when it was validated: part of the trial key, so a changed file is a new trial."""

    def distill(self, task: Any) -> Any:
        cfg = task.config
        task.expect_steps(1)
        if sha256(cfg.path) != cfg.sha256:
            raise TrialError(f"{cfg.path} changed since it was validated; run harness eval again")
        dset = read_set(cfg.path, task.x.shape[1:], task.num_classes)
        task.log(0, examples=dset.n)
        return dset


def sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_set(path: str | Path, input_shape: Any, num_classes: int) -> Any:
    """The set in ``path``, checked against the dataset (one-line :class:`ConfigError` otherwise).
    ``y`` may be [n, C] (soft or one-hot labels) or [n] class indices (made one-hot here)."""
    import torch

    from .specs import DistilledSet

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such file")
    try:
        dset = DistilledSet.load(path)
    except KeyError as exc:
        raise ConfigError(f"{path}: no tensor {exc}; a distilled set needs 'x' and 'y' "
                          f"(docs/distilled-set-format.md)") from None
    except json.JSONDecodeError:
        raise ConfigError(f"{path}: its 'meta' metadata is not JSON (docs/distilled-set-format.md)") from None
    except Exception as exc:  # safetensors' own errors: not a safetensors file, truncated, ...
        raise ConfigError(f"{path}: not a readable safetensors file ({type(exc).__name__}: "
                          f"{(str(exc).strip().splitlines() or [''])[0]})") from None
    shape = tuple(int(s) for s in input_shape)
    if tuple(dset.x.shape[1:]) != shape:
        raise ConfigError(f"{path}: x has shape {list(dset.x.shape)}, but the dataset's inputs are {list(shape)}: "
                          f"expected [n, {', '.join(map(str, shape))}]")
    if dset.y.dim() == 1:
        if dset.y.dtype.is_floating_point or dset.y.numel() and not 0 <= int(dset.y.min()) <= int(dset.y.max()) < num_classes:
            raise ConfigError(f"{path}: y as class indices must be integers in 0..{num_classes - 1}")
        dset.y = torch.nn.functional.one_hot(dset.y.long(), num_classes).float()
    if dset.y.shape != (dset.n, num_classes):
        raise ConfigError(f"{path}: y has shape {list(dset.y.shape)}; expected [{dset.n}, {num_classes}] "
                          f"(the dataset has {num_classes} classes) or [{dset.n}] class indices")
    if dset.n == 0:
        raise ConfigError(f"{path}: the set is empty")
    for label, t in (("x", dset.x), ("y", dset.y), ("lrs", dset.lrs)):
        if t is not None and not bool(torch.isfinite(t.float()).all()):
            raise ConfigError(f"{path}: {label} contains NaN or inf")
    dset.x, dset.y = dset.x.float(), dset.y.float()
    return dset


def budget_of(dset: Any, num_classes: int) -> tuple[str, int]:
    """("ipc", k) when the set has k examples of every class by its labels' argmax, else ("n", n)."""
    import torch

    counts = torch.bincount(dset.y.argmax(1), minlength=num_classes)
    if bool((counts == counts[0]).all()) and int(counts[0]) > 0:
        return "ipc", int(counts[0])
    return "n", dset.n


def eval_grid(paths: list[str], dataset: str, arch: str, plugins: Any, seeds: list[int] | None = None,
              recipes_file: str | None = None, experiment: str | None = None) -> Any:
    """The grid that evaluates each file as a ``file`` trial; every check before any compute."""
    from .grid import build_grid, read_grid_file

    doc: dict[str, Any] = {}
    if recipes_file:
        doc = read_grid_file(recipes_file)
        extra = sorted(set(doc) - RECIPE_KEYS)
        if extra:
            raise ConfigError(f"{recipes_file}: harness eval takes only {', '.join(sorted(RECIPE_KEYS))} from a "
                              f"--grid file, not {', '.join(extra)} (the sets to evaluate are the files given)")
    spec = plugins.datasets.get(dataset)
    plugins.architectures.get(arch)
    tables, sets = [], {}
    for path in paths:
        dset = read_set(path, spec.input_shape, spec.num_classes)
        key, budget = budget_of(dset, spec.num_classes)
        resolved = str(Path(path).resolve())
        sets[resolved] = dset
        tables.append({"distiller": FILE_DISTILLER, "dataset": dataset, "arch": arch, key: budget,
                       "distillers": {FILE_DISTILLER: {"path": resolved, "sha256": sha256(path)}}})
    doc["grid"] = tables
    doc["name"] = experiment or doc.get("name") or "eval"
    if seeds is not None:
        doc["seeds"] = seeds
    grid = build_grid(doc, plugins, source=recipes_file or "harness eval")
    for trial in grid.trials:
        path = dict(trial.config)["path"]
        for recipe in trial.recipes:
            if recipe.optimizer == "distilled" and sets[path].lrs is None:
                raise ConfigError(f"{path}: the 'distilled' recipe replays learned step sizes, and this set has "
                                  f"no 'lrs' tensor; drop it from [eval] optimizers")
            if recipe.init == "known" and sets[path].init_state is None:
                raise ConfigError(f"{path}: known-init evaluation needs the init the set was distilled for "
                                  f"('init.*' tensors), and this set has none; use init = \"random\"")
    return grid
