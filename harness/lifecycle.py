"""The life of MLflow runs while a driver works: who owns a run, proof that its owner is alive, and
what happens to runs whose owner died.

Every run a driver creates carries ``driver.host``, ``driver.pid`` and a ``heartbeat`` tag (ms since
the epoch) that a background thread refreshes every :data:`HEARTBEAT_SECONDS`. A RUNNING run is
**dead** when its driver ran on this host and that process is gone, or when its heartbeat is older
than :data:`STALE_SECONDS` (another host, or a frozen process). ``harness bench`` marks dead runs
KILLED with their last heartbeat as end time before it starts, so nothing stays RUNNING forever and
reports never count them.

A finished trial's files wait in a temporary directory until the driver has logged them
(:func:`trial_dir`); a process killed hard in between leaves it behind, and ``harness bench`` removes
such directories of dead processes (:func:`sweep_trial_dirs`).

A trial is **claimed** in two phases, so two drivers on one store never run it twice. A driver
creates its run first (tag ``claim = pending``), then looks at the other runs with the trial's key:
a FINISHED one, a live one that has won its claim, or an older live pending one (by
:func:`claim_order`) makes it delete its own run and skip the trial. Otherwise it marks its run
``claim = won`` and looks again; if another live run has won meanwhile, it withdraws (back to
``pending``) and tries again after a random wait. Start times alone cannot decide: a run's start time
is taken before the store sees the run, so a driver that stalls in between looks older to a rival
that has already checked without seeing it (a trial ran twice that way, under load). Whichever of
two drivers marks ``won`` last sees the other's mark, so at most one of them goes on.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

HOST, PID, HEARTBEAT = "driver.host", "driver.pid", "heartbeat"
CLAIM, PENDING, WON = "claim", "pending", "won"  # the claim's phase, a tag of every trial run
CLAIM_ATTEMPTS = 8  # withdrawals after a tie before a driver leaves the trial to its rival
HEARTBEAT_SECONDS = 30.0
STALE_SECONDS = 15 * 60.0  # generous: a loaded machine may delay a heartbeat by minutes


def now_ms() -> int:
    return int(time.time() * 1000)


def driver_tags() -> dict[str, str]:
    """The tags that say which process owns a run, with a fresh heartbeat."""
    return {HOST: socket.gethostname(), PID: str(os.getpid()), HEARTBEAT: str(now_ms())}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


TRIAL_DIR_PREFIX = "harness-trial-"
ORPHAN_SECONDS = 3600.0  # a dead owner AND this old: a pid namespace sharing /tmp cannot fool the sweep


def trial_dir() -> Path:
    """A new temporary directory for one trial's files, named after this process
    (``harness-trial-<pid>-*``) so that :func:`sweep_trial_dirs` can tell when its owner is gone."""
    return Path(tempfile.mkdtemp(prefix=f"{TRIAL_DIR_PREFIX}{os.getpid()}-"))


def sweep_trial_dirs(root: str | Path | None = None, now: float | None = None) -> int:
    """Remove the trial directories (:func:`trial_dir`) whose process is gone and that are older
    than :data:`ORPHAN_SECONDS`: what a driver or worker killed hard (kill -9, OOM) left behind.
    Returns how many. Directories of live processes, and any other name, are never touched."""
    root = Path(tempfile.gettempdir() if root is None else root)
    now = time.time() if now is None else now
    removed = 0
    for path in root.glob(f"{TRIAL_DIR_PREFIX}*-*"):
        pid = path.name[len(TRIAL_DIR_PREFIX):].split("-", 1)[0]
        try:
            old = now - path.stat().st_mtime > ORPHAN_SECONDS
        except OSError:  # removed meanwhile
            continue
        if pid.isdigit() and old and path.is_dir() and not _pid_alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)
            removed += 1
    return removed


def is_dead(run: Any, now: int | None = None) -> bool:
    """Whether a RUNNING run's driver is gone (see the module docstring)."""
    tags = run.data.tags
    now = now_ms() if now is None else now
    beat = int(tags.get(HEARTBEAT) or run.info.start_time or 0)
    if tags.get(HOST) == socket.gethostname() and tags.get(PID, "").isdigit():
        pid = int(tags[PID])
        if pid == os.getpid():
            return False
        if not _pid_alive(pid):
            return True
    return now - beat > STALE_SECONDS * 1000


