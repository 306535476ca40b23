"""Nothing lost, nothing stuck: real driver processes interrupted, killed and racing on real stores.

Every wait is on a condition with a generous deadline, never a fixed sleep, so a loaded machine
only makes these tests slower.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import driver_zygote
import pytest
import torch
from cli_in_process import run_harness

from harness.lifecycle import HEARTBEAT, HOST, PID, STALE_SECONDS, CurveStream, Heartbeat, driver_tags, is_dead, now_ms
from harness.tracking import Tracker
from harness.specs import DistilledSet

GRID = """\
name = "life"
device = "cpu"
{extra}
[[grid]]
distiller = ["sleeper"]
dataset = ["tiny"]
arch = ["tiny-mlp"]
ipc = [1]
seeds = {seeds}

[eval]
epochs = 1
models = 1

[distillers.sleeper]
steps = {steps}
seconds = {seconds}
until = "{until}"
"""


def write_grid(tmp_path: Path, steps: int, seconds: float, seeds=(0,), extra: str = "", until: str = "") -> Path:
    """The sleeper's grid; ``until``: a file whose absence keeps each trial running (Sleeper)."""
    path = tmp_path / "life.toml"
    path.write_text(GRID.format(steps=steps, seconds=seconds, seeds=list(seeds), extra=extra, until=until))
    return path


RERUN_AT_ONCE = {"SLEEPER_SECONDS": "0"}  # a rerun's sleeper steps take no time (the trial and its key unchanged)


def _default_sigint() -> None:
    # a child inherits an ignored SIGINT (pytest-xdist workers ignore it), and Python then installs no
    # KeyboardInterrupt handler: give the driver the disposition a terminal gives it
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_driver(grid: Path, uri: str, env: dict, cwd: Path) -> "driver_zygote.Driver | subprocess.Popen":
    """``harness bench GRID`` in a driver process of its own (forked from this worker's warm zygote:
    tests/driver_zygote.py), its output piped, SIGINT raising KeyboardInterrupt as on a terminal."""
    return driver_zygote.start_driver(["bench", str(grid), "--tracking-uri", uri], {**os.environ, **env}, cwd,
                                      preexec_fn=_default_sigint)


