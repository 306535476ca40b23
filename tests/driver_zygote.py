"""Driver processes for the tests, forked from a warm zygote instead of started from scratch.

A fresh ``python -m harness bench`` spends about 6 s of CPU importing torch, MLflow, matplotlib and
pandas before it reads its grid, and the tests that interrupt, kill and race real drivers start
dozens: on the 2-core test machine those drivers took about 30% of the suite's CPU, most of it in
these imports. The zygote (one per test worker, started by its first driver) imports them once;
each driver is then a fork of it that runs ``python -m harness ARGS`` from the point after the
imports: a real process of its own (its own pid, signal handlers, exit status, stdout and stderr
pipes, environment and working directory), started with the disposition a terminal gives it
(SIGINT raises KeyboardInterrupt).

What a fork does not redo is the interpreter's start-up and those imports, which no test here is
about (a ``sitecustomize`` on the driver's ``PYTHONPATH`` still runs first, as site.py would run
it). Nor does it tear those modules down when it exits (its threads are joined, its atexit handlers
run and its output flushed, as the interpreter does): in a fork, that teardown copied the inherited
heap page by page, 1.7 s of each driver. Tests of what a fresh process imports or prints keep
exec-ing one. ``HARNESS_TESTS_EXEC=1`` starts every driver from scratch too (``subprocess.Popen``),
for a run that trusts nothing warm.

Run as a script, this module is the zygote: it imports, then forks a driver for each request read
from its socket (argv, environment, working directory, and the driver's stdout/stderr passed as
file descriptors) and reports each driver's pid, then its exit status once it has reaped it.
"""

from __future__ import annotations

import gc
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

EXEC_ENV = "HARNESS_TESTS_EXEC"
PRELOAD = ("torch", "numpy", "pandas", "matplotlib.pyplot", "rich.console", "rich.progress", "click",
           "sqlalchemy", "alembic", "mlflow", "mlflow.tracking", "mlflow.entities",
           "mlflow.store.tracking.sqlalchemy_store", "mlflow.system_metrics.system_metrics_monitor",
           "safetensors.torch", "harness.cli", "harness.bench", "harness.plan", "harness.runner",
           "harness.tracking", "harness.report", "harness.plots", "harness.progress", "harness.spool",
           "harness.lifecycle", "harness.executors.process", "harness.artifacts", "harness.evaluate",
           "harness_vision", "harness_distillers", "harness_text")


# -- the test side -----------------------------------------------------------------------------
class Driver:
    """A forked driver, as much of :class:`subprocess.Popen` as the tests use: ``pid``,
    ``returncode``, ``poll``, ``wait``, ``communicate``, ``send_signal``, ``kill``, ``terminate``."""

    def __init__(self, zygote: "Zygote", pid: int, stdout: int, stderr: int):
        self._zygote, self.pid, self.returncode = zygote, pid, None
        self._pipes = {"out": os.fdopen(stdout, "r", errors="replace"), "err": os.fdopen(stderr, "r", errors="replace")}
        self._text = {"out": [], "err": []}
        self._readers = [threading.Thread(target=self._drain, args=(name,), daemon=True) for name in self._pipes]
        for reader in self._readers:
            reader.start()

    def _drain(self, name: str) -> None:
        with self._pipes[name] as pipe:
            for chunk in iter(lambda: pipe.read(65536), ""):
                self._text[name].append(chunk)

    def poll(self) -> int | None:
        if self.returncode is None:
            self.returncode = self._zygote.exit_code(self.pid)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(f"driver {self.pid}", timeout)
            self._zygote.wait_for_news(0.2)
        return self.returncode

    def communicate(self, timeout: float | None = None) -> tuple[str, str]:
        self.wait(timeout)
        for reader in self._readers:  # the driver's children may hold its pipes open: bounded
            reader.join(timeout=30)
        return "".join(self._text["out"]), "".join(self._text["err"])

    def send_signal(self, signum: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, signum)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)


