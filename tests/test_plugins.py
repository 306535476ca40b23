"""Plugin loading through real entry points, with broken third-party plugins isolated.

Third-party distributions are simulated without pip: a ``site/`` folder holding
``mydist-1.2.3.dist-info/{METADATA,entry_points.txt}`` and the plugin modules, put on PYTHONPATH
of a ``python -m harness`` subprocess so that importlib.metadata discovers the entry points.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import types
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import pytest

import harness
from harness import hookimpl
from harness.errors import DuplicateNameError
from harness.plugins import CORE_DISTRIBUTION, PluginProblem, load_plugins

BUILTIN_DISTRIBUTIONS = {"distill-harness", "harness-vision", "harness-text", "harness-distillers"}


# -- helpers -------------------------------------------------------------------------------------
def make_dist(root: Path, modules: dict[str, str], entry_points: dict[str, str], *, name: str = "mydist",
              version: str = "1.2.3") -> Path:
    """An installed-looking distribution in ``root/site``: dist-info + plugin modules; returns site/."""
    site = root / "site"
    info = site / f"{name}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    eps = "".join(f"{ep} = {target}\n" for ep, target in entry_points.items())
    (info / "entry_points.txt").write_text(f"[harness]\n{eps}")
    for mod, source in modules.items():
        (site / f"{mod}.py").write_text(textwrap.dedent(source))
    return site


def harness_cli(*args: str, cwd: Path, site: Path | None = None, **env_vars: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("HARNESS_PLUGINS", None)
    env.pop("HARNESS_DISABLE_PLUGIN_AUTOLOAD", None)
    if site is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(site), env.get("PYTHONPATH", "")])
    env.update(env_vars)
    return subprocess.run([sys.executable, "-m", "harness", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=60)


def plugins_json(cwd: Path, site: Path | None = None, **env_vars: str) -> dict:
    proc = harness_cli("plugins", "--json", cwd=cwd, site=site, **env_vars)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def by_distribution(doc: dict) -> dict[str, dict]:
    return {p["distribution"]: p for p in doc["plugins"]}


def assert_builtins_work(doc: dict) -> None:
    """The built-in distributions loaded and registered (at least) their baseline items."""
    dists = by_distribution(doc)
    assert {"digits"} <= set(dists["harness-vision"]["registered"]["datasets"])
    assert {"mlp", "convnet"} <= set(dists["harness-vision"]["registered"]["architectures"])
    assert {"random", "full"} <= set(dists["harness-distillers"]["registered"]["distillers"])
    assert "inline" in dists[CORE_DISTRIBUTION]["registered"]["executors"]


GRID = """\
[[grid]]
distiller = ["{distiller}"]
dataset = ["digits"]
arch = ["mlp"]
ipc = [1]
"""

BROKEN = 'raise ImportError("No module named \'somethingmissing\'")\n'

VALID_PLUGIN = """\
from harness import hookimpl, ArchitectureSpec

def _build(input_shape, num_classes):
    raise NotImplementedError

@hookimpl
def register_architectures(register):
    register(ArchitectureSpec("my-arch", ("image",), _build, "a third-party arch"))
"""


# -- subprocess: real entry points -------------------------------------------------------------
def test_builtin_plugins_load_through_entry_points(tmp_path):
    doc = plugins_json(tmp_path)
    assert doc["problems"] == []
    assert_builtins_work(doc)
    dists = by_distribution(doc)
    assert dists["harness-vision"]["plugin"] == "vision"
    assert dists["harness-vision"]["module"] == "harness_vision.plugin"
    assert dists["harness-distillers"]["plugin"] == "distillers"
    for dist in BUILTIN_DISTRIBUTIONS:
        assert dists[dist]["version"] == metadata.version(dist) != ""


def test_a_plugin_calling_sys_exit_on_import_cannot_end_the_process(tmp_path):
    """SystemExit is not an Exception: without care, a plugin's sys.exit(3) made even --help exit 3."""
    site = make_dist(tmp_path, {"mydist_exits": "import sys\nsys.exit(3)\n"}, {"exits": "mydist_exits"})
    helped = harness_cli("--help", cwd=tmp_path, site=site)
    assert helped.returncode == 0 and "bench" in helped.stdout, helped.stderr
    doc = plugins_json(tmp_path, site)
    assert doc["problems"] == [{"plugin": "exits", "distribution": "mydist",
                                "reason": "failed to import mydist_exits: SystemExit: plugin code called sys.exit(3)"}]
    assert_builtins_work(doc)


