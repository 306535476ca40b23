"""The default executor: trials run one after another in the driver process. This module is the
core's executor plugin: it registers ``inline`` and ``process`` (:mod:`harness.executors.process`)."""

from __future__ import annotations

from typing import Callable, Iterator, Sequence

from ..hookspecs import hookimpl


class InlineExecutor:
    """Run trials sequentially in this process (simplest, and fastest for small grids)."""

    name = "inline"

    def run(self, trials: Sequence, run_trial: Callable) -> Iterator:
        for trial in trials:
            yield run_trial(trial)


@hookimpl
def register_executors(register):
    from .process import ProcessExecutor

    register(InlineExecutor)
    register(ProcessExecutor)
