"""Shared fixtures: real MLflow sqlite stores (copied from a pre-migrated template), tiny plugins."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
if os.environ.get("PYTEST_XDIST_WORKER"):  # `make test` runs one worker per core: one thread each
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch is imported (by tests and subprocesses)
sys.path.insert(0, str(Path(__file__).parent))  # tests/plugins_for_tests.py

from harness.allocator import keep_freed_memory  # noqa: E402

keep_freed_memory()  # as every trial process does (harness.runner.run_trial), from the first test on


def pytest_xdist_auto_num_workers(config) -> int:
    """`-n auto`: two test workers per core. Many tests wait on other processes (drivers, servers,
    clusters) with the core idle meanwhile; a second worker per core fills that time (measured on
    2 cores: `make test` 318 s with 2 workers, 260 s with 4)."""
    return max(2, min(2 * (os.cpu_count() or 1), 8))


SLOW_DEFAULT_SECONDS = 10


def pytest_collection_modifyitems(items: list) -> None:
    """The tests marked ``slow`` go first, the slowest first (``@pytest.mark.slow(60)``: about a
    minute on a loaded 2-core machine; without a number, ~10 s), so that the test workers start
    them at once and short tests fill the end, instead of one worker left running a slow test
    collected last while the others idle (longest first: the usual way to balance a pool).
    A stable sort: every worker collects the same order, as pytest-xdist requires."""
    def expected_seconds(item: Any) -> float:
        mark = item.get_closest_marker("slow")
        return 0.0 if mark is None else float(mark.args[0] if mark.args else SLOW_DEFAULT_SECONDS)

    items.sort(key=expected_seconds, reverse=True)


@pytest.fixture(scope="session")
def mlflow_template(tmp_path_factory) -> Path:
    """An empty, fully migrated MLflow sqlite db, created once (migrations take seconds)."""
    from harness.tracking import Tracker

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    tracker = Tracker(f"sqlite:///{path}")
    tracker.client.search_experiments()
    tracker.close()  # its write-ahead log folded into the file: a copy of the file is the whole store
    return path


@pytest.fixture
def tracking_uri(tmp_path, mlflow_template) -> str:
    """A fresh real sqlite MLflow store in this test's temporary directory."""
    db = tmp_path / "store" / "mlflow.db"
    db.parent.mkdir()
    shutil.copy(mlflow_template, db)
    return f"sqlite:///{db}"


@pytest.fixture
def tiny_plugins():
    """The installed plugins plus tests/plugins_for_tests.py (tiny dataset, tiny arch, faulty distillers)."""
    import plugins_for_tests

    from harness.plugins import load_plugins

    return load_plugins(extra=[(plugins_for_tests, "tests", "tests-plugins")])


@pytest.fixture
def tests_plugin_env(tmp_path) -> dict[str, str]:
    """Environment for a ``python -m harness`` subprocess that discovers tests/plugins_for_tests.py
    through a real entry point (an installed-looking ``faulty-plugins`` distribution)."""
    site = tmp_path / "site"
    info = site / "faulty_plugins-0.0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: faulty-plugins\nVersion: 0.0.1\n")
    (info / "entry_points.txt").write_text("[harness]\nfaulty = plugins_for_tests\n")
    return {"PYTHONPATH": os.pathsep.join([str(site), str(Path(__file__).parent)])}


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch, tmp_path):
    """No test writes to the repo's results/ or reads a user's MLflow settings."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("HARNESS_PLUGINS", raising=False)
    monkeypatch.delenv("HARNESS_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    monkeypatch.setenv("HARNESS_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("HARNESS_SPOOL_DIR", str(tmp_path / "spool"))
    monkeypatch.setenv("HARNESS_CHECKPOINT_DIR", str(tmp_path / "checkpoints"))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]))


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_mlflow_server(tmp_path: Path, port: int, timeout: float = 300.0, template: Path | None = None):
    """A real ``mlflow server`` on 127.0.0.1 over ``tmp_path/server.db``; returns (process, uri) once
    it answers /health (a generous deadline: a loaded machine starts it slowly). ``template``: a
    migrated store copied in first when there is none yet (the server then skips its migrations)."""
    import subprocess
    import time
    import urllib.request

    if template is not None and not (tmp_path / "server.db").exists():
        shutil.copy(template, tmp_path / "server.db")
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}", "--artifacts-destination",
         str(tmp_path / "server-artifacts"), "--workers", "1"],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        # `mlflow server` (3.17) also starts a GenAI job runner (seven huey consumer processes) that tracking
        # never uses: off, it costs half the CPU (a start to /health: 14 s CPU with it, 7 s without)
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        start_new_session=True)  # its own process group: stop_mlflow_server ends the workers too
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"{uri}/health", timeout=2)
            return server, uri
        except OSError:
            if server.poll() is not None:
                break
            time.sleep(0.5)
    stop_mlflow_server(server)
    pytest.fail(f"mlflow server did not answer within {timeout:.0f} s (exit code {server.poll()})")


def stop_mlflow_server(server, hard: bool = False) -> None:
    """Stop the server and its worker processes (SIGKILL with ``hard``: no graceful shutdown)."""
    import signal

    try:
        os.killpg(server.pid, signal.SIGKILL if hard else signal.SIGTERM)
    except ProcessLookupError:
        pass
    server.wait(timeout=120)