class Zygote:
    """The test worker's zygote process and the socket it takes requests on."""

    def __init__(self, log: Path):
        ours, theirs = socket.socketpair()
        self._log = log
        self._process = subprocess.Popen([sys.executable, __file__, str(theirs.fileno())], pass_fds=(theirs.fileno(),),
                                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                         stderr=open(log, "w"), start_new_session=True)
        theirs.close()
        self._socket, self._buffer = ours, b""
        self._exits: dict[int, int] = {}
        self._lock = threading.Lock()  # one reader of the socket at a time

    def start(self, argv: list[str], env: dict[str, str], cwd: Path) -> Driver:
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        request = json.dumps({"argv": argv, "env": env, "cwd": str(cwd)}).encode() + b"\n"
        with self._lock:
            try:
                socket.send_fds(self._socket, [request], [out_w, err_w])
            except OSError:  # it exited (say, an import failed): its log says why
                raise RuntimeError(f"the driver zygote is gone; its log: {self._log.read_text()[-2000:]}") from None
            finally:
                os.close(out_w)
                os.close(err_w)
            pid = None
            while pid is None:
                message = self._read(timeout=300)
                if message is None:
                    raise RuntimeError(f"the driver zygote did not answer; its log: {self._log.read_text()[-2000:]}")
                if "pid" in message:
                    pid = message["pid"]
        return Driver(self, pid, out_r, err_r)

    def exit_code(self, pid: int) -> int | None:
        with self._lock:
            while self._read(timeout=0) is not None:  # every message so far
                pass
            return self._exits.get(pid)

    def wait_for_news(self, timeout: float) -> None:
        with self._lock:
            self._read(timeout)

    def _read(self, timeout: float) -> dict | None:
        """One message from the zygote (exit statuses are kept as they come), or None by ``timeout``."""
        import select

        while b"\n" not in self._buffer:
            if self._process.poll() is not None:
                raise RuntimeError(f"the driver zygote exited; its log: {self._log.read_text()[-2000:]}")
            ready, _, _ = select.select([self._socket], [], [], timeout)
            if not ready:
                return None
            data = self._socket.recv(65536)
            if not data:
                raise RuntimeError(f"the driver zygote closed its socket; its log: {self._log.read_text()[-2000:]}")
            self._buffer += data
        line, self._buffer = self._buffer.split(b"\n", 1)
        message = json.loads(line)
        if "exit" in message:
            self._exits[message["exit"]] = message["code"]
        return message

    def close(self) -> None:
        """End the zygote (its drivers are the tests' to end) and remove its log."""
        self._socket.close()
        try:
            self._process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self._process.kill()
        self._log.unlink(missing_ok=True)


_zygote: Zygote | None = None


def start_driver(argv: list[str], env: dict[str, str], cwd: Path, preexec_fn=None) -> "Driver | subprocess.Popen":
    """``python -m harness ARGV`` with environment ``env`` (the whole of it) in ``cwd``, its stdout and
    stderr piped, SIGINT raising KeyboardInterrupt: forked from this worker's zygote, or exec-ed
    when ``HARNESS_TESTS_EXEC=1``."""
    global _zygote
    if os.environ.get(EXEC_ENV) == "1":
        return subprocess.Popen([sys.executable, "-m", "harness", *argv], cwd=cwd, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, preexec_fn=preexec_fn)
    if _zygote is None:
        import atexit
        import tempfile

        _zygote = Zygote(Path(tempfile.mkstemp(prefix="harness-zygote-", suffix=".log")[1]))
        atexit.register(_zygote.close)
    return _zygote.start(argv, env, cwd)


def run_driver(argv: list[str], env: dict[str, str], cwd: Path, timeout: float = 900) -> subprocess.CompletedProcess:
    """:func:`start_driver`, waited for: its exit code and output, as ``subprocess.run`` gives them."""
    proc = start_driver(argv, env, cwd)
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        proc.kill()  # only one still running past the timeout
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