def test_a_hook_calling_sys_exit_is_contained():
    import sys as _sys

    def exits(register):
        _sys.exit(0)

    plugins = load_plugins(extra=[(plugin_module("exit_mod", register_distillers=exits), "exit", "exit-dist")])
    assert "random" in plugins.distillers  # the others registered
    assert [str(p) for p in plugins.problems] == [
        "plugin 'exit' from exit-dist: register_distillers failed: SystemExit: plugin code called sys.exit(0)"]


def test_plugin_that_fails_to_import_is_reported_and_others_work(tmp_path):
    site = make_dist(tmp_path, {"mydist_broken": BROKEN, "mydist_ok": VALID_PLUGIN},
                     {"broken": "mydist_broken", "ok": "mydist_ok"})
    doc = plugins_json(tmp_path, site)
    assert doc["problems"] == [{
        "plugin": "broken", "distribution": "mydist",
        "reason": "failed to import mydist_broken: ImportError: No module named 'somethingmissing'",
    }]
    assert_builtins_work(doc)
    ok = {p["plugin"]: p for p in doc["plugins"]}["ok"]  # the same distribution's other plugin loads
    assert ok["distribution"] == "mydist" and ok["version"] == "1.2.3"
    assert ok["registered"] == {"architectures": ["my-arch"]}

    ls = harness_cli("ls", "distillers", cwd=tmp_path, site=site)
    assert ls.returncode == 0, ls.stderr
    listed = {line.split()[0]: line for line in ls.stdout.splitlines()}
    assert {"random", "full"} <= set(listed)
    assert listed["random"].endswith("(harness-distillers)")
    assert "warning: plugin 'broken' from mydist: failed to import mydist_broken" in ls.stderr
    assert "Traceback" not in ls.stderr


def test_plugin_with_unknown_hook_is_reported_and_others_work(tmp_path):
    site = make_dist(tmp_path, {"mydist_unk": """\
        from harness import hookimpl

        @hookimpl
        def register_gizmos(register):
            pass
        """}, {"unk": "mydist_unk"})
    doc = plugins_json(tmp_path, site)
    assert len(doc["problems"]) == 1
    problem = doc["problems"][0]
    assert problem["distribution"] == "mydist" and problem["plugin"] == "unk"
    assert problem["reason"].startswith("PluginValidationError: unknown hook 'register_gizmos'")
    assert "unk" not in {p["plugin"] for p in doc["plugins"]}  # dropped by check_pending
    assert_builtins_work(doc)


def test_plugin_registering_invalid_specs_is_reported_with_its_distribution(tmp_path):
    site = make_dist(tmp_path, {"mydist_bad": """\
        from harness import hookimpl, ArchitectureSpec, DatasetSpec

        def _load(split, data_dir):
            raise NotImplementedError

        @hookimpl
        def register_datasets(register):
            register(DatasetSpec("good-data", 2, (4,), load=_load))
            register(DatasetSpec("bad-data", 1, (4,), load=_load))  # raises inside the hook

        @hookimpl
        def register_architectures(register):
            register(object())  # not a spec: rejected by the registry
            register(ArchitectureSpec("my-arch", ("image",), print))

        @hookimpl
        def register_distillers(register):
            register(type("NoConfig", (), {"name": "noconfig", "distill": lambda self, task: None}))
        """}, {"bad": "mydist_bad"})
    doc = plugins_json(tmp_path, site)
    reasons = {p["reason"] for p in doc["problems"]}
    assert {p["distribution"] for p in doc["problems"]} == {"mydist"}
    assert reasons == {
        "register_datasets failed: SpecError: dataset 'bad-data': num_classes must be an int >= 2, got 1",
        "architecture: expected a harness.ArchitectureSpec, got object",
        "distiller: distiller 'noconfig': needs a nested dataclass `Config` (hyperparameters with defaults)",
    }
    mine = by_distribution(doc)["mydist"]
    assert mine["version"] == "1.2.3"
    # what was valid before/after the bad item still registered
    assert mine["registered"] == {"datasets": ["good-data"], "architectures": ["my-arch"]}
    assert_builtins_work(doc)


