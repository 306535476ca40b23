"""The ``process`` executor: trials run in worker processes, several at once; the driver process stays
the only MLflow writer.

Each trial runs in a fresh ``spawn``-ed process (``harness bench GRID --executor process --workers
N``): it loads the plugins and the data itself (from the same data directory), binds the trial by
name and calls :func:`harness.runner.run_trial`; its curve points and its result come back through a
queue. A driver thread per slot creates the trial's run, claims it, forwards the points to MLflow as
they arrive and hands the result to the driver, exactly as the inline executor does. So a worker
that dies (a segfault, the OOM killer, ``kill -9``) fails only its trial ("worker died"), and a
worker past its trial's time limit is killed. A fresh process per trial costs a few seconds of
start-up (imports, data), nothing beside trials of minutes, and leaves no state between trials.

Devices: on CUDA, slot i runs on GPU i (``CUDA_VISIBLE_DEVICES`` set in the worker before torch is
imported; N defaults to the number of visible GPUs); on CPU, N defaults to 2 and each worker gets
``cores // N`` torch threads.
"""

from __future__ import annotations

import os
import queue as queue_module
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

KILL_GRACE_SECONDS = 30.0  # past the trial's limit, the worker's own check had time to fail it cleanly


class ProcessExecutor:
    """Run trials in worker processes, several at once; the driver stays the only MLflow writer."""

    name = "process"

    def __init__(self, workers: int | None = None):
        self.workers = workers

    def run(self, trials: Sequence, run_trial: Callable) -> Iterator:
        if not trials:
            return
        slots: queue_module.Queue = queue_module.Queue()
        count = self.workers or _default_workers()
        for i in range(count):
            slots.put(i)

        stop = threading.Event()  # set when the driver is interrupted: every worker is killed

        def one(bound: Any) -> Any:
            slot = slots.get()
            try:
                return run_trial(bound, compute=lambda b, ctx: _in_worker(b, ctx, slot, count, stop))
            finally:
                slots.put(slot)

        pool = ThreadPoolExecutor(max_workers=count, thread_name_prefix="harness-slot")
        futures = [pool.submit(one, bound) for bound in trials]
        try:
            for future in as_completed(futures):
                yield future.result()
        except BaseException:  # Ctrl-C, SIGTERM, a store that failed: stop everything, rerun resumes
            stop.set()
            for future in futures:
                future.cancel()
            raise
        finally:
            pool.shutdown(wait=True)


def _default_workers() -> int:
    try:
        import torch

        if torch.cuda.is_available():
            return max(1, torch.cuda.device_count())
    except Exception:  # noqa: BLE001 - no usable CUDA: CPU workers
        pass
    return 2


def _in_worker(bound: Any, ctx: Any, slot: int, slots: int, stop: threading.Event) -> Any:
    """Run ``bound`` in a fresh worker process; forward its points to ``ctx.stream``; its result."""
    import multiprocessing

    from ..runner import FAILED, TrialResult

    spawn = multiprocessing.get_context("spawn")
    messages = spawn.Queue()
    device = ctx.device
    gpu = None
    if device.type == "cuda":
        gpu = str(slot if device.index is None else device.index)
    threads = max(1, (os.cpu_count() or 1) // slots)
    settings = {"data_dir": str(ctx.data.data_dir), "device": "cuda" if gpu is not None else str(device),
                "gpu": gpu, "threads": threads, "timeout": ctx.timeout, "checkpoint_every": ctx.checkpoint_every,
                "eval_mode": ctx.eval_mode}
    process = spawn.Process(target=work, args=(bound.trial, settings, messages), daemon=True,
                            name=f"harness-worker-{slot}")
    process.start()
    deadline = None if ctx.timeout is None else time.monotonic() + ctx.timeout + KILL_GRACE_SECONDS
    result = None
    try:
        while result is None:
            if stop.is_set():
                process.kill()
                raise KeyboardInterrupt("the driver was interrupted")
            try:
                kind, payload = messages.get(timeout=1.0)
            except queue_module.Empty:
                if not process.is_alive():
                    try:  # the result may have arrived just before the process ended
                        kind, payload = messages.get(timeout=5.0)
                    except queue_module.Empty:
                        code = process.exitcode
                        why = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
                        return TrialResult(bound.trial, FAILED, error=f"WorkerDied: the worker process died ({why})")
                elif deadline is not None and time.monotonic() > deadline:
                    process.kill()
                    return TrialResult(bound.trial, FAILED, error=f"TrialTimeout: timeout: the worker ran past "
                                                                  f"trial_timeout = {ctx.timeout:g} s and was killed")
                else:
                    continue
            if kind == "point":
                if ctx.stream:
                    ctx.stream(*payload)
            else:
                result = payload
    finally:
        process.join(timeout=10)
        if process.is_alive():
            process.kill()
            process.join()
    return result


def work(trial: Any, settings: dict, messages: Any) -> None:
    """A worker process: load plugins and data, bind ``trial``, run it, send points and the result."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group: the driver
    # handles it (it kills its workers and ends their runs KILLED; checkpoints stay for the resume)
    if settings["gpu"] is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = settings["gpu"]  # before torch is imported
    import traceback

    import torch

    from ..data import DataCache, resolve_device
    from ..plan import bind
    from ..plugins import get_plugins
    from ..errors import one_line
    from ..runner import FAILED, TrialContext, TrialResult, run_trial

    try:
        torch.set_num_threads(settings["threads"])
        plugins = get_plugins()
        device = resolve_device(settings["device"])
        data = DataCache(plugins, Path(settings["data_dir"]), device)
        ctx = TrialContext(data, device, None, timeout=settings["timeout"],
                           checkpoint_every=settings["checkpoint_every"], eval_mode=settings["eval_mode"])
        ctx.stream = lambda step, metrics: messages.put(("point", (step, metrics)))
        bound = bind(trial, plugins)
    except Exception as exc:  # the worker could not set the trial up (plugins, data): its trial fails, said why
        result = TrialResult(trial, FAILED, error=f"WorkerSetupError: {one_line(exc)}",
                             traceback=traceback.format_exc())
    else:
        result = run_trial(bound, ctx)
    messages.put(("result", result))
    messages.close()
    messages.join_thread()
