"""The third-party plugin template (examples/harness-example-plugin) and the conformance kit.

The template is pip-installed for real (once per session, into a temporary target directory) and
then seen by the harness through its entry point, exactly as a researcher's plugin would be.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import harness
from harness.errors import ConfigError, SpecError
from harness.testing import check_distiller, make_task

from driver_zygote import run_driver

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "harness-example-plugin"
DIST = "harness-example-plugin"


# -- fixtures ------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def example_site(tmp_path_factory) -> Path:
    """The template, pip-installed (not editable) into a fresh target directory.

    pip builds in-tree, so it installs from a copy of the template: no build/ or *.egg-info is
    ever written into the repository. No network: --no-deps, --no-build-isolation, --no-index.
    """
    root = tmp_path_factory.mktemp("example-plugin")
    src = root / "src"
    shutil.copytree(EXAMPLE, src, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__", ".pytest_cache"))
    site = root / "site"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
         "--disable-pip-version-check", "-q", "--target", str(site), str(src)],
        capture_output=True, text=True, timeout=180,
    )
    assert proc.returncode == 0, f"pip install failed:\n{proc.stdout}\n{proc.stderr}"
    return site


def _env(site: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in [str(site), env.get("PYTHONPATH", "")] if p)
    env.update(extra)
    return env


def _harness(site: Path, *args: str, cwd: Path | None = None, timeout: int = 120, **env: str):
    """``python -m harness ARGS`` in a process of its own (tests/driver_zygote.py), the template on its path."""
    return run_driver(list(args), _env(site, **env), cwd or Path.cwd(), timeout)


@pytest.fixture(scope="module")
def example():
    """The template's modules, imported from its source directory (no entry point involved)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(EXAMPLE))
        from harness_example import archs, datasets, herding

        yield SimpleNamespace(herding=herding, datasets=datasets, archs=archs, Herding=herding.ExampleHerding)


# -- (a) installed for real, seen through its entry point ----------------------------------------
def test_installed_template_is_listed_by_harness_plugins(example_site):
    proc = _harness(example_site, "plugins", "--json")
    assert proc.returncode == 0, proc.stderr
    listing = json.loads(proc.stdout)
    ours = [p for p in listing["plugins"] if p["distribution"] == DIST]
    assert len(ours) == 1, listing
    info = ours[0]
    assert info["version"] == "0.1.0"
    assert info["plugin"] == "example" and info["module"] == "harness_example.plugin"
    assert info["registered"] == {"datasets": ["example-blobs"], "architectures": ["example-linear"],
                                  "distillers": ["example-herding"]}
    assert not [p for p in listing["problems"] if p["distribution"] == DIST], listing["problems"]


def test_allowlist_and_autoload_switches_apply_to_the_template(example_site):
    only = json.loads(_harness(example_site, "plugins", "--json", HARNESS_PLUGINS=DIST).stdout)
    assert {p["distribution"] for p in only["plugins"]} == {"distill-harness", DIST}
    none = json.loads(_harness(example_site, "plugins", "--json", HARNESS_DISABLE_PLUGIN_AUTOLOAD="1").stdout)
    assert DIST not in {p["distribution"] for p in none["plugins"]}


def test_template_plugin_module_does_not_import_torch(example_site):
    code = "import sys, harness_example.plugin; sys.exit(3 if 'torch' in sys.modules else 0)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=_env(example_site), timeout=60)
    assert proc.returncode == 0, f"importing the plugin module imported torch\n{proc.stderr}"


@pytest.mark.slow
def test_template_own_test_suite_passes_when_installed(example_site):
    """What a researcher runs after copying the template (in the installed copy, not the repo)."""
    src = example_site.parent / "src"
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
                          capture_output=True, text=True, cwd=src, env=_env(example_site), timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout and "failed" not in proc.stdout


# -- (b) a real tiny grid, end to end ------------------------------------------------------------
@pytest.mark.slow
def test_grid_with_the_template_runs_end_to_end(example_site, tmp_path, tracking_uri):
    import mlflow

    (tmp_path / "grid.toml").write_text(
        'name = "example-e2e"\n'
        "seeds = [0]\n"
        'device = "cpu"\n\n'
        "[[grid]]\n"
        'distiller = ["example-herding", "random"]\n'
        'dataset = ["example-blobs"]\n'
        'arch = ["example-linear"]\n'
        "ipc = [2]\n\n"
        "[eval]\n"
        "models = 1\n"
        "epochs = 5\n"
    )
    proc = _harness(example_site, "bench", "grid.toml", "--tracking-uri", tracking_uri, cwd=tmp_path, timeout=240)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert not (tmp_path / "results").exists()  # nothing fell back to the default store

    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name("example-e2e")
    assert exp is not None
    runs = client.search_runs([exp.experiment_id], filter_string="tags.run_kind = 'trial'")
    assert len(runs) == 2
    by_distiller = {r.data.params["distiller"]: r for r in runs}
    assert set(by_distiller) == {"example-herding", "random"}
    for run in runs:
        assert run.info.status == "FINISHED", run.data.tags.get("error")
        assert run.data.tags.get("trial_key")
        assert "acc_mean" in run.data.metrics and 0.0 <= run.data.metrics["acc_mean"] <= 100.0
        assert run.data.tags.get("mlflow.parentRunId")
    herding_run = by_distiller["example-herding"]
    assert herding_run.data.params["cfg.space"] == "input"
    assert herding_run.data.tags.get(f"version.{DIST}") == "0.1.0"
    assert "distill/mean_gap" in herding_run.data.metrics  # task.log curves reach MLflow


