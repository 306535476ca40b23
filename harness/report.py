"""Leaderboards from MLflow: mean ± std over seeds per distiller × dataset × arch × budget × recipe.

Accuracies are in percent, as the runs log them (runs logged before the ``acc_unit`` tag logged
fractions and are converted here); ``std`` is the population std over seeds (as over models in the
DC protocol). ``gain`` is the accuracy minus that of a random real subset at the same budget and
recipe, in percentage points. Each trial's per-recipe results come from its recipe runs
(``run_kind = eval``); runs logged before those existed carry them as ``acc_mean/<recipe>`` metrics.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from .errors import HarnessError
from .tracking import ACC_UNIT_TAG, GRID_KEY, PER_MODEL, TRIAL_KEY

GROUP = ["dataset", "base_dataset", "arch", "budget", "recipe", "protocol", "distiller", "variant"]
PER_RECIPE = re.compile(r"^acc_mean/(.+)$")
IN_PERCENT = ("acc_mean", "acc_std", "acc_random", "gain")  # the metrics a unit applies to


def runs_frame(tracker: Any, experiment: str, keys: set[str] | None = None) -> Any:
    """One row per trial as a grid defines it (its ``grid_key``; runs from before data fingerprints
    have only a trial key, which is their grid key): its newest FINISHED run, else its newest FAILED
    one (RUNNING and KILLED runs are trials not done, never counted),
    so a rerun on corrected data replaces the old row. With ``keys`` (a grid's grid keys), only
    those trials: runs of an earlier version of the grid are left out."""
    import pandas as pd

    exp_id = tracker.experiment_id(experiment, create=False)
    if exp_id is None:
        raise HarnessError(f"no MLflow experiment named '{experiment}' in {tracker.uri}; "
                           f"run `harness bench` first or pass --experiment/--tracking-uri")
    chosen: dict[str, Any] = {}
    for run in tracker.trial_runs(exp_id):  # newest first
        if run.info.status not in ("FINISHED", "FAILED"):  # RUNNING or KILLED: a trial not done, not a result
            continue
        key = run.data.tags.get(GRID_KEY) or run.data.tags.get(TRIAL_KEY)
        if keys is not None and key not in keys:
            continue
        if key not in chosen or (run.info.status == "FINISHED" and chosen[key].info.status != "FINISHED"):
            chosen[key] = run
    recipe_runs: dict[str, list[Any]] = {}
    if chosen:
        for run in tracker.recipe_runs(exp_id):
            if run.info.status == "FINISHED":  # one cut short by a crash while logging is logged again
                recipe_runs.setdefault(run.data.tags.get("mlflow.parentRunId", ""), []).append(run)
    rows = []
    for run in chosen.values():
        p = run.data.params
        row = {k: p.get(k, "") for k in ("distiller", "dataset", "base_dataset", "arch", "budget")}
        row["recipes"] = p.get("eval.recipes", "")
        row["eval_epochs"], row["eval_models"] = p.get("eval.epochs", "?"), p.get("eval.models", "?")
        row["eval_test_size"] = p.get("eval.test_size", "0")
        row["init"] = _inits(p.get("cfg.model_init", "default"), p.get("eval.model_init", "default"))
        speed = [p["autocast"]] if p.get("autocast", "none") != "none" else []
        if p.get("compile") == "True":
            speed.append("compiled")
        if speed:  # the CUDA speed options change the numbers: their rows stay apart, labelled
            row["init"] += ", " + " ".join(speed)
        row.update(seed=int(p.get("seed", 0)), status=run.info.status, error=run.data.tags.get("error", ""),
                   trial_key=run.data.tags.get(TRIAL_KEY), grid_key=key, run_id=run.info.run_id)
        row["_cfg"] = {k[4:]: v for k, v in p.items() if k.startswith("cfg.")}
        row.update(_recipe_results(run, recipe_runs.get(run.info.run_id, [])))
        rows.append(row)
    _add_variants(rows)
    return pd.DataFrame(rows)


def _recipe_results(run: Any, children: list[Any]) -> dict:
    """A trial's results as frame columns, accuracies in percent: its cost metrics; per recipe
    ``acc_mean/<recipe>`` (and acc_std, acc_random, gain), its per-model accuracies (``per_model``)
    and its protocol params (``recipe_eval``), from its recipe runs, else (runs logged before
    recipe runs) from its own suffixed metrics and ``acc_models`` tag."""
    out: dict[str, Any] = {k: v for k, v in run.data.metrics.items() if k.split("/")[0] not in IN_PERCENT}
    out["recipe_eval"] = {}
    if children:
        out["per_model"] = {}
        for child in children:
            label, m, p = child.data.tags.get("recipe", ""), child.data.metrics, child.data.params
            out.update({f"{k}/{label}": m[k] for k in IN_PERCENT if k in m})
            accs = _per_model(child.data.tags.get(PER_MODEL), list)
            out["per_model"][label] = accs
            out["recipe_eval"][label] = (p.get("eval.epochs", "?"), p.get("eval.models", "?"), p.get("eval.test_size", "0"))
        return out
    scale = 1.0 if run.data.tags.get(ACC_UNIT_TAG) == "percent" else 100.0
    out.update({k: scale * v for k, v in run.data.metrics.items() if "/" in k and k.split("/")[0] in IN_PERCENT})
    per_model = _per_model(run.data.tags.get(PER_MODEL), dict)
    out["per_model"] = {label: [scale * a for a in accs] for label, accs in per_model.items() if isinstance(accs, list)}
    return out


def _per_model(tag: str | None, kind: type = dict) -> Any:
    """The ``acc_models`` tag: {recipe: [accuracy per model]} on a trial run, [accuracy per model] on
    a recipe run (``kind``); empty for runs logged before it or cut at the tag limit (no paired test)."""
    import json

    try:
        value = json.loads(tag) if tag else kind()
    except ValueError:
        return kind()
    return value if isinstance(value, kind) else kind()


def _add_variants(rows: list[dict]) -> None:
    """``variant``: the Config fields that differ between the runs of one distiller in this report,
    e.g. ``label_constraint=simplex``, so trials that differ only in their config stay separate
    rows instead of being averaged as if they were seeds ("" when a distiller has one config)."""
    by_distiller: dict[str, list[dict]] = {}
    for row in rows:
        by_distiller.setdefault(row["distiller"], []).append(row)
    for group in by_distiller.values():
        keys = sorted({k for r in group for k in r["_cfg"]})
        varying = [k for k in keys if len({r["_cfg"].get(k) for r in group}) > 1]
        for r in group:
            r["variant"] = ", ".join(f"{k}={r['_cfg'].get(k, '-')}" for k in varying)
    for row in rows:
        del row["_cfg"]


def leaderboard(frame: Any) -> Any:
    """Long format per recipe, then aggregated over seeds."""
    import pandas as pd

    records = []
    for _, row in frame.iterrows():
        labels = [m.group(1) for c in frame.columns if (m := PER_RECIPE.match(c)) and pd.notna(row[c])]
        base = {k: row.get(k, "") for k in ("distiller", "variant", "dataset", "base_dataset", "arch", "budget", "seed")}
        epochs, models = row.get("eval_epochs", "?"), row.get("eval_models", "?")
        test_size = row.get("eval_test_size", "0")
        init = row.get("init", "init default")
        if row["status"] != "FINISHED" or not labels:  # counted as failed under each planned recipe
            for label in (row.get("recipes") or "-").split(","):
                records.append({**base, "recipe": label, "protocol": _protocol(label, epochs, models, test_size, init), "failed": 1})
            continue
        per_model = row.get("per_model") if isinstance(row.get("per_model"), dict) else {}
        recipe_eval = row.get("recipe_eval") if isinstance(row.get("recipe_eval"), dict) else {}
        for label in labels:
            protocol = _protocol(label, *recipe_eval.get(label, (epochs, models, test_size)), init)
            records.append({**base, "recipe": label, "protocol": protocol, "failed": 0,
                            "models": {(row.get("seed"), k): a for k, a in enumerate(per_model.get(label, []))},
                            "acc": row[f"acc_mean/{label}"],
                            "acc_random": row.get(f"acc_random/{label}", float("nan")),
                            "gain": row.get(f"gain/{label}", float("nan")),
                            "distill_s": row.get("distill_seconds"), "eval_s": row.get("eval_seconds")})
    if not records:
        return pd.DataFrame(columns=GROUP)
    long = pd.DataFrame(records)
    for col in ("acc", "acc_random", "gain", "distill_s", "eval_s"):
        if col not in long:
            long[col] = float("nan")
    board = (long.groupby(GROUP, dropna=False)
             .agg(seeds=("acc", "count"), failed=("failed", "sum"),
                  acc_mean=("acc", "mean"), acc_std=("acc", lambda s: s.std(ddof=0)),
                  random_mean=("acc_random", "mean"), gain_mean=("gain", "mean"),
                  gain_std=("gain", lambda s: s.std(ddof=0)),
                  distill_s=("distill_s", "mean"), eval_s=("eval_s", "mean"))
             .reset_index())
    one_seed = board["seeds"] <= 1  # a std over one seed is not a measurement: n/a, never 0.00
    board.loc[one_seed, ["acc_std", "gain_std"]] = float("nan")
    board["to_full"] = _gap_to_full(board)
    board = _mark_best(board, long)
    board["_budget"] = board["budget"].map(_budget_order)
    board = board.sort_values(["dataset", "base_dataset", "_budget", "recipe", "acc_mean"],
                              ascending=[True, True, True, True, False]).drop(columns="_budget")
    return board.reset_index(drop=True)


SETTING = ["dataset", "base_dataset", "arch", "budget", "recipe", "protocol"]


def _mark_best(board: Any, long: Any) -> Any:
    """``vs_best``: per setting, the best method, and every other one's paired difference to it over
    seeds x models with a bootstrap CI (:mod:`harness.significance`); the full set is no method."""
    from .significance import versus_best

    cols = {"best": False, "vs_best": float("nan"), "vs_best_low": float("nan"), "vs_best_high": float("nan"),
            "significant": None}
    for col, default in cols.items():
        board[col] = default
    board["significant"] = board["significant"].astype(object)
    if "models" not in long:
        return board
    done = long[(long["failed"] == 0) & (long["distiller"] != "full")]
    for setting, group in done.groupby(SETTING, dropna=False):
        methods = {}
        for (distiller, variant), rows in group.groupby(["distiller", "variant"], dropna=False):
            pairs = {}
            for models in rows["models"]:
                pairs.update(models if isinstance(models, dict) else {})
            methods[(distiller, variant)] = (rows["acc"].mean(), pairs)
        if len(methods) < 2:
            continue
        for (distiller, variant), verdict in versus_best(methods).items():
            mask = (board["distiller"] == distiller) & (board["variant"].fillna("") == (variant if variant == variant else ""))
            for key, value in zip(SETTING, setting):
                mask &= board[key].fillna("") == ("" if value != value else value)
            idx = board.index[mask]
            board.loc[idx, "best"] = verdict["best"]
            board.loc[idx, "vs_best"] = verdict["diff"]
            board.loc[idx, "vs_best_low"] = verdict["low"]
            board.loc[idx, "vs_best_high"] = verdict["high"]
            for i in idx:
                board.at[i, "significant"] = verdict["significant"]
    return board


def _gap_to_full(board: Any) -> Any:
    """HLR-style (DD-Ranking's hard-label recovery): the full training set's accuracy minus this
    row's, in the same dataset, distill arch and recipe (points still to recover; NaN without a
    ``full`` row). The full row's own protocol may differ (fewer epochs): its column says so."""
    full = board[board["distiller"] == "full"].groupby(["dataset", "base_dataset", "arch", "recipe"])["acc_mean"].max()
    keys = list(zip(board["dataset"], board["base_dataset"], board["arch"], board["recipe"]))
    return [full.get(k, float("nan")) - acc for k, acc in zip(keys, board["acc_mean"])]


def _protocol(label: str, epochs: Any, models: Any, test_size: Any = "0", init: str = "") -> str:
    """How each model was trained: epochs x models, or the set's learned steps x models; the
    model inits; and the test subset when not the whole test split."""
    if "/distilled" in label:
        trained = f"learned steps x {models}"
    elif "/ld-protocol" in label:
        trained = f"Adam, LD lifetime x {models}"
    else:
        trained = f"{epochs} ep x {models}"
    if init:
        trained = f"{trained}, {init}"
    return trained if str(test_size) in ("0", "", "nan", "None") else f"{trained}, test {test_size}"


def _inits(distill: Any, evaluation: Any) -> str:
    """The model inits (harness.init) as the protocol column shows them: one name when distillation
    and evaluation share it, else both. A distiller without a ``model_init`` field (logged "-") and
    runs logged before inits were recorded read "default"."""
    distill = "default" if distill in (None, "", "-") else str(distill)
    evaluation = "default" if evaluation in (None, "", "-") else str(evaluation)
    return f"init {distill}" if distill == evaluation else f"init {distill}, eval init {evaluation}"


def _budget_order(budget: str) -> tuple:
    kind, _, value = str(budget).partition("=")
    return ({"ipc": 0, "n": 1}.get(kind, 2), int(value) if value.isdigit() else 0)


def format_pm(mean: float, std: float) -> str:
    if mean != mean:  # NaN
        return "n/a"
    return f"{mean:.2f} ± {std:.2f}" if std == std else f"{mean:.2f}"


def to_markdown(board: Any, title: str, command: str) -> str:
    lines = [f"# {title}", "", f"Regenerate: `{command}`", "",
             "Accuracy in % (mean ± std over seeds; the mean alone for one seed); `gain` = accuracy − random real subset at the same "
             "budget and recipe; `to full` = the full training set's accuracy − this row's (same dataset, arch and "
             "recipe; HLR-style); `vs best` = the difference to the setting's best method over paired seeds x models "
             "with its 95% bootstrap CI, `n.s.` when the CI includes 0 (`harness.significance`). Recipe = eval arch / optimizer (/known-init, /dsa); protocol = epochs x models per "
             "seed (or the set's learned step sizes x models) and the model init scheme used while distilling "
             "and evaluating (`harness.init`: default = PyTorch's, xavier = xavier_normal with zero bias).", ""]
    lines += ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(cells) + " |" for cells in board_cells(board)]
    return "\n".join(lines) + "\n"


