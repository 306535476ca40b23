"""The ``process`` executor: trials run in worker processes, several at once; the driver process stays
the only MLflow writer.

``harness bench GRID --executor process --workers N`` starts N long-lived worker processes, one per
slot, forked from a server process that has imported torch and the harness once (multiprocessing's
``forkserver``; ``spawn`` where there is none). Each loads the plugins and the data once (from the
same data directory) and then runs trial after trial: it binds each by name, calls
:func:`harness.runner.run_trial` and sends its curve points and its result back through a queue. A
driver thread per slot creates the trial's run, claims it, forwards the points to MLflow as they
arrive and hands the result to the driver, exactly as the inline executor does. So a worker that
dies (a segfault, the OOM killer, ``kill -9``) fails only its trial ("worker died"), a worker past
its trial's time limit is killed, and either is replaced by a fresh worker for the slot's next
trial. Workers are reused because starting one costs seconds (plugins, data; torch too where workers
spawn): paid once per slot, not once per trial. A worker takes the driver's environment as it is
when the worker starts, as a spawned one would (not the fork server's, from when it started).

Devices: on CUDA, slot i runs on GPU i (``CUDA_VISIBLE_DEVICES`` set in the worker before CUDA is
initialised; N defaults to the number of visible GPUs); on CPU, N defaults to 2 and each worker gets
``cores // N`` torch threads.
"""

from __future__ import annotations

import os
import queue as queue_module
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from . import as_they_finish

KILL_GRACE_SECONDS = 30.0  # past the trial's limit, the worker's own check had time to fail it cleanly
CLOSE_SECONDS = 10.0  # an idle worker asked to exit gets this long before it is killed


class ProcessExecutor:
    """Run trials in worker processes, several at once; the driver stays the only MLflow writer."""

    name = "process"

    def __init__(self, workers: int | None = None):
        self.workers = workers

    def start(self, trials: Sequence, ctx: Any) -> None:
        """Start the workers now (the driver calls this before its own MLflow set-up, so the
        workers' start-up, seconds of imports and data loading, overlaps it)."""
        self._stop = threading.Event()  # set when the driver is interrupted: every worker is killed
        count = min(self.workers or default_workers(ctx.device if ctx is not None else None), max(1, len(trials)))
        self._workers = [Worker(slot, count, self._stop) for slot in range(count)]
        for worker in self._workers:
            worker.start(ctx)

    def close(self, kill: bool = False) -> None:
        """Stop the workers (killed when ``kill`` or the driver was interrupted); safe to call twice."""
        for worker in getattr(self, "_workers", []):
            worker.close(kill=kill or self._stop.is_set())
        self._workers = []

    def run(self, trials: Sequence, run_trial: Callable) -> Iterator:
        if not trials:
            return
        if not getattr(self, "_workers", None):
            self.start(trials, None)
        idle: queue_module.Queue = queue_module.Queue()
        for worker in self._workers:
            idle.put(worker)

        def one(bound: Any) -> Any:
            worker = idle.get()
            try:
                return run_trial(bound, compute=worker.run)
            finally:
                idle.put(worker)

        pool = ThreadPoolExecutor(max_workers=len(self._workers), thread_name_prefix="harness-slot")
        futures = [pool.submit(one, bound) for bound in trials]
        try:
            for future in as_they_finish(futures):  # Ctrl-C works while it waits
                yield future.result()
        except BaseException:  # Ctrl-C, SIGTERM, a store that failed: stop everything, rerun resumes
            self._stop.set()
            for future in futures:
                future.cancel()
            raise
        finally:
            pool.shutdown(wait=True)
            self.close()


def default_workers(device: Any = None) -> int:
    """On a CUDA device (or an unknown one), one worker per visible GPU; else 2."""
    if device is not None and device.type != "cuda":
        return 2
    try:
        import torch

        if torch.cuda.is_available():
            return max(1, torch.cuda.device_count())
    except Exception:  # noqa: BLE001 - no usable CUDA: CPU workers
        pass
    return 2


