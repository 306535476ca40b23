"""MLflow tracking. Only the driver process writes; trial results arrive as TrialResult objects.

Default store: ``sqlite:///results/mlflow.db`` with artifacts in ``results/mlartifacts`` (never
MLflow's cwd default). ``--tracking-uri`` or ``MLFLOW_TRACKING_URI`` point elsewhere, e.g. an
HTTP tracking server. One parent run per ``harness bench``; one child run per trial; under it one
run per evaluation recipe. Every trial run and every recipe run has the same param and metric keys
(recipe-free names: ``acc_mean``, ``acc_std``, ``acc_random``, ``gain`` in percent, ``distill_seconds``
...; the recipe as ``eval.*`` params), so MLflow's compare and group-by views line any of them up.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, Iterable

from .errors import HarnessError, one_line
from .lifecycle import (CLAIM, CLAIM_ATTEMPTS, HEARTBEAT, PENDING, WON, claim_order, driver_tags, env_seconds,
                        has_won, is_dead, last_alive_ms, now_ms)
from .sqlite_store import store_lock, write_ahead

DEFAULT_URI = "sqlite:///results/mlflow.db"
RUN_KIND, TRIAL_KEY, GRID_KEY = "run_kind", "trial_key", "grid_key"
ACC_UNIT_TAG = "acc_unit"  # "percent" on runs that log accuracies in percent; runs without it logged fractions
RECIPE_RUN_COST = ("distill_seconds", "n_distilled", "peak_mem_mb")  # the trial's, repeated on its recipe runs
PAGE = 1000
RETRY_WAITS = (1.0, 3.0, 9.0)  # backoff between attempts of a store call that failed transiently
RETRY_ENV = "HARNESS_STORE_RETRY_WAITS"  # e.g. "2,10,60" for a distant server; "0" for one quick retry
TRANSIENT = ("connection refused", "connection reset", "connection aborted", "max retries exceeded", "timed out",
             "temporarily unavailable", "database is locked", "remote end closed", "bad gateway",
             "service unavailable", "gateway timeout", "too many requests")


def is_transient(exc: BaseException) -> bool:
    """A store error worth retrying: the network or a busy database, not a bad request."""
    text = f"{type(exc).__name__}: {exc}".lower()
    return isinstance(exc, (ConnectionError, TimeoutError)) or any(t in text for t in TRANSIENT)


# the MLflow UI opens an experiment in the view this tag names; without it, MLflow 3 opens harness
# experiments on its GenAI view ("Traces"), where no runs show
EXPERIMENT_KIND, MODEL_TRAINING = "mlflow.experimentKind", "custom_model_development"
PER_MODEL = "acc_models"  # tag: JSON {recipe: [accuracy of model 0, 1, ...]} (the report's paired tests read it)
MAX_TAG = 5000

class _Retrying:
    """An MlflowClient whose calls are retried with backoff when they fail transiently, and made one
    at a time: the driver's threads share it (trials starting and ending, curve streams, the
    heartbeat). The lock is held per request, never across a retry's wait or a sequence of requests,
    so a thread logging a finished trial does not hold up another starting one."""

    def __init__(self, client: Any, waits: tuple[float, ...] = RETRY_WAITS):
        self._client, self._waits = client, waits
        self._lock = threading.RLock()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            for wait in (*self._waits, None):
                try:
                    with self._lock:
                        return attr(*args, **kwargs)
                except Exception as exc:
                    if wait is None or not is_transient(exc):
                        raise
                    time.sleep(wait)

        return call


def resolve_tracking_uri(uri: str | None) -> str:
    """Explicit URI > $MLFLOW_TRACKING_URI > the local sqlite store (made absolute)."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI
    if uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///"):])
        if not path.is_absolute():
            path = Path.cwd() / path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise HarnessError(f"cannot use MLflow tracking store sqlite:///{path}: {exc.strerror} ({path.parent}); "
                               f"check --tracking-uri") from None
        return f"sqlite:///{path}"
    if "://" not in uri:  # a bare path: a sqlite file there
        return resolve_tracking_uri(f"sqlite:///{uri}")
    return uri


