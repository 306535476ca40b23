"""Cold start of each CLI command, as a user types it (a fresh process each round).

`harness validate` is timed on a grid with an unknown distiller name (everything before data is
loaded: the part that must be fast); loading data is the dataset's cost, not the CLI's.
Run: `make perf` or `.venv/bin/python -m pytest benchmarks/perf/test_cli_start.py`.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

HARNESS = str(Path(sys.executable).with_name("harness"))
BAD_GRID = 'name = "x"\n[[grid]]\ndistiller = ["randm"]\ndataset = ["digits"]\narch = ["mlp"]\nipc = [1]\n'


@pytest.mark.parametrize("command", ["--help", "ls distillers", "plugins", "validate"])
def test_cold_start(benchmark, command, tmp_path):
    grid = tmp_path / "typo.toml"
    grid.write_text(BAD_GRID)
    args = [HARNESS, *command.split()] + ([str(grid)] if command == "validate" else [])
    benchmark.group = "cli-cold-start"

    def run():
        subprocess.run(args, capture_output=True, check=command != "validate")

    benchmark.pedantic(run, rounds=5, iterations=1, warmup_rounds=1)
