"""``harness bench``: validate, prepare data, run the trials through an executor, log, summarise."""

from __future__ import annotations

import copy
import inspect
import shutil
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .errors import ConfigError, HarnessError, one_line
from .grid import Grid
from .lifecycle import env_seconds


@dataclass
class BenchOutcome:
    experiment: str
    passed: int
    failed: int
    skipped: int
    board: Any
    parent_run_id: str | None
    tracking_uri: str
    experiment_id: str = ""

    @property
    def ok(self) -> bool:
        return self.failed == 0


STREAM_ENV = "HARNESS_STREAM_SECONDS"


class Driver:
    """The driver side of running trials: each trial's run is created when the trial starts
    (RUNNING, params logged, claimed against other drivers), its curves are streamed while it runs,
    and it always ends FINISHED, FAILED or KILLED (see :mod:`harness.lifecycle`)."""

    def __init__(self, tracker: Any, experiment: str, experiment_id: str, parent_id: str, cfg_fields: list[str],
                 ctx: Any, heartbeat: Any, count_finished: bool):
        self.tracker, self.experiment, self.exp_id, self.parent_id = tracker, experiment, experiment_id, parent_id
        self.cfg_fields, self.ctx, self.heartbeat = cfg_fields, ctx, heartbeat
        self.count_finished = count_finished
        self.stream_every = env_seconds(STREAM_ENV, (10.0,))[0]  # seconds between live curve batches
        self._lock = threading.Lock()  # the progress display, for executors running trials at once

    def run(self, bound: Any, compute: Callable | None = None) -> Any:
        """Start, claim and run one trial; the result carries its run id. ``compute(bound, ctx)``
        runs the trial elsewhere (an executor's worker; default: :func:`harness.runner.run_trial`
        in this process). Thread-safe: executors may run several at once."""
        from .lifecycle import CurveStream
        from .runner import SKIPPED, TrialResult, run_trial

        trial = bound.trial
        run_id = None
        try:
            run_id = self.tracker.start_trial(self.exp_id, self.parent_id, trial, self.cfg_fields)
            taken = self.tracker.claim(self.exp_id, trial.key, run_id, self.count_finished)
        except BaseException as exc:
            if run_id is not None:
                self._end(run_id, "KILLED")
            if isinstance(exc, Exception):  # nothing computed yet: nothing to keep, one line
                raise HarnessError(f"tracking store {self.tracker.uri} failed before trial {trial.label} started "
                                   f"({one_line(exc)}); rerun the same command to resume") from None
            raise
        if taken:
            return TrialResult(trial, SKIPPED, error=f"{taken} by another driver")
        self.heartbeat.hold(run_id)
        stream = CurveStream(lambda points: self.tracker.log_points(run_id, points), every=self.stream_every)
        ctx = copy.copy(self.ctx)  # this trial's: its own stream and deadline
        ctx.stream, ctx.restart_stream = stream.add, stream.restart
        progress = self.ctx.progress
        try:
            if compute is None:
                result = run_trial(bound, ctx)
            else:  # elsewhere: the display hears of its start, its streamed points and its end
                ctx.progress = None
                started = time.perf_counter()
                if progress:
                    with self._lock:
                        progress.remote_started(trial)

                    def show(step: int, metrics: dict, log: Callable = stream.add) -> None:
                        log(step, metrics)
                        with self._lock:
                            progress.remote_point(trial, step, metrics)

                    ctx.stream = show
                result = compute(bound, ctx)
                if progress:
                    with self._lock:
                        progress.trial_done(trial, result, time.perf_counter() - started)
        except BaseException:  # Ctrl-C, SIGTERM: the run ends KILLED, never left RUNNING
            self.heartbeat.release(run_id)
            self._end(run_id, "KILLED")
            raise
        # the points not streamed yet go with the results in finish(): one store request, not two
        result.run_id, result.curves_sent = run_id, stream.sent
        return result

    def finish(self, result: Any) -> None:
        """Log a finished trial into its run and end it; its temporary files go. If the store fails
        (after retries), the results are spooled (:mod:`harness.spool`) and the grid stops with one
        line: the trial is logged by the next ``bench`` or ``harness sync``, never recomputed."""
        from . import spool

        try:
            if result.run_id is None:
                self.tracker.log_trial(self.exp_id, self.parent_id, result, self.cfg_fields)
            else:
                self.tracker.finish_trial(result.run_id, result, result.curves_sent)
        except Exception as exc:
            where = (f"tracking store {self.tracker.uri} failed while logging trial {result.trial.label} "
                     f"({one_line(exc)})")
            try:
                entry = spool.spool(self.tracker.uri, self.experiment, self.parent_id, self.cfg_fields, result)
            except OSError as spool_exc:  # e.g. the same full disk
                raise HarnessError(f"{where}, and keeping its results failed too ({spool_exc.strerror}: "
                                   f"{spool_exc.filename}); the trial runs again on the next bench") from None
            raise HarnessError(f"{where}; its results are kept in {entry} and logged by the next `harness bench` "
                               f"or `harness sync`") from None
        except BaseException:
            if result.run_id is not None:
                self._end(result.run_id, "KILLED")  # interrupted while logging: rerun, never half-FINISHED
            raise
        finally:
            if result.run_id is not None:
                self.heartbeat.release(result.run_id)
            if result.artifacts_dir:
                shutil.rmtree(result.artifacts_dir, ignore_errors=True)

    def _end(self, run_id: str, status: str) -> None:
        try:
            self.tracker.end_run(run_id, status)
        except Exception:  # the store is gone: the next bench reaps the run (heartbeat stops)
            pass


