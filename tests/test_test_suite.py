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
