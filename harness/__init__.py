"""distill-harness: a plugin-based benchmarking harness for dataset distillation.

The public plugin API lives here (and in :mod:`harness.testing`, the conformance kit); see
``harness.hookspecs`` for the hooks. Plugins import only from these two: every other module is the
core's own and may change. Names that need torch are imported on first use, so ``import harness``
(and ``harness --help``) stays fast.
"""

from __future__ import annotations

import importlib
from typing import Any

from .errors import ConfigError, DatasetUnavailableError, HarnessError, TrialError
from .hookspecs import hookimpl
from .init import INIT_SCHEMES, check_init_scheme, init_model
from .specs import (ArchitectureSpec, Capabilities, DataContext, DatasetSpec, DistilledSet, Distiller,
                    DistillerProtocol, DistillTask, LazyDistiller, TrialSpec)

__version__ = "0.1.0"

# public name -> (core module, attribute): imported lazily (they import torch or the plugin layer)
_LAZY = {
    "soft_cross_entropy": ("evaluate", "soft_cross_entropy"),  # the loss every recipe trains with
    "unroll_gd": ("evaluate", "unroll_gd"),  # unrolled GD on a set (SLDD/DD inner loop, "distilled" replay)
    "DSA": ("augment", "DSA"),  # differentiable siamese augmentation (Zhao & Bilen 2021)
    "DSAParams": ("augment", "DSAParams"),
    "DSA_STRATEGY": ("augment", "STRATEGY"),
    "dsa_draw_seed": ("augment", "draw_seed"),
    "random_subset": ("baseline", "random_subset"),  # the class-balanced random real subset
    "class_counts_per_budget": ("baseline", "class_counts_per_budget"),
    "class_balanced_indices": ("baseline", "class_balanced_indices"),
    "default_data_dir": ("data", "default_data_dir"),  # --data-dir / HARNESS_DATA_DIR / the default
    "load_plugins": ("plugins", "load_plugins"),
    "Features": ("features", "Features"),  # penultimate features of an arch declaring features=True  # what the harness sees (for plugin authors' tests)
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(f".{module}", __name__), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'harness' has no attribute {name!r}")


__all__ = [
    "ArchitectureSpec",
    "Capabilities",
    "ConfigError",
    "DataContext",
    "DatasetSpec",
    "DatasetUnavailableError",
    "DistilledSet",
    "DistillTask",
    "Distiller",
    "DistillerProtocol",
    "HarnessError",
    "INIT_SCHEMES",
    "LazyDistiller",
    "TrialError",
    "TrialSpec",
    "check_init_scheme",
    "hookimpl",
    "init_model",
    "__version__",
    *_LAZY,
]