def test_duplicate_distiller_name_names_both_distributions(tmp_path):
    site = make_dist(tmp_path, {"mydist_dup": """\
        from dataclasses import dataclass
        from harness import hookimpl

        class MyRandom:
            \"\"\"Another 'random'.\"\"\"
            name = "random"

            @dataclass
            class Config:
                pass

            def distill(self, task):
                raise NotImplementedError

        @hookimpl
        def register_distillers(register):
            register(MyRandom)
        """}, {"dup": "mydist_dup"})
    doc = plugins_json(tmp_path, site)
    [problem] = doc["problems"]
    assert problem["distribution"] == "mydist"
    assert "distiller 'random' is registered by both harness-distillers and mydist" in problem["reason"]

    (tmp_path / "random.toml").write_text(GRID.format(distiller="random"))
    proc = harness_cli("validate", "random.toml", cwd=tmp_path, site=site)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if not line.startswith("warning:")]
    assert errors == ["error: random.toml: [[grid]] #1: distiller 'random' is registered by both harness-distillers and mydist; "
                      "uninstall one, or choose plugins with HARNESS_PLUGINS"]
    assert "Traceback" not in proc.stderr

    # the allowlist is the documented way out: without mydist, 'random' is unambiguous again
    proc = harness_cli("validate", "random.toml", cwd=tmp_path, site=site, HARNESS_PLUGINS="vision,distillers")
    assert proc.returncode == 0, proc.stderr
    assert "has 1 trials" in proc.stdout and proc.stderr == ""


def test_disable_autoload_leaves_only_the_core_executors(tmp_path):
    site = make_dist(tmp_path, {"mydist_broken": BROKEN}, {"broken": "mydist_broken"})
    doc = plugins_json(tmp_path, site, HARNESS_DISABLE_PLUGIN_AUTOLOAD="1")
    assert doc["problems"] == []  # the broken plugin is not even imported
    assert [(p["distribution"], p["registered"]) for p in doc["plugins"]] == [
        (CORE_DISTRIBUTION, {"distillers": ["file"], "executors": ["inline", "process", "ray"]})]
    proc = harness_cli("ls", "datasets", cwd=tmp_path, HARNESS_DISABLE_PLUGIN_AUTOLOAD="1")
    assert proc.returncode == 1
    assert proc.stdout == "" and "no datasets registered" in proc.stderr


@pytest.mark.parametrize(
    "allow, expected",
    [
        ("vision", {CORE_DISTRIBUTION, "harness-vision"}),  # by entry-point name
        ("harness-distillers", {CORE_DISTRIBUTION, "harness-distillers"}),  # by distribution name
        (" mydist , vision ", {CORE_DISTRIBUTION, "harness-vision", "mydist"}),
    ],
)
def test_allowlist(tmp_path, allow, expected):
    site = make_dist(tmp_path, {"mydist_broken": BROKEN, "mydist_ok": VALID_PLUGIN},
                     {"broken": "mydist_broken", "ok": "mydist_ok"})
    doc = plugins_json(tmp_path, site, HARNESS_PLUGINS=allow)
    assert {p["distribution"] for p in doc["plugins"]} == expected
    if "mydist" in expected:
        assert [p["plugin"] for p in doc["problems"]] == ["broken"]
    else:
        assert doc["problems"] == []  # plugins outside the allowlist are not imported


def test_plugins_human_output_lists_versions_and_broken(tmp_path):
    site = make_dist(tmp_path, {"mydist_broken": BROKEN, "mydist_ok": VALID_PLUGIN},
                     {"broken": "mydist_broken", "ok": "mydist_ok"})
    proc = harness_cli("plugins", cwd=tmp_path, site=site)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert f"distill-harness {harness.__version__}  (harness.core: harness.core_plugin)" in out
    assert f"harness-vision {metadata.version('harness-vision')}  (vision: harness_vision.plugin)" in out
    assert (f"harness-distillers {metadata.version('harness-distillers')}  "
            f"(distillers: harness_distillers.plugin)") in out
    assert "mydist 1.2.3  (ok: mydist_ok)\n    architectures: my-arch\n" in out
    assert re.search(r"^    distillers: random, full\b", out, re.M)
    assert re.search(r"^    datasets: digits\b", out, re.M)
    assert re.search(r"^    architectures: mlp, convnet\b", out, re.M)
    assert "BROKEN mydist (broken): failed to import mydist_broken: ImportError" in out


