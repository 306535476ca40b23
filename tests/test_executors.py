"""Executors: the ``process`` executor runs trials in worker processes, several at once, with the
same results as ``inline``; a worker that dies or hangs fails only its trial."""

from __future__ import annotations

import copy

import pytest

from harness.bench import run_bench
from harness.errors import ConfigError
from harness.grid import build_grid
from harness.tracking import Tracker

DIGITS = {"name": "exec", "seeds": [0, 1], "device": "cpu",
          "grid": [{"distiller": ["random", "dm"], "dataset": ["digits"], "arch": ["mlp"], "ipc": [1]}],
          "eval": {"models": 2, "epochs": 5}, "distillers": {"dm": {"iterations": 5}}}


def accuracies(uri: str, name: str) -> dict:
    tracker = Tracker(uri)
    return {r.info.run_name: (r.info.status, r.data.metrics.get("acc_mean"), r.data.tags.get("error"))
            for r in tracker.trial_runs(tracker.experiment_id(name, create=False))}


@pytest.mark.slow
def test_process_and_inline_give_the_same_accuracies(tmp_path, mlflow_template):
    """Same grid, same seeds, CPU: identical per-trial accuracies (workers run torch on one thread
    here, as the test process does)."""
    import shutil

    from harness.plugins import load_plugins

    plugins = load_plugins()
    results = {}
    for executor in ("inline", "process"):
        shutil.copy(mlflow_template, tmp_path / f"{executor}.db")
        uri = f"sqlite:///{tmp_path / executor}.db"
        grid = build_grid({**copy.deepcopy(DIGITS), "executor": executor}, plugins)
        outcome = run_bench(grid, plugins, tracking_uri=uri, data_dir=tmp_path, workers=2 if executor == "process" else None)
        assert (outcome.passed, outcome.failed) == (4, 0)
        results[executor] = accuracies(uri, "exec")
    assert results["process"] == results["inline"]
    assert all(status == "FINISHED" for status, _, _ in results["process"].values())
    tracker = Tracker(f"sqlite:///{tmp_path / 'process'}.db")
    workers = {r.data.tags["worker"] for r in tracker.trial_runs(tracker.experiment_id("exec", create=False))}
    assert 1 <= len(workers) <= 2, workers  # each slot's worker is reused: 4 trials, at most 2 processes


@pytest.fixture
def worker_plugins(tests_plugin_env, monkeypatch):
    """Workers discover tests/plugins_for_tests.py through a real entry point (they load plugins
    themselves); the driver gets the same set."""
    from harness.plugins import load_plugins

    import importlib
    import os
    import sys

    monkeypatch.setenv("PYTHONPATH", tests_plugin_env["PYTHONPATH"])
    sys.path.insert(0, tests_plugin_env["PYTHONPATH"].split(os.pathsep)[0])  # the driver sees the entry point too
    importlib.invalidate_caches()
    try:
        yield load_plugins()
    finally:
        sys.path.pop(0)


@pytest.mark.slow(45)
def test_a_worker_that_dies_or_hangs_fails_only_its_trial(tmp_path, tracking_uri, worker_plugins, monkeypatch):
    """One slot: the worker that dies and the one that is killed are each replaced for the next trial."""
    import harness.executors.process as process

    monkeypatch.setattr(process, "KILL_GRACE_SECONDS", 1.0)  # kill a hung worker 1 s past its limit
    doc = {"name": "faults", "device": "cpu", "trial_timeout": 20, "executor": "process",
           "grid": [{"distiller": ["dies", "hangs", "random"], "dataset": ["tiny"], "arch": ["tiny-mlp"], "ipc": [1]}],
           "eval": {"models": 1, "epochs": 2}}
    grid = build_grid(doc, worker_plugins)
    outcome = run_bench(grid, worker_plugins, tracking_uri=tracking_uri, data_dir=tmp_path, workers=1)
    assert (outcome.passed, outcome.failed) == (1, 2)
    runs = accuracies(tracking_uri, "faults")
    assert runs["dies/tiny/tiny-mlp/ipc1/seed0"][::2] == ("FAILED", "WorkerDied: the worker process died "
                                                                    "(killed by signal 9)")
    assert runs["hangs/tiny/tiny-mlp/ipc1/seed0"][::2] == ("FAILED", "TrialTimeout: timeout: the worker ran past "
                                                                     "trial_timeout = 20 s and was killed")
    assert runs["random/tiny/tiny-mlp/ipc1/seed0"][0] == "FINISHED"