def wait_for(condition, what: str, timeout: float = 300.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def still_running(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie (Linux: /proc)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def all_runs(uri: str, name: str = "life") -> list:
    tracker = Tracker(uri)
    exp = tracker.experiment_id(name, create=False)
    return [] if exp is None else tracker.client.search_runs([exp], max_results=1000)


def running_trial(uri: str):
    return next((r for r in all_runs(uri) if r.data.tags.get("run_kind") == "trial"
                 and r.info.status == "RUNNING"), None)


# -- interruption ---------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_an_interrupted_driver_ends_its_runs_killed_and_says_how_to_resume(tmp_path, tracking_uri,
                                                                             tests_plugin_env, sig):
    grid = write_grid(tmp_path, steps=100_000, seconds=0.01)
    proc = start_driver(grid, tracking_uri, {**tests_plugin_env, "HARNESS_STREAM_SECONDS": "1"}, tmp_path)
    try:
        run = wait_for(lambda: running_trial(tracking_uri), "the trial's run to be RUNNING")
        # curves are streamed while the trial runs (batched every second here, every 10 s by default)
        tracker = Tracker(tracking_uri)
        wait_for(lambda: tracker.client.get_metric_history(run.info.run_id, "distill/loss"), "streamed curve points")
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 130, (out, err)
    assert f"resume with: harness bench {grid}" in err and "Traceback" not in err
    runs = all_runs(tracking_uri)
    assert {r.data.tags["run_kind"]: r.info.status for r in runs} == {"trial": "KILLED", "bench": "KILLED"}
    assert all(r.info.end_time for r in runs)
    from harness.report import runs_frame

    assert len(runs_frame(Tracker(tracking_uri), "life")) == 0  # an interrupted trial is no result


@pytest.mark.slow
def test_a_driver_killed_hard_leaves_runs_the_next_bench_marks_killed_and_reruns(tmp_path, tracking_uri,
                                                                                 tests_plugin_env):
    grid = write_grid(tmp_path, steps=400, seconds=0.02)
    proc = start_driver(grid, tracking_uri, tests_plugin_env, tmp_path)
    try:
        wait_for(lambda: running_trial(tracking_uri), "the trial's run to be RUNNING")
    finally:
        proc.kill()  # SIGKILL: no handler runs
        proc.communicate(timeout=120)
    assert {r.info.status for r in all_runs(tracking_uri)} == {"RUNNING"}

    rerun = run_harness("bench", str(grid), "--tracking-uri", tracking_uri, cwd=tmp_path,
                        env={**tests_plugin_env, **RERUN_AT_ONCE})
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert "marked 2 run(s) KILLED whose driver had died" in rerun.stdout
    trials = [r for r in all_runs(tracking_uri) if r.data.tags["run_kind"] == "trial"]
    assert sorted(r.info.status for r in trials) == ["FINISHED", "KILLED"]
    killed = next(r for r in trials if r.info.status == "KILLED")
    assert killed.info.end_time <= int(killed.data.tags[HEARTBEAT]) + 1  # ended at its last sign of life
    from harness.report import runs_frame

    assert len(runs_frame(Tracker(tracking_uri), "life")) == 1  # the report counts the trial once


# -- concurrent drivers ---------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("store", ["fresh", "existing"])
def test_two_drivers_on_one_store_never_run_a_trial_twice(tmp_path, tracking_uri, tests_plugin_env, store):
    uri = f"sqlite:///{tmp_path / 'fresh' / 'mlflow.db'}" if store == "fresh" else tracking_uri
    grid = write_grid(tmp_path, steps=40, seconds=0.02, seeds=range(4))
    procs = [start_driver(grid, uri, tests_plugin_env, tmp_path) for _ in range(2)]
    outs = [p.communicate(timeout=900) for p in procs]
    for proc, (out, err) in zip(procs, outs):
        assert proc.returncode == 0, out + err
        assert "Traceback" not in out + err
    trials = [r for r in all_runs(uri) if r.data.tags["run_kind"] == "trial"]
    finished = [r.data.tags["trial_key"] for r in trials if r.info.status == "FINISHED"]
    assert len(finished) == 4 and len(set(finished)) == 4, finished
    assert all(r.info.status == "FINISHED" for r in trials)  # a claim that lost is deleted, not left over


def _claimable(tracking_uri: str):
    from harness.trial import Recipe, Trial

    tracker = Tracker(tracking_uri)
    exp = tracker.experiment_id("claims")
    trial = Trial("random", "digits", "digits", "mlp", 1, 10, 0, (), (Recipe(arch="mlp"),))
    return tracker, exp, trial


def test_a_claim_seen_late_with_an_older_start_time_still_loses(tracking_uri):
    """The race that ran a trial twice under load: driver B takes its run's start time, stalls, and
    its run reaches the store after driver A has checked and gone on. B's run looks older, yet A
    holds the trial: B must skip it."""
    tracker, exp, trial = _claimable(tracking_uri)
    a = tracker.start_trial(exp, "", trial)
    assert tracker.claim(exp, trial.key, a) is None  # A saw no rival: it runs the trial
    assert tracker.client.get_run(a).data.tags["claim"] == "won"
    started_a = tracker.client.get_run(a).info.start_time
    b = tracker.client.create_run(exp, start_time=started_a - 1000, tags={  # B: older by its clock
        "run_kind": "trial", "trial_key": trial.key, "claim": "pending", **driver_tags()}).info.run_id
    assert tracker.claim(exp, trial.key, b) == "running"
    assert tracker.client.get_run(b).info.lifecycle_stage == "deleted"


def test_two_claims_that_win_at_once_leave_the_trial_to_exactly_one(tracking_uri, monkeypatch):
    """B marks its run won while A's mark lands too (both passed the first look): B sees A's mark,
    withdraws, comes back, finds A holding the trial and skips it; A's run is untouched."""
    import harness.tracking as tracking

    monkeypatch.setattr(tracking.time, "sleep", lambda seconds: None)
    tracker, exp, trial = _claimable(tracking_uri)
    b = tracker.start_trial(exp, "", trial)  # B's run is the older: it passes the first look
    a = tracker.start_trial(exp, "", trial)
    client = tracker.client._client
    set_tag = client.set_tag

    def both_win(run_id, key, value):  # A's mark lands together with B's
        set_tag(run_id, key, value)
        if run_id == b and value == "won":
            set_tag(a, "claim", "won")

    monkeypatch.setattr(client, "set_tag", both_win)
    assert tracker.claim(exp, trial.key, b) == "running"
    assert tracker.client.get_run(b).info.lifecycle_stage == "deleted"
    assert tracker.client.get_run(a).data.tags["claim"] == "won"


# -- time limits, names, temp files -----------------------------------------------------------------
@pytest.mark.slow
def test_a_trial_past_its_time_limit_fails_and_the_grid_goes_on(tiny_plugins, tracking_uri):
    from harness.bench import run_bench
    from harness.grid import build_grid

    doc = {"name": "limits", "device": "cpu", "trial_timeout": 15,  # generous for the random trial under load
           "grid": [{"distiller": ["sleeper", "random"], "dataset": ["tiny"], "arch": ["tiny-mlp"], "ipc": [1]}],
           "eval": {"epochs": 1, "models": 1}, "distillers": {"sleeper": {"steps": 100_000, "seconds": 0.01}}}
    outcome = run_bench(build_grid(doc, tiny_plugins), tiny_plugins, tracking_uri=tracking_uri)
    assert (outcome.passed, outcome.failed) == (1, 1)
    runs = Tracker(tracking_uri).trial_runs(Tracker(tracking_uri).experiment_id("limits", create=False))
    sleeper = next(r for r in runs if r.data.params["distiller"] == "sleeper")
    assert sleeper.info.status == "FAILED"
    assert sleeper.data.tags["error"] == "TrialTimeout: timeout: the trial ran past trial_timeout = 15 s"


def test_trial_timeout_must_be_a_positive_number(tiny_plugins):
    from harness.errors import ConfigError
    from harness.grid import build_grid

    doc = {"grid": [{"distiller": ["random"], "dataset": ["tiny"], "arch": ["tiny-mlp"], "ipc": [1]}]}
    for bad in (0, -5, "1h", float("inf")):
        with pytest.raises(ConfigError, match="trial_timeout"):
            build_grid({**doc, "trial_timeout": bad}, tiny_plugins)
    assert build_grid({**doc, "trial_timeout": 60}, tiny_plugins).trial_timeout == 60.0


@pytest.mark.parametrize("name", ["../escape", "/abs/path", "a/b", "a b", "..", ".hidden"])
def test_experiment_names_that_would_leave_their_directory_are_refused(tiny_plugins, name):
    from harness.errors import ConfigError
    from harness.grid import build_grid
    from harness.report import write_report

    doc = {"name": name, "grid": [{"distiller": ["random"], "dataset": ["tiny"], "arch": ["tiny-mlp"], "ipc": [1]}]}
    with pytest.raises(ConfigError, match="not usable as a file name"):
        build_grid(doc, tiny_plugins)
    with pytest.raises(ConfigError, match="not usable as a file name"):
        write_report(None, "out", name, "cmd")


def test_no_temporary_directory_outlives_its_trial(tiny_plugins, tracking_uri, tmp_path, monkeypatch):
    from harness.bench import run_bench
    from harness.grid import build_grid

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    doc = {"name": "tmp", "device": "cpu", "grid": [{"distiller": ["random", "means"], "dataset": ["tiny"],
                                                     "arch": ["tiny-mlp"], "ipc": [1]}],
           "eval": {"epochs": 1, "models": 1}}
    outcome = run_bench(build_grid(doc, tiny_plugins), tiny_plugins, tracking_uri=tracking_uri)
    assert outcome.passed == 2
    assert not list(scratch.glob("harness-trial-*"))


# -- the pieces -----------------------------------------------------------------------------------
def test_the_sweep_removes_only_old_trial_directories_of_dead_processes(tmp_path):
    from harness.lifecycle import ORPHAN_SECONDS, sweep_trial_dirs, trial_dir

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    dead = int(gone.stdout)
    made = {name: tmp_path / name for name in (f"harness-trial-{dead}-old", f"harness-trial-{dead}-new",
                                               f"harness-trial-{os.getpid()}-mine", "harness-trial-nopid",
                                               f"other-{dead}-old")}
    for path in made.values():
        path.mkdir()
        (path / "distilled.safetensors").write_bytes(b"x")
    now = time.time()
    for name in (f"harness-trial-{dead}-old", f"harness-trial-{os.getpid()}-mine", "harness-trial-nopid",
                 f"other-{dead}-old"):
        os.utime(made[name], (now - ORPHAN_SECONDS - 60,) * 2)
    assert sweep_trial_dirs(tmp_path, now=now) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(set(made) - {f"harness-trial-{dead}-old"})
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tempfile, "tempdir", str(tmp_path))
        mine = trial_dir()
    assert mine.parent == tmp_path and mine.name.startswith(f"harness-trial-{os.getpid()}-")


