"""The default executor: trials run one after another in the driver process. This module is the
core's executor plugin: it registers ``inline``, ``process`` (:mod:`harness.executors.process`) and
``ray`` (:mod:`harness.executors.ray_executor`; Ray itself is imported only when a grid uses it)."""

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
    from .ray_executor import RayExecutor

    register(InlineExecutor)
    register(ProcessExecutor)
    register(RayExecutor)
