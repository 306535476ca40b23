"""Joining a Ray cluster that runs apart from the test process: one a user started (`ray start
--head`, token authentication) by its GCS address and through Ray Client, and an address where no
cluster answers. Neither uses the test process's own cluster (tests/test_ray_executor.py), so these
tests run in any test worker, alongside it."""

from __future__ import annotations

import copy
import os
import re
import shutil
from pathlib import Path

import pytest

from harness.bench import run_bench
from harness.errors import ConfigError
from harness.grid import build_grid

from driver_zygote import run_driver
from test_executors import DIGITS, accuracies

pytest.importorskip("ray", reason="Ray is the optional extra distill-harness[ray]; `make setup` installs it")


@pytest.fixture
def running_cluster(tmp_path):
    """A Ray cluster of its own, started as users start one (`ray start --head`, token authentication
    on), stopped with its process group; yields (GCS address, Ray Client address)."""
    import signal
    import socket
    import subprocess
    import sys
    import tempfile
    import time

    from conftest import free_port

    temp = tempfile.mkdtemp(prefix="rayh", dir="/tmp")  # Ray's socket paths must stay short
    # a loaded machine starts the head's per-client Ray Client server slowly (its default wait: 30 s,
    # too short here). Not much longer either: when that server fails at once (it does, now and then,
    # under load), Ray's client only gives up after this wait (its log stream hangs until then),
    # and the executor's second attempt follows; 300 s made such a run take over 6 minutes
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_CLIENT_SERVER_CHECK_CHANNEL_TIMEOUT_S": "90"}
    log = tmp_path / "ray-start.log"
    for attempt in range(3):  # a head that exits while starting (a port taken meanwhile): again, new ports
        gcs, client, first_worker = free_port(), free_port(), 30000 + (os.getpid() + 200 * attempt) % 20000
        with open(log, "w") as out:
            head = subprocess.Popen(
                [str(Path(sys.executable).parent / "ray"), "start", "--head", "--block", "--port", str(gcs),
                 "--ray-client-server-port", str(client), "--min-worker-port", str(first_worker),
                 "--max-worker-port", str(first_worker + 100), "--num-cpus", "1", "--temp-dir", temp,
                 "--include-dashboard", "false", "--disable-usage-stats"],
                env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 300  # a loaded machine starts Ray slowly: wait on the port, not a clock
        while head.poll() is None:
            try:
                socket.create_connection(("127.0.0.1", client), timeout=2).close()
                break
            except OSError:
                if time.monotonic() > deadline:  # not left running behind the failed test
                    os.killpg(head.pid, signal.SIGKILL)
                    raise AssertionError("the Ray Client server did not start; Ray said:\n"
                                         + log.read_text()[-3000:]) from None
                time.sleep(1)
        if head.poll() is None:
            break
        try:  # what it had started goes with it
            os.killpg(head.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    else:
        raise AssertionError("ray start --head exited three times; the last said:\n" + log.read_text()[-3000:])
    try:
        yield f"127.0.0.1:{gcs}", f"ray://127.0.0.1:{client}"
    finally:
        for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, None)):
            try:  # Ray's graceful stop waits ~30 s on its processes; the group goes with them either way
                os.killpg(head.pid, sig)
                head.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
            except ProcessLookupError:  # the whole group has exited
                break
        head.wait()
        shutil.rmtree(temp, ignore_errors=True)


@pytest.mark.slow  # after the other Ray tests have started their clusters: start-ups at once slow each other
def test_joining_a_running_cluster_by_address_and_through_ray_client(running_cluster, tmp_path, mlflow_template):
    """--ray-address HOST:PORT and ray://HOST:PORT (Ray Client runs no generator tasks: whole tasks
    posting to a mailbox actor) give the inline accuracies. Each joining driver is a process of its
    own (tests/driver_zygote.py): the test process may hold a cluster of its own."""
    from harness.plugins import load_plugins

    doc = {**copy.deepcopy(DIGITS), "seeds": [0]}
    shutil.copy(mlflow_template, tmp_path / "inline.db")
    inline = f"sqlite:///{tmp_path / 'inline'}.db"
    run_bench(build_grid(doc, load_plugins()), load_plugins(), tracking_uri=inline, data_dir=tmp_path)
    (tmp_path / "exec.toml").write_text(
        'name = "exec"\nseeds = [0]\ndevice = "cpu"\n[[grid]]\ndistiller = ["random", "dm"]\ndataset = ["digits"]\n'
        'arch = ["mlp"]\nipc = [1]\n[eval]\nmodels = 2\nepochs = 5\n[distillers.dm]\niterations = 5\n')
    for i, address in enumerate(running_cluster):
        shutil.copy(mlflow_template, tmp_path / f"joined{i}.db")
        uri = f"sqlite:///{tmp_path / f'joined{i}'}.db"
        proc = run_driver(["bench", str(tmp_path / "exec.toml"), "--executor", "ray", "--ray-address", address,
                           "--tracking-uri", uri, "--data-dir", str(tmp_path)],
                          {**os.environ, "RAY_AUTH_MODE": "token"}, Path.cwd(), timeout=900)
        assert proc.returncode == 0, address + proc.stdout[-2000:] + proc.stderr[-2000:]
        assert accuracies(uri, "exec") == accuracies(inline, "exec"), address


@pytest.mark.slow
def test_an_address_where_no_cluster_answers_is_one_line_before_any_compute(tmp_path):
    """Through the CLI in a process of its own (tests/driver_zygote.py): the test process may hold a
    cluster of its own (tests/test_ray_executor.py), where the executor rightly skips the probe."""
    import socket

    from harness.executors.ray_executor import check_reachable

    (tmp_path / "g.toml").write_text('name = "probe"\ndevice = "cpu"\n[[grid]]\ndistiller = ["random"]\n'
                                     'dataset = ["digits"]\narch = ["mlp"]\nipc = [1]\n')
    # a port held bound but not listening refuses connections, and no other process can listen on it
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        port = held.getsockname()[1]
        for address in (f"127.0.0.1:{port}", f"ray://127.0.0.1:{port}"):
            proc = run_driver(["bench", str(tmp_path / "g.toml"), "--executor", "ray", "--ray-address", address,
                               "--tracking-uri", f"sqlite:///{tmp_path / 'probe.db'}", "--data-dir", str(tmp_path)],
                              dict(os.environ), Path.cwd(), timeout=600)
            assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
            assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
            assert re.search(rf"no Ray cluster answers at {re.escape(address)} .*Connection refused.*ray start --head",
                             proc.stderr), proc.stderr
            assert "trial" not in proc.stdout, proc.stdout  # nothing ran
    with pytest.raises(ConfigError, match="is not auto, HOST:PORT or ray://HOST:PORT"):
        check_reachable("ray://host:port")
    check_reachable("auto")  # Ray's own discovery
