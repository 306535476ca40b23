"""harness-example-plugin: a template third-party plugin for distill-harness.

Modules: ``plugin`` (the entry point: hook implementations only), ``datasets`` (``example-blobs``),
``archs`` (``example-linear``) and ``herding`` (the ``example-herding`` distiller).
Nothing here imports torch at import time; torch is imported inside the functions that need it.
"""

__version__ = "0.1.0"