def _run(tags: dict, start: int | None = None):
    return SimpleNamespace(data=SimpleNamespace(tags=tags), info=SimpleNamespace(start_time=start, run_id="r"))


def test_a_run_is_dead_when_its_process_is_gone_or_its_heartbeat_is_stale():
    import socket

    here, now = socket.gethostname(), now_ms()
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    assert not is_dead(_run({HOST: here, PID: str(os.getpid()), HEARTBEAT: str(now)}))
    assert is_dead(_run({HOST: here, PID: gone, HEARTBEAT: str(now)}))
    stale = str(now - int(STALE_SECONDS * 1000) - 1)
    assert is_dead(_run({HOST: "elsewhere", PID: "1", HEARTBEAT: stale}))
    assert not is_dead(_run({HOST: "elsewhere", PID: "1", HEARTBEAT: str(now)}))
    assert is_dead(_run({}, start=int(stale)))  # a run from before heartbeats: judged by its start
    assert not is_dead(_run({}, start=now))


def test_heartbeat_refreshes_the_runs_it_holds():
    beats: list[list[str]] = []
    with Heartbeat(beats.append, every=0.05) as heart:
        heart.hold("a")
        wait_for(lambda: any("a" in b for b in beats), "a heartbeat", timeout=60)
        heart.release("a")
    assert all(b == ["a"] for b in beats)


