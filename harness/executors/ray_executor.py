"""The ``ray`` executor: each trial a Ray task, on a local Ray cluster or one you join; the driver
process stays the only MLflow writer.

``harness bench GRID --executor ray`` starts a local cluster (all cores of this machine), unless
Ray's own ``RAY_ADDRESS`` names one to join; ``--ray-address auto`` joins the cluster running here
(``ray start --head``), ``HOST:PORT`` one by its GCS address and ``ray://HOST:10001`` a remote one
through Ray Client, which runs no generator tasks: there each trial is one plain task that posts
its start and curve points to a mailbox actor (:class:`Mailbox`, one per grid, no CPU) which the
driver empties every half second, so progress and curves are live there too; every point also comes
with the result. Nothing answering at the address is one line before any compute (Ray itself would
retry for minutes). Ray is an optional extra: ``pip install 'distill-harness[ray]'`` (Ray with its
client).

Each trial is a Ray task asking for ``num_cpus = cpus_per_trial`` and ``num_gpus = gpus_per_trial``
from the grid's ``[resources]`` table (fractions allowed: ``gpus_per_trial = 0.5`` puts two trials
on one GPU). The task loads the plugins and the data itself, from the same ``data_dir`` path on its
node (a cluster needs that path on a shared file system, or a dataset plugin that downloads), keeps
them for the next trial that lands on the same Ray worker, runs :func:`harness.runner.run_trial`
and streams the curve points back as a Ray generator; the trial's files (distilled set, figures)
come back with its result, so nodes need not share a disk for them. Checkpoints are written under
``HARNESS_CHECKPOINT_DIR`` on the trial's node: share it for a resume to find them elsewhere.

How many trials run at once: ``--workers N``, else what the cluster's CPUs and GPUs fit. A trial
that raises is a FAILED result (the task itself never raises), so Ray never retries it; a task whose
worker process or node is lost is resubmitted up to ``retries`` times (default 1: the trial starts
again, from its checkpoint if it has one), then FAILED with Ray's reason. A trial past its
``trial_timeout`` (plus the process executor's grace for its own clean stop) is cancelled with its worker killed.
On a cluster of its own, the driver kills any worker still running a trial (Ctrl-C) before it shuts
the cluster down, so no trial outlives the driver.
"""

from __future__ import annotations

import logging
import os
import queue as queue_module
import shutil
import signal
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from ..errors import ConfigError, one_line
from ..lifecycle import trial_dir
from . import as_they_finish
from .process import relay

FORWARDED_ENV = ("PYTHONPATH",)  # with every HARNESS_* variable: the tasks see what the driver sees
POST_SECONDS = 1.0  # under Ray Client, a task posts its points this often (its start at once)
PUMP_SECONDS = 0.5  # and the driver empties the mailbox this often


