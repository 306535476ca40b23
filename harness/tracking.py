"""MLflow tracking. Only the driver process writes; trial results arrive as TrialResult objects.

Default store: ``sqlite:///results/mlflow.db`` with artifacts in ``results/mlartifacts`` (never
MLflow's cwd default). ``--tracking-uri`` or ``MLFLOW_TRACKING_URI`` point elsewhere, e.g. an
HTTP tracking server. One parent run per ``harness bench``; one child run per trial, with the same
param and metric keys across children so MLflow's compare view lines them up.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any, Iterable

from .errors import HarnessError

DEFAULT_URI = "sqlite:///results/mlflow.db"
RUN_KIND, TRIAL_KEY = "run_kind", "trial_key"
PAGE = 1000


def resolve_tracking_uri(uri: str | None) -> str:
    """Explicit URI > $MLFLOW_TRACKING_URI > the local sqlite store (made absolute)."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI
    if uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///"):])
        if not path.is_absolute():
            path = Path.cwd() / path
        path.parent.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{path}"
    if "://" not in uri:  # a bare path: a sqlite file there
        return resolve_tracking_uri(f"sqlite:///{uri}")
    return uri


def _quiet_mlflow() -> None:
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
    for name in ("mlflow", "alembic", "sqlalchemy"):
        logging.getLogger(name).setLevel(logging.WARNING)


class Tracker:
    def __init__(self, uri: str | None = None):
        _quiet_mlflow()
        from mlflow.tracking import MlflowClient

        self.uri = resolve_tracking_uri(uri)
        self.client = MlflowClient(tracking_uri=self.uri)

    def _artifact_root(self, name: str) -> str | None:
        if self.uri.startswith("sqlite:///"):
            root = Path(self.uri[len("sqlite:///"):]).parent / "mlartifacts" / name
            return root.as_uri()
        return None  # a tracking server decides where artifacts go

    def experiment_id(self, name: str, create: bool = True) -> str | None:
        try:
            exp = self.client.get_experiment_by_name(name)
            if exp is None:
                if not create:
                    return None
                return self.client.create_experiment(name, artifact_location=self._artifact_root(name))
            if exp.lifecycle_stage == "deleted":
                self.client.restore_experiment(exp.experiment_id)
            return exp.experiment_id
        except HarnessError:
            raise
        except Exception as exc:
            raise HarnessError(f"cannot use MLflow tracking store {self.uri}: {type(exc).__name__}: "
                               f"{str(exc).splitlines()[0] if str(exc) else ''}; check --tracking-uri") from None

    # -- reading ---------------------------------------------------------------------------------
    def trial_runs(self, experiment_id: str) -> list[Any]:
        """Every trial child run of an experiment (all statuses), newest first."""
        runs, token = [], None
        while True:
            page = self.client.search_runs([experiment_id], filter_string=f"tags.{RUN_KIND} = 'trial'",
                                           max_results=PAGE, order_by=["attributes.start_time DESC"],
                                           page_token=token)
            runs.extend(page)
            token = page.token
            if not token:
                return runs

    def finished_keys(self, experiment_id: str) -> set[str]:
        return {r.data.tags.get(TRIAL_KEY) for r in self.trial_runs(experiment_id)
                if r.info.status == "FINISHED"} - {None}

    # -- writing ---------------------------------------------------------------------------------
    def start_bench(self, experiment_id: str, run_name: str, params: dict, tags: dict) -> str:
        run = self.client.create_run(experiment_id, run_name=run_name, tags={RUN_KIND: "bench", **tags})
        self._log(run.info.run_id, params=params)
        return run.info.run_id

    def log_trial(self, experiment_id: str, parent_id: str, result: Any, cfg_fields: Iterable[str] = ()) -> str:
        """Log one trial as a child run. ``cfg_fields``: every Config field in the grid; fields
        this distiller lacks are logged as "-" so all children share the same param keys."""
        from mlflow.entities import Metric

        trial = result.trial
        tags = {RUN_KIND: "trial", TRIAL_KEY: trial.key, "mlflow.parentRunId": parent_id,
                "status": result.status, **{f"version.{d}": v for d, v in trial.versions}, **result.tags}
        if result.error:
            tags["error"] = result.error[:5000]
        run_id = self.client.create_run(experiment_id, run_name=trial.label, tags=tags).info.run_id
        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, 0) for k, v in result.metrics.items()]
        for label, accs in result.per_model.items():
            metrics += [Metric(f"acc_model/{label}", float(a), now, k) for k, a in enumerate(accs)]
        for step, values in result.curves:
            metrics += [Metric(f"distill/{k}", v, now, step) for k, v in values.items()]
        params = {f"cfg.{k}": "-" for k in cfg_fields}
        params.update(trial.params())
        self._log(run_id, params=params, metrics=metrics)
        if result.artifacts_dir:
            self.client.log_artifacts(run_id, result.artifacts_dir)
        if result.traceback:
            self.client.log_text(run_id, result.traceback, "error.txt")
        self.client.set_terminated(run_id, "FINISHED" if result.passed else "FAILED")
        return run_id

    def end_bench(self, run_id: str, table: Any, markdown: str, status: str, metrics: dict) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._log(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()])
        if table is not None and len(table):
            self.client.log_table(run_id, data=table, artifact_file="summary.json")
        if markdown:
            self.client.log_text(run_id, markdown, "summary.md")
        self.client.set_terminated(run_id, status)

    def _log(self, run_id: str, params: dict | None = None, metrics: Iterable | None = None) -> None:
        """Batched logging, chunked to MLflow's per-request limits."""
        from mlflow.entities import Param

        plist = [Param(k, str(v)[:6000]) for k, v in (params or {}).items()]
        mlist = list(metrics or [])
        for i in range(0, len(plist), 100):
            self.client.log_batch(run_id, params=plist[i : i + 100])
        for i in range(0, len(mlist), 1000):
            self.client.log_batch(run_id, metrics=mlist[i : i + 1000])