def test_curve_stream_batches_and_keeps_points_a_failed_send_did_not_deliver():
    sent: list[list] = []
    fail = [True]

    def send(points):
        if fail[0]:
            raise ConnectionError("store down")
        sent.append(list(points))

    stream = CurveStream(send, every=3600, max_points=3)
    for step in range(3):
        stream.add(step, {"loss": 1.0})
    assert stream.failures == 1 and stream.sent == 0
    stream.add(3, {"loss": 0.5})  # while failing, only time triggers the next try (backoff), not size
    assert stream.failures == 1 and stream.sent == 0
    fail[0] = False
    stream.flush()
    assert stream.sent == 4 and [s for s, _ in sent[0]] == [0, 1, 2, 3]
    for step in range(4, 7):  # recovered: size-based batches again
        stream.add(step, {"loss": 0.1})
    assert stream.sent == 7


def test_a_restarted_stream_counts_the_new_attempts_points_only():
    """An executor that retries a trial (Ray, after a lost worker) restarts its stream: the lost
    attempt's points are sent, and ``sent`` then indexes the final result's curves, so finishing
    the run logs exactly the points of the final attempt not streamed yet."""
    sent: list = []
    stream = CurveStream(lambda points: sent.extend(points), every=3600, max_points=4)
    for step in range(6):  # the lost attempt: 4 sent in a batch, 2 buffered
        stream.add(step, {"loss": 1.0})
    stream.restart()
    assert [s for s, _ in sent] == [0, 1, 2, 3, 4, 5] and stream.sent == 0
    final_curves = [(step, {"loss": 0.5}) for step in range(3, 9)]  # resumed from a checkpoint at step 3
    for point in final_curves[:4]:
        stream.add(*point)
    assert stream.sent == 4  # what finish_trial skips: result.curves[4:] are the two not streamed
    assert [s for s, _ in sent[6:]] + [s for s, _ in final_curves[stream.sent:]] == [3, 4, 5, 6, 7, 8]


