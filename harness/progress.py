"""Progress for long grids: rich bars on a terminal, plain lines otherwise (logs, CI)."""

from __future__ import annotations

import time
from typing import Any


class BenchProgress:
    """A bar for the grid and one for the current trial (distill steps, then eval models); trials
    running elsewhere, several at once (process and ray executors), get a bar each, moved by the
    curve points they stream (``remote_*``)."""

    PLAIN_EVERY = 30.0  # seconds between plain heartbeat lines (per trial for remote ones)

    def __init__(self, console: Any, total: int, skipped: int = 0):
        self.console, self.total, self.skipped = console, total, skipped
        self.done = 0
        self.rich = console.is_terminal
        self._progress = None
        self._started = 0.0
        self._last_plain = 0.0
        self._remote: dict[str, Any] = {}  # trial label -> its bar (rich) or its last plain line's time

    def __enter__(self) -> "BenchProgress":
        if self.rich:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            self._progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                      TimeElapsedColumn(), TimeRemainingColumn(), console=self.console,
                                      transient=False)
            self._progress.__enter__()
            self._grid = self._progress.add_task("grid", total=self.total)
            self._trial = self._progress.add_task("", total=None, visible=False)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._progress:
            self._progress.__exit__(*exc)

    def _plain(self, text: str) -> None:
        self.console.print(text, highlight=False, soft_wrap=True)

    def trial_started(self, trial: Any) -> None:
        self._started = time.perf_counter()
        if self._progress:
            self._progress.reset(self._trial, total=None, description=f"  {trial.label} distill", visible=True)
        else:
            self._plain(f"[{self.done + 1}/{self.total}] {trial.label}: distilling")

    def expect_steps(self, total: int) -> None:
        if self._progress:
            self._progress.update(self._trial, total=total)

    def step(self, step: int, metrics: dict) -> None:
        if self._progress:
            shown = " ".join(f"{k}={v:.4g}" for k, v in list(metrics.items())[:2])
            desc = self._progress.tasks[self._trial].description.split(" distill")[0]
            self._progress.update(self._trial, completed=step + 1, description=f"{desc} distill {shown}")
        elif time.perf_counter() - self._last_plain > self.PLAIN_EVERY:  # a heartbeat line, not a flood
            self._last_plain = time.perf_counter()
            shown = " ".join(f"{k}={v:.4g}" for k, v in metrics.items())
            self._plain(f"    step {step}: {shown}")

    def evaluating(self, trial: Any, total_models: int) -> None:
        if self._progress:
            self._progress.reset(self._trial, total=total_models, description=f"  {trial.label} eval")
        else:
            self._plain(f"[{self.done + 1}/{self.total}] {trial.label}: evaluating {total_models} models")

    def model_done(self, acc: float) -> None:
        if self._progress:
            self._progress.advance(self._trial)

    def remote_started(self, trial: Any) -> None:
        """A trial started in a worker: its own bar (a line when not on a terminal)."""
        if self._progress:
            self._remote[trial.label] = self._progress.add_task(f"  {trial.label} started", total=None)
        else:
            self._remote[trial.label] = time.perf_counter()
            self._plain(f"{trial.label}: started ({len(self._remote)} running)")  # counters are for completions

    def remote_point(self, trial: Any, step: int, metrics: dict) -> None:
        """A curve point a worker streamed: the trial's bar shows its step and first metrics."""
        if trial.label not in self._remote:
            return
        shown = " ".join(f"{k}={v:.4g}" for k, v in list(metrics.items())[:2])
        if self._progress:
            self._progress.update(self._remote[trial.label], completed=step + 1,
                                  description=f"  {trial.label} step {step} {shown}")
        elif time.perf_counter() - self._remote[trial.label] > self.PLAIN_EVERY:
            self._remote[trial.label] = time.perf_counter()
            self._plain(f"    {trial.label} step {step}: {shown}")

    def trial_done(self, trial: Any, result: Any, seconds: float | None = None) -> None:
        """``seconds``: the trial's wall time, when trials run at once (default: since trial_started)."""
        self.done += 1
        secs = time.perf_counter() - self._started if seconds is None else seconds
        if result.passed:
            m = result.metrics
            gain = f" gain {m['gain']:+.2f}" if "gain" in m else ""  # percentage points
            line = f"[{self.done}/{self.total}] {trial.label}: acc {m['acc_mean']:.2f}%{gain} ({secs:.1f}s)"
        else:
            line = f"[{self.done}/{self.total}] {trial.label}: FAILED {result.error}"
        remote = self._remote.pop(trial.label, None)
        if self._progress:
            self._progress.console.print(line, highlight=False, soft_wrap=True)
            if remote is not None:
                self._progress.remove_task(remote)
            else:
                self._progress.update(self._trial, visible=False)
            self._progress.advance(self._grid)
        else:
            self._plain(line)
