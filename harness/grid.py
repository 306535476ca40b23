"""Grid files: TOML -> ``--set`` overrides -> fully validated trials, before any compute.

Every problem raises :class:`ConfigError` with one line naming the key, the problem and the fix.
"""

from __future__ import annotations

import dataclasses
import difflib
import itertools
import math
import re
import tomllib
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigError, HarnessError
from .init import INIT_SCHEMES, distill_init
from .specs import TrialSpec, capabilities_of, carries_init, check_trial
from .trial import AUGMENTS, AUTOCASTS, DEFAULT_LR, INITS, OPTIMIZERS, Recipe, Trial
from .vectorised import EVAL_MODES

TOP_KEYS = {"name", "seeds", "device", "executor", "trial_timeout", "checkpoint_every", "eval_mode", "autocast", "compile",
            "resources", "grid", "eval", "distillers"}
RESOURCE_KEYS = {"cpus_per_trial", "gpus_per_trial"}  # what each trial asks a cluster for (the ray executor)
AXES = {"distiller", "dataset", "base_dataset", "arch", "ipc", "n"}
EVAL_KEYS = {"archs", "optimizers", "models", "epochs", "lr", "batch_size", "init", "augment", "momentum", "weight_decay", "test_size",
             "model_init"}
DEVICE_PATTERN = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
# experiment names become directory and file names (artifacts, reports): no separators, no ".."
EXPERIMENT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+=-]*$")


def check_experiment_name(name: object, where: str = "name") -> str:
    if not isinstance(name, str) or not EXPERIMENT_NAME.match(name) or ".." in name or len(name) > 200:
        raise ConfigError(f"{where}: experiment name {name!r} is not usable as a file name; use letters, digits, "
                          f"'.', '_', '-', '+', '=' (no '/', '\\', spaces or '..'), e.g. name = \"my-grid\"")
    return name


@dataclass
class Grid:
    name: str
    seeds: list[int]
    device: str
    executor: str
    trials: list[Trial]
    source: str = ""
    trial_timeout: float | None = None  # seconds per trial (distill + evaluate); not part of trial keys
    checkpoint_every: float | None = 600.0  # seconds between mid-trial checkpoints (None: off)
    eval_mode: str = "auto"  # auto | vectorised | sequential (harness.vectorised); not part of trial keys
    resources: dict = dataclasses.field(default_factory=dict)  # [resources]: per-trial CPUs/GPUs; not in keys
    document: dict = dataclasses.field(default_factory=dict, compare=False, repr=False)  # as resolved (overrides in)


# -- reading -------------------------------------------------------------------------------------
def read_grid_file(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"grid file '{path}' not found; pass a path such as benchmarks/grids/quick.toml")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a UTF-8 text file") from None


def apply_overrides(doc: dict, overrides: list[str]) -> dict:
    """Apply ``section.key=value`` overrides; values are TOML literals, else plain strings.

    ``grid.<axis>=...`` sets that axis in every ``[[grid]]`` table.
    """
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--set '{item}': expected section.key=value, e.g. --set eval.epochs=10")
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw.strip()
        parts = key.split(".")
        if parts[0] == "grid" and len(parts) == 2:
            tables = doc.get("grid")
            if not isinstance(tables, list) or not tables:
                raise ConfigError(f"--set {key}: the grid file has no [[grid]] tables to override")
            for table in tables:
                if parts[1] in ("ipc", "n"):  # a budget override replaces the table's other budget key
                    table.pop("n" if parts[1] == "ipc" else "ipc", None)
                table[parts[1]] = value
            continue
        node = doc
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {key}: '{part}' is not a table")
        node[parts[-1]] = value
    return doc


# -- small validators ----------------------------------------------------------------------------
def _unknown_keys(where: str, given: dict, allowed: set[str]) -> None:
    for key in given:
        if key not in allowed:
            close = difflib.get_close_matches(key, sorted(allowed), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else f" (allowed: {', '.join(sorted(allowed))})"
            raise ConfigError(f"{where}: unknown key '{key}'{hint}")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _as_list(where: str, value: Any, item_type: type) -> list:
    values = value if isinstance(value, list) else [value]
    if not values:
        raise ConfigError(f"{where}: empty list; give at least one value")
    for v in values:
        ok = isinstance(v, item_type) and not (item_type is int and isinstance(v, bool))
        if not ok:
            raise ConfigError(f"{where}: expected {_type_name(item_type)}, got {v!r} ({type(v).__name__})")
    return values


def _scalar(where: str, value: Any, tp: type, minimum: float | None = None) -> Any:
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, tp) or (tp is not bool and isinstance(value, bool)):
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r} ({type(value).__name__})")
    if tp is float and not math.isfinite(value):  # TOML has nan and inf literals: never a valid setting
        raise ConfigError(f"{where}: must be a finite number, got {value!r}")
    if minimum is not None and value < minimum:
        raise ConfigError(f"{where}: must be >= {minimum}, got {value!r}")
    return value


