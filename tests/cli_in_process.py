"""The installed ``harness`` command's entry point (``harness.cli.main``), run in the test process:
the same parsing, output and exit codes, without a Python start-up (torch, mlflow) per call. Tests
where the process boundary is the point (entry points, signals, what a fresh process imports or
prints) keep using subprocesses."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import tempfile
from pathlib import Path


def run_harness(*args: str, cwd: Path, env: dict[str, str | None] | None = None) -> subprocess.CompletedProcess:
    """``harness ARGS`` in ``cwd``; ``env`` sets (or, with None, unsets) variables for the call. As in
    a fresh process, ``PYTHONPATH`` in ``env`` also puts its folders first on ``sys.path`` (plugins
    there are found through their entry points) and ``TMPDIR`` is where temporary files go."""
    from harness.cli import main
    from harness.plugins import get_plugins

    saved_cwd, saved_argv, saved_path, saved_tempdir = os.getcwd(), sys.argv, list(sys.path), tempfile.tempdir
    saved_env = {k: os.environ.get(k) for k in (env or {})}
    out, err = io.StringIO(), io.StringIO()
    code = 0
    try:
        os.chdir(cwd)
        sys.argv = ["harness", *args]
        if (env or {}).get("PYTHONPATH"):
            sys.path[:0] = [p for p in env["PYTHONPATH"].split(os.pathsep) if p]
        if env and "TMPDIR" in env:
            tempfile.tempdir = None  # read again from the environment set below
        get_plugins.cache_clear()  # the plugins this call's environment selects, as a fresh process loads them
        for k, v in (env or {}).items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main()
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        os.chdir(saved_cwd)
        sys.argv, sys.path[:], tempfile.tempdir = saved_argv, saved_path, saved_tempdir
        get_plugins.cache_clear()
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return subprocess.CompletedProcess(["harness", *args], code, out.getvalue(), err.getvalue())
