"""The test suite's own machinery, on which `make test`'s time depends."""

from __future__ import annotations

import subprocess
import sys

GROUPED = '''\
import os
import pathlib

import pytest

pytestmark = pytest.mark.xdist_group("shared")


@pytest.mark.parametrize("i", range(6))
def test_records_its_worker(i):
    pathlib.Path(f"worker-{i}").write_text(os.environ["PYTEST_XDIST_WORKER"])
'''


def test_loadgroup_runs_an_xdist_group_in_one_worker(tmp_path):
    """`make test` runs the Ray tests on one local cluster because `--dist loadgroup` keeps their
    module's group in one worker; when that silently stopped (pytest 9.2 with pytest-xdist 3.8,
    constraints.txt), every worker started a cluster of its own. Six grouped tests on two workers."""
    (tmp_path / "pytest.ini").write_text("[pytest]\n")  # not the repository's configuration
    (tmp_path / "test_grouped.py").write_text(GROUPED)
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "2",
                           "--dist", "loadgroup", "test_grouped.py"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    workers = {(tmp_path / f"worker-{i}").read_text() for i in range(6)}
    assert len(workers) == 1, f"the group ran on {sorted(workers)}"


def test_a_driver_forked_from_the_zygote_runs_as_a_fresh_one_would(tmp_path, tests_plugin_env):
    """tests/driver_zygote.py: a forked driver is a process of its own that takes its environment,
    working directory and ``PYTHONPATH`` (plugins found through entry points there), runs the
    ``sitecustomize`` it finds there first, and gives back its exit code and output. It ends as the
    interpreter ends a process, its modules not torn down: non-daemon threads joined first, then the
    atexit handlers, then its buffered output flushed."""
    import os

    import driver_zygote

    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(
        "import atexit, os, pathlib, sys, threading, time\n"
        "pathlib.Path('started-by').write_text(str(os.getpid()))\n"
        "if os.environ.get('EXIT_HOOKS'):\n"
        " late = threading.Thread(target=lambda: (time.sleep(0.5), pathlib.Path('thread-done').touch()))\n"
        " late.start()\n"
        " atexit.register(lambda: (pathlib.Path('atexit-ran').write_text(str(pathlib.Path('thread-done').exists())),"
        " sys.stdout.write('buffered at exit')))\n")
    env = {**os.environ, **tests_plugin_env,
           "PYTHONPATH": os.pathsep.join([str(hooks), tests_plugin_env["PYTHONPATH"]])}
    listed = driver_zygote.run_driver(["ls", "distillers"], {**env, "EXIT_HOOKS": "1"}, tmp_path)
    assert listed.returncode == 0 and "sleeper" in listed.stdout, listed.stdout + listed.stderr  # a tests plugin
    pid = int((tmp_path / "started-by").read_text())  # written in the driver's working directory
    assert pid != os.getpid()
    assert (tmp_path / "atexit-ran").read_text() == "True"  # after the thread it waited for
    assert listed.stdout.endswith("buffered at exit")
    bad = driver_zygote.run_driver(["bench", "missing.toml"], env, tmp_path)
    assert bad.returncode == 2 and bad.stdout == "", bad.stdout + bad.stderr
    assert len(bad.stderr.splitlines()) == 1 and "missing.toml" in bad.stderr
