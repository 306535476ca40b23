"""Finished trials whose logging failed are kept on disk and logged later, never recomputed.

When the tracking store stays unavailable while a finished trial is logged, the driver writes the
trial's results (params, metrics, curves, tags) and its artifacts to a spool directory and stops
the grid with one line. The next ``harness bench`` on that store, or ``harness sync``, logs every
spooled trial into its run (or a new one) before anything else, so it counts as finished.

Spool directory: ``$HARNESS_SPOOL_DIR``, else ``~/.cache/distill-harness/spool``; one folder per
store (a hash of its URI), one entry per trial, each written atomically (a temporary name, then a
rename), so a crash while spooling never leaves a half entry that looks complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

SPOOL_ENV = "HARNESS_SPOOL_DIR"
RECORD = "record.json"


def spool_root() -> Path:
    return Path(os.environ.get(SPOOL_ENV) or Path.home() / ".cache" / "distill-harness" / "spool")


def store_spool(uri: str) -> Path:
    """The spool folder of one tracking store."""
    return spool_root() / hashlib.sha256(uri.encode()).hexdigest()[:16]


@dataclass
class TrialView:
    """What logging needs of a trial (its JSON-safe part)."""

    label: str
    key: str
    grid_key: str = ""
    versions: list = field(default_factory=list)
    param_values: dict = field(default_factory=dict)

    def params(self) -> dict:
        return dict(self.param_values)


@dataclass
class SpooledResult:
    """A finished trial's results as read back from the spool; logs like a TrialResult."""

    trial: TrialView
    status: str
    metrics: dict
    per_model: dict
    curves: list
    tags: dict
    error: str
    traceback: str
    artifacts_dir: str | None
    experiment: str
    parent_id: str | None
    run_id: str | None
    curves_sent: int
    cfg_fields: list
    recipes: list = field(default_factory=list)  # harness.runner.RecipeResult, as in a TrialResult

    @property
    def passed(self) -> bool:
        return self.status == "passed"


def spool(uri: str, experiment: str, parent_id: str | None, cfg_fields: list[str], result: Any) -> Path:
    """Write one finished trial (results and artifacts) to the store's spool; returns its folder."""
    folder = store_spool(uri)
    folder.mkdir(parents=True, exist_ok=True)
    trial = result.trial
    entry = folder / f"{trial.key}-{uuid.uuid4().hex[:8]}"
    partial = folder / f".partial-{entry.name}"
    partial.mkdir()
    if result.artifacts_dir:
        shutil.copytree(result.artifacts_dir, partial / "artifacts")
    record = {
        "uri": uri, "experiment": experiment, "parent_id": parent_id, "run_id": result.run_id,
        "curves_sent": result.curves_sent, "cfg_fields": list(cfg_fields),
        "trial": {"label": trial.label, "key": trial.key, "grid_key": trial.grid_key,
                  "versions": [list(v) for v in trial.versions],
                  "param_values": {k: str(v) for k, v in trial.params().items()}},
        "status": result.status, "metrics": result.metrics, "per_model": result.per_model,
        "curves": [[s, m] for s, m in result.curves], "tags": result.tags, "error": result.error,
        "traceback": result.traceback, "recipes": [asdict(r) for r in result.recipes],
    }
    (partial / RECORD).write_text(json.dumps(record), encoding="utf-8")
    partial.rename(entry)
    return entry


def pending(uri: str) -> list[Path]:
    folder = store_spool(uri)
    return sorted(p for p in folder.iterdir() if (p / RECORD).is_file() and not p.name.startswith(".")) \
        if folder.is_dir() else []


def read(entry: Path) -> SpooledResult:
    from .runner import RecipeResult

    data = json.loads((entry / RECORD).read_text(encoding="utf-8"))
    artifacts = entry / "artifacts"
    return SpooledResult(
        trial=TrialView(**data["trial"]), status=data["status"], metrics=data["metrics"],
        per_model=data["per_model"], curves=[(int(s), m) for s, m in data["curves"]], tags=data["tags"],
        error=data["error"], traceback=data["traceback"],
        artifacts_dir=str(artifacts) if artifacts.is_dir() else None, experiment=data["experiment"],
        parent_id=data["parent_id"], run_id=data["run_id"], curves_sent=int(data["curves_sent"]),
        cfg_fields=data["cfg_fields"], recipes=[RecipeResult(**r) for r in data.get("recipes", [])],
    )


def flush(tracker: Any) -> int:
    """Log every spooled trial of ``tracker``'s store; returns how many. An entry is removed only
    once its run is FINISHED/FAILED in the store, so a failure here loses nothing either."""
    from .errors import HarnessError, one_line

    done = 0
    for entry in pending(tracker.uri):
        try:
            tracker.log_spooled(read(entry))
        except Exception as exc:
            raise HarnessError(f"could not log the spooled trial {entry.name} into {tracker.uri} "
                               f"({one_line(exc)}); it stays in {entry}") from None
        shutil.rmtree(entry, ignore_errors=True)
        done += 1
    return done