def test_a_worker_takes_the_drivers_environment_as_it_is_when_the_worker_starts(tmp_path, tracking_uri,
                                                                                worker_plugins, monkeypatch):
    """Workers fork from a server that outlives a bench (harness.executors.process.start_method), started
    with the environment of its own start; each worker still runs in the driver's environment of the
    moment it starts, as a spawned worker would."""
    import os

    from harness.executors.process import start_method

    doc = {"device": "cpu", "executor": "process", "distillers": {"sleeper": {"steps": 1, "seconds": 0.0}},
           "grid": [{"distiller": ["sleeper"], "dataset": ["tiny"], "arch": ["tiny-mlp"], "ipc": [1]}],
           "eval": {"models": 1, "epochs": 1}}
    seen = []
    for bench in range(2):
        pids = tmp_path / f"pids-{bench}"
        pids.mkdir()
        monkeypatch.setenv("SLEEPER_PIDS", str(pids))  # where the trial's process leaves its pid
        grid = build_grid({**doc, "name": f"env-{bench}"}, worker_plugins)
        outcome = run_bench(grid, worker_plugins, tracking_uri=tracking_uri, data_dir=tmp_path, workers=1)
        assert outcome.passed == 1
        seen.append([int(p.name) for p in pids.iterdir()])
    assert len(seen[0]) == len(seen[1]) == 1 and seen[0] != seen[1] and os.getpid() not in seen[0] + seen[1], seen
    assert start_method() == "forkserver"  # Linux: the case under test


def test_workers_only_for_an_executor_that_takes_them(tiny_plugins, tracking_uri, tmp_path):
    grid = build_grid({"grid": [{"distiller": "random", "dataset": "tiny", "arch": "tiny-mlp", "ipc": 1}]},
                      tiny_plugins)
    with pytest.raises(ConfigError, match=r"^--workers applies to the process or ray executor; executor 'inline' "
                                          r"does not take it: drop --workers or choose --executor process$"):
        run_bench(grid, tiny_plugins, tracking_uri=tracking_uri, data_dir=tmp_path, workers=2)


def test_the_process_and_ray_executors_are_registered_by_the_core(tiny_plugins):
    assert {"inline", "process", "ray"} <= set(tiny_plugins.executors.names())


def test_process_workers_default_to_one_per_gpu_only_on_cuda(monkeypatch):
    """CUDA mocked at the torch.cuda query boundary: 3 visible GPUs -> 3 workers on a CUDA device,
    2 CPU workers on --device cpu (the GPUs are not the trials' then)."""
    import torch

    from harness.executors.process import default_workers

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    assert default_workers(torch.device("cuda")) == 3
    assert default_workers(torch.device("cpu")) == 2


def test_each_worker_is_pinned_to_its_gpu_or_gets_its_share_of_cores(monkeypatch, tmp_path):
    import os
    from types import SimpleNamespace

    import torch

    from harness.executors.process import worker_settings

    ctx = lambda device: SimpleNamespace(device=torch.device(device), data=SimpleNamespace(data_dir=tmp_path),  # noqa: E731
                                         timeout=None, checkpoint_every=None, eval_mode="auto")
    assert [worker_settings(slot, 3, ctx("cuda"))["gpu"] for slot in range(3)] == ["0", "1", "2"]
    assert worker_settings(1, 3, ctx("cuda"))["device"] == "cuda"  # its one visible GPU
    assert worker_settings(1, 2, ctx("cuda:1"))["gpu"] == "1"  # --device cuda:1: that GPU for every worker
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    cpu = worker_settings(0, 4, ctx("cpu"))
    assert (cpu["gpu"], cpu["device"], cpu["threads"]) == (None, "cpu", 4)