def test_plugin_command_appears_in_help_and_runs(tmp_path):
    site = make_dist(tmp_path, {"mydist_cmd": """\
        import click
        from harness import hookimpl

        @hookimpl
        def register_commands(cli):
            @cli.command(name="hello-mydist")
            @click.argument("who", default="world")
            def hello(who):
                \"\"\"Say hello from mydist.\"\"\"
                click.echo(f"hello {who} from mydist")
        """}, {"cmd": "mydist_cmd"})
    help_ = harness_cli("--help", cwd=tmp_path, site=site)
    assert help_.returncode == 0, help_.stderr
    assert "hello-mydist" in help_.stdout and "Say hello from mydist." in help_.stdout
    run = harness_cli("hello-mydist", "tests", cwd=tmp_path, site=site)
    assert run.returncode == 0, run.stderr
    assert run.stdout == "hello tests from mydist\n"


# -- in-process: load_plugins(extra=...) ---------------------------------------------------------
def plugin_module(name: str, **hooks) -> types.ModuleType:
    module = types.ModuleType(name)
    for hook_name, fn in hooks.items():
        setattr(module, hook_name, hookimpl(fn))
    return module


@dataclass
class _Cfg:
    steps: int = 1


def _distiller(name: str) -> type:
    return type(name.title(), (), {"name": name, "Config": _Cfg, "distill": lambda self, task: None})


def test_in_process_extra_plugin_registers_everything():
    def datasets(register):
        register(harness.DatasetSpec("extra-data", 4, (2, 2), load=lambda split, d: None))

    def distillers(register):
        register(_distiller("extra-dist"))

    plugins = load_plugins(extra=[(plugin_module("extra_mod", register_datasets=datasets,
                                                 register_distillers=distillers), "extra", "extra-dist-pkg")])
    assert plugins.problems == []
    assert plugins.datasets.get("extra-data").num_classes == 4
    assert plugins.datasets.source("extra-data") == "extra-dist-pkg"
    assert plugins.distillers.source("extra-dist") == "extra-dist-pkg"
    info = plugins.infos["extra"]
    assert (info.distribution, info.module) == ("extra-dist-pkg", "extra_mod")
    assert info.registered == {"datasets": ["extra-data"], "distillers": ["extra-dist"]}
    assert {"digits", "extra-data"} <= set(plugins.datasets.names())


def test_in_process_hook_that_raises_is_isolated():
    def boom(register):
        register(_distiller("before-boom"))
        raise RuntimeError("boom\nsecond line")

    plugins = load_plugins(extra=[(plugin_module("boom_mod", register_distillers=boom), "boom", "boom-dist")])
    assert [str(p) for p in plugins.problems] == [
        "plugin 'boom' from boom-dist: register_distillers failed: RuntimeError: boom"]
    assert "before-boom" in plugins.distillers  # registered before the failure
    assert {"random", "full"} <= set(plugins.distillers.names())


def test_in_process_invalid_items_are_skipped_but_valid_ones_register():
    class Instance:
        name = "instance"
        Config = _Cfg

        def distill(self, task): ...

    def distillers(register):
        register(Instance())
        register(_distiller("fine"))
        register("random")  # a str: has no `name`

    def executors(register):
        register(type("NoRun", (), {"name": "norun"}))

    plugins = load_plugins(extra=[(plugin_module("items_mod", register_distillers=distillers,
                                                 register_executors=executors), "items", "items-dist")])
    reasons = [p.reason for p in plugins.problems]
    assert reasons == [
        "distiller: distiller 'instance': register the class, not an instance",
        "distiller: distiller name None is invalid: use lower-case letters, digits, '.', '_' or '-'",
        "executor: executor 'norun': needs a method run(trials, run_trial)",
    ]
    assert all(p.distribution == "items-dist" for p in plugins.problems)
    assert plugins.infos["items"].registered == {"distillers": ["fine"]}
    assert "random" in plugins.distillers  # the bare string did not shadow the real one