COLUMNS = ["dataset", "arch", "budget", "recipe", "protocol", "distiller", "acc", "random", "gain", "to full",
           "vs best", "seeds", "distill s", "eval s"]
FORMATS = ("table", "md", "csv", "json")


def board_cells(board: Any) -> list[list[str]]:
    """The leaderboard as display strings, one list of ``COLUMNS`` per row (markdown and terminal)."""
    rows = []
    for _, r in board.iterrows():
        data = r["dataset"] if r["base_dataset"] in (r["dataset"], "") else f"{r['base_dataset']}→{r['dataset']}"
        one = r["seeds"] == 1  # a std over one seed is not a measurement: show the mean alone
        acc = format_pm(r["acc_mean"], float("nan") if one else r["acc_std"]) if r["seeds"] else "FAILED"
        seeds = f"{int(r['seeds'])}" + (f" ({int(r['failed'])} failed)" if r["failed"] else "")
        rows.append([str(c) for c in (
            data, r["arch"], r["budget"], r["recipe"], r["protocol"], distiller_label(r), acc,
            "n/a" if r["random_mean"] != r["random_mean"] else f"{r['random_mean']:.2f}",
            format_pm(r["gain_mean"], float("nan") if one else r["gain_std"]),
            "" if r.get("to_full", float("nan")) != r.get("to_full", float("nan")) else f"{r['to_full']:.2f}",
            _vs_best(r), seeds, _secs(r["distill_s"]), _secs(r["eval_s"]))])
    return rows


