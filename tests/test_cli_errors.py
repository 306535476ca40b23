"""The CLI turns every user-fixable problem into one ``error:`` line on stderr and exit code 2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

GOOD = """\
name = "cli-test"
seeds = [0]

[[grid]]
distiller = ["random", "full"]
dataset = ["digits"]
arch = ["mlp"]
ipc = [1]

[eval]
epochs = 1
models = 1
"""


CLEAN_ENV = ("HARNESS_PLUGINS", "HARNESS_DISABLE_PLUGIN_AUTOLOAD", "MLFLOW_TRACKING_URI")


def harness_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """The command in this process (tests/cli_in_process.py), with no plugin or store variables set."""
    from cli_in_process import run_harness

    return run_harness(*args, cwd=cwd, env={var: None for var in CLEAN_ENV})


def harness_process(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """The installed command in a fresh process: what a user's terminal shows, warnings included."""
    env = {k: v for k, v in os.environ.items() if k not in CLEAN_ENV}
    return subprocess.run([sys.executable, "-m", "harness", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def assert_one_error_line(proc: subprocess.CompletedProcess, *fragments: str) -> str:
    """Exit code 2, exactly one stderr line starting with 'error:', no traceback anywhere."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stdout + proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


@pytest.mark.parametrize("content, extra, fragments", [
    (None, [], ["error: grid file 'grid.toml' not found; pass a path such as benchmarks/grids/quick.toml"]),
    ("[[grid]\ndistiller = 'random'\n", [], ["error: grid.toml: invalid TOML: "]),
    ("seed = [0]\n" + GOOD.replace("seeds = [0]\n", ""), [], ["grid.toml: unknown key 'seed'; did you mean 'seeds'?"]),
    (GOOD.replace('"random"', '"rnadom"'), [], ["grid.toml: [[grid]] #1: unknown distiller 'rnadom'; did you mean 'random'?"]),
    (GOOD.replace("ipc = [1]", 'ipc = ["1"]'), [], ["grid.toml: [[grid]] #1: ipc: expected int, got '1' (str)"]),
    (GOOD.replace("epochs = 1", "epochs = true"), [], ["eval.epochs: expected int, got True (bool)"]),
    (GOOD.replace('arch = ["mlp"]', 'arch = ["convnt"]'), [], ["unknown architecture 'convnt'; did you mean 'convnet'?"]),
    (GOOD.replace("seeds = [0]", 'device = "tpu"'), [], ["device: unknown device 'tpu'; use auto, cpu, cuda or cuda:N"]),
    (GOOD.replace('name = "cli-test"', 'name = "../escape"'), [], ["experiment name '../escape' is not usable as a file name"]),
    (GOOD, ["--set", "eval.epochs"], ["--set 'eval.epochs': expected section.key=value, e.g. --set eval.epochs=10"]),
    (GOOD, ["--set", "eval.epochs=abc"], ["eval.epochs: expected int, got 'abc' (str)"]),
    (GOOD.replace("ipc = [1]", "ipc = [1]\nn = [5]"), [], ["give either ipc (per class) or n (total), not both"]),
], ids=["missing-file", "malformed-toml", "unknown-key", "unknown-distiller", "wrong-type", "bool-for-int",
        "unknown-arch", "unknown-device-in-file", "escaping-name", "set-without-equals", "set-wrong-type", "ipc-and-n"])
def test_validate_errors(tmp_path, content, extra, fragments):
    if content is not None:
        (tmp_path / "grid.toml").write_text(content)
    proc = harness_cli("validate", "grid.toml", *extra, cwd=tmp_path)
    assert_one_error_line(proc, *fragments)
    assert proc.stdout == ""


@pytest.mark.slow
def test_the_installed_command_prints_the_same_one_line(tmp_path):
    """In a fresh process too (warnings, logging and all): one line, exit code 2."""
    (tmp_path / "grid.toml").write_text(GOOD.replace('"random"', '"rnadom"'))
    proc = harness_process("validate", "grid.toml", cwd=tmp_path)
    assert_one_error_line(proc, "grid.toml: [[grid]] #1: unknown distiller 'rnadom'; did you mean 'random'?")
    proc = harness_process("bench", "grid.toml", "--set", "grid.distiller=random", "--set", "grid.ipc=[1000]",
                           "--device", "cpu", cwd=tmp_path)
    assert_one_error_line(proc, "ipc = 1000 but class")


def test_validate_quick_grid():
    proc = harness_cli("validate", "benchmarks/grids/quick.toml", cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("ok: grid 'quick' has 12 trials over seeds [0, 1]; recipes: mlp/sgd")
    assert proc.stderr == ""


def test_validate_with_overrides(tmp_path):
    (tmp_path / "grid.toml").write_text(GOOD)
    proc = harness_cli("validate", "grid.toml", "--set", "seeds=[1,2,3]", "--set", "grid.ipc=[1, 2]", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("ok: grid 'cli-test' has 9 trials over seeds [1, 2, 3]; recipes: mlp/sgd\n"
                                  "data: digits (1,438 train / 359 test) from ")


def test_validate_checks_budgets_against_the_real_data_as_bench_does(tmp_path):
    """validate and bench share one plan: an ipc the data cannot give fails validate too."""
    (tmp_path / "grid.toml").write_text(GOOD)
    proc = harness_cli("validate", "grid.toml", "--set", "grid.ipc=[1000]", cwd=tmp_path)
    assert_one_error_line(proc, "trial random/digits/mlp/ipc1000/seed0: ipc = 1000 but class",
                          "of 'digits' has only", "training examples; use ipc <= ")
    assert proc.stdout == ""


@pytest.mark.parametrize("args, fragments", [
    (["--device", "tpu"], ["error: --device: unknown device 'tpu'; use auto, cpu, cuda or cuda:N"]),
    (["--set", "=1"], ["--set '=1': expected section.key=value"]),
    (["--set", "grid.ipc=[1000]", "--device", "cpu"],
     ["trial random/digits/mlp/ipc1000/seed0: ipc = 1000 but class", "of 'digits' has only",
      "training examples; use ipc <= "]),
], ids=["unknown-device", "bad-set", "impossible-budget"])
def test_bench_errors_before_any_compute(tmp_path, args, fragments):
    (tmp_path / "grid.toml").write_text(GOOD)
    store = tmp_path / "store" / "mlflow.db"
    proc = harness_cli("bench", "grid.toml", "--tracking-uri", f"sqlite:///{store}", *args, cwd=tmp_path)
    assert_one_error_line(proc, *fragments)
    assert "passed" not in proc.stdout
    # rejected before MLflow was even opened: no store, no experiment, no trial runs
    assert not store.exists() and not store.parent.exists()
    assert not (tmp_path / "results").exists() and not (tmp_path / "mlruns").exists()


def test_bench_cuda_on_a_machine_without_cuda(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    (tmp_path / "grid.toml").write_text(GOOD)
    store = tmp_path / "mlflow.db"
    proc = harness_cli("bench", "grid.toml", "--device", "cuda", "--tracking-uri", f"sqlite:///{store}", cwd=tmp_path)
    assert_one_error_line(proc, "device 'cuda' requested but CUDA is not available here; use --device cpu or auto")
    assert not store.exists()


def test_unknown_command_and_option_are_usage_errors(tmp_path):
    proc = harness_cli("bnech", cwd=tmp_path)
    assert proc.returncode == 2 and "No such command 'bnech'" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = harness_cli("ls", "distillers", "--bogus", cwd=tmp_path)
    assert proc.returncode == 2 and "No such option" in proc.stderr and "--bogus" in proc.stderr


def test_help_does_not_import_torch_or_mlflow(tmp_path):
    code = ("import sys; sys.argv=['harness','--help']\n"
            "try:\n from harness.cli import main; main()\nexcept SystemExit: pass\n"
            "print('torch' in sys.modules, 'mlflow' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert "Commands:" in proc.stdout and "bench" in proc.stdout  # the help really was printed
    assert lines[-1] == "False False"


def test_a_budget_override_replaces_the_other_budget_key(tmp_path):
    (tmp_path / "grid.toml").write_text(GOOD)
    proc = harness_cli("validate", "grid.toml", "--set", "grid.n=[5]", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr  # n replaced the file's ipc instead of clashing with it
    proc = harness_cli("validate", "grid.toml", "--set", "grid.n=[0]", cwd=tmp_path)
    assert proc.returncode == 2 and "n must be >= 1" in proc.stderr


def test_validate_only_selects_trials_and_rejects_a_pattern_matching_none(tmp_path):
    (tmp_path / "grid.toml").write_text(GOOD)
    proc = harness_cli("validate", "grid.toml", "--set", "grid.ipc=[1, 2]", "--only", "*/ipc2/*", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("ok: grid 'cli-test' has 1 trials")
    proc = harness_cli("validate", "grid.toml", "--only", "ld/*", cwd=tmp_path)
    assert_one_error_line(proc, "--only ld/*: no trial of grid 'cli-test' matches; trial names look like random/")
