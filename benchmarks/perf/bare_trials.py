"""The bare trial function (no driver, no MLflow) over some of a grid's trials, in a process of its
own: what ``test_executors.py`` runs two of at once to measure what two processes can gain on this
machine at all (the ceiling for any executor's speed-up)."""

from __future__ import annotations

import shutil
from pathlib import Path


def run_trials(doc: dict, indices: list[int], data_dir: str, threads: int) -> None:
    """Build the grid ``doc`` here and run its trials ``indices`` with ``threads`` torch threads."""
    import torch

    from harness.grid import build_grid
    from harness.plan import prepare
    from harness.plugins import load_plugins

    torch.set_num_threads(threads)
    plugins = load_plugins()
    run_plan(prepare(build_grid(doc, plugins), plugins, Path(data_dir), "cpu"), indices)


def run_plan(plan, indices=None) -> None:
    """Run the prepared plan's trials (``indices``, default all) with the bare trial function."""
    from harness.runner import TrialContext, run_trial

    ctx = TrialContext(plan.data, plan.device)
    for i in range(len(plan.trials)) if indices is None else indices:
        result = run_trial(plan.trials[i], ctx)
        assert result.passed, result.error
        shutil.rmtree(result.artifacts_dir, ignore_errors=True)