CLI_OPTIONS = {"workers": ("--workers", "process or ray"), "address": ("--ray-address", "ray")}


def make_executor(cls: type, grid: Grid, **options: Any) -> Any:
    """The grid's executor, given the command-line options and the grid's ``[resources]`` that its
    constructor takes; an option it does not take is one line (the grid's resources are simply not
    used by executors that run trials in this machine's own processes)."""
    accepts = inspect.signature(cls).parameters
    kwargs = {}
    for key, value in options.items():
        if value is None:
            continue
        if key not in accepts:
            flag, takers = CLI_OPTIONS[key]
            raise ConfigError(f"{flag} applies to the {takers} executor; executor '{grid.executor}' does not "
                              f"take it: drop {flag} or choose --executor {takers.split()[0]}")
        kwargs[key] = value
    if grid.resources and "resources" in accepts:
        kwargs["resources"] = grid.resources
    return cls(**kwargs)


def _figures(board: Any, console: Any) -> dict:
    """The leaderboard's plots for the parent run; a plot that fails is skipped with a line, never
    the bench's end."""
    if board is None:
        return {}
    from .plots import make_plots

    try:
        return make_plots(board)
    except Exception as exc:  # noqa: BLE001 - plots are a view: the results are logged regardless
        console.print(f"plots skipped: {one_line(exc)}", highlight=False)
        return {}


def _close(figures: dict) -> None:
    if figures:
        import matplotlib.pyplot as plt

        for figure in figures.values():
            plt.close(figure)


def describe_bench(grid: Grid, todo: list, skipped: int, device: Any, executor: Any) -> str:
    """The parent run's description in the MLflow UI: what ran, on what, and the command."""
    from .data import device_name

    trials = [b.trial for b in todo]
    distillers = sorted({t.distiller for t in trials}) or ["-"]
    datasets = sorted({t.dataset for t in trials}) or ["-"]
    recipes = sorted({r.label for t in trials for r in t.recipes}) or ["-"]
    return (f"**{grid.name}**: {len(trials)} trial(s) run here, {skipped} already finished; distillers "
            f"{', '.join(distillers)} on {', '.join(datasets)}; recipes {', '.join(recipes)}; seeds "
            f"{', '.join(map(str, grid.seeds))}; {device_name(device)}, executor {getattr(executor, 'name', '?')}.\n\n"
            f"Grid file: `{grid.source or '-'}` (resolved contents: `grid.json`). Command: `{' '.join(sys.argv)}`")


def run_bench(grid: Grid, plugins: Any, *, tracking_uri: str | None = None, data_dir: Path | None = None,
              device: str | None = None, resume: bool = True, console: Any = None,
              workers: int | None = None, address: str | None = None, system_metrics: bool = False) -> BenchOutcome:
    """Run every trial of ``grid`` not already finished in its MLflow experiment. ``workers``: trials
    at once, for executors that take it (``process``, ``ray``); ``address``: the Ray cluster to join;
    ``system_metrics``: MLflow's system metrics on the parent run."""
    from rich.console import Console

    from .plan import prepare
    from .runner import TrialContext
    from .tracking import RETRY_ENV, RETRY_WAITS

    console = console or Console(stderr=False)
    for variable, default in ((STREAM_ENV, (10.0,)), (RETRY_ENV, RETRY_WAITS)):
        env_seconds(variable, default)  # a malformed one is one line, before any data is loaded
    executor = make_executor(plugins.executors.get(grid.executor), grid, workers=workers, address=address)
    plan = prepare(grid, plugins, data_dir, device)  # every check that needs data, before compute
    data, dev, grid = plan.data, plan.device, plan.grid  # the plan's trials carry data fingerprints
    ctx = TrialContext(data, dev, None, timeout=grid.trial_timeout, checkpoint_every=grid.checkpoint_every,
                       eval_mode=grid.eval_mode)
    close = getattr(executor, "close", None) or (lambda kill=False: None)
    try:
        outcome = _bench(grid, plan, ctx, executor, tracking_uri, resume, console, system_metrics)
    except BaseException:  # Ctrl-C, a store that failed: workers are killed, checkpoints stay for the resume
        close(kill=True)
        raise
    close()
    return outcome