# -- the zygote ----------------------------------------------------------------------------------
def _serve(sock: socket.socket) -> dict:
    """Fork a driver per request; returns only in a forked driver, with its request."""
    import select

    children: set[int] = set()
    buffer, fds = b"", []
    while True:
        while children:  # reap and report
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            children.discard(pid)
            sock.sendall(json.dumps({"exit": pid, "code": os.waitstatus_to_exitcode(status)}).encode() + b"\n")
        ready, _, _ = select.select([sock], [], [], 0.1)
        if not ready:
            continue
        data, new_fds, _, _ = socket.recv_fds(sock, 65536, 8)
        if not data:
            return {}  # the test worker is gone
        buffer += data
        fds += new_fds
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            (out, err), fds = fds[:2], fds[2:]
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                sock.close()
                for fd in fds:
                    os.close(fd)
                return {**json.loads(line), "out": out, "err": err}
            os.close(out)
            os.close(err)
            children.add(pid)
            sock.sendall(json.dumps({"pid": pid}).encode() + b"\n")


def _become(request: dict) -> None:
    """Turn this fork into what ``python -m harness ARGV`` is after its imports."""
    import importlib
    import tempfile

    os.dup2(request["out"], 1)
    os.dup2(request["err"], 2)
    os.close(request["out"])
    os.close(request["err"])
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    extra = [p for p in request["env"].get("PYTHONPATH", "").split(os.pathsep) if p]
    sys.path[:] = [request["cwd"], *extra, *[p for p in sys.path[1:] if p not in extra]]
    importlib.invalidate_caches()
    if any(os.path.exists(os.path.join(p, "sitecustomize.py")) for p in extra):
        sys.modules.pop("sitecustomize", None)  # what site.py runs at start-up with this PYTHONPATH
        importlib.import_module("sitecustomize")
    tempfile.tempdir = None  # read again from this environment
    sys.argv = ["harness", *request["argv"]]


def _exit_status(exc: SystemExit) -> int:
    """The exit status the interpreter gives an uncaught ``SystemExit``."""
    if exc.code is None:
        return 0
    if isinstance(exc.code, int):
        return exc.code
    print(exc.code, file=sys.stderr)
    return 1


def _exit_as_python_would(status: int) -> None:
    """End a forked driver as the interpreter ends a process (its other non-daemon threads joined,
    atexit handlers run, stdout and stderr flushed) without tearing its modules down: in a fork of
    the zygote, freeing torch's and MLflow's objects wrote to every page of the inherited heap and
    so copied it, 1.7 s of each driver's exit here (a ``--help`` took 1.8 s instead of 0.1 s)."""
    import atexit

    for thread in threading.enumerate():
        if thread is not threading.main_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # closed, or a reader gone: the interpreter ignores it too
            pass
    os._exit(status)


if __name__ == "__main__":
    channel = socket.socket(fileno=int(sys.argv[1]))
    for name in PRELOAD:
        __import__(name)
    # a fork copies only the forking thread: another Python thread could hold a lock the driver needs.
    # (torch's and pyarrow's jemalloc's C threads are made for forks, as torch's DataLoader workers are.)
    if threading.active_count() != 1:
        raise SystemExit(f"driver zygote: Python threads besides the main one after the imports: "
                         f"{[t.name for t in threading.enumerate()]}")
    # the forks' garbage collections skip what the zygote imported: walking it would copy its pages
    gc.freeze()
    request = _serve(channel)
    if not request:
        raise SystemExit(0)
    _become(request)
    del channel, request
    import runpy

    try:
        runpy.run_module("harness", run_name="__main__", alter_sys=True)
        status = 0
    except SystemExit as exc:  # how the harness's CLI always ends
        status = _exit_status(exc)
    _exit_as_python_would(status)
