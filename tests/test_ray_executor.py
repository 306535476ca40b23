"""The ``ray`` executor on a real local Ray cluster (2 CPUs, started once for this module): the same
accuracies as ``inline``; a trial whose worker dies is retried once, then fails alone; a hung trial
is cancelled; Ctrl-C and SIGTERM still reach the driver; resources, the missing extra and the cluster's
fit, each checked."""

from __future__ import annotations

import copy
import os
import shutil
from pathlib import Path

import pytest

from harness.bench import make_executor, run_bench
from harness.errors import ConfigError
from harness.grid import build_grid
from harness.tracking import Tracker

from test_executors import DIGITS, accuracies, interrupt_a_slot_thread_while_trials_run
from test_lifecycle import still_running

ray = pytest.importorskip("ray", reason="Ray is the optional extra distill-harness[ray]; `make setup` installs it")
pytestmark = pytest.mark.xdist_group("ray")  # one cluster for the module, in one test worker


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    """A local cluster whose workers also discover tests/plugins_for_tests.py through a real entry
    point (the `dies` and `hangs` distillers); the executor joins it instead of starting its own."""
    site = tmp_path_factory.mktemp("site")
    info = site / "faulty_plugins-0.0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: faulty-plugins\nVersion: 0.0.1\n")
    (info / "entry_points.txt").write_text("[harness]\nfaulty = plugins_for_tests\n")
    path = os.pathsep.join([str(site), str(Path(__file__).parent)])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": {"PYTHONPATH": path}})
    try:
        yield path
    finally:
        ray.shutdown()


@pytest.mark.slow(40)
def test_ray_and_inline_give_the_same_accuracies(ray_cluster, tmp_path, mlflow_template):
    from harness.plugins import load_plugins

    plugins = load_plugins()
    results = {}
    for executor in ("inline", "ray"):
        shutil.copy(mlflow_template, tmp_path / f"{executor}.db")
        uri = f"sqlite:///{tmp_path / executor}.db"
        grid = build_grid({**copy.deepcopy(DIGITS), "executor": executor}, plugins)
        outcome = run_bench(grid, plugins, tracking_uri=uri, data_dir=tmp_path)
        assert (outcome.passed, outcome.failed) == (4, 0)
        results[executor] = accuracies(uri, "exec")
    assert results["ray"] == results["inline"]
    tracker = Tracker(f"sqlite:///{tmp_path / 'ray'}.db")
    runs = tracker.trial_runs(tracker.experiment_id("exec", create=False))
    assert all(r.data.tags.get("worker") for r in runs)  # each trial ran in a Ray worker, tagged with it
    artifacts = tracker.client.list_artifacts(runs[0].info.run_id)
    assert "distilled.safetensors" in {a.path for a in artifacts}  # its files came back with the result


@pytest.mark.slow(45)
def test_a_ray_trial_whose_worker_dies_or_hangs_fails_alone(ray_cluster, tmp_path, tracking_uri, monkeypatch):
    import sys

    import harness.executors.process as process
    from harness.plugins import load_plugins

    monkeypatch.setattr(process, "KILL_GRACE_SECONDS", 1.0)  # the grace both executors' relay() adds
    monkeypatch.syspath_prepend(ray_cluster.split(os.pathsep)[0])  # the driver sees the entry point too
    monkeypatch.syspath_prepend(ray_cluster.split(os.pathsep)[1])
    sys.modules.pop("plugins_for_tests", None)
    plugins = load_plugins()
    # the limit counts from the trial's start in its worker (after the worker's set-up); the
    # `random` trial then needs well under a second, so 20 s is generous even on a loaded machine
    doc = {"name": "faults", "device": "cpu", "trial_timeout": 20, "executor": "ray",
           "grid": [{"distiller": ["dies", "hangs", "random"], "dataset": ["tiny"], "arch": ["tiny-mlp"], "ipc": [1]}],
           "eval": {"models": 1, "epochs": 2}}
    outcome = run_bench(build_grid(doc, plugins), plugins, tracking_uri=tracking_uri, data_dir=tmp_path)
    runs = accuracies(tracking_uri, "faults")
    assert (outcome.passed, outcome.failed) == (1, 2), runs  # each run's status and error, should it fail
    status, _, error = runs["dies/tiny/tiny-mlp/ipc1/seed0"]
    assert status == "FAILED" and error.startswith("WorkerDied: ") and error.endswith("(after 1 retry)"), error
    assert runs["hangs/tiny/tiny-mlp/ipc1/seed0"][::2] == ("FAILED", "TrialTimeout: timeout: the trial ran past "
                                                                     "trial_timeout = 20 s and was cancelled")
    assert runs["random/tiny/tiny-mlp/ipc1/seed0"][0] == "FINISHED"