@pytest.mark.slow(60)
@pytest.mark.parametrize("executor", ["inline", "process", "ray"])
def test_an_interrupted_trial_resumes_from_its_mid_trial_checkpoint(tmp_path, tracking_uri, tests_plugin_env, executor):
    """Checkpoints every 0.5 s; Ctrl-C once one exists; the rerun's distillation starts where it was,
    whichever executor ran it (a worker process, a Ray task: the checkpoint directory is the driver's).
    No trial outlives the interrupted driver, not even in a worker that gets no CPU meanwhile: one
    that did would finish the trial behind the rerun's back."""
    if executor == "ray":
        pytest.importorskip("ray", reason="Ray is the optional extra distill-harness[ray]; `make setup` installs it")
    grid = write_grid(tmp_path, steps=600, seconds=0.02, extra=f'checkpoint_every = 0.5\nexecutor = "{executor}"')
    (tmp_path / "pids").mkdir()
    env = {**tests_plugin_env, "HARNESS_CHECKPOINT_DIR": str(tmp_path / "ck"), "SLEEPER_PIDS": str(tmp_path / "pids")}
    proc = start_driver(grid, tracking_uri, env, tmp_path)
    workers: list[int] = []
    try:
        wait_for(lambda: list((tmp_path / "ck").glob("*/skeleton.json")), "a mid-trial checkpoint")
        workers = [int(p.name) for p in (tmp_path / "pids").iterdir()]  # written before the first step
        assert workers
        if executor != "inline":  # stopped, a worker cannot end itself (a cancel, its raylet's death), as on
            for pid in workers:   # a machine too busy to run it: the driver or Ray must kill it
                os.kill(pid, signal.SIGSTOP)
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=300)
        assert proc.returncode == 130
        left = [pid for pid in workers if still_running(pid)]
        assert not left, f"trial workers {left} outlived the interrupted driver"
    finally:
        proc.kill()
        for pid in workers if executor != "inline" else []:
            if still_running(pid):  # the test failed: end what it left (a stopped process takes SIGKILL)
                os.kill(pid, signal.SIGKILL)
    assert list((tmp_path / "ck").glob("*/skeleton.json"))  # kept for the resume
    # the rerun inline, in this process: what the interrupted driver left is the point (its checkpoint,
    # kept under the driver's directory whichever executor wrote it, and no worker finishing the trial)
    rerun = run_harness("bench", str(grid), "--tracking-uri", tracking_uri, "--executor", "inline", cwd=tmp_path,
                        env={**env, **RERUN_AT_ONCE})
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    tracker = Tracker(tracking_uri)
    finished = next(r for r in all_runs(tracking_uri) if r.info.status == "FINISHED"
                    and r.data.tags["run_kind"] == "trial")
    steps = [m.step for m in tracker.client.get_metric_history(finished.info.run_id, "distill/loss")]
    assert steps and min(steps) > 0 and max(steps) == 599  # it continued, it did not start over

    assert not list((tmp_path / "ck").glob("*/skeleton.json"))  # gone once the trial finished


