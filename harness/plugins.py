"""Plugin loading: entry points -> pluggy -> typed registries, with broken plugins isolated.

Built-in plugin distributions (harness-vision, harness-distillers) load exactly like third-party
ones, through the ``harness`` entry-point group. Environment switches:

- ``HARNESS_DISABLE_PLUGIN_AUTOLOAD=1``: load no entry points (only the core's own executors);
- ``HARNESS_PLUGINS=a,b``: load only these entry points (by entry-point or distribution name).

A plugin that fails to import, implements an unknown hook, raises in a hook or registers an
invalid spec is recorded as a :class:`PluginProblem` (distribution + reason); the rest still work.
"""

from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass, field
from importlib import metadata
from types import ModuleType
from typing import Any, Callable, Iterable

import pluggy

from . import hookspecs
from .errors import DuplicateNameError, SpecError
from .registry import Registry
from .specs import ArchitectureSpec, DatasetSpec, LazyDistiller, check_name, validate_distiller_class

ENTRY_POINT_GROUP = "harness"
CORE_DISTRIBUTION = "distill-harness"
KINDS = {
    "datasets": "register_datasets",
    "architectures": "register_architectures",
    "distillers": "register_distillers",
    "executors": "register_executors",
}


@dataclass
class PluginInfo:
    name: str  # pluggy plugin name (entry-point name)
    distribution: str
    version: str
    module: str
    registered: dict[str, list[str]] = field(default_factory=dict)


@dataclass
class PluginProblem:
    distribution: str
    plugin: str
    reason: str

    def __str__(self) -> str:
        return f"plugin '{self.plugin}' from {self.distribution}: {self.reason}"


def _check_executor(cls: Any) -> type:
    check_name("executor", getattr(cls, "name", None))
    if not callable(getattr(cls, "run", None)):
        raise SpecError(f"executor '{cls.name}': needs a method run(trials, run_trial)")
    return cls


_VALIDATORS: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "datasets": ("dataset", lambda s: s if isinstance(s, DatasetSpec) else _wrong_type(s, DatasetSpec)),
    "architectures": (
        "architecture",
        lambda s: s if isinstance(s, ArchitectureSpec) else _wrong_type(s, ArchitectureSpec),
    ),
    "distillers": ("distiller", lambda d: d if isinstance(d, LazyDistiller) else validate_distiller_class(d)),
    "executors": ("executor", _check_executor),
}


def _resolve_distiller(item: Any) -> Any:
    """A distiller registered by path is imported when first used (a SpecError line if broken)."""
    return item.load() if isinstance(item, LazyDistiller) else item


def _wrong_type(obj: Any, expected: type) -> Any:
    raise SpecError(f"expected a harness.{expected.__name__}, got {type(obj).__name__}")


