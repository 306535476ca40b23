"""The default executor: trials run one after another in the driver process (registered by
:mod:`harness.core_plugin`)."""

from __future__ import annotations

from typing import Callable, Iterator, Sequence


class InlineExecutor:
    """Run trials sequentially in this process (simplest, and fastest for small grids)."""

    name = "inline"

    def run(self, trials: Sequence, run_trial: Callable) -> Iterator:
        for trial in trials:
            yield run_trial(trial)