def _quiet_mlflow() -> None:
    """MLflow's logging after its import (which configures its loggers): warnings only, and none of
    the tracebacks its sqlite store logs before raising (the harness reports those in one line)."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
    import mlflow  # noqa: F401

    for name in ("mlflow", "alembic", "sqlalchemy"):
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)


class Tracker:
    """The driver's MLflow client: one store request at a time in this process (see :class:`_Retrying`)."""

    def __init__(self, uri: str | None = None):
        _quiet_mlflow()
        from mlflow.tracking import MlflowClient

        self.uri = resolve_tracking_uri(uri)
        self._open: dict[str, tuple[str, dict]] = {}  # trial run -> (experiment id, its params)
        self._claim_orders: dict[str, tuple[int, str]] = {}  # trial run -> its claim_order, as created
        waits = env_seconds(RETRY_ENV, RETRY_WAITS)
        with store_lock(self.uri):  # creating (migrating) the store happens here: a broken one fails in one line
            self.client = _Retrying(self._guard(lambda: MlflowClient(tracking_uri=self.uri)), waits)
            if self.uri.startswith("sqlite:///"):
                self._guard(lambda: self.client.search_experiments(max_results=1))
                write_ahead(self._engine())

    def _engine(self) -> Any:
        """The SQLAlchemy engine of MLflow's sqlite store (one per store URI in a process), or None."""
        try:
            return self.client._client._tracking_client.store.engine
        except AttributeError:  # another store, or an MLflow that keeps it elsewhere: left as it is
            return None

    def close(self) -> None:
        """Fold the write-ahead log into the store's file and close this process's connections, so
        that the ``.db`` file alone holds every run (a copy of it is complete) once the driver is done."""
        engine = self._engine() if self.uri.startswith("sqlite:///") else None
        if engine is None:
            return
        try:
            with engine.connect() as connection:
                connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        except Exception:  # noqa: BLE001 - the log is folded in by the last connection to close anyway
            pass
        engine.dispose()

    def _guard(self, call: Any) -> Any:
        """Run a store call; an unusable store becomes one HarnessError line naming it."""
        try:
            return call()
        except HarnessError:
            raise
        except Exception as exc:
            raise HarnessError(f"cannot use MLflow tracking store {self.uri}: {one_line(exc, None)}; "
                               f"check --tracking-uri") from None

    def _artifact_root(self, name: str) -> str | None:
        if self.uri.startswith("sqlite:///"):
            root = Path(self.uri[len("sqlite:///"):]).parent / "mlartifacts" / name
            return root.as_uri()
        return None  # a tracking server decides where artifacts go

    def experiment_id(self, name: str, create: bool = True) -> str | None:
        def get_or_create() -> str | None:
            exp = self.client.get_experiment_by_name(name)
            if exp is None:
                if not create:
                    return None
                try:
                    return self.client.create_experiment(name, artifact_location=self._artifact_root(name),
                                                         tags={EXPERIMENT_KIND: MODEL_TRAINING})
                except Exception:  # another driver created it between our lookup and our create
                    exp = self.client.get_experiment_by_name(name)
                    if exp is None:
                        raise
            if exp.lifecycle_stage == "deleted":
                self.client.restore_experiment(exp.experiment_id)
            if create and EXPERIMENT_KIND not in exp.tags:  # made before the tag (or elsewhere): a user's choice stays
                self.client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND, MODEL_TRAINING)
            return exp.experiment_id

        with store_lock(self.uri):
            return self._guard(get_or_create)

    # -- reading ---------------------------------------------------------------------------------
    def trial_runs(self, experiment_id: str) -> list[Any]:
        """Every trial child run of an experiment (all statuses), newest first."""
        return self._search(experiment_id, f"tags.{RUN_KIND} = 'trial'", ["attributes.start_time DESC"])

    def recipe_runs(self, experiment_id: str) -> list[Any]:
        """Every recipe run (one per trial x evaluation recipe, under its trial's run) of an experiment."""
        return self._search(experiment_id, f"tags.{RUN_KIND} = 'eval'")

    def finished_keys(self, experiment_id: str) -> tuple[set[str], set[str]]:
        """Keys of the experiment's FINISHED trials: ``(trial keys, legacy keys)``. Legacy keys are
        those of runs made before data fingerprints (no ``grid_key`` tag): a trial whose
        ``grid_key`` is one of them is taken as run on the data it reads now."""
        finished = [r for r in self.trial_runs(experiment_id) if r.info.status == "FINISHED"]
        keys = {r.data.tags.get(TRIAL_KEY) for r in finished} - {None}
        legacy = {r.data.tags.get(TRIAL_KEY) for r in finished if GRID_KEY not in r.data.tags} - {None}
        return keys, legacy

    def _search(self, experiment_id: str, filter_string: str, order_by: list[str] | None = None) -> list[Any]:
        runs, token = [], None
        while True:
            page = self.client.search_runs([experiment_id], filter_string=filter_string, max_results=PAGE,
                                           order_by=order_by, page_token=token)
            runs.extend(page)
            token = page.token
            if not token:
                return runs

    # -- the run lifecycle (harness.lifecycle) ----------------------------------------------------
    def reap(self, experiment_id: str) -> int:
        """Mark KILLED every RUNNING run of the experiment whose driver is dead (kill -9, power loss),
        ended at its last heartbeat. Returns how many."""
        dead = [r for r in self._search(experiment_id, "attributes.status = 'RUNNING'") if is_dead(r)]
        for run in dead:
            self.client.set_terminated(run.info.run_id, "KILLED", end_time=last_alive_ms(run))
        return len(dead)

    def beat(self, run_ids: Iterable[str]) -> None:
        """Refresh the heartbeat of runs this driver holds open (called by the heartbeat thread)."""
        stamp = str(now_ms())
        for run_id in run_ids:
            self.client.set_tag(run_id, HEARTBEAT, stamp)

    def start_bench(self, experiment_id: str, run_name: str, params: dict, tags: dict,
                    grid_document: dict | None = None, description: str = "") -> str:
        """The parent run; the first write of a bench, so an unwritable store fails here, before compute.
        ``grid_document``: the grid as resolved (overrides applied), kept as ``grid.json``;
        ``description``: the run's description in the MLflow UI (markdown)."""
        def start() -> str:
            extra = {"mlflow.note.content": description} if description else {}
            run = self.client.create_run(experiment_id, run_name=run_name,
                                         tags={RUN_KIND: "bench", **driver_tags(), **tags, **extra})
            self._log(run.info.run_id, params=params)
            if grid_document:
                self.client.log_dict(run.info.run_id, json.loads(json.dumps(grid_document, default=str)), "grid.json")
            return run.info.run_id

        return self._guard(start)

    def start_trial(self, experiment_id: str, parent_id: str, trial: Any, cfg_fields: Iterable[str] = ()) -> str:
        """The trial's child run, created when the trial starts: RUNNING, its params logged, owned by
        this driver. ``cfg_fields``: every Config field in the grid; fields this distiller lacks are
        logged as "-" so all children share the same param keys (the trial's recipe runs too)."""
        tags = {RUN_KIND: "trial", TRIAL_KEY: trial.key, GRID_KEY: trial.grid_key, CLAIM: PENDING, **driver_tags(),
                **{f"version.{d}": v for d, v in trial.versions}}
        if parent_id:
            tags["mlflow.parentRunId"] = parent_id
        params = {f"cfg.{k}": "-" for k in cfg_fields}
        params.update(trial.params())
        run = self.client.create_run(experiment_id, run_name=trial.label, tags=tags)
        run_id = run.info.run_id
        self._claim_orders[run_id] = claim_order(run)  # the store's start time: claim() need not read it back
        self._log(run_id, params=params)
        self._log_inputs(run_id, dataset_inputs(trial))
        self._open[run_id] = (experiment_id, {k: str(v) for k, v in params.items()})
        return run_id

    def _log_inputs(self, run_id: str, inputs: list) -> None:
        """Dataset inputs are informational: MLflow creates a dataset row on first use without
        locking, so two drivers logging the same new dataset at once can collide (UNIQUE
        constraint); the retry finds the row. A trial never fails for its inputs."""
        for attempt in range(3):
            if not inputs:
                return
            try:
                self.client.log_inputs(run_id, datasets=inputs)
                return
            except Exception:  # noqa: BLE001 - a concurrent creator won: the next attempt links to its row
                time.sleep(0.05 * (attempt + 1))

    def claim(self, experiment_id: str, key: str, run_id: str, count_finished: bool = True) -> str | None:
        """Whether the trial ``key`` is this driver's to run with its new run ``run_id``: None if so,
        else why not ("finished" by then, unless ``count_finished`` is off (``--no-resume``), or
        "running" in another live run) after deleting ``run_id``. The two phases of
        :mod:`harness.lifecycle`; dead holders are reaped."""
        import random

        def finished(rivals: list) -> bool:
            return count_finished and any(r.info.status == "FINISHED" for r in rivals)

        mine = self._claim_orders.pop(run_id, None) or claim_order(self.client.get_run(run_id))
        reason = "running"
        for attempt in range(CLAIM_ATTEMPTS):
            rivals = self._rivals(experiment_id, key, run_id)
            if finished(rivals):
                reason = "finished"
                break
            if any(r.info.status == "RUNNING" and (has_won(r) or claim_order(r) < mine) for r in rivals):
                break
            self.client.set_tag(run_id, CLAIM, WON)
            rivals = self._rivals(experiment_id, key, run_id)
            if finished(rivals):
                reason = "finished"
                break
            if not any(r.info.status == "RUNNING" and has_won(r) for r in rivals):
                return None
            self.client.set_tag(run_id, CLAIM, PENDING)  # a tie: both withdraw; the first to come back wins
            time.sleep(random.uniform(0.05, 0.5) * (attempt + 1))
        self.client.delete_run(run_id)
        return reason

    def _rivals(self, experiment_id: str, key: str, run_id: str) -> list[Any]:
        """The other runs of trial ``key``; those RUNNING whose driver is dead are marked KILLED here."""
        rivals = []
        for run in self._search(experiment_id, f"tags.{TRIAL_KEY} = '{key}'"):
            if run.info.run_id == run_id:
                continue
            if run.info.status == "RUNNING" and is_dead(run):
                self.client.set_terminated(run.info.run_id, "KILLED", end_time=last_alive_ms(run))
                continue
            rivals.append(run)
        return rivals

    def log_points(self, run_id: str, points: list[tuple[int, dict[str, float]]]) -> None:
        """Curve points of a running trial (``distill/<metric>`` by step), streamed while it runs."""
        from mlflow.entities import Metric

        now = now_ms()
        self._log(run_id, metrics=[Metric(f"distill/{k}", float(v), now, int(step))
                                   for step, values in points for k, v in values.items()])

    def finish_trial(self, run_id: str, result: Any, curves_sent: int = 0) -> None:
        """Everything a finished trial produced, then FINISHED or FAILED with the real end time.
        ``curves_sent``: how many of ``result.curves`` were already streamed."""
        from mlflow.entities import Metric

        now = now_ms()
        metrics = [Metric(k, float(v), now, 0) for k, v in result.metrics.items()]
        for step, values in result.curves[curves_sent:]:
            metrics += [Metric(f"distill/{k}", float(v), now, int(step)) for k, v in values.items()]
        tags = {"status": result.status, ACC_UNIT_TAG: "percent", **result.tags}
        if result.per_model:  # one value per evaluated model, by recipe: a tag, not a step series
            tags[PER_MODEL] = json.dumps({label: [round(float(a), 4) for a in accs]
                                          for label, accs in result.per_model.items()})[:MAX_TAG]
        if result.error:
            tags["error"] = result.error[:5000]
        self._log(run_id, metrics=metrics, tags=tags)
        if result.recipes:
            self._log_recipes(run_id, result)
        if result.artifacts_dir:
            self.client.log_artifacts(run_id, result.artifacts_dir)
        if result.traceback:
            self.client.log_text(run_id, result.traceback, "error.txt")
        self.client.set_terminated(run_id, "FINISHED" if result.passed else "FAILED")
        self._open.pop(run_id, None)
        self._claim_orders.pop(run_id, None)

    def _log_recipes(self, run_id: str, result: Any) -> None:
        """One FINISHED child run of the trial's run per evaluated recipe, timed as its evaluation ran:
        the trial's params with this recipe's ``eval.*`` (and ``eval.recipe``, its label), the core
        metrics under recipe-free names plus the trial's cost, the per-model accuracies as a tag.
        Three store requests per recipe (create, log, end)."""
        from mlflow.entities import Metric

        done: set[str] = set()
        if run_id in self._open:
            experiment_id, trial_params = self._open[run_id]
        else:  # a spooled trial whose run an earlier driver created, maybe with some recipe runs logged
            run = self.client.get_run(run_id)
            experiment_id, trial_params = run.info.experiment_id, dict(run.data.params)
            done = {r.data.tags.get("recipe") for r in self._search(
                experiment_id, f"tags.{RUN_KIND} = 'eval' and tags.`mlflow.parentRunId` = '{run_id}'")
                if r.info.status == "FINISHED"}
        shared = {k: v for k, v in trial_params.items() if not k.startswith("eval.")}
        cost = {k: result.metrics[k] for k in RECIPE_RUN_COST if k in result.metrics}
        for r in result.recipes:
            if r.label in done:
                continue
            tags = {RUN_KIND: "eval", "mlflow.parentRunId": run_id, ACC_UNIT_TAG: "percent",
                    "recipe": r.label, "eval.mode": r.mode, **driver_tags(),
                    PER_MODEL: json.dumps([round(float(a), 4) for a in r.accs])[:MAX_TAG]}
            child = self.client.create_run(experiment_id, start_time=int(r.start_ms), tags=tags,
                                           run_name=f"{result.trial.label} {r.label}").info.run_id
            params = {**shared, **{k: str(v) for k, v in r.params.items()}, "eval.recipe": r.label}
            values = {**cost, **r.metrics}
            self._log(child, params=params, metrics=[Metric(k, float(v), int(r.end_ms), 0) for k, v in values.items()])
            self.client.set_terminated(child, "FINISHED", end_time=int(r.end_ms))

    def end_run(self, run_id: str, status: str) -> None:
        """End a run without results (KILLED on interruption, FAILED when logging broke)."""
        self.client.set_terminated(run_id, status)
        self._open.pop(run_id, None)
        self._claim_orders.pop(run_id, None)

    def log_spooled(self, record: Any) -> str:
        """Log a trial kept by :mod:`harness.spool`: into its own run if that is still RUNNING, else
        into a new run of its experiment (under its parent when the parent still exists)."""
        def active(run_id: str | None) -> Any:
            if not run_id:
                return None
            try:
                run = self.client.get_run(run_id)
            except Exception:
                return None
            return run if run.info.lifecycle_stage == "active" else None

        run = active(record.run_id)
        if run is not None and run.info.status == "RUNNING":
            run_id, sent = record.run_id, record.curves_sent
        else:
            exp_id = self.experiment_id(record.experiment)
            parent = record.parent_id if active(record.parent_id) is not None else None
            run_id, sent = self.start_trial(exp_id, parent, record.trial, record.cfg_fields), 0
        self.finish_trial(run_id, record, sent)
        return run_id

    def log_trial(self, experiment_id: str, parent_id: str, result: Any, cfg_fields: Iterable[str] = ()) -> str:
        """Log a whole finished trial at once (a trial run elsewhere, without streaming)."""
        run_id = self.start_trial(experiment_id, parent_id, result.trial, cfg_fields)
        self.finish_trial(run_id, result)
        return run_id

    def system_metrics(self, run_id: str) -> Any:
        """MLflow's system-metrics monitor (CPU, memory, disk, network; GPU with pynvml) logging
        ``system/*`` into ``run_id`` every 10 s (``MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL``) until
        ``.finish()``, which logs one sample if none was logged yet (a bench shorter than the
        interval, or a monitor thread starved on a busy machine); started here."""
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        class Monitor(SystemMetricsMonitor):
            def finish(self) -> None:
                """Stop; a bench that ended before the first interval still gets one sample."""
                super().finish()
                if getattr(self, "_logging_step", 1) == 0:
                    try:
                        self.collect_metrics()
                        self.publish_metrics(self.aggregate_metrics())
                        self.mlflow_logger.flush()
                    except Exception:  # noqa: BLE001 - system metrics are informational
                        pass

        monitor = Monitor(run_id, samples_before_logging=1, tracking_uri=self.uri)
        monitor.start()
        return monitor

    def end_bench(self, run_id: str, table: Any, markdown: str, status: str, metrics: dict,
                  figures: dict | None = None) -> None:
        """The parent's summary (table, markdown, counts, ``figures`` {name: Figure} under plots/), then its end."""
        from mlflow.entities import Metric

        now = now_ms()
        self._log(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()])
        if table is not None and len(table):
            self.client.log_table(run_id, data=table, artifact_file="summary.json")
        if markdown:
            self.client.log_text(run_id, markdown, "summary.md")
        for name, figure in (figures or {}).items():
            self.client.log_figure(run_id, figure, f"plots/{name}")
        self.client.set_terminated(run_id, status)

    def _log(self, run_id: str, params: dict | None = None, metrics: Iterable | None = None,
             tags: dict | None = None) -> None:
        """Batched logging within MLflow's per-request limits (100 params, 100 tags, 1,000 metrics,
        1,000 entities in all): one request (one store transaction) for a typical trial."""
        from mlflow.entities import Param, RunTag

        plist = [Param(k, str(v)[:6000]) for k, v in (params or {}).items()]
        tlist = [RunTag(k, str(v)) for k, v in (tags or {}).items()]
        mlist = list(metrics or [])
        while plist or tlist or mlist:
            p, t = plist[:100], tlist[:100]
            m = mlist[: 1000 - len(p) - len(t)]
            plist, tlist, mlist = plist[len(p):], tlist[len(t):], mlist[len(m):]
            self.client.log_batch(run_id, metrics=m, params=p, tags=t)


def dataset_inputs(trial: Any) -> list:
    """The data a trial read, as MLflow dataset inputs (the UI's "Datasets used"): one per split,
    named after the dataset, its fingerprint (harness.data.fingerprint) as the digest, with its role
    (train, test, base) as the ``mlflow.data.context`` tag."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    inputs = []
    for kind, prints in trial.data:
        name = trial.base_dataset if kind == "base_fingerprint" else trial.dataset
        words = prints.split()
        for split, digest in zip(words[::2], words[1::2]):
            context = "base" if kind == "base_fingerprint" else split
            source = json.dumps({"dataset": name, "split": split, "harness_fingerprint": digest})
            inputs.append(DatasetInput(Dataset(name=name, digest=digest[:36], source_type="harness", source=source),
                                       tags=[InputTag("mlflow.data.context", context)]))
    return inputs