class RayExecutor:
    """Run each trial as a Ray task, on a local Ray cluster or one it joins; the driver stays the only MLflow writer."""

    name = "ray"

    def __init__(self, workers: int | None = None, address: str | None = None, resources: dict | None = None,
                 retries: int = 1):
        import importlib.util

        if importlib.util.find_spec("ray") is None:  # before any data is loaded
            raise ConfigError("executor 'ray' needs Ray: pip install 'distill-harness[ray]'")
        self.workers, self.retries = workers, retries
        self.address = address or os.environ.get("RAY_ADDRESS") or None  # Ray's own variable, honoured
        self._address_source = "--ray-address" if address else "RAY_ADDRESS"
        self.resources = dict(resources or {})
        self._device_type = "cpu"  # the driver's resolved device (start): CUDA trials ask for a GPU each
        self._started_cluster = False
        self._stop = threading.Event()

    # -- driver side ----------------------------------------------------------------------------------
    def start(self, trials: Sequence, ctx: Any) -> None:
        """Connect to (or start) the cluster while the driver sets MLflow up."""
        ray = require_ray()
        if ctx is not None:
            self._device_type = ctx.device.type
        if not ray.is_initialized():
            check_reachable(self.address, source=self._address_source)  # Ray would retry it for minutes
            level = logging.getLogger("ray").level
            logging.getLogger("ray").setLevel(logging.WARNING)  # its INFO lines would precede our one-line error
            env = {k: v for k, v in os.environ.items() if k.startswith("HARNESS_") or k in FORWARDED_ENV}
            on_sigterm = signal.getsignal(signal.SIGTERM)  # ray.init replaces it with sys.exit(15)
            try:
                for attempt in (1, 2):
                    try:
                        # "local", not None: None would also join the last `ray start` cluster of this host
                        ray.init(address=self.address or "local", include_dashboard=False, log_to_driver=False,
                                 runtime_env={"env_vars": env} if env else None)
                        break
                    except ConnectionAbortedError:  # Ray Client: the head's per-client server failed to start
                        if attempt == 2:          # (it times out on a loaded head): once more
                            raise
                        ray.shutdown()
            except Exception as exc:  # noqa: BLE001 - unreachable address, a cluster that cannot start
                what = f"join the Ray cluster at {self.address}" if self.address else "start a local Ray cluster"
                hint = ("; a cluster with token authentication (Ray >= 2.52) also needs RAY_AUTH_MODE=token here, "
                        "with its token in RAY_AUTH_TOKEN or ~/.ray/auth_token"
                        ) if self.address and os.environ.get("RAY_AUTH_MODE") != "token" else ""
                lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
                detail = one_line(exc) + (f" ... {lines[-1]}" if len(lines) > 1 else "")  # the server's cause
                raise ConfigError(f"could not {what} ({detail}); check {self._address_source} "
                                  f"(auto, HOST:PORT or ray://HOST:10001){hint}") from None
            finally:
                logging.getLogger("ray").setLevel(level)
                if on_sigterm is not None and threading.current_thread() is threading.main_thread():
                    signal.signal(signal.SIGTERM, on_sigterm)  # `kill` ends the runs KILLED, as Ctrl-C does
            self._started_cluster = True

    def close(self, kill: bool = False) -> None:
        if kill:
            self._stop.set()
        if self._started_cluster:
            import ray

            if self.address in (None, "local"):  # a cluster of its own: its processes descend from this one
                stop_trial_workers()
            ray.shutdown()
            self._started_cluster = False

    def run(self, trials: Sequence, run_trial: Callable) -> Iterator:
        if not trials:
            return
        ray = require_ray()
        if not ray.is_initialized():
            self.start(trials, None)
        cpus, gpus = self.per_trial()
        # Ray Client (ray://) runs no generator tasks: there each trial is one task posting to a mailbox
        body = whole_trial_task if self.client_mode else trial_task
        task = ray.remote(body).options(num_cpus=cpus, num_gpus=gpus, max_retries=0)  # retried here
        at_once = self.workers or fits(ray.cluster_resources(), cpus, gpus)
        pump = self._open_mailbox() if self.client_mode else None

        def one(bound: Any) -> Any:
            return run_trial(bound, compute=lambda b, ctx: self._remote(task, b, ctx, cpus, gpus))

        pool = ThreadPoolExecutor(max_workers=at_once, thread_name_prefix="harness-ray")
        futures = [pool.submit(one, bound) for bound in trials]
        try:
            for future in as_they_finish(futures):  # Ctrl-C works while it waits
                yield future.result()
        except BaseException:  # Ctrl-C, a store that failed: cancel everything, rerun resumes
            self._stop.set()
            for future in futures:
                future.cancel()
            raise
        finally:
            pool.shutdown(wait=True)
            if pump is not None:
                pump.set()

    def _open_mailbox(self) -> threading.Event:
        """Create the grid's mailbox actor and a thread that routes what trials post to it to their
        attempts' local queues (``self._routes``); returns the event that stops the thread."""
        import ray

        self._mailbox = ray.remote(num_cpus=0)(Mailbox).remote()
        self._routes: dict[str, queue_module.Queue] = {}
        done = threading.Event()

        def pump() -> None:
            while not done.wait(PUMP_SECONDS):
                try:
                    messages = ray.get(self._mailbox.take.remote(), timeout=60)
                except Exception:  # noqa: BLE001 - progress is best effort: every point also comes with the result
                    continue
                for token, kind, payload in messages:
                    route = self._routes.get(token)
                    if route is not None:
                        route.put((kind, payload))

        threading.Thread(target=pump, name="harness-ray-mailbox", daemon=True).start()
        return done

    @property
    def client_mode(self) -> bool:
        return str(self.address or "").startswith("ray://")

    def per_trial(self) -> tuple[float, float]:
        """(CPUs, GPUs) each trial asks for: the grid's [resources], else 1 CPU and, on CUDA, 1 GPU."""
        cpus = float(self.resources.get("cpus_per_trial", 1.0))
        gpus = self.resources.get("gpus_per_trial")
        if gpus is None:
            gpus = 1.0 if self._device_type == "cuda" else 0.0
        return cpus, float(gpus)

    def _remote(self, task: Any, bound: Any, ctx: Any, cpus: float, gpus: float) -> Any:
        """Run ``bound`` as a Ray task (resubmitted after a lost worker or node); its result."""
        from ..runner import FAILED, TrialResult

        from ..checkpoint import checkpoint_root

        settings = {"data_dir": str(ctx.data.data_dir), "device": "cuda" if gpus > 0 else str(ctx.device),
                    "threads": max(1, int(cpus)), "timeout": ctx.timeout, "checkpoint_every": ctx.checkpoint_every,
                    "eval_mode": ctx.eval_mode, "checkpoint_dir": str(checkpoint_root())}
        lost = ""
        for attempt in range(self.retries + 1):
            if attempt and ctx.restart_stream:  # the result will hold this attempt's curves only
                ctx.restart_stream()
            try:
                outcome = self._attempt(task, bound, ctx, settings)
            except Exception as exc:  # noqa: BLE001 - Ray failing in a way not foreseen: this trial fails, not the grid
                return TrialResult(bound.trial, FAILED, error=f"RayError: {one_line(exc)}")
            if isinstance(outcome, TrialResult):
                if attempt:
                    outcome.tags["ray.retries"] = str(attempt)
                return outcome
            lost = outcome  # the worker or its node was lost: infrastructure, try again
        return TrialResult(bound.trial, FAILED, error=f"WorkerDied: {lost} (after {self.retries} "
                                                      f"retr{'y' if self.retries == 1 else 'ies'})")

    def _attempt(self, task: Any, bound: Any, ctx: Any, settings: dict) -> Any:
        """One submission: the TrialResult, or why Ray lost the task (a str)."""
        if not self.client_mode:  # the deadline counts from the task's "started" message
            return self._follow(task.remote(bound.trial, settings), bound, ctx, None, None)
        token, posted = uuid.uuid4().hex, queue_module.Queue()  # its messages come through the mailbox
        self._routes[token] = posted
        try:  # if "started" never arrives, the deadline counts from submission
            deadline = None if ctx.timeout is None else time.monotonic() + ctx.timeout + 60.0
            return self._follow(task.remote(bound.trial, settings, self._mailbox, token), bound, ctx, deadline, posted)
        finally:
            self._routes.pop(token, None)

    def _follow(self, stream: Any, bound: Any, ctx: Any, deadline: float | None,
                posted: queue_module.Queue | None) -> Any:
        """Relay a submitted task's messages until its result (``posted``: the mailbox's route of a
        Ray Client task, whose generator-less ``stream`` only holds the result)."""
        import ray

        from ..runner import FAILED, TrialResult

        while True:
            while posted is not None and not posted.empty():
                deadline = relay(*posted.get(), ctx, deadline)
            if self._stop.is_set():
                ray.cancel(stream, force=True)
                raise KeyboardInterrupt("the driver was interrupted")
            if deadline is not None and time.monotonic() > deadline:
                ray.cancel(stream, force=True)
                return TrialResult(bound.trial, FAILED, error=f"TrialTimeout: timeout: the trial ran past "
                                                              f"trial_timeout = {ctx.timeout:g} s and was cancelled")
            ready, _ = ray.wait([stream], timeout=PUMP_SECONDS if posted is not None else 1.0)
            if not ready:
                continue
            try:
                kind, payload = ray.get(stream if posted is not None else next(stream))
            except StopIteration:
                return "the Ray task ended without a result"
            except ray.exceptions.RayError as exc:  # a lost worker or node (the task itself never raises)
                return one_line(exc)
            if kind == "result":
                result, files = payload
                result.artifacts_dir = unpack(files)
                return result
            deadline = relay(kind, payload, ctx, deadline)