def _choice(where: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        close = difflib.get_close_matches(str(value), choices, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise ConfigError(f"{where}: unknown value {value!r}; {hint}choose from {', '.join(choices)}")
    return value


def check_device(value: Any, where: str = "device") -> str:
    if not isinstance(value, str) or not DEVICE_PATTERN.match(value):
        raise ConfigError(f"{where}: unknown device {value!r}; use auto, cpu, cuda or cuda:N")
    return value


def coerce_config_value(where: str, value: Any, tp: Any) -> Any:
    """Check a TOML value against a Config field's type annotation (ints widen to floats)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin is typing.Union or type(tp).__name__ == "UnionType":
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return coerce_config_value(where, value, arg)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: {value!r} does not match {tp}")
    if origin is typing.Literal:
        return _choice(where, value, tuple(args))
    if origin in (list, tuple):
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        inner = args[0] if args else Any
        items = [coerce_config_value(where, v, inner) for v in value]
        return tuple(items) if origin is tuple else items
    if tp in (bool, int, float, str):
        return _scalar(where, value, tp)
    return value


def build_config(distiller: type, overrides: dict, where: str) -> Any:
    """Instantiate ``distiller.Config`` with overrides, each checked against its annotation."""
    config_cls = distiller.Config
    try:
        hints = typing.get_type_hints(config_cls)
    except Exception:  # string annotations naming things not importable here (TYPE_CHECKING, local scope)
        hints = {f.name: f.type for f in dataclasses.fields(config_cls) if not isinstance(f.type, str)}
    fields = {f.name for f in dataclasses.fields(config_cls)}
    _unknown_keys(where, overrides, fields)
    values = {k: coerce_config_value(f"{where}.{k}", v, hints.get(k, Any)) for k, v in overrides.items()}
    try:
        return config_cls(**values)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{where}: {exc}") from None


def config_items(config: Any) -> tuple[tuple[str, Any], ...]:
    return tuple((f.name, getattr(config, f.name)) for f in dataclasses.fields(config))


# -- the grid ------------------------------------------------------------------------------------
def build_grid(doc: dict, plugins: Any, default_name: str = "grid", source: str = "") -> Grid:
    """Validate a parsed grid document against the loaded plugins; return its trials."""
    where = source or "grid"
    _unknown_keys(where, doc, TOP_KEYS)
    name = check_experiment_name(_scalar(f"{where}: name", doc.get("name", default_name), str), f"{where}: name")
    seeds = _seeds(f"{where}: seeds", doc.get("seeds", [0]))
    device = check_device(doc.get("device", "auto"), f"{where}: device")
    executor = _scalar(f"{where}: executor", doc.get("executor", "inline"), str)
    plugins.executors.get(executor)
    every = _scalar(f"{where}: checkpoint_every", doc.get("checkpoint_every", 600.0), float, 0.0) or None
    timeout = doc.get("trial_timeout")
    if timeout is not None:
        timeout = _scalar(f"{where}: trial_timeout", timeout, float)
        if timeout <= 0:
            raise ConfigError(f"{where}: trial_timeout must be > 0 seconds, got {timeout!r}; leave it out for no limit")

    eval_mode = _choice(f"{where}: eval_mode", _scalar(f"{where}: eval_mode", doc.get("eval_mode", "auto"), str),
                        EVAL_MODES)
    autocast = _choice(f"{where}: autocast", _scalar(f"{where}: autocast", doc.get("autocast", "none"), str), AUTOCASTS)
    compile_eval = _scalar(f"{where}: compile", doc.get("compile", False), bool)

    resources = _resources(f"{where}: [resources]", doc.get("resources", {}), device)
    eval_doc = _table(f"{where}: [eval]", doc.get("eval", {}))
    configs_doc = doc.get("distillers", {})
    if not isinstance(configs_doc, dict):
        raise ConfigError(f"{where}: [distillers] must be a table of [distillers.<name>] tables")
    _parse_eval(f"{where}: eval", eval_doc, plugins)  # report problems once, even if every table overrides
    _parse_configs(f"{where}: distillers", configs_doc, plugins)

    tables = doc.get("grid")
    if not isinstance(tables, list) or not tables or not all(isinstance(t, dict) for t in tables):
        raise ConfigError(f"{where}: needs at least one [[grid]] table (distiller, dataset, arch, ipc or n)")

    trials: dict[str, Trial] = {}
    for i, table in enumerate(tables):
        tw = f"{where}: [[grid]] #{i + 1}"
        _unknown_keys(tw, table, AXES | {"eval", "distillers", "seeds"})
        table_seeds = _seeds(f"{tw}: seeds", table["seeds"]) if "seeds" in table else seeds
        # per-table [grid.eval] / [grid.distillers.<name>] override the top-level tables, key by key
        eval_table = {**eval_doc, **_table(f"{tw}: [grid.eval]", table.get("eval", {}))}
        eval_archs, optimizers, lr, common = _parse_eval(f"{tw}: eval", eval_table, plugins)
        table_configs = _table(f"{tw}: [grid.distillers]", table.get("distillers", {}))
        merged = {d: {**configs_doc.get(d, {}), **_table(f"{tw}: [grid.distillers.{d}]", o)}
                  for d, o in table_configs.items()}
        configs = _parse_configs(f"{tw}: distillers", {**configs_doc, **merged}, plugins)
        for required in ("distiller", "dataset", "arch"):
            if required not in table:
                raise ConfigError(f"{tw}: missing '{required}'")
        distillers = _as_list(f"{tw}: distiller", table["distiller"], str)
        datasets = _as_list(f"{tw}: dataset", table["dataset"], str)
        bases = _as_list(f"{tw}: base_dataset", table.get("base_dataset", ["same"]), str)
        archs = _as_list(f"{tw}: arch", table["arch"], str)
        if "ipc" in table and "n" in table:
            raise ConfigError(f"{tw}: give either ipc (per class) or n (total), not both")
        budget_key = "ipc" if "ipc" in table else "n" if "n" in table else None
        budgets = _as_list(f"{tw}: {budget_key}", table[budget_key], int) if budget_key else [None]
        if any(b is not None and b < 1 for b in budgets):
            raise ConfigError(f"{tw}: {budget_key} must be >= 1, got {budgets}")

        try:
            for d in distillers:
                cls = plugins.distillers.get(d)
                if budget_key is None and not capabilities_of(cls).ignores_budget:
                    raise ConfigError(f"distiller '{d}' needs a budget; add ipc = [...] or n = [...]")
            for ds in datasets:
                plugins.datasets.get(ds)
            for b in bases:
                if b != "same":
                    plugins.datasets.get(b)
            for a in archs:
                plugins.architectures.get(a)
        except HarnessError as exc:  # say which table the unknown or ambiguous name is in
            raise type(exc)(f"{tw}: {exc}") from None

        for d, ds, b, a, budget, seed in itertools.product(distillers, datasets, bases, archs, budgets, table_seeds):
            trial = _make_trial(plugins, tw, d, ds, b, a, budget_key, budget, seed, configs, eval_archs,
                                optimizers, lr, common)
            if autocast != "none" or compile_eval:
                trial = dataclasses.replace(trial, autocast=autocast, compile=compile_eval, settings=trial.settings)
            trials.setdefault(trial.key, trial)  # identical trials from overlapping tables run once
    return Grid(name=name, seeds=seeds, device=device, executor=executor, trials=list(trials.values()), source=source,
                trial_timeout=timeout, checkpoint_every=every, eval_mode=eval_mode, resources=resources,
                document=doc)


def _resources(where: str, value: Any, device: str) -> dict:
    """[resources]: ``cpus_per_trial`` (> 0, default 1) and ``gpus_per_trial`` (>= 0, fractions share
    a GPU; default 1 on CUDA, 0 on CPU) for executors that schedule trials on a cluster."""
    table = _table(where, value)
    _unknown_keys(where, table, RESOURCE_KEYS)
    out = {}
    for key in sorted(table):
        amount = _scalar(f"{where} {key}", table[key], float, 0.0)
        if key == "cpus_per_trial" and amount == 0:
            raise ConfigError(f"{where} cpus_per_trial must be > 0, got 0; a trial needs a CPU to drive it")
        out[key] = amount
    if out.get("gpus_per_trial", 0) > 0 and device == "cpu":
        raise ConfigError(f"{where} gpus_per_trial = {out['gpus_per_trial']:g} but device = \"cpu\": "
                          f"set device to \"cuda\" or drop gpus_per_trial")
    return out


def _seeds(where: str, value: Any) -> list[int]:
    seeds = _as_list(where, value, int)
    if any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise ConfigError(f"{where} must be distinct non-negative ints, got {seeds}")
    return seeds


def _table(where: str, value: Any) -> dict:
    if not isinstance(value, dict):
        raise ConfigError(f"{where} must be a table")
    return value


def _parse_eval(where: str, eval_doc: dict, plugins: Any) -> tuple[list, list, float | None, dict]:
    """[eval] -> (eval archs, optimizers, lr or None, the Recipe fields shared by all recipes)."""
    _unknown_keys(f"{where.removesuffix('eval')}[eval]", eval_doc, EVAL_KEYS)
    eval_archs = _as_list(f"{where}.archs", eval_doc.get("archs", ["same"]), str)
    optimizers = [_choice(f"{where}.optimizers", o, OPTIMIZERS)
                  for o in _as_list(f"{where}.optimizers", eval_doc.get("optimizers", ["sgd"]), str)]
    common = dict(
        epochs=_scalar(f"{where}.epochs", eval_doc.get("epochs", 300), int, 1),
        batch_size=_scalar(f"{where}.batch_size", eval_doc.get("batch_size", 256), int, 1),
        models=_scalar(f"{where}.models", eval_doc.get("models", 5), int, 1),
        momentum=_scalar(f"{where}.momentum", eval_doc.get("momentum", 0.9), float, 0.0),
        weight_decay=_scalar(f"{where}.weight_decay", eval_doc.get("weight_decay", 5e-4), float, 0.0),
        init=_choice(f"{where}.init", eval_doc.get("init", "random"), INITS),
        augment=_choice(f"{where}.augment", eval_doc.get("augment", "none"), AUGMENTS),
        test_size=_scalar(f"{where}.test_size", eval_doc.get("test_size", 0), int, 0),
        model_init=_choice(f"{where}.model_init", eval_doc.get("model_init", "distiller"),
                           ("distiller", *INIT_SCHEMES)),
    )
    lr = eval_doc.get("lr")
    if lr is not None:
        lr = _scalar(f"{where}.lr", lr, float)
        if lr <= 0:
            raise ConfigError(f"{where}.lr must be > 0, got {lr}")
    for a in eval_archs:
        if a != "same":
            plugins.architectures.get(a)
    return eval_archs, optimizers, lr, common


def _parse_configs(where: str, configs_doc: dict, plugins: Any) -> dict[str, Any]:
    """[distillers.<name>] tables -> validated Config instances."""
    configs: dict[str, Any] = {}
    for dname, overrides in configs_doc.items():
        cls = plugins.distillers.get(dname)
        if not isinstance(overrides, dict):
            raise ConfigError(f"{where.removesuffix('distillers')}[distillers.{dname}] must be a table of Config fields")
        configs[dname] = build_config(cls, overrides, f"{where}.{dname}")
    return configs


def _make_trial(plugins, tw, d, ds, b, a, budget_key, budget, seed, configs, eval_archs, optimizers, lr, common) -> Trial:
    cls = plugins.distillers.get(d)
    caps = capabilities_of(cls)
    spec = plugins.datasets.get(ds)
    arch = plugins.architectures.get(a)
    if spec.modality not in arch.modalities:
        raise ConfigError(
            f"{tw}: architecture '{a}' takes {'/'.join(arch.modalities)} input, but dataset '{ds}' is "
            f"{spec.modality}; pick an architecture listed by `harness ls archs`"
        )
    base = ds if b == "same" else b
    if base != ds:
        if not caps.cross_dataset:
            raise ConfigError(f"{tw}: distiller '{d}' cannot use base examples from another dataset "
                              f"(base_dataset = '{b}'); use a cross-dataset distiller such as ld")
        bspec = plugins.datasets.get(base)
        if bspec.modality != spec.modality or bspec.input_shape != spec.input_shape:
            raise ConfigError(f"{tw}: base dataset '{base}' {bspec.input_shape} does not match "
                              f"'{ds}' {spec.input_shape}; base examples must live in the same input space")
    ipc = n = None
    if not caps.ignores_budget:
        if budget_key == "ipc":
            ipc, n = budget, budget * spec.num_classes
        else:
            n = budget
            if n < spec.num_classes and not caps.fewer_than_classes:
                raise ConfigError(f"{tw}: n = {n} is fewer than the {spec.num_classes} classes of '{ds}', "
                                  f"which distiller '{d}' does not support; use n >= {spec.num_classes}")
    config = configs.get(d) or build_config(cls, {}, f"distillers.{d}")
    if common["augment"] == "dsa" and (spec.modality != "image" or len(spec.input_shape) != 3):
        raise ConfigError(f"{tw}: eval.augment = 'dsa' augments images [C, H, W], but '{ds}' is "
                          f"{spec.modality} data of shape {spec.input_shape}; use augment = 'none' for it")
    if common["init"] == "known" and not carries_init(cls, config):
        hint = ("set its Config so it distils for a fixed init (e.g. init = 'fixed')" if caps.known_init
                else "keep init = 'random' for it")
        raise ConfigError(f"{tw}: eval.init = 'known' needs a set distilled for a fixed init; "
                          f"'{d}' with this config does not carry one ({hint})")
    if optimizers[0] == "distilled" and not caps.learns_lr:
        raise ConfigError(f"{tw}: the first eval optimizer is 'distilled' but '{d}' learns no step sizes; "
                          f"list sgd or adam first so every trial shares the headline recipe")
    if caps.needs_features and not arch.features:
        declared = [n for n, s, _ in plugins.architectures.items() if s.features and spec.modality in s.modalities]
        raise ConfigError(f"{tw}: distiller '{d}' works on penultimate features, but architecture '{a}' does not "
                          f"declare any (ArchitectureSpec features=True); use one that does: {', '.join(declared)}")
    try:  # the method's own constraints (budget splits, DSA on non-images, ...)
        check_trial(cls, config, TrialSpec(spec, arch, n, ipc, plugins.datasets.get(base)))
    except ValueError as exc:
        raise ConfigError(f"{tw}: distiller '{d}': {exc}") from None
    # "distiller": evaluation models get the init the set was distilled with (recorded resolved)
    try:
        model_init = distill_init(config) if common["model_init"] == "distiller" else common["model_init"]
    except ValueError as exc:
        raise ConfigError(f"{tw}: distiller '{d}': {exc}") from None
    common = {**common, "model_init": model_init}
    recipes = []
    for ea in eval_archs:
        eval_arch = a if ea == "same" else ea
        earch = plugins.architectures.get(eval_arch)
        if spec.modality not in earch.modalities:
            raise ConfigError(f"{tw}: eval architecture '{eval_arch}' does not take {spec.modality} input "
                              f"(dataset '{ds}')")
        for opt in optimizers:
            if opt == "distilled" and not caps.learns_lr:
                continue  # not applicable to this distiller: reported as n/a, never faked
            recipe = Recipe(arch=eval_arch, optimizer=opt, lr=lr or DEFAULT_LR.get(opt, 0.0), **common)
            if recipe not in recipes:  # "same" and the distill arch's own name are one recipe
                recipes.append(recipe)
    versions = sorted({_dist_version("distill-harness"), _dist_version(plugins.distillers.source(d)), _dist_version(plugins.datasets.source(ds)),
                       _dist_version(plugins.datasets.source(base)), _dist_version(plugins.architectures.source(a)),
                       *(_dist_version(plugins.architectures.source(r.arch)) for r in recipes)})
    return Trial(d, ds, base, a, ipc, n, seed, config_items(config), tuple(recipes), tuple(versions), settings=config)


def _dist_version(dist: str) -> tuple[str, str]:
    from .plugins import distribution_version

    return dist, distribution_version(dist)


def select_trials(grid: Grid, patterns: list[str] | tuple[str, ...]) -> Grid:
    """Only the trials whose label matches one of the glob ``patterns`` (all when none are given).
    Keys are untouched, so a grid split over processes resumes and reports as one."""
    import fnmatch

    if not patterns:
        return grid
    kept = [t for t in grid.trials if any(fnmatch.fnmatchcase(t.label, p) for p in patterns)]
    if not kept:
        names = ", ".join(t.label for t in grid.trials[:3]) + (", ..." if len(grid.trials) > 3 else "")
        raise ConfigError(f"--only {' '.join(patterns)}: no trial of grid '{grid.name}' matches; "
                          f"trial names look like {names}")
    return dataclasses.replace(grid, trials=kept)


def load_grid(path: str | Path, overrides: list[str] | None = None, plugins: Any = None) -> Grid:
    """Read, override and validate a grid file. Raises ConfigError (one clear line) on any problem."""
    from .plugins import get_plugins

    doc = apply_overrides(read_grid_file(path), list(overrides or []))
    try:
        return build_grid(doc, plugins or get_plugins(), default_name=Path(path).stem, source=str(path))
    except HarnessError as exc:
        if str(path) in str(exc):
            raise
        raise ConfigError(f"{path}: {exc}") from None