class Plugins:
    """Loaded plugins: a pluggy manager plus one registry per kind of thing."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager("harness")
        self.pm.add_hookspecs(hookspecs)
        self._registries = {
            "datasets": Registry("dataset"),
            "architectures": Registry("architecture"),
            "distillers": Registry("distiller", _resolve_distiller),
            "executors": Registry("executor"),
        }
        self._collected = False
        self.infos: dict[str, PluginInfo] = {}
        self._problems: list[PluginProblem] = []

    # Registries fill on first use: `harness --help` needs only register_commands, so plugin hooks
    # that import heavy modules (torch) inside register_* cost nothing until something is listed/run.
    def _registry(self, kind: str) -> Registry:
        if not self._collected:
            self._collected = True
            self._collect()
        return self._registries[kind]

    datasets = property(lambda self: self._registry("datasets"))
    architectures = property(lambda self: self._registry("architectures"))
    distillers = property(lambda self: self._registry("distillers"))
    executors = property(lambda self: self._registry("executors"))

    @property
    def problems(self) -> list[PluginProblem]:
        self._registry("datasets")
        return self._problems

    # -- loading -----------------------------------------------------------------------------
    def add(self, module: ModuleType | object, name: str, distribution: str, version: str = "") -> bool:
        """Register one plugin object with pluggy; returns False (and records why) if rejected."""
        try:
            self.pm.register(module, name=name)
        except Exception as exc:  # pluggy validation: wrong hook signature, duplicate name...
            self._problems.append(PluginProblem(distribution, name, _reason(exc)))
            return False
        mod_name = getattr(module, "__name__", type(module).__name__)
        self.infos[name] = PluginInfo(name, distribution, version, mod_name)
        return True

    def check_pending(self) -> None:
        """pluggy's check_pending, but a plugin with unknown hooks is dropped, not fatal."""
        while True:
            try:
                self.pm.check_pending()
                return
            except pluggy.PluginValidationError as exc:
                name = self.pm.get_name(exc.plugin) or "?"
                self.pm.unregister(exc.plugin)
                info = self.infos.pop(name, None)
                dist = info.distribution if info else "?"
                self._problems.append(PluginProblem(dist, name, _reason(exc)))

    def _collect(self) -> None:
        """Call every plugin's register_* hooks, one plugin at a time, validating each item."""
        for kind, hook_name in KINDS.items():
            what, validate = _VALIDATORS[kind]
            registry: Registry = self._registries[kind]
            for impl in getattr(self.pm.hook, hook_name).get_hookimpls():
                info = self.infos[impl.plugin_name]

                def register(item: Any, _info: PluginInfo = info) -> None:
                    try:
                        item = validate(item)
                        registry.register(item.name, item, _info.distribution)
                    except (SpecError, DuplicateNameError) as exc:
                        self._problems.append(PluginProblem(_info.distribution, _info.name, f"{what}: {exc}"))
                        return
                    _info.registered.setdefault(kind, []).append(item.name)

                try:
                    impl.function(register=register)
                except (Exception, SystemExit) as exc:  # plugin code never ends the process
                    self._problems.append(PluginProblem(info.distribution, info.name, f"{hook_name} failed: {_reason(exc)}"))

    def add_commands(self, cli: Any) -> None:
        """Let plugins add click commands. A command may not replace a built-in one or another
        plugin's: the first owner keeps the name and the newcomer is reported, naming both."""
        owners = {name: CORE_DISTRIBUTION for name in cli.commands}
        for impl in self.pm.hook.register_commands.get_hookimpls():
            info = self.infos[impl.plugin_name]
            before = dict(cli.commands)
            try:
                impl.function(cli=cli)
            except (Exception, SystemExit) as exc:
                self._problems.append(PluginProblem(info.distribution, info.name, f"register_commands failed: {_reason(exc)}"))
            for name, command in list(cli.commands.items()):
                if name in before and before[name] is not command:
                    cli.commands[name] = before[name]
                    self._problems.append(PluginProblem(
                        info.distribution, info.name,
                        f"command '{name}' is already provided by {owners[name]}; refused (rename the plugin's command)"))
                elif name not in before:
                    owners[name] = info.distribution


def _reason(exc: BaseException) -> str:
    if isinstance(exc, SystemExit):
        return f"SystemExit: plugin code called sys.exit({exc.code!r})"
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _normalise(name: str) -> str:
    """PEP 503 name normalisation: harness_vision, Harness.Vision and harness-vision are one name."""
    return re.sub(r"[-_.]+", "-", name.strip()).lower()


def _selected_entry_points() -> list[metadata.EntryPoint]:
    if os.environ.get("HARNESS_DISABLE_PLUGIN_AUTOLOAD", "").strip() not in ("", "0", "false", "no"):
        return []
    eps = sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: ep.name)
    allow = {_normalise(a) for a in os.environ.get("HARNESS_PLUGINS", "").split(",") if a.strip()}
    if allow:
        eps = [ep for ep in eps if _normalise(ep.name) in allow or (ep.dist and _normalise(ep.dist.name) in allow)]
    seen: set[str] = set()
    unique = []
    for ep in eps:  # the same distribution can be visible twice on sys.path (editable + site)
        key = f"{ep.name}={ep.value}"
        if key not in seen:
            seen.add(key)
            unique.append(ep)
    return unique


def load_plugins(extra: Iterable[tuple[object, str, str]] = ()) -> Plugins:
    """Load the core's own plugins, every selected entry point, and ``extra`` (obj, name, dist)."""
    from . import core_plugin

    plugins = Plugins()
    plugins.add(core_plugin, "harness.core", CORE_DISTRIBUTION, distribution_version(CORE_DISTRIBUTION))
    for ep in _selected_entry_points():
        dist = ep.dist.name if ep.dist else "?"
        version = ep.dist.version if ep.dist else ""
        try:
            module = ep.load()
        except (Exception, SystemExit) as exc:  # e.g. a module calling sys.exit() on import
            plugins._problems.append(PluginProblem(dist, ep.name, f"failed to import {ep.value}: {_reason(exc)}"))
            continue
        plugins.add(module, ep.name, dist, version)
    for obj, name, dist in extra:
        plugins.add(obj, name, dist, distribution_version(dist))
    plugins.check_pending()
    return plugins


def distribution_version(dist: str) -> str:
    """The installed version of distribution ``dist`` ("" when it is not installed)."""
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return ""


@functools.lru_cache(maxsize=1)
def get_plugins() -> Plugins:
    """The process-wide loaded plugins (loaded once)."""
    return load_plugins()
