"""``harness bench``: validate, prepare data, run the trials through an executor, log, summarise."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import HarnessError
from .grid import Grid


@dataclass
class BenchOutcome:
    experiment: str
    passed: int
    failed: int
    skipped: int
    board: Any
    parent_run_id: str | None
    tracking_uri: str

    @property
    def ok(self) -> bool:
        return self.failed == 0


def run_bench(grid: Grid, plugins: Any, *, tracking_uri: str | None = None, data_dir: Path | None = None,
              device: str | None = None, resume: bool = True, console: Any = None) -> BenchOutcome:
    """Run every trial of ``grid`` not already finished in its MLflow experiment."""
    import torch
    from rich.console import Console

    from . import __version__
    from .data import device_name
    from .plan import prepare
    from .progress import BenchProgress
    from .report import leaderboard, runs_frame, to_markdown
    from .runner import TrialContext, run_trial
    from .tracking import TRIAL_KEY, Tracker

    console = console or Console(stderr=False)
    plan = prepare(grid, plugins, data_dir, device)  # every check that needs data, before compute
    data, dev = plan.data, plan.device

    tracker = Tracker(tracking_uri)
    exp_id = tracker.experiment_id(grid.name)
    done = tracker.finished_keys(exp_id) if resume else set()
    todo = [b for b in plan.trials if b.trial.key not in done]
    skipped = len(grid.trials) - len(todo)
    console.print(f"grid '{grid.name}': {len(grid.trials)} trials, {skipped} already finished, "
                  f"{len(todo)} to run on {device_name(dev)}; MLflow {tracker.uri}", highlight=False)

    parent = tracker.start_bench(
        exp_id, run_name=f"bench/{grid.name}",
        params={"grid": grid.source, "trials": len(grid.trials), "seeds": grid.seeds, "device": str(dev),
                "executor": grid.executor},
        tags={"harness_version": __version__, "torch_version": torch.__version__, "device": device_name(dev),
              "command": " ".join(sys.argv)},
    )
    cfg_fields = sorted({k for t in grid.trials for k, _ in t.config})
    passed = failed = 0
    status = "FAILED"
    try:
        executor = plugins.executors.get(grid.executor)()
        with BenchProgress(console, len(todo), skipped) as progress:
            ctx = TrialContext(data, dev, progress)
            for result in executor.run(todo, lambda bound: run_trial(bound, ctx)):
                tracker.log_trial(exp_id, parent, result, cfg_fields)
                passed += result.passed
                failed += not result.passed
        status = "FINISHED" if failed == 0 else "FAILED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        board, markdown = None, ""
        try:
            frame = runs_frame(tracker, grid.name)
            keys = {t.key for t in grid.trials}
            if len(frame):
                frame = frame[frame[TRIAL_KEY].isin(keys)]
            board = leaderboard(frame) if len(frame) else None
            if board is not None:
                markdown = to_markdown(board, f"Leaderboard: {grid.name}", f"harness report --experiment {grid.name}")
        except HarnessError:
            pass
        tracker.end_bench(parent, board, markdown, status,
                          {"trials_passed": passed, "trials_failed": failed, "trials_skipped": skipped})
    return BenchOutcome(grid.name, passed, failed, skipped, board, parent, tracker.uri)

