import shutil

import pytest

from harness.allocator import keep_freed_memory

keep_freed_memory()  # what every trial process of the harness does (run_trial): time that, not glibc's default


@pytest.fixture(scope="session")
def _mlflow_template(tmp_path_factory):
    from harness.tracking import Tracker

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    tracker = Tracker(f"sqlite:///{path}")
    tracker.client.search_experiments()  # migrate once
    tracker.close()  # its write-ahead log folded into the file, which the tests copy
    return path


@pytest.fixture
def tracking_uri(tmp_path, _mlflow_template):
    shutil.copy(_mlflow_template, tmp_path / "mlflow.db")
    return f"sqlite:///{tmp_path / 'mlflow.db'}"
