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
    from .data import DataCache, check_budgets, default_data_dir, device_name, resolve_device
    from .progress import BenchProgress
    from .report import leaderboard, runs_frame, to_markdown
    from .runner import TrialContext, run_trial
    from .tracking import Tracker

    console = console or Console(stderr=False)
    dev = resolve_device(device or grid.device)
    data = DataCache(plugins, Path(data_dir) if data_dir else default_data_dir(), dev)
    for trial in grid.trials:  # every dataset is loaded (or found missing) before any compute
        for name in {trial.dataset, trial.base_dataset}:
            data.get(name, "train")
        data.get(trial.dataset, "test")
    check_budgets(grid.trials, plugins, data)
    check_architectures(grid.trials, plugins)

    tracker = Tracker(tracking_uri)
    exp_id = tracker.experiment_id(grid.name)
    done = tracker.finished_keys(exp_id) if resume else set()
    todo = [t for t in grid.trials if t.key not in done]
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
            ctx = TrialContext(plugins, data, dev, progress)
            for result in executor.run(todo, lambda t: run_trial(t, ctx)):
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
                frame = frame[frame["trial_key"].isin(keys)]
            board = leaderboard(frame) if len(frame) else None
            if board is not None:
                markdown = to_markdown(board, f"Leaderboard: {grid.name}", f"harness report --experiment {grid.name}")
        except HarnessError:
            pass
        tracker.end_bench(parent, board, markdown, status,
                          {"trials_passed": passed, "trials_failed": failed, "trials_skipped": skipped})
    return BenchOutcome(grid.name, passed, failed, skipped, board, parent, tracker.uri)


def check_architectures(trials: list, plugins: Any) -> None:
    """Before compute: build every (architecture, dataset) pair once and run a tiny forward pass,
    so an architecture that cannot take a dataset's input size fails as one clear line."""
    import torch

    from .errors import ConfigError

    pairs = {(a, t.dataset) for t in trials for a in {t.arch, *(r.arch for r in t.recipes)}}
    for arch, dataset in sorted(pairs):
        spec = plugins.datasets.get(dataset)
        try:
            model = plugins.architectures.get(arch).build(spec.input_shape, spec.num_classes)
            with torch.no_grad():
                out = model.eval()(torch.zeros(2, *spec.input_shape))
            if tuple(out.shape) != (2, spec.num_classes):
                raise ValueError(f"it outputs shape {tuple(out.shape)}, expected (batch, {spec.num_classes})")
        except Exception as exc:
            raise ConfigError(f"architecture '{arch}' cannot take dataset '{dataset}' "
                              f"({'x'.join(map(str, spec.input_shape))}): {exc}; pick another architecture") from None