# -- (c) the template's distiller, in process ----------------------------------------------------
def test_template_herding_passes_check_distiller(example):
    out = check_distiller(example.Herding)
    assert out.meta["source"] == "herding"
    check_distiller(example.Herding, space="features", normalize=True)


def test_template_herding_config_is_validated(example):
    from harness.grid import build_config

    with pytest.raises(ValueError, match="space must be one of 'input', 'features'"):
        example.Herding.Config(space="pixels")
    with pytest.raises(ConfigError, match="space must be one of"):
        build_config(example.Herding, {"space": "pixels"}, "distillers.example-herding")


def test_template_herding_honours_a_total_budget(example):
    out = example.Herding().distill(make_task(example.Herding, n=2))  # n < classes: capability set
    assert out.n == 2 and torch.equal(out.y.sum(1), torch.ones(2))


def _blobs_task(example, ipc: int, seed: int = 0):
    x, y = example.datasets.load_blobs("train")
    shape, classes = example.datasets.INPUT_SHAPE, example.datasets.NUM_CLASSES
    return harness.DistillTask(
        x=x, y=y, num_classes=classes, ipc=ipc, n=ipc * classes,
        make_model=lambda: example.archs.build_linear(shape, classes), config=example.Herding.Config(),
        device=torch.device("cpu"), generator=torch.Generator().manual_seed(seed),
    )


def _mean_gaps(dset, x, y, classes: int) -> list[float]:
    """Per class: distance between the subset's mean and the full class mean."""
    labels = dset.y.argmax(1)
    return [float((dset.x[labels == c].mean(0) - x[y == c].mean(0)).norm()) for c in range(classes)]


def test_herding_subset_mean_is_closer_to_the_class_mean_than_random(example):
    from harness_distillers.baselines import RandomSubset

    x, y = example.datasets.load_blobs("train")
    classes = example.datasets.NUM_CLASSES
    # ipc = 1: herding's pick is the example nearest the class mean, so no single example is closer.
    herded = _mean_gaps(example.Herding().distill(_blobs_task(example, 1)), x, y, classes)
    for c in range(classes):
        nearest = float((x[y == c] - x[y == c].mean(0)).flatten(1).norm(dim=1).min())
        assert herded[c] == pytest.approx(nearest, rel=1e-5)
    # ipc > 1: closer than every one of 10 seeded random subsets of the same size, in every class.
    for ipc in (3, 8):
        herded = _mean_gaps(example.Herding().distill(_blobs_task(example, ipc)), x, y, classes)
        for seed in range(10):
            rand = _mean_gaps(RandomSubset().distill(_blobs_task(example, ipc, seed)), x, y, classes)
            assert all(h < r for h, r in zip(herded, rand)), (ipc, seed, herded, rand)


def test_herd_running_mean_gap_shrinks_to_zero_on_the_whole_class(example):
    vectors = torch.randn(12, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    idx, gap = example.herding.herd(vectors, 12)
    assert sorted(idx.tolist()) == list(range(12)) and gap == pytest.approx(0.0, abs=1e-12)


# -- (d) the conformance kit itself --------------------------------------------------------------
class NonDeterministic:
    """Adds noise from an unseeded generator (a classic bug: ignores task.generator)."""

    name = "non-deterministic"

    @dataclass
    class Config:
        pass

    def distill(self, task):
        from harness.baseline import random_subset

        dset = random_subset(task.x, task.y, task.num_classes, task.ipc, task.n, task.generator)
        g = torch.Generator()
        g.seed()  # non-deterministic seed
        dset.x = dset.x + 1e-3 * torch.randn(dset.x.shape, generator=g)
        return dset


class WrongSize:
    """Returns one example too many per class."""

    name = "wrong-size"

    @dataclass
    class Config:
        pass

    def distill(self, task):
        from harness.baseline import random_subset

        return random_subset(task.x, task.y, task.num_classes, task.ipc + 1, task.n + task.num_classes, task.generator)


class NoConfig:
    """Has everything but the Config dataclass."""

    name = "no-config"

    def distill(self, task):  # pragma: no cover - never reached
        raise AssertionError


def test_check_distiller_passes_for_the_builtin_baselines():
    from harness_distillers.baselines import Full, RandomSubset

    assert check_distiller(RandomSubset).n == 6
    full = check_distiller(Full)
    assert full.n == 90  # the whole tiny training set: Full ignores the budget


def test_check_distiller_rejects_a_non_deterministic_distiller():
    with pytest.raises(AssertionError, match="not deterministic"):
        check_distiller(NonDeterministic)


def test_check_distiller_rejects_the_wrong_number_of_examples():
    with pytest.raises(AssertionError, match="expected 6 examples for ipc=2, got 9"):
        check_distiller(WrongSize)


def test_check_distiller_rejects_a_class_without_config():
    with pytest.raises(SpecError, match="Config"):
        check_distiller(NoConfig)