def test_in_process_wrong_hook_signature_and_unknown_hook():
    def bad_signature(reg):  # the spec's argument is `register`
        pass

    def gizmos(register):
        pass

    def datasets(register):
        register(harness.DatasetSpec("never", 2, (1,), load=print))

    plugins = load_plugins(extra=[
        (plugin_module("sig_mod", register_datasets=bad_signature), "sig", "sig-dist"),
        (plugin_module("unk_mod", register_gizmos=gizmos, register_datasets=datasets), "unk", "unk-dist"),
    ])
    problems = {p.plugin: p for p in plugins.problems}
    assert problems["sig"].distribution == "sig-dist"
    assert problems["sig"].reason.startswith("PluginValidationError:")
    assert problems["unk"].distribution == "unk-dist"
    assert "unknown hook 'register_gizmos'" in problems["unk"].reason
    assert "sig" not in plugins.infos and "unk" not in plugins.infos
    assert "never" not in plugins.datasets  # the dropped plugin's hooks are not called
    assert "digits" in plugins.datasets


def test_in_process_duplicate_with_builtin_conflicts():
    plugins = load_plugins(extra=[(plugin_module("dup_mod", register_distillers=lambda register: register(
        _distiller("random"))), "dup", "dup-dist")])
    [problem] = plugins.problems
    assert problem.distribution == "dup-dist"
    assert "harness-distillers and dup-dist" in problem.reason
    with pytest.raises(DuplicateNameError, match="harness-distillers and dup-dist"):
        plugins.distillers.get("random")
    assert plugins.distillers.get("full")


def test_in_process_register_commands_failure_is_reported():
    import click

    def commands(cli):
        raise ValueError("cannot add")

    plugins = load_plugins(extra=[(plugin_module("cmd_mod", register_commands=commands), "cmd", "cmd-dist")])
    plugins.add_commands(click.Group("harness"))
    assert [str(p) for p in plugins.problems] == [
        "plugin 'cmd' from cmd-dist: register_commands failed: ValueError: cannot add"]


def test_a_plugin_command_cannot_replace_a_builtin_or_another_plugins_command():
    import click

    from harness.cli import cli as real_cli

    def hijack(cli):
        @cli.command("bench")
        def bench():
            """A plugin's own bench."""

        @cli.command("sweep")
        def sweep():
            """A new command: fine."""

    def second(cli):
        @cli.command("sweep")
        def sweep():
            """Another plugin's sweep."""

    group = click.Group("harness", commands=dict(real_cli.commands))
    builtin_bench = group.commands["bench"]
    plugins = load_plugins(extra=[(plugin_module("hijack_mod", register_commands=hijack), "hijack", "hijack-dist"),
                                  (plugin_module("second_mod", register_commands=second), "second", "second-dist")])
    plugins.add_commands(group)
    assert group.commands["bench"] is builtin_bench  # the built-in keeps its name
    assert group.commands["sweep"].help == "A new command: fine."  # the first owner keeps it
    assert [str(p) for p in plugins.problems] == [
        f"plugin 'hijack' from hijack-dist: command 'bench' is already provided by {CORE_DISTRIBUTION}; "
        "refused (rename the plugin's command)",
        "plugin 'second' from second-dist: command 'sweep' is already provided by hijack-dist; "
        "refused (rename the plugin's command)"]


@pytest.mark.parametrize("value, autoload", [("1", False), ("true", False), ("0", True), ("", True), ("no", True)])
def test_in_process_disable_autoload_values(monkeypatch, value, autoload):
    monkeypatch.setenv("HARNESS_DISABLE_PLUGIN_AUTOLOAD", value)
    plugins = load_plugins()
    assert ("digits" in plugins.datasets) is autoload
    assert plugins.executors.names() == ["inline", "process", "ray"]
    dists = {i.distribution for i in plugins.infos.values()}
    if autoload:
        assert BUILTIN_DISTRIBUTIONS <= dists
    else:
        assert dists == {CORE_DISTRIBUTION}


def test_in_process_allowlist_keeps_extra_plugins(monkeypatch):
    monkeypatch.setenv("HARNESS_PLUGINS", "distillers")
    plugins = load_plugins(extra=[(plugin_module("x_mod"), "x", "x-dist")])
    assert {i.distribution for i in plugins.infos.values()} == {CORE_DISTRIBUTION, "harness-distillers", "x-dist"}
    assert len(plugins.datasets) == 0 and {"full", "random"} <= set(plugins.distillers.names())


def test_plugin_problem_str():
    assert str(PluginProblem("dist", "ep", "why")) == "plugin 'ep' from dist: why"