def _vs_best(r: Any) -> str:
    """"best"; "-3.20 [-4.10, -2.30]" (significant: the CI excludes 0); "-0.80 n.s."; "" (no comparison)."""
    if r.get("best") is True:
        return "best"
    diff = r.get("vs_best", float("nan"))
    if diff != diff:
        return ""
    if r.get("significant") is None:
        return f"{diff:+.2f} (too few pairs)"
    if r.get("significant"):
        return f"{diff:+.2f} [{r['vs_best_low']:+.2f}, {r['vs_best_high']:+.2f}]"
    return f"{diff:+.2f} n.s."


def render(board: Any, fmt: str, title: str, command: str) -> str:
    """The leaderboard as text for stdout: ``md`` (full names, reads anywhere), ``csv``, ``json``
    (records; NaN as null, e.g. the std of one seed). ``table`` is drawn by the CLI with rich."""
    import json

    if fmt == "md":
        return to_markdown(board, title, command)
    if fmt == "csv":
        return board.to_csv(index=False, float_format="%.4f")
    if fmt == "json":
        records = json.loads(board.to_json(orient="records", double_precision=6))  # NaN -> null
        return json.dumps({"title": title, "command": command, "accuracy_unit": "percent", "rows": records}, indent=2) + "\n"
    raise HarnessError(f"unknown report format {fmt!r}; choose from {', '.join(FORMATS)}")


def distiller_label(row: Any) -> str:
    """The distiller's name, with its config variant when the report holds several."""
    variant = row.get("variant", "")
    return f"{row['distiller']} ({variant})" if isinstance(variant, str) and variant else str(row["distiller"])


def _secs(v: Any) -> str:
    return "" if v is None or v != v else f"{v:.1f}"


def write_report(board: Any, out_dir: str | Path, experiment: str, command: str) -> tuple[Path, Path]:
    from .grid import check_experiment_name

    check_experiment_name(experiment, "report")  # the file names stay under out_dir
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    md, csv = out / f"{experiment}.md", out / f"{experiment}.csv"
    text = to_markdown(board, f"Leaderboard: {experiment}", command)
    notes = out / f"{experiment}.notes.md"  # hand-written commentary kept across regenerations
    if notes.is_file():
        text += f"\n<!-- from {notes.name}, appended by harness report -->\n\n" + notes.read_text(encoding="utf-8")
    md.write_text(text, encoding="utf-8")
    board.to_csv(csv, index=False, float_format="%.4f")
    return md, csv