SLOW_LOGGING = '''\
import os
import pathlib

if os.environ.get("HARNESS_TEST_SLOW_LOGGING"):  # fault injection for tests/test_lifecycle.py only
    import time

    import harness.tracking as tracking

    def _slow_finish(self, *args, **kwargs):
        pathlib.Path(os.environ["HARNESS_TEST_SLOW_LOGGING"]).touch()
        time.sleep(3600)

    tracking.Tracker.finish_trial = _slow_finish
'''


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["SIGKILL", "SIGINT"])
@pytest.mark.parametrize("point", ["between-trials", "inside-logging"])
def test_a_driver_stopped_anywhere_loses_nothing_and_the_rerun_counts_each_trial_once(
        tmp_path, tracking_uri, tests_plugin_env, sig, point):
    grid = write_grid(tmp_path, steps=50, seconds=0.02, seeds=[0, 1])
    scratch = tmp_path / "tmp"  # the drivers' temporary directory: what a killed one leaves is seen here
    scratch.mkdir()
    env = {**tests_plugin_env, "TMPDIR": str(scratch)}
    marker = tmp_path / "logging-started"
    if point == "inside-logging":  # a sitecustomize that makes the first trial's logging hang
        hooks = tmp_path / "hooks"
        hooks.mkdir()
        (hooks / "sitecustomize.py").write_text(SLOW_LOGGING)
        env.update(PYTHONPATH=os.pathsep.join([str(hooks), env["PYTHONPATH"]]), HARNESS_TEST_SLOW_LOGGING=str(marker))
    proc = start_driver(grid, tracking_uri, env, tmp_path)
    try:
        if point == "inside-logging":
            wait_for(marker.exists, "the first trial's logging to start")
        else:
            wait_for(lambda: any(r.info.status == "FINISHED" for r in all_runs(tracking_uri)
                                 if r.data.tags.get("run_kind") == "trial"), "the first trial to finish")
        proc.send_signal(sig)
        proc.communicate(timeout=300)
    finally:
        proc.kill()
    finished_before = {r.data.tags["trial_key"] for r in all_runs(tracking_uri)
                       if r.info.status == "FINISHED" and r.data.tags["run_kind"] == "trial"}
    rerun = run_harness("bench", str(grid), "--tracking-uri", tracking_uri, cwd=tmp_path,
                        env={**tests_plugin_env, **RERUN_AT_ONCE, "TMPDIR": str(scratch)})
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert f"2 trials, {len(finished_before)} already finished" in rerun.stdout  # nothing finished is recomputed
    # a driver killed while logging leaves its trial's files; the sweep of a later bench removes them
    # once they are old (here: as if an hour had passed), and nothing else ever stays behind
    from harness.lifecycle import ORPHAN_SECONDS, sweep_trial_dirs

    left = list(scratch.glob("harness-trial-*"))
    assert len(left) == (1 if (point, sig) == ("inside-logging", signal.SIGKILL) else 0), left
    assert left == [] or left[0].name.startswith(f"harness-trial-{proc.pid}-")
    assert sweep_trial_dirs(scratch, now=time.time() + ORPHAN_SECONDS + 60) == len(left)
    assert not list(scratch.glob("harness-trial-*"))
    runs = all_runs(tracking_uri)
    assert not [r for r in runs if r.info.status == "RUNNING"]
    finished = [r.data.tags["trial_key"] for r in runs if r.info.status == "FINISHED" and r.data.tags["run_kind"] == "trial"]
    assert len(finished) == len(set(finished)) == 2
    from harness.report import runs_frame

    assert len(runs_frame(Tracker(tracking_uri), "life")) == 2


def test_a_checkpoint_that_cannot_be_written_does_not_fail_the_trial(tmp_path):
    from harness.checkpoint import Checkpoints
    from harness.testing import _make_task
    from harness_distillers.sldd import SLDD

    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the checkpoint folder would go")
    task, counter = _make_task(SLDD, ipc=1, outer_steps=2, steps=1, epochs=1)
    checkpoints = Checkpoints(blocker / "trial", every_seconds=None, every_steps=1)
    checkpoints.attach(task, counter)
    out = SLDD().distill(task)
    assert out.meta["outer_steps_done"] == 2 and checkpoints.failures == 2 and checkpoints.saved == 0


def test_a_trial_interrupted_while_evaluated_resumes_at_evaluation(tmp_path, monkeypatch, tiny_plugins):
    """The finished set is kept until the trial ends: the rerun evaluates it, it does not distil again."""
    import harness.runner as runner
    from harness.grid import build_grid
    from harness.plan import prepare

    monkeypatch.setenv("HARNESS_CHECKPOINT_DIR", str(tmp_path / "ck"))
    doc = {"name": "t", "device": "cpu", "grid": [{"distiller": "means", "dataset": "tiny", "arch": "tiny-mlp",
                                                   "ipc": 2}], "eval": {"models": 1, "epochs": 2}}
    plan = prepare(build_grid(doc, tiny_plugins), tiny_plugins, tmp_path, "cpu")
    bound = plan.trials[0]
    ctx = runner.TrialContext(plan.data, plan.device, checkpoint_every=600)
    evaluate_all = runner._evaluate_all

    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "_evaluate_all", interrupted)
    with pytest.raises(KeyboardInterrupt):
        runner.run_trial(bound, ctx)
    kept = list((tmp_path / "ck").glob("*/finished.json"))
    assert len(kept) == 1 and not list((tmp_path / "ck").glob("*/skeleton.json"))
    first_set = DistilledSet.load(kept[0].with_name("finished.safetensors"))

    monkeypatch.setattr(runner, "_evaluate_all", evaluate_all)
    monkeypatch.setattr(bound.distiller, "distill", lambda self, task: pytest.fail("distilled again"))
    result = runner.run_trial(bound, ctx)
    shutil.rmtree(result.artifacts_dir)  # the driver's finish() would remove them
    assert result.passed, result.error
    assert result.metrics["n_distilled"] == first_set.n and "acc_mean" in result.metrics
    assert not (tmp_path / "ck" / bound.trial.key).exists()  # gone once the trial ended