def stop_trial_workers(timeout: float = 60.0) -> None:
    """Kill the workers of this driver's own cluster that still run a trial, and wait until they are
    gone: a force-cancelled task (Ctrl-C, a trial past its limit) ends when its worker gets to it,
    and a worker that a loaded machine keeps waiting outlives ``ray.shutdown`` by seconds, long
    enough to finish the trial and keep its set behind the next run's back. A Ray worker names its
    process after the task it runs (``ray::trial_task``); its parent is the cluster's raylet, a child
    of this process (a raylet further down belongs to another driver's cluster)."""
    import psutil  # a dependency of the harness (and Ray ships its own)

    running = []
    for raylet in psutil.Process().children():
        try:
            workers = raylet.children() if raylet.name() == "raylet" else []
        except psutil.Error:
            continue
        for process in workers:
            try:
                if process.cmdline()[:1] == [f"ray::{trial_task.__name__}"]:
                    process.kill()
                    running.append(process)
            except psutil.Error:  # gone meanwhile
                pass
    deadline = time.monotonic() + timeout
    while running and time.monotonic() < deadline:
        running = [p for p in running if _still_running(p)]
        if running:
            time.sleep(0.05)


def _still_running(process: Any) -> bool:
    import psutil

    try:
        return process.status() != psutil.STATUS_ZOMBIE  # a zombie is dead; the raylet reaps it
    except psutil.Error:
        return False


