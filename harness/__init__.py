"""distill-harness: a plugin-based benchmarking harness for dataset distillation.

The public plugin API lives here; see ``harness.hookspecs`` for the hooks.
"""

from .errors import ConfigError, DatasetUnavailableError, HarnessError
from .hookspecs import hookimpl
from .specs import ArchitectureSpec, Capabilities, DatasetSpec, DistilledSet, Distiller, DistillTask

__version__ = "0.1.0"

__all__ = [
    "ArchitectureSpec",
    "Capabilities",
    "ConfigError",
    "DatasetSpec",
    "DatasetUnavailableError",
    "DistilledSet",
    "DistillTask",
    "Distiller",
    "HarnessError",
    "hookimpl",
    "__version__",
]