@pytest.mark.parametrize("raw,expected", [("", (10.0,)), ("2.5", (2.5,)), ("0,1,3", (0.0, 1.0, 3.0))])
def test_stream_and_retry_seconds_come_from_the_environment(monkeypatch, raw, expected):
    from harness.lifecycle import env_seconds

    monkeypatch.setenv("HARNESS_STREAM_SECONDS", raw)
    assert env_seconds("HARNESS_STREAM_SECONDS", (10.0,)) == expected


@pytest.mark.parametrize("raw", ["soon", "-1", "1,,2", "inf", "nan"])
def test_a_malformed_seconds_variable_is_one_line_before_data(monkeypatch, raw, tiny_plugins, tracking_uri, tmp_path):
    from harness.bench import run_bench
    from harness.errors import HarnessError
    from harness.grid import build_grid

    monkeypatch.setenv("HARNESS_STORE_RETRY_WAITS", raw)
    grid = build_grid({"grid": [{"distiller": "random", "dataset": "tiny", "arch": "tiny-mlp", "ipc": 1}]},
                      tiny_plugins)
    with pytest.raises(HarnessError, match=r"^HARNESS_STORE_RETRY_WAITS=.* is not a comma-separated list of "
                                           r"seconds >= 0 \(e\.g\. 1,3,9\); fix or unset it$"):
        run_bench(grid, tiny_plugins, tracking_uri=tracking_uri, data_dir=tmp_path)


def test_a_resumed_distillation_counts_the_time_before_its_checkpoint(tmp_path, monkeypatch):
    import harness.checkpoint as checkpoint
    from harness.checkpoint import Checkpoints
    from harness.testing import _make_task
    from harness_distillers.sldd import SLDD

    clock = [1000.0]
    monkeypatch.setattr(checkpoint.time, "monotonic", lambda: clock[0])
    task, counter = _make_task(SLDD, ipc=1, outer_steps=2, steps=1, epochs=1)
    first = Checkpoints(tmp_path / "trial", every_seconds=None, every_steps=1)
    first.attach(task, counter)
    clock[0] += 100.0  # 100 s of distilling, then a checkpoint
    task.checkpoint(1, lambda: {"x": torch.zeros(1)})
    task, counter = _make_task(SLDD, ipc=1, outer_steps=2, steps=1, epochs=1)
    again = Checkpoints(tmp_path / "trial", every_seconds=None, every_steps=1)
    again.attach(task, counter)
    assert again.earlier_seconds == 0.0 and task.restore()[0] == 1
    assert again.earlier_seconds == 100.0  # the runner adds it to distill_seconds


@pytest.mark.slow
def test_an_interrupted_driver_with_workers_kills_them_and_ends_every_run_killed(tmp_path, tracking_uri,
                                                                                 tests_plugin_env):
    """`--executor process`: Ctrl-C reaches the driver; it kills its workers, ends both running
    trials' runs KILLED and exits 130 (the workers ignore SIGINT themselves)."""
    grid = write_grid(tmp_path, steps=100_000, seconds=0.01, seeds=[0, 1], extra='executor = "process"')
    proc = start_driver(grid, tracking_uri, tests_plugin_env, tmp_path)
    try:
        wait_for(lambda: len([r for r in all_runs(tracking_uri) if r.data.tags.get("run_kind") == "trial"
                              and r.info.status == "RUNNING"]) == 2, "both trials' runs to be RUNNING")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 130, out + err
    assert "Traceback" not in err, err
    statuses = sorted(r.info.status for r in all_runs(tracking_uri) if r.data.tags["run_kind"] == "trial")
    assert statuses == ["KILLED", "KILLED"]