def last_alive_ms(run: Any) -> int:
    """When a dead run was last known alive: its heartbeat, else its start."""
    return int(run.data.tags.get(HEARTBEAT) or run.info.start_time or now_ms())


def claim_order(run: Any) -> tuple[int, str]:
    """Older claims go first; the run id breaks ties the same way for every driver."""
    return (int(run.info.start_time or 0), run.info.run_id)


def has_won(run: Any) -> bool:
    """Whether a live RUNNING run holds its trial: it won its claim, or it predates claim phases."""
    return run.data.tags.get(CLAIM, WON) != PENDING


class Heartbeat:
    """A daemon thread that refreshes the ``heartbeat`` tag of the runs this driver holds open."""

    def __init__(self, beat: Callable[[list[str]], None], every: float = HEARTBEAT_SECONDS):
        self._beat, self._every = beat, every
        self._runs: dict[str, None] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="harness-heartbeat", daemon=True)

    def __enter__(self) -> "Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=self._every + 5)

    def hold(self, run_id: str) -> None:
        with self._lock:
            self._runs[run_id] = None

    def release(self, run_id: str) -> None:
        with self._lock:
            self._runs.pop(run_id, None)

    def _loop(self) -> None:
        while not self._stop.wait(self._every):
            with self._lock:
                runs = list(self._runs)
            if runs:
                try:
                    self._beat(runs)
                except Exception:  # a missed beat is not fatal; the next one may get through
                    pass


class CurveStream:
    """Buffers a running trial's curve points and sends them to its run in batches (every
    ``every`` seconds or ``max_points`` points), so the UI shows a long distillation as it goes.
    A failed send keeps the points for the next try, and tries less often (the interval doubles, up
    to 5 minutes) so an unavailable store does not slow the trial; ``sent`` counts what arrived."""

    def __init__(self, send: Callable[[list[tuple[int, dict[str, float]]]], None], every: float = 10.0,
                 max_points: int = 2000):
        self._send, self._every, self._max = send, every, max_points
        self._base_every = every
        self._failing = False
        self._buffer: list[tuple[int, dict[str, float]]] = []
        self._last = time.monotonic()
        self.sent = 0
        self.failures = 0

    def add(self, step: int, metrics: dict[str, float]) -> None:
        self._buffer.append((step, metrics))
        if time.monotonic() - self._last >= self._every or (len(self._buffer) >= self._max and not self._failing):
            self.flush()

    def flush(self) -> None:
        self._last = time.monotonic()
        if not self._buffer:
            return
        try:
            self._send(self._buffer)
        except Exception:
            self.failures += 1
            self._failing = True
            self._every = min(max(self._every, 1.0) * 2, 300.0)
            return
        self.sent += len(self._buffer)
        self._buffer = []
        self._every, self._failing = self._base_every, False

    def restart(self) -> None:
        """The trial starts over (an executor retries it after its worker was lost): what the lost
        attempt produced is sent, and ``sent`` counts the new attempt's points from here, so it
        stays the number of the final result's ``curves`` already in the run."""
        self.flush()
        self._buffer = []  # unsendable now (the store is down): the lost attempt's, never the result's
        self.sent = 0


def env_seconds(name: str, default: tuple[float, ...]) -> tuple[float, ...]:
    """Seconds from the environment variable ``name`` (comma-separated, each >= 0), else
    ``default``; a malformed value is one line naming the variable."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        values = tuple(float(v) for v in raw.split(","))
    except ValueError:
        values = ()
    if not values or any(not (v >= 0) or v == float("inf") for v in values):
        from .errors import HarnessError

        raise HarnessError(f"{name}={raw!r} is not a comma-separated list of seconds >= 0 (e.g. "
                           f"{','.join(f'{d:g}' for d in default)}); fix or unset it")
    return values