def worker_settings(slot: int, slots: int, ctx: Any) -> dict:
    """What slot ``slot``'s worker runs with: on CUDA, GPU ``slot`` (or the one ``cuda:N`` names)
    made its only visible device; on CPU, the cores' torch threads split between the slots."""
    device = ctx.device
    gpu = None
    if device.type == "cuda":
        gpu = str(slot if device.index is None else device.index)
    return {"data_dir": str(ctx.data.data_dir), "device": "cuda" if gpu is not None else str(device),
            "gpu": gpu, "threads": max(1, (os.cpu_count() or 1) // slots), "timeout": ctx.timeout,
            "checkpoint_every": ctx.checkpoint_every, "eval_mode": ctx.eval_mode, "env": dict(os.environ)}


def relay(kind: str, payload: Any, ctx: Any, deadline: float | None) -> float | None:
    """Act on a worker's "started" or "point" message; returns the kill deadline (the trial's limit,
    plus a grace, counted from when the trial started in its worker)."""
    if kind == "started" and ctx.timeout is not None:
        return time.monotonic() + ctx.timeout + KILL_GRACE_SECONDS
    if kind == "point" and ctx.stream:
        ctx.stream(*payload)
    return deadline


class Worker:
    """One slot's worker process, started on its first trial and replaced after it dies or is killed.
    Used by one driver thread at a time (the executor hands slots out through a queue)."""

    def __init__(self, slot: int, slots: int, stop: threading.Event):
        self.slot, self.slots, self.stop = slot, slots, stop
        self.process: Any = None
        self.inbox: Any = None
        self.outbox: Any = None

    def start(self, ctx: Any) -> None:
        """Spawn the process (``ctx``: the grid's TrialContext; None: wait for the first trial's)."""
        import multiprocessing

        if ctx is None:
            return

        start = multiprocessing.get_context(start_method())
        self.inbox, self.outbox = start.Queue(), start.Queue()
        settings = worker_settings(self.slot, self.slots, ctx)
        process = start.Process(target=serve, args=(settings, self.inbox, self.outbox), daemon=True,
                                name=f"harness-worker-{self.slot}")
        process.start()
        self.process = process

    def run(self, bound: Any, ctx: Any) -> Any:
        """Run ``bound`` in this slot's worker; forward its points to ``ctx.stream``; its result."""
        from ..runner import FAILED, TrialResult

        if self.process is None or not self.process.is_alive():
            self.start(ctx)
        self.inbox.put(bound.trial)
        deadline = None  # from when the trial starts in the worker (not while a new worker starts up)
        while True:
            if self.stop.is_set():
                self.kill()
                raise KeyboardInterrupt("the driver was interrupted")
            try:
                kind, payload = self.outbox.get(timeout=1.0)
            except queue_module.Empty:
                if not self.process.is_alive():
                    try:  # the result may have arrived just before the process ended
                        kind, payload = self.outbox.get(timeout=5.0)
                    except queue_module.Empty:
                        code = self.process.exitcode
                        self.kill()
                        why = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
                        return TrialResult(bound.trial, FAILED, error=f"WorkerDied: the worker process died ({why})")
                elif deadline is not None and time.monotonic() > deadline:
                    self.kill()
                    return TrialResult(bound.trial, FAILED, error=f"TrialTimeout: timeout: the worker ran past "
                                                                  f"trial_timeout = {ctx.timeout:g} s and was killed")
                else:
                    continue
            if kind == "result":
                return payload
            deadline = relay(kind, payload, ctx, deadline)

    def kill(self) -> None:
        """End the process now; the slot's next trial starts a fresh one (new queues: a process killed
        mid-send may have left a queue unusable)."""
        if self.process is not None:
            self.process.kill()
            self.process.join()
            self.process = None

    def close(self, kill: bool = False) -> None:
        if self.process is None:
            return
        if not kill and self.process.is_alive():
            self.inbox.put(None)  # finish: the worker exits its loop
            self.process.join(timeout=CLOSE_SECONDS)
        self.kill()


def start_method() -> str:
    """``forkserver`` where the platform has it (Linux, macOS), with :mod:`harness.executors.preload`
    imported in the server: a worker, and a replacement after a death or a time-out, then starts
    without importing torch again (about 3 s of CPU each on the 2-core test machine). The server
    never initialises CUDA, so CUDA is as safe in its forks as in spawned workers. ``spawn`` elsewhere."""
    import multiprocessing

    if "forkserver" not in multiprocessing.get_all_start_methods():
        return "spawn"
    multiprocessing.set_forkserver_preload([f"{__package__}.preload"])  # read when the server starts
    return "forkserver"


def serve(settings: dict, inbox: Any, outbox: Any) -> None:
    """A worker process: load plugins and data once, then run the trials that arrive (None: exit),
    sending their points and results."""
    import signal
    import socket

    os.environ.clear()  # the driver's environment now, not the fork server's from when it started
    os.environ.update(settings["env"])

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group: the driver
    # handles it (it kills its workers and ends their runs KILLED; checkpoints stay for the resume)
    if settings["gpu"] is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = settings["gpu"]  # before CUDA is initialised
    import traceback

    import torch

    from ..data import DataCache, resolve_device
    from ..errors import one_line
    from ..plan import bind
    from ..plugins import get_plugins
    from ..runner import FAILED, TrialContext, TrialResult, run_trial, warm_up

    worker_name = f"{socket.gethostname()}/{os.getpid()}"  # a tag: which process ran the trial
    setup_error = None
    try:
        torch.set_num_threads(settings["threads"])
        plugins = get_plugins()
        device = resolve_device(settings["device"])
        data = DataCache(plugins, Path(settings["data_dir"]), device)  # loaded once, kept across trials
        warm_up(device)  # one-time costs here, not in the first trial's time (limit included)
        ctx = TrialContext(data, device, None, timeout=settings["timeout"],
                           checkpoint_every=settings["checkpoint_every"], eval_mode=settings["eval_mode"])
        ctx.stream = lambda step, metrics: outbox.put(("point", (step, metrics)))
    except Exception as exc:  # every trial sent here fails with the reason
        setup_error = (f"WorkerSetupError: {one_line(exc)}", traceback.format_exc())
    for trial in iter(inbox.get, None):
        if setup_error is not None:
            result = TrialResult(trial, FAILED, error=setup_error[0], traceback=setup_error[1])
        else:
            try:
                bound = bind(trial, plugins)
            except Exception as exc:  # the trial cannot be set up here (an unknown name, a data error)
                result = TrialResult(trial, FAILED, error=f"WorkerSetupError: {one_line(exc)}",
                                     traceback=traceback.format_exc())
            else:
                outbox.put(("started", None))
                result = run_trial(bound, ctx)
        result.tags["worker"] = worker_name
        outbox.put(("result", result))
    outbox.close()
    outbox.join_thread()