@pytest.mark.parametrize("args,fragment", [
    (["--executor", "procss"], "unknown executor 'procss'; did you mean 'process'?"),
    (["--workers", "2"], "--workers applies to the process or ray executor; executor 'inline' does not take it"),
    (["--ray-address", "auto"], "--ray-address applies to the ray executor; executor 'inline' does not take it"),
    (["--executor", "process", "--ray-address", "auto"], "--ray-address applies to the ray executor; executor 'process'"),
])
def test_cli_executor_options_are_checked_before_compute(tmp_path, args, fragment):
    from cli_in_process import run_harness

    (tmp_path / "g.toml").write_text('[[grid]]\ndistiller = "random"\ndataset = "digits"\narch = "mlp"\nipc = 1\n')
    proc = run_harness("bench", "g.toml", *args, cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and fragment in proc.stderr, proc.stderr


def test_a_worker_that_cannot_set_its_trial_up_fails_it_with_the_reason(tmp_path, tracking_uri, tiny_plugins):
    """The driver knows the tests' plugins in-process; a worker loads only installed entry points, so
    it cannot find 'means': that trial fails with the worker's one-line reason, the grid goes on."""
    doc = {"name": "setup", "device": "cpu", "executor": "process",
           "grid": [{"distiller": ["means"], "dataset": ["digits"], "arch": ["mlp"], "ipc": [1]}],
           "eval": {"models": 1, "epochs": 1}}
    outcome = run_bench(build_grid(doc, tiny_plugins), tiny_plugins, tracking_uri=tracking_uri, data_dir=tmp_path)
    assert (outcome.passed, outcome.failed) == (0, 1)
    status, _, error = accuracies(tracking_uri, "setup")["means/digits/mlp/ipc1/seed0"]
    assert status == "FAILED" and error.startswith("WorkerSetupError: ") and "'means'" in error, error


def test_trials_running_at_once_each_get_a_live_bar_moved_by_their_streamed_points():
    import io
    from types import SimpleNamespace

    from rich.console import Console

    from harness.progress import BenchProgress

    a, b = SimpleNamespace(label="dm/d/a/ipc1/seed0"), SimpleNamespace(label="dm/d/a/ipc1/seed1")
    done = SimpleNamespace(passed=True, metrics={"acc_mean": 80.0, "gain": 5.0}, error="")
    with BenchProgress(Console(file=io.StringIO(), force_terminal=True, width=200), 2) as progress:
        progress.remote_started(a)
        progress.remote_started(b)
        progress.remote_point(a, 41, {"loss": 0.25})
        bars = {t.description.strip().split(" ")[0]: t for t in progress._progress.tasks if t.visible}
        assert bars[a.label].completed == 42 and "step 41 loss=0.25" in bars[a.label].description
        assert bars[b.label].description.strip() == f"{b.label} started"
        progress.trial_done(a, done, 3.0)
        assert a.label not in {t.description.strip().split(" ")[0] for t in progress._progress.tasks}
        assert b.label in {t.description.strip().split(" ")[0] for t in progress._progress.tasks}

    out = io.StringIO()  # not a terminal: a heartbeat line per trial, at most every PLAIN_EVERY seconds
    plain = BenchProgress(Console(file=out, force_terminal=False, width=200), 2)
    plain.PLAIN_EVERY = 0.0
    with plain:
        plain.remote_started(a)
        plain.remote_point(a, 7, {"loss": 0.5})
        plain.trial_done(a, done, 1.0)
    assert out.getvalue().splitlines() == [f"{a.label}: started (1 running)", f"    {a.label} step 7: loss=0.5",
                                           f"[1/2] {a.label}: acc 80.00% gain +5.00 (1.0s)"]


def test_ctrl_c_stops_the_process_executor_when_the_signal_lands_on_one_of_its_threads():
    """The kernel may hand a process's SIGINT to any of its threads; Python runs the handler in the
    main thread only, between bytecodes. The driver's main thread, waiting on its slot threads, must
    still raise KeyboardInterrupt (and stop the slots) while the trials run, not once one ends."""
    from harness.executors.process import ProcessExecutor

    interrupt_a_slot_thread_while_trials_run(ProcessExecutor(workers=2))


def interrupt_a_slot_thread_while_trials_run(executor) -> None:
    """Run two never-ending trials (``executor``'s slot threads call a stand-in ``run_trial`` that
    stops when the executor does, as the real ones do), send SIGINT to one slot thread, and check
    that the driver's wait raises KeyboardInterrupt and stops the executor meanwhile."""
    import signal
    import threading
    import time

    release = threading.Event()  # the "trials" end only when released: by the test's deadline at the latest
    slots: list[int] = []
    gave_up = threading.Event()

    def run_trial(bound, compute):
        slots.append(threading.get_ident())
        while not release.wait(0.05):
            if executor._stop.is_set():
                raise KeyboardInterrupt("the driver was interrupted")
        return bound

    def interrupt():
        deadline = time.monotonic() + 120
        while len(slots) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        signal.pthread_kill(slots[0], signal.SIGINT)  # as if the kernel had chosen that thread
        if not executor._stop.wait(60):  # generous: the driver wakes every WAKE_SECONDS
            gave_up.set()  # it did not react: end the trials, so the test fails instead of hanging
            release.set()

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # test workers ignore SIGINT
    try:
        threading.Thread(target=interrupt, daemon=True).start()
        with pytest.raises(KeyboardInterrupt):
            list(executor.run(["trial-a", "trial-b"], run_trial))
    finally:
        release.set()
        signal.signal(signal.SIGINT, previous)
    assert not gave_up.is_set(), "the driver went on for 60 s after SIGINT, until its trials ended"
    assert executor._stop.is_set() and len(slots) == 2


def test_as_they_finish_yields_each_future_once_those_finishing_together_in_the_order_given():
    from concurrent.futures import Future

    from harness.executors import as_they_finish

    futures = [Future() for _ in range(4)]
    for i in (2, 0):
        futures[i].set_result(i)
    seen = as_they_finish(futures, wake_seconds=0.01)
    assert [next(seen).result(), next(seen).result()] == [0, 2]
    futures[3].set_result(3)
    assert next(seen).result() == 3
    futures[1].set_result(1)
    assert [f.result() for f in seen] == [1]