def test_ctrl_c_stops_the_ray_executor_when_the_signal_lands_on_one_of_its_threads(ray_cluster):
    from harness.executors.ray_executor import RayExecutor

    interrupt_a_slot_thread_while_trials_run(RayExecutor(workers=2))


def test_a_driver_kills_its_own_clusters_trial_workers_and_nothing_else(ray_cluster):
    """What a Ctrl-C'd driver does before it shuts its own cluster down: a worker still running a
    trial dies, even one that gets no CPU (stopped here), while the cluster's other processes live."""
    import signal
    import time

    import psutil

    from harness.executors.ray_executor import stop_trial_workers

    def trial_task() -> None:  # the name a Ray worker running the executor's task takes
        time.sleep(600)

    def descendants() -> dict[int, str]:
        found = {}
        for process in psutil.Process().children(recursive=True):
            try:
                found[process.pid] = (process.cmdline() or [""])[0]
            except psutil.Error:
                pass
        return found

    ref = ray.remote(trial_task).options(num_cpus=1, max_retries=0).remote()
    deadline = time.monotonic() + 300
    while "ray::trial_task" not in descendants().values():
        assert time.monotonic() < deadline, f"no worker ran the task: {descendants()}"
        time.sleep(0.1)
    others = {pid for pid, title in descendants().items() if title != "ray::trial_task"}
    worker = next(pid for pid, title in descendants().items() if title == "ray::trial_task")
    os.kill(worker, signal.SIGSTOP)
    stop_trial_workers()
    assert not still_running(worker)
    assert all(psutil.pid_exists(pid) for pid in others)
    with pytest.raises(ray.exceptions.RayError):  # Ray sees a lost worker, and the cluster goes on
        ray.get(ref, timeout=300)
    assert ray.get(ray.remote(lambda: 7).remote(), timeout=300) == 7


def test_without_an_address_the_executor_starts_a_cluster_of_its_own_unless_ray_address_names_one(monkeypatch):
    """``ray.init(address=None)`` would also join the last ``ray start`` cluster of this host."""
    from harness.executors.ray_executor import RayExecutor

    addresses = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda address, **kwargs: addresses.append(address))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    RayExecutor().start([], None)  # (not closed: the module's cluster is this process's)
    assert addresses == ["local"]
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")
    with pytest.raises(ConfigError, match=r"^no Ray cluster answers at 127.0.0.1:1 .* or check RAY_ADDRESS$"):
        RayExecutor().start([], None)
    monkeypatch.setenv("RAY_ADDRESS", "auto")
    RayExecutor().start([], None)
    assert addresses == ["local", "auto"]


def test_joining_ray_keeps_the_drivers_sigterm_handling(ray_cluster, tmp_path):
    """ray.init sets SIGTERM to sys.exit(15) in the process that calls it: the driver's own handler
    (`kill` ends the runs KILLED and prints how to resume, as Ctrl-C does) must be back afterwards.
    Joins this module's cluster from a fresh process, as a driver does."""
    import subprocess
    import sys

    script = (
        "import signal\n"
        "def mine(signum, frame): pass\n"
        "signal.signal(signal.SIGTERM, mine)\n"
        "from harness.executors.ray_executor import RayExecutor\n"
        f"executor = RayExecutor(address={ray.get_runtime_context().gcs_address!r})\n"
        "executor.start([], None)\n"
        "print('kept' if signal.getsignal(signal.SIGTERM) is mine else signal.getsignal(signal.SIGTERM))\n"
        "executor.close()\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and done.stdout.strip() == "kept", done.stdout + done.stderr


def test_resources_table_is_checked_and_reaches_the_executor(tiny_plugins):
    from harness.executors.ray_executor import RayExecutor

    base = {"executor": "ray", "grid": [{"distiller": "random", "dataset": "tiny", "arch": "tiny-mlp", "ipc": 1}]}
    grid = build_grid({**base, "resources": {"cpus_per_trial": 2, "gpus_per_trial": 0.5}}, tiny_plugins)
    executor = make_executor(RayExecutor, grid, workers=None, address=None)
    assert executor.per_trial() == (2.0, 0.5)
    executor = make_executor(RayExecutor, build_grid(base, tiny_plugins))
    executor._device_type = "cuda"  # as start() records it from the driver's device
    assert executor.per_trial() == (1.0, 1.0)  # on CUDA a trial asks for one GPU unless told otherwise
    for resources, fragment in [({"gpu_per_trial": 1}, "unknown key 'gpu_per_trial'; did you mean 'gpus_per_trial'?"),
                                ({"cpus_per_trial": 0}, "cpus_per_trial must be > 0"),
                                ({"cpus_per_trial": "two"}, "expected float, got 'two'"),
                                ({"gpus_per_trial": 1}, 'gpus_per_trial = 1 but device = "cpu"')]:
        with pytest.raises(ConfigError, match=None) as info:
            build_grid({**base, "device": "cpu", "resources": resources}, tiny_plugins)
        assert fragment in str(info.value) and "\n" not in str(info.value), str(info.value)


def test_trials_at_once_follow_the_cluster():
    from harness.executors.ray_executor import fits

    assert fits({"CPU": 16.0, "GPU": 4.0}, 1.0, 0.5) == 8  # GPUs bound: two trials per GPU
    assert fits({"CPU": 16.0, "GPU": 4.0}, 4.0, 0.0) == 4
    assert fits({"CPU": 2.0}, 4.0, 0.0) == 1  # never fewer than one


def test_without_ray_the_executor_is_one_line_naming_the_extra(tiny_plugins, monkeypatch):
    import importlib.util

    from harness.executors.ray_executor import RayExecutor

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a))
    grid = build_grid({"executor": "ray", "grid": [{"distiller": "random", "dataset": "tiny", "arch": "tiny-mlp",
                                                    "ipc": 1}]}, tiny_plugins)
    with pytest.raises(ConfigError, match=r"^executor 'ray' needs Ray: pip install 'distill-harness\[ray\]'$"):
        make_executor(RayExecutor, grid)


