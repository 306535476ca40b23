"""Shared fixtures: real MLflow sqlite stores (copied from a pre-migrated template), tiny plugins."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))  # tests/plugins_for_tests.py


@pytest.fixture(scope="session")
def mlflow_template(tmp_path_factory) -> Path:
    """An empty, fully migrated MLflow sqlite db, created once (migrations take seconds)."""
    from harness.tracking import Tracker

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    Tracker(f"sqlite:///{path}").client.search_experiments()
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
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]))