def _bench(grid: Grid, plan: Any, ctx: Any, executor: Any, tracking_uri: str | None, resume: bool,
           console: Any, system_metrics: bool = False) -> BenchOutcome:
    """The part of :func:`run_bench` after the plan: MLflow set-up, the executor's trials, the summary."""
    from .tracking import Tracker

    tracker = Tracker(tracking_uri)
    try:
        return _bench_into(tracker, grid, plan, ctx, executor, resume, console, system_metrics)
    finally:
        tracker.close()  # the store's file alone holds the bench


def _bench_into(tracker: Any, grid: Grid, plan: Any, ctx: Any, executor: Any, resume: bool, console: Any,
                system_metrics: bool) -> BenchOutcome:
    """:func:`_bench` with its store open: resume checks, the parent run, the trials, the summary."""
    import torch

    from . import __version__
    from .data import device_name
    from .lifecycle import Heartbeat, sweep_trial_dirs
    from .progress import BenchProgress
    from .report import leaderboard, runs_frame, to_markdown
    from .runner import SKIPPED
    from .spool import flush as flush_spool

    dev = ctx.device
    synced = flush_spool(tracker)  # trials finished while the store was down count as finished now
    if synced:
        console.print(f"logged {synced} spooled trial(s) into {tracker.uri}", highlight=False)
    exp_id = tracker.experiment_id(grid.name)
    reaped = tracker.reap(exp_id)  # runs left RUNNING by a driver that died
    sweep_trial_dirs()  # and the trial files such a driver left in the temporary directory
    if reaped:
        console.print(f"marked {reaped} run(s) KILLED whose driver had died", highlight=False)
    finished, legacy = tracker.finished_keys(exp_id) if resume else (set(), set())
    done = {b.trial.key for b in plan.trials if b.trial.key in finished or b.trial.grid_key in legacy}
    todo = [b for b in plan.trials if b.trial.key not in done]
    before = sum(b.trial.key not in finished for b in plan.trials if b.trial.key in done)
    if before:
        console.print(f"{before} finished trial(s) predate data fingerprints: taken as run on the data "
                      f"loaded now (--no-resume reruns them)", highlight=False)
    skipped = len(grid.trials) - len(todo)
    start = getattr(executor, "start", None)
    if start is not None and todo:  # workers start up while this driver sets MLflow up
        start(todo, ctx)
    console.print(f"grid '{grid.name}': {len(grid.trials)} trials, {skipped} already finished, "
                  f"{len(todo)} to run on {device_name(dev)}; MLflow {tracker.uri}", highlight=False)

    parent = tracker.start_bench(
        exp_id, run_name=f"bench/{grid.name}",
        params={"grid": grid.source, "trials": len(grid.trials), "seeds": grid.seeds, "device": str(dev),
                "executor": grid.executor, "trial_timeout": grid.trial_timeout or "none",
                "checkpoint_every": grid.checkpoint_every or "off", "eval_mode": grid.eval_mode},
        tags={"harness_version": __version__, "torch_version": torch.__version__, "device": device_name(dev),
              "command": " ".join(sys.argv)},
        grid_document=grid.document, description=describe_bench(grid, todo, skipped, dev, executor),
    )
    cfg_fields = sorted({k for t in grid.trials for k, _ in t.config})
    passed = failed = claimed = 0
    status = "FAILED"
    monitor = tracker.system_metrics(parent) if system_metrics else None
    with Heartbeat(tracker.beat) as heartbeat:
        heartbeat.hold(parent)
        try:
            with BenchProgress(console, len(todo), skipped) as progress:
                ctx.progress = progress
                driver = Driver(tracker, grid.name, exp_id, parent, cfg_fields, ctx, heartbeat, count_finished=resume)
                for result in executor.run(todo, driver.run):
                    if result.status == SKIPPED:
                        claimed += 1
                        console.print(f"{result.trial.label}: skipped, {result.error}", highlight=False)
                        continue
                    driver.finish(result)
                    passed += result.passed
                    failed += not result.passed
            status = "FINISHED" if failed == 0 else "FAILED"
        except KeyboardInterrupt:
            status = "KILLED"
            raise
        finally:
            if monitor is not None:
                monitor.finish()  # its last samples land before the parent ends
            board = None
            try:  # the summary, and the parent's end; with the store gone, the next bench reaps the parent
                frame = runs_frame(tracker, grid.name)
                keys = {t.grid_key for t in grid.trials}
                if len(frame):
                    frame = frame[frame["grid_key"].isin(keys)]
                board = leaderboard(frame) if len(frame) else None
                markdown = "" if board is None else to_markdown(board, f"Leaderboard: {grid.name}",
                                                                f"harness report --experiment {grid.name}")
                figures = _figures(board, console)
                try:
                    tracker.end_bench(parent, board, markdown, status, {"trials_passed": passed, "trials_failed": failed,
                                                                        "trials_skipped": skipped + claimed}, figures)
                finally:
                    _close(figures)
            except Exception as exc:
                console.print(f"could not end the bench run in {tracker.uri}: {type(exc).__name__}", highlight=False)
    return BenchOutcome(grid.name, passed, failed, skipped + claimed, board, parent, tracker.uri, exp_id)