@pytest.mark.slow
def test_under_ray_client_a_trial_posts_its_start_and_points_while_it_runs(ray_cluster, tmp_path, tracking_uri,
                                                                          monkeypatch):
    """Ray Client runs no generator tasks: there a trial is one task that posts its start and its
    points to the grid's mailbox actor, and the driver relays them while the trial still runs. The
    Ray Client path (whole tasks, the mailbox) is forced here on the local cluster; the `ray://`
    join test runs it through a real Ray Client."""
    import sys
    import time

    import harness.executors.ray_executor as rx
    from harness.plugins import load_plugins

    monkeypatch.syspath_prepend(ray_cluster.split(os.pathsep)[0])
    monkeypatch.syspath_prepend(ray_cluster.split(os.pathsep)[1])
    sys.modules.pop("plugins_for_tests", None)
    plugins = load_plugins()
    monkeypatch.setattr(rx.RayExecutor, "client_mode", property(lambda self: True))
    seen = tmp_path / "driver-saw-a-point"  # the trial keeps running until the driver has relayed a point
    events: list[str] = []
    real_relay, real_unpack = rx.relay, rx.unpack

    def relay(kind, payload, ctx, deadline):
        events.append(kind)
        if kind == "point":
            seen.touch()
        return real_relay(kind, payload, ctx, deadline)

    monkeypatch.setattr(rx, "relay", relay)
    monkeypatch.setattr(rx, "unpack", lambda files: events.append("result") or real_unpack(files))
    doc = {"name": "client", "device": "cpu", "executor": "ray", "trial_timeout": 600,
           "grid": [{"distiller": ["sleeper"], "dataset": ["tiny"], "arch": ["tiny-mlp"], "ipc": [1]}],
           "eval": {"models": 1, "epochs": 2}, "distillers": {"sleeper": {"steps": 5, "seconds": 0.05,
                                                                          "until": str(seen)}}}
    start = time.monotonic()
    outcome = run_bench(build_grid(doc, plugins), plugins, tracking_uri=tracking_uri, data_dir=tmp_path)
    assert outcome.passed == 1, accuracies(tracking_uri, "client")
    assert events[0] == "started" and "point" in events and events[-1] == "result", events
    assert events.index("point") < events.index("result")  # relayed while the trial ran
    tracker = Tracker(tracking_uri)
    run = tracker.trial_runs(tracker.experiment_id("client", create=False))[0]
    steps = [m.step for m in tracker.client.get_metric_history(run.info.run_id, "distill/loss")]
    assert steps == sorted(set(steps)) and steps[0] == 0 and len(steps) == steps[-1] + 1  # each point once
    assert time.monotonic() - start < 600


def test_a_retried_trial_restarts_its_curve_stream_first(monkeypatch):
    """Before a lost trial's new attempt the executor restarts the driver's curve stream, so the
    count of streamed points refers to the final attempt's curves (test_lifecycle covers the count)."""
    from types import SimpleNamespace

    from harness.executors.ray_executor import RayExecutor
    from harness.runner import TrialResult

    executor = RayExecutor(retries=1)
    events: list[str] = []
    outcomes = iter(["the worker died", TrialResult(trial=None, status="passed")])

    def attempt(task, bound, ctx, settings):
        events.append("attempt")
        return next(outcomes)

    monkeypatch.setattr(executor, "_attempt", attempt)
    ctx = SimpleNamespace(data=SimpleNamespace(data_dir="/data"), device="cpu", timeout=None, checkpoint_every=None,
                          eval_mode="auto", restart_stream=lambda: events.append("restart"))
    result = executor._remote(None, SimpleNamespace(trial=None), ctx, 1.0, 0.0)
    assert events == ["attempt", "restart", "attempt"] and result.tags["ray.retries"] == "1"
