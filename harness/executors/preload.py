"""What the process executor's fork server imports once (:func:`harness.executors.process.start_method`):
torch and the harness modules every worker needs, so a worker forked from the server starts without
importing them again. Nothing here initialises CUDA (each worker does, after choosing its GPU)."""

import gc

import torch  # noqa: F401

from .. import data, plan, plugins, runner  # noqa: F401

# the workers' garbage collections skip what the server imported: walking it would copy its pages
gc.freeze()