def require_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ConfigError("executor 'ray' needs Ray: pip install 'distill-harness[ray]'") from None
    return ray


def check_reachable(address: str | None, timeout: float = 10.0, source: str = "--ray-address") -> None:
    """One line, before any compute, when nothing answers at ``HOST:PORT`` or ``ray://HOST[:PORT]``
    (``auto`` and a local cluster are Ray's to find); ``source``: where the address came from."""
    import socket

    if not address or address in ("auto", "local"):
        return
    rest = address[len("ray://"):] if address.startswith("ray://") else address
    host, _, port = rest.rpartition(":") if ":" in rest else (rest, "", "10001" if address.startswith("ray://") else "6379")
    if not port.isdigit():
        raise ConfigError(f"{source} {address!r} is not auto, HOST:PORT or ray://HOST:PORT")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        raise ConfigError(f"no Ray cluster answers at {address} ({one_line(exc)}); start one there "
                          f"(ray start --head) or check {source}") from None


def fits(cluster: dict, cpus: float, gpus: float) -> int:
    """How many trials of ``cpus``/``gpus`` each the cluster's totals fit at once (at least 1)."""
    counts = [int(cluster.get("CPU", 1) // cpus)] if cpus > 0 else []
    if gpus > 0:
        counts.append(int(cluster.get("GPU", 0) // gpus))
    return max(1, min(counts) if counts else 1)


def pack(directory: str | None) -> dict[str, bytes]:
    """A trial's files (its temporary directory, removed) as {relative path: bytes}."""
    if not directory:
        return {}
    root = Path(directory)
    files = {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
    shutil.rmtree(root, ignore_errors=True)
    return files


def unpack(files: dict[str, bytes]) -> str | None:
    if not files:
        return None
    root = trial_dir()
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    return str(root)


# -- task side (runs in a Ray worker process) ------------------------------------------------------------
_WORKER: dict[tuple, Any] = {}  # (data_dir, device, ...) -> (plugins, TrialContext): kept across trials


def trial_task(trial: Any, settings: dict) -> Iterator:
    """A Ray generator task: yields ("started", None) once the worker is set up, ("point", (step,
    metrics)) while the trial runs, then ("result", (TrialResult, files)). Never raises: a failing
    trial is a FAILED result."""
    messages: queue_module.Queue = queue_module.Queue()
    threading.Thread(target=_run_here, args=(trial, settings, messages.put), name="harness-trial",
                     daemon=True).start()  # points flow while it runs
    while True:
        kind, payload = messages.get()
        yield kind, payload
        if kind == "result":
            return


def whole_trial_task(trial: Any, settings: dict, mailbox: Any, token: str) -> tuple:
    """The task under Ray Client, which runs no generators: returns ("result", (TrialResult, files));
    its start and curve points go to ``mailbox`` as (token, kind, payload), the start at once and
    points in batches every ``POST_SECONDS``. Never raises."""
    out: list = []
    poster = Poster(mailbox, token)

    def emit(message: tuple) -> None:
        if message[0] == "result":
            out.append(message)
        else:
            poster.add(message)

    _run_here(trial, settings, emit)
    poster.close()
    return out[-1]


class Mailbox:
    """A Ray actor (no CPU) holding what Ray Client tasks post until the driver takes it."""

    def __init__(self) -> None:
        self.messages: list = []

    def post(self, messages: list) -> None:
        self.messages.extend(messages)

    def take(self) -> list:
        messages, self.messages = self.messages, []
        return messages


class Poster:
    """A task's side of the mailbox: buffers messages and posts them in batches from a thread (a
    trial logging every step must not wait on the actor); the start is posted at once. Best effort:
    a post that fails is dropped (the result carries every point)."""

    def __init__(self, mailbox: Any, token: str):
        self.mailbox, self.token = mailbox, token
        self.pending: list = []
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.last: Any = None
        self.thread = threading.Thread(target=self._loop, name="harness-poster", daemon=True)
        self.thread.start()

    def add(self, message: tuple) -> None:
        with self.lock:
            self.pending.append((self.token, *message))
        if message[0] == "started":
            self.flush()

    def flush(self) -> None:
        with self.lock:
            batch, self.pending = self.pending, []
            if batch:
                try:  # under the lock: batches reach the actor in order
                    self.last = self.mailbox.post.remote(batch)
                except Exception:  # noqa: BLE001 - best effort
                    pass

    def _loop(self) -> None:
        while not self.done.wait(POST_SECONDS):
            self.flush()

    def close(self) -> None:
        """Post what is left and wait until it is delivered (so it precedes the result)."""
        import ray

        self.done.set()
        self.thread.join()
        self.flush()
        if self.last is not None:
            try:
                ray.get(self.last, timeout=30)
            except Exception:  # noqa: BLE001 - best effort
                pass


def _run_here(trial: Any, settings: dict, emit: Callable[[tuple], None]) -> None:
    """Set this worker up (once), run the trial and ``emit`` its messages, the last ("result", ...)."""
    import socket
    import traceback

    from ..checkpoint import CHECKPOINT_ENV
    from ..runner import FAILED, TrialResult, run_trial

    os.environ[CHECKPOINT_ENV] = settings["checkpoint_dir"]  # the driver's, whatever this worker started with
    try:
        plugins, ctx = _worker_state(settings)
        from ..plan import bind

        bound = bind(trial, plugins)
    except Exception as exc:  # plugins, data or a name this worker cannot set up
        result = TrialResult(trial, FAILED, error=f"WorkerSetupError: {one_line(exc)}",
                             traceback=traceback.format_exc())
    else:
        ctx.stream = lambda step, metrics: emit(("point", (step, metrics)))
        emit(("started", None))
        result = run_trial(bound, ctx)
    result.tags["worker"] = f"{socket.gethostname()}/{os.getpid()}"
    emit(("result", (result, pack(result.artifacts_dir))))


def _worker_state(settings: dict) -> tuple[Any, Any]:
    import torch

    from ..data import DataCache, resolve_device
    from ..plugins import get_plugins
    from ..runner import TrialContext, warm_up

    key = tuple(sorted((k, v) for k, v in settings.items() if k != "checkpoint_dir"))
    if key not in _WORKER:
        torch.set_num_threads(settings["threads"])
        plugins = get_plugins()
        device = resolve_device(settings["device"])
        data = DataCache(plugins, Path(settings["data_dir"]), device)
        warm_up(device)  # one-time costs here, not in the first trial's time (limit included)
        _WORKER[key] = (plugins, TrialContext(data, device, None, timeout=settings["timeout"],
                                              checkpoint_every=settings["checkpoint_every"],
                                              eval_mode=settings["eval_mode"]))
    return _WORKER[key]
