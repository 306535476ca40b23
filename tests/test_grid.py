"""harness.grid: TOML -> overrides -> validated trials, with one clear ConfigError per problem."""

from __future__ import annotations

import copy
from pathlib import Path
import types
from dataclasses import dataclass
from typing import Literal, Optional

import pytest

import harness
from harness import Capabilities, hookimpl
from harness.errors import ConfigError, DuplicateNameError, HarnessError, UnknownNameError
from harness.grid import apply_overrides, build_grid, load_grid
from harness.trial import Recipe


def grid_doc(*tables: dict, **top) -> dict:
    """A grid document; each table defaults to random/tiny/tiny-mlp/ipc=[1]."""
    base = {"distiller": ["random"], "dataset": ["tiny"], "arch": ["tiny-mlp"], "ipc": [1]}
    out = {k: v for k, v in top.items()}
    out["grid"] = [{k: v for k, v in {**base, **t}.items() if v is not None} for t in (tables or ({},))]
    return out


def build(doc: dict, plugins) -> list:
    return build_grid(copy.deepcopy(doc), plugins).trials


# -- products, budgets, seeds --------------------------------------------------------------------
def test_cartesian_product(tiny_plugins):
    doc = grid_doc({"distiller": ["random", "means"], "dataset": ["tiny", "digits"], "arch": ["tiny-mlp", "mlp"],
                    "ipc": [1, 2]}, seeds=[0, 1])
    grid = build_grid(doc, tiny_plugins, default_name="mygrid")
    assert len(grid.trials) == 2 * 2 * 2 * 2 * 2
    assert len({t.key for t in grid.trials}) == 32
    assert {(t.distiller, t.dataset, t.arch, t.ipc, t.seed) for t in grid.trials} == {
        (d, ds, a, i, s) for d in ("random", "means") for ds in ("tiny", "digits") for a in ("tiny-mlp", "mlp")
        for i in (1, 2) for s in (0, 1)}
    assert (grid.name, grid.seeds, grid.device, grid.executor) == ("mygrid", [0, 1], "auto", "inline")
    # ipc is converted to the total n with the dataset's class count
    assert {(t.dataset, t.ipc, t.n) for t in grid.trials} == {
        ("tiny", 1, 3), ("tiny", 2, 6), ("digits", 1, 10), ("digits", 2, 20)}


def test_scalars_are_single_element_axes(tiny_plugins):
    [trial] = build(grid_doc({"distiller": "random", "dataset": "tiny", "arch": "tiny-mlp", "ipc": 4}), tiny_plugins)
    assert (trial.distiller, trial.ipc, trial.n, trial.seed) == ("random", 4, 12, 0)


def test_identical_and_overlapping_tables_are_deduplicated(tiny_plugins):
    assert len(build(grid_doc({}, {}), tiny_plugins)) == 1
    trials = build(grid_doc({"ipc": [1, 2]}, {"ipc": [2, 3]}), tiny_plugins)
    assert sorted(t.ipc for t in trials) == [1, 2, 3]
    # tables are unioned: different shapes in different tables
    trials = build(grid_doc({"distiller": ["random"], "ipc": [1]}, {"distiller": ["means"], "ipc": None, "n": [3, 6]}),
                   tiny_plugins)
    assert sorted((t.distiller, t.budget) for t in trials) == [("means", "n=3"), ("means", "n=6"),
                                                               ("random", "ipc=1")]


def test_seeds(tiny_plugins):
    trials = build(grid_doc(seeds=[3, 1, 7]), tiny_plugins)
    assert [t.seed for t in trials] == [3, 1, 7]
    assert [t.seed for t in build(grid_doc(), tiny_plugins)] == [0]  # default


def test_a_table_may_run_its_own_seeds(tiny_plugins):
    """e.g. an expensive cross-architecture recipe on one seed, the rest on three."""
    doc = grid_doc({"ipc": [1]}, {"ipc": [2], "seeds": [0], "eval": {"archs": ["same", "image-only"]}}, seeds=[0, 1, 2])
    trials = build(doc, tiny_plugins)
    assert sorted((t.ipc, t.seed, len(t.recipes)) for t in trials) == [(1, 0, 1), (1, 1, 1), (1, 2, 1), (2, 0, 2)]
    with pytest.raises(ConfigError, match=r"\[\[grid\]\] #1: seeds must be distinct"):
        build(grid_doc({"seeds": [1, 1]}), tiny_plugins)


@pytest.mark.parametrize("seeds, message", [
    ([0, 0], "seeds must be distinct non-negative ints"),
    ([-1], "seeds must be distinct non-negative ints"),
    ([], "seeds: empty list"),
    (["0"], r"seeds: expected int, got '0' \(str\)"),
    ([True], r"seeds: expected int, got True \(bool\)"),
    ([1.0], r"seeds: expected int, got 1.0 \(float\)"),
])
def test_bad_seeds(tiny_plugins, seeds, message):
    with pytest.raises(ConfigError, match=message):
        build(grid_doc(seeds=seeds), tiny_plugins)


def test_full_ignores_the_budget(tiny_plugins):
    doc = grid_doc({"distiller": ["random", "full"], "arch": ["tiny-mlp", "mlp"], "ipc": [1, 2]}, seeds=[0, 1])
    trials = build(doc, tiny_plugins)
    full = [t for t in trials if t.distiller == "full"]
    random_ = [t for t in trials if t.distiller == "random"]
    assert len(random_) == 2 * 2 * 2 and len(full) == 2 * 2  # one per arch/seed, not per ipc
    assert all(t.ipc is None and t.n is None and t.budget == "all" for t in full)
    assert {t.label for t in full} == {"full/tiny/tiny-mlp/all/seed0", "full/tiny/tiny-mlp/all/seed1",
                                       "full/tiny/mlp/all/seed0", "full/tiny/mlp/all/seed1"}
    assert {t.params()["n"] for t in full} == {"all"} and {t.params()["ipc"] for t in full} == {""}
    # budget-free distillers need no ipc/n at all
    assert len(build(grid_doc({"distiller": ["full"], "ipc": None}), tiny_plugins)) == 1


def test_ipc_and_n_together_rejected(tiny_plugins):
    with pytest.raises(ConfigError, match=r"\[\[grid\]\] #1: give either ipc \(per class\) or n \(total\), not both"):
        build(grid_doc({"ipc": [1], "n": [3]}), tiny_plugins)


def test_missing_budget_rejected_unless_budget_free(tiny_plugins):
    with pytest.raises(ConfigError, match=r"distiller 'random' needs a budget; add ipc = \[...\] or n = \[...\]"):
        build(grid_doc({"distiller": ["full", "random"], "ipc": None}), tiny_plugins)


@pytest.mark.parametrize("key", ["ipc", "n"])
def test_budget_must_be_positive(tiny_plugins, key):
    with pytest.raises(ConfigError, match=rf"{key} must be >= 1, got \[2, 0\]"):
        build(grid_doc({"ipc": None, key: [2, 0]}), tiny_plugins)


def test_n_fewer_than_classes(tiny_plugins):
    # random supports n < classes (capabilities.fewer_than_classes)
    [trial] = build(grid_doc({"ipc": None, "n": [2]}), tiny_plugins)
    assert (trial.ipc, trial.n, trial.budget, trial.label) == (None, 2, "n=2", "random/tiny/tiny-mlp/n2/seed0")
    # means does not
    with pytest.raises(ConfigError, match=r"n = 2 is fewer than the 3 classes of 'tiny', which distiller 'means' "
                                          r"does not support; use n >= 3"):
        build(grid_doc({"distiller": ["means"], "ipc": None, "n": [2]}), tiny_plugins)
    assert build(grid_doc({"distiller": ["means"], "ipc": None, "n": [3]}), tiny_plugins)[0].n == 3


# -- unknown keys and wrong types ----------------------------------------------------------------
@pytest.mark.parametrize("doc, message", [
    (grid_doc(seed=[0]), r"^grid: unknown key 'seed'; did you mean 'seeds'\?$"),
    (grid_doc(evals={}), r"^grid: unknown key 'evals'; did you mean 'eval'\?$"),
    (grid_doc(zzz=1), r"^grid: unknown key 'zzz' \(allowed: autocast, checkpoint_every, compile, device, distillers, eval, eval_mode, executor, grid, name, resources, seeds, trial_timeout\)$"),
    (grid_doc(eval={"epoch": 3}), r"^grid: \[eval\]: unknown key 'epoch'; did you mean 'epochs'\?$"),
    (grid_doc(eval_mode="vmap"), r"^grid: eval_mode: unknown value 'vmap'; choose from auto, vectorised, sequential$"),
    (grid_doc(eval={"optimizer": ["sgd"]}), r"did you mean 'optimizers'\?"),
    (grid_doc({"archs": ["mlp"]}), r"^grid: \[\[grid\]\] #1: unknown key 'archs'; did you mean 'arch'\?$"),
    (grid_doc({}, {"datasets": ["tiny"]}), r"^grid: \[\[grid\]\] #2: unknown key 'datasets'; did you mean 'dataset'\?$"),
])
def test_unknown_keys(tiny_plugins, doc, message):
    with pytest.raises(ConfigError, match=message):
        build(doc, tiny_plugins)


@pytest.mark.parametrize("doc, message", [
    (grid_doc(eval={"epochs": "3"}), r"eval.epochs: expected int, got '3' \(str\)"),
    (grid_doc(eval={"epochs": True}), r"eval.epochs: expected int, got True \(bool\)"),
    (grid_doc(eval={"epochs": 2.5}), r"eval.epochs: expected int, got 2.5 \(float\)"),
    (grid_doc(eval={"epochs": 0}), r"eval.epochs: must be >= 1, got 0"),
    (grid_doc(eval={"models": "5"}), r"eval.models: expected int"),
    (grid_doc(eval={"batch_size": [256]}), r"eval.batch_size: expected int"),
    (grid_doc(eval={"lr": "0.1"}), r"eval.lr: expected float, got '0.1' \(str\)"),
    (grid_doc(eval={"lr": 0}), r"eval.lr must be > 0, got 0.0"),
    (grid_doc(eval={"momentum": True}), r"eval.momentum: expected float, got True \(bool\)"),
    (grid_doc(eval={"archs": [1]}), r"eval.archs: expected str, got 1 \(int\)"),
    (grid_doc(eval=["sgd"]), r"\[eval\] must be a table"),
    (grid_doc({"ipc": ["1"]}), r"\[\[grid\]\] #1: ipc: expected int, got '1' \(str\)"),
    (grid_doc({"ipc": [True]}), r"\[\[grid\]\] #1: ipc: expected int, got True \(bool\)"),
    (grid_doc({"ipc": []}), r"\[\[grid\]\] #1: ipc: empty list"),
    (grid_doc({"distiller": [1]}), r"\[\[grid\]\] #1: distiller: expected str, got 1 \(int\)"),
    (grid_doc({"arch": None}), r"\[\[grid\]\] #1: missing 'arch'"),
    (grid_doc(name=3), r"name: expected str, got 3 \(int\)"),
    (grid_doc(name="  "), r"experiment name '  ' is not usable as a file name"),
    (grid_doc(executor=["inline"]), r"executor: expected str"),
    ({"name": "x"}, r"needs at least one \[\[grid\]\] table"),
    ({"grid": {"distiller": "random"}}, r"needs at least one \[\[grid\]\] table"),
    (grid_doc(distillers=["means"]), r"\[distillers\] must be a table"),
    (grid_doc(distillers={"means": 3}), r"distillers.means\]? must be a table"),
])
def test_wrong_types(tiny_plugins, doc, message):
    with pytest.raises(ConfigError, match=message):
        build(doc, tiny_plugins)


# -- unknown names -------------------------------------------------------------------------------
@pytest.mark.parametrize("doc, message", [
    (grid_doc({"distiller": ["rnadom"]}), r"unknown distiller 'rnadom'; did you mean 'random'\?"),
    (grid_doc({"dataset": ["tinny"]}), r"unknown dataset 'tinny'; did you mean 'tiny'\?"),
    (grid_doc({"base_dataset": ["digts"]}), r"unknown dataset 'digts'; did you mean 'digits'\?"),
    (grid_doc({"arch": ["tiny-mpl"]}), r"unknown architecture 'tiny-mpl'; did you mean 'tiny-mlp'\?"),
    (grid_doc(eval={"archs": ["convnt"]}), r"unknown architecture 'convnt'; did you mean 'convnet'\?"),
    (grid_doc(distillers={"meens": {}}), r"unknown distiller 'meens'; did you mean 'means'\?"),
    (grid_doc(executor="inlin"), r"unknown executor 'inlin'; did you mean 'inline'\?"),
])
def test_unknown_names_with_suggestions(tiny_plugins, doc, message):
    with pytest.raises(UnknownNameError, match=message) as info:
        build(doc, tiny_plugins)
    assert "see `harness ls`" in str(info.value)


@pytest.mark.parametrize("doc, message", [
    (grid_doc(eval={"optimizers": ["sgdd"]}), r"eval.optimizers: unknown value 'sgdd'; did you mean 'sgd'\? "
                                              r"choose from sgd, adam, distilled"),
    (grid_doc(eval={"optimizers": ["SGD"]}), r"eval.optimizers: unknown value 'SGD'"),
    (grid_doc(eval={"init": "fixed"}), r"eval.init: unknown value 'fixed'; choose from random, known"),
    (grid_doc(eval={"augment": "flip"}), r"eval.augment: unknown value 'flip'"),
    (grid_doc(device="tpu"), r"device: unknown device 'tpu'; use auto, cpu, cuda or cuda:N"),
    (grid_doc(device="CUDA"), r"unknown device 'CUDA'"),
    (grid_doc(device="cuda:x"), r"unknown device 'cuda:x'"),
])
def test_unknown_choices(tiny_plugins, doc, message):
    with pytest.raises(ConfigError, match=message):
        build(doc, tiny_plugins)


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:1", "mps"])
def test_known_devices(tiny_plugins, device):
    assert build_grid(grid_doc(device=device), tiny_plugins).device == device


# -- modalities ----------------------------------------------------------------------------------
def test_arch_modality_mismatch(tiny_plugins):
    with pytest.raises(ConfigError, match=r"architecture 'image-only' takes image input, but dataset 'tiny-text' is "
                                          r"text; pick an architecture listed by `harness ls archs`"):
        build(grid_doc({"dataset": ["tiny-text"], "arch": ["image-only"]}), tiny_plugins)
    [trial] = build(grid_doc({"dataset": ["tiny-text"], "arch": ["tiny-mlp"]}), tiny_plugins)
    assert trial.dataset == "tiny-text"


def test_eval_arch_modality_mismatch(tiny_plugins):
    with pytest.raises(ConfigError, match=r"eval architecture 'image-only' does not take text input "
                                          r"\(dataset 'tiny-text'\)"):
        build(grid_doc({"dataset": ["tiny-text"]}, eval={"archs": ["same", "image-only"]}), tiny_plugins)


def test_cross_architecture_recipes(tiny_plugins):
    [trial] = build(grid_doc(eval={"archs": ["same", "image-only"], "optimizers": ["sgd", "adam"]}), tiny_plugins)
    assert [r.label for r in trial.recipes] == ["tiny-mlp/sgd", "tiny-mlp/adam", "image-only/sgd", "image-only/adam"]
    assert [r.lr for r in trial.recipes] == [0.01, 0.001, 0.01, 0.001]  # per-optimizer defaults


# -- init / optimizers vs capabilities -----------------------------------------------------------
def test_known_init_needs_capability(tiny_plugins):
    with pytest.raises(ConfigError, match=r"eval.init = 'known' needs a set distilled for a fixed init; "
                                          r"'random' with this config does not carry one \(keep init = 'random'"):
        build(grid_doc(eval={"init": "known"}), tiny_plugins)
    [trial] = build(grid_doc({"distiller": ["means"]}, eval={"init": "known"}), tiny_plugins)
    assert [r.label for r in trial.recipes] == ["tiny-mlp/sgd/known-init"]
    assert trial.recipes[0].init == "known"


def test_distilled_optimizer_first_needs_learned_lrs(tiny_plugins):
    with pytest.raises(ConfigError, match=r"the first eval optimizer is 'distilled' but 'random' learns no step "
                                          r"sizes; list sgd or adam first"):
        build(grid_doc(eval={"optimizers": ["distilled", "sgd"]}), tiny_plugins)
    [trial] = build(grid_doc({"distiller": ["means"]}, eval={"optimizers": ["distilled"]}), tiny_plugins)
    assert [r.label for r in trial.recipes] == ["tiny-mlp/distilled"]


def test_distilled_recipe_only_for_distillers_that_learn_lrs(tiny_plugins):
    doc = grid_doc({"distiller": ["random", "means", "full"]}, eval={"optimizers": ["sgd", "distilled"]})
    recipes = {t.distiller: [r.label for r in t.recipes] for t in build(doc, tiny_plugins)}
    assert recipes == {"random": ["tiny-mlp/sgd"], "means": ["tiny-mlp/sgd", "tiny-mlp/distilled"],
                       "full": ["tiny-mlp/sgd"]}


def test_recipe_settings(tiny_plugins):
    [trial] = build(grid_doc(eval={"epochs": 7, "models": 2, "batch_size": 32, "lr": 1, "momentum": 0,
                                   "weight_decay": 0}), tiny_plugins)
    assert trial.recipes == (Recipe(arch="tiny-mlp", optimizer="sgd", epochs=7, lr=1.0, batch_size=32, models=2,
                                    momentum=0.0, weight_decay=0.0),)
    assert all(isinstance(v, float) for v in (trial.recipes[0].lr, trial.recipes[0].momentum))
    # defaults: the DC protocol
    [trial] = build(grid_doc(), tiny_plugins)
    assert trial.recipes == (Recipe(arch="tiny-mlp", optimizer="sgd", epochs=300, lr=0.01, batch_size=256, models=5,
                                    init="random", augment="none", momentum=0.9, weight_decay=5e-4),)


# -- cross-dataset -------------------------------------------------------------------------------
class CrossLabels:
    """Cross-dataset test distiller."""

    name = "cross"
    capabilities = Capabilities(learns_labels=True, cross_dataset=True)

    @dataclass
    class Config:
        pass

    def distill(self, task):
        raise NotImplementedError


@pytest.fixture
def cross_plugins():
    import plugins_for_tests

    from harness.plugins import load_plugins
    from harness.testing import tiny_dataset

    mod = types.ModuleType("cross_plugin")
    mod.register_datasets = hookimpl(lambda register: register(tiny_dataset("tiny2")))
    mod.register_distillers = hookimpl(lambda register: register(CrossLabels))
    return load_plugins(extra=[(plugins_for_tests, "tests", "tests-plugins"), (mod, "cross", "cross-dist")])


def test_base_dataset(cross_plugins):
    with pytest.raises(ConfigError, match=r"distiller 'random' cannot use base examples from another dataset "
                                          r"\(base_dataset = 'tiny2'\); use a cross-dataset distiller"):
        build(grid_doc({"base_dataset": ["tiny2"]}), cross_plugins)
    # naming the target itself is the same as "same"
    [trial] = build(grid_doc({"base_dataset": ["tiny"]}), cross_plugins)
    assert trial.base_dataset == "tiny" and trial.label == "random/tiny/tiny-mlp/ipc1/seed0"
    assert trial.key == build(grid_doc(), cross_plugins)[0].key

    trials = build(grid_doc({"distiller": ["cross"], "base_dataset": ["same", "tiny2"]}), cross_plugins)
    assert sorted(t.label for t in trials) == ["cross/tiny/tiny-mlp/ipc1/seed0", "cross/tiny2->tiny/tiny-mlp/ipc1/seed0"]
    assert ("cross-dist", "") in trials[1].versions
    with pytest.raises(ConfigError, match=r"base dataset 'digits' \(1, 8, 8\) does not match 'tiny' \(1, 4, 4\)"):
        build(grid_doc({"distiller": ["cross"], "base_dataset": ["digits"]}), cross_plugins)


# -- distiller configs ---------------------------------------------------------------------------
def means_config(tiny_plugins, **overrides) -> dict:
    [trial] = build(grid_doc({"distiller": ["means"]}, distillers={"means": overrides}), tiny_plugins)
    return dict(trial.config)


def test_config_defaults_and_overrides(tiny_plugins):
    assert means_config(tiny_plugins) == {"smoothing": 0.0, "steps": 3, "lr": 0.1, "model_init": "default"}
    cfg = means_config(tiny_plugins, smoothing=0.2, steps=5)
    assert cfg == {"smoothing": 0.2, "steps": 5, "lr": 0.1, "model_init": "default"}
    cfg = means_config(tiny_plugins, lr=1)  # TOML int widened to the float field
    assert cfg["lr"] == 1.0 and isinstance(cfg["lr"], float)


def test_config_overrides_apply_only_to_their_distiller(tiny_plugins):
    doc = grid_doc({"distiller": ["random", "means"]}, distillers={"means": {"steps": 9}})
    params = {t.distiller: t.params() for t in build(doc, tiny_plugins)}
    assert params["means"]["cfg.steps"] == 9
    assert not any(k.startswith("cfg.") for k in params["random"])


@pytest.mark.parametrize("overrides, message", [
    ({"smoothing": "a"}, r"distillers.means.smoothing: expected float, got 'a' \(str\)"),
    ({"smoothing": True}, r"distillers.means.smoothing: expected float, got True \(bool\)"),
    ({"steps": 2.5}, r"distillers.means.steps: expected int, got 2.5 \(float\)"),
    ({"smoth": 0.1}, r"distillers.means: unknown key 'smoth'; did you mean 'smoothing'\?"),
    ({"smoothing": 1.5}, r"distillers.means: smoothing must be in \[0, 1\), got 1.5"),  # Config.__post_init__
])
def test_config_errors(tiny_plugins, overrides, message):
    with pytest.raises(ConfigError, match=message):
        means_config(tiny_plugins, **overrides)


def test_config_annotations_are_checked():
    from harness.grid import build_config

    @dataclass
    class Config:
        mode: Literal["a", "b"] = "a"
        sizes: tuple[int, ...] = (1,)
        names: list[str] = None  # type: ignore[assignment]
        maybe: Optional[float] = None
        union: int | str = 0

    cls = type("D", (), {"name": "d", "Config": Config})
    cfg = build_config(cls, {"mode": "b", "sizes": [1, 2], "names": ["x"], "maybe": 1, "union": "s"}, "w")
    assert (cfg.mode, cfg.sizes, cfg.names, cfg.maybe, cfg.union) == ("b", (1, 2), ["x"], 1.0, "s")
    assert build_config(cls, {"maybe": None}, "w").maybe is None
    for overrides, message in [({"mode": "c"}, r"w.mode: unknown value 'c'"),
                               ({"sizes": 3}, r"w.sizes: expected a list"),
                               ({"sizes": [1, "2"]}, r"w.sizes: expected int"),
                               ({"union": 1.5}, r"w.union: 1.5 does not match")]:
        with pytest.raises(ConfigError, match=message):
            build_config(cls, overrides, "w")


def test_config_with_unresolvable_annotations_still_builds():
    """String annotations naming local or TYPE_CHECKING-only names must not crash validation."""
    from harness.grid import build_config

    Steps = int  # only visible in this scope: get_type_hints cannot resolve "Steps"

    @dataclass
    class Config:
        steps: Steps = 3
        lr: float = 0.1

    cls = type("D", (), {"name": "d", "Config": Config})
    assert build_config(cls, {"steps": 5}, "w").steps == 5
    assert build_config(cls, {}, "w").lr == 0.1
    with pytest.raises(ConfigError, match="w: unknown key 'stepz'; did you mean 'steps'"):
        build_config(cls, {"stepz": 5}, "w")


# -- --set overrides -----------------------------------------------------------------------------
def test_apply_overrides():
    doc = grid_doc({}, {"ipc": [5]}, eval={"epochs": 300})
    out = apply_overrides(doc, ["eval.epochs=3", "grid.ipc=[1]", "seeds=[5,6]", "name=my run",
                                "eval.init = known", 'device="cpu"', "distillers.means.smoothing=0.5",
                                "eval.lr=1e-3", "eval.archs=['mlp', 'same']"])
    assert out is doc
    assert doc["eval"] == {"epochs": 3, "init": "known", "lr": 0.001, "archs": ["mlp", "same"]}
    assert [t["ipc"] for t in doc["grid"]] == [[1], [1]]  # every [[grid]] table
    assert doc["seeds"] == [5, 6]
    assert doc["name"] == "my run"  # not a TOML literal: taken as a plain string
    assert doc["device"] == "cpu"
    assert doc["distillers"] == {"means": {"smoothing": 0.5}}


@pytest.mark.parametrize("item, message", [
    ("eval.epochs", r"--set 'eval.epochs': expected section.key=value, e.g. --set eval.epochs=10"),
    ("=3", r"--set '=3': expected section.key=value"),
    ("eval.epochs.x=1", r"--set eval.epochs.x: 'epochs' is not a table"),
])
def test_apply_overrides_malformed(item, message):
    with pytest.raises(ConfigError, match=message):
        apply_overrides(grid_doc(eval={"epochs": 3}), [item])


def test_apply_overrides_grid_axis_needs_tables():
    with pytest.raises(ConfigError, match=r"--set grid.ipc: the grid file has no \[\[grid\]\] tables"):
        apply_overrides({"name": "x"}, ["grid.ipc=[1]"])


# -- load_grid: files ----------------------------------------------------------------------------
QUICKISH = """\
seeds = [0, 1]

[[grid]]
distiller = ["random", "full"]
dataset = ["tiny"]
arch = ["tiny-mlp", "mlp"]
ipc = [1, 2]

[eval]
epochs = 10
"""


def test_load_grid_with_overrides(tmp_path, tiny_plugins):
    path = tmp_path / "my-grid.toml"
    path.write_text(QUICKISH)
    grid = load_grid(path, plugins=tiny_plugins)
    assert grid.name == "my-grid" and grid.source == str(path) and len(grid.trials) == 12
    grid = load_grid(path, ["eval.epochs=3", "grid.ipc=[1]", "seeds=[5,6]", "name=other"], tiny_plugins)
    assert grid.name == "other" and grid.seeds == [5, 6]
    assert len(grid.trials) == 2 * 2 + 2 * 2  # random: 2 archs x 2 seeds; full: the same
    assert {r.epochs for t in grid.trials for r in t.recipes} == {3}
    assert {t.seed for t in grid.trials} == {5, 6}


def test_load_grid_missing_file(tmp_path, tiny_plugins):
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match=rf"grid file '{missing}' not found"):
        load_grid(missing, plugins=tiny_plugins)
    with pytest.raises(ConfigError, match="not found"):
        load_grid(tmp_path, plugins=tiny_plugins)  # a directory is not a grid file


@pytest.mark.parametrize("content", [b"[[grid]\ndistiller = 1\n", b"seeds = [0,\n", b"name = 'unterminated\n",
                                     b"a = 1\na = 2\n"])
def test_load_grid_malformed_toml(tmp_path, tiny_plugins, content):
    path = tmp_path / "bad.toml"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as info:
        load_grid(path, plugins=tiny_plugins)
    assert str(info.value).startswith(f"{path}: invalid TOML: ")
    assert "\n" not in str(info.value)


def test_load_grid_not_utf8(tmp_path, tiny_plugins):
    path = tmp_path / "latin1.toml"
    path.write_bytes("name = 'caf\xe9'\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"not a UTF-8 text file"):
        load_grid(path, plugins=tiny_plugins)


def test_load_grid_errors_name_the_file(tmp_path, tiny_plugins):
    path = tmp_path / "g.toml"
    path.write_text(QUICKISH.replace('"random"', '"rnadom"'))
    with pytest.raises(ConfigError) as info:  # registry errors become ConfigErrors prefixed with the path
        load_grid(path, plugins=tiny_plugins)
    assert str(info.value).startswith(f"{path}: [[grid]] #1: unknown distiller 'rnadom'; did you mean 'random'? (known: ")
    assert "random" in str(info.value).split("(known: ")[1] and "\n" not in str(info.value)
    path.write_text(QUICKISH + "\n[distillers.means]\nsmoth = 1\n")
    with pytest.raises(ConfigError, match=rf"^{path}: distillers.means: unknown key 'smoth'"):
        load_grid(path, plugins=tiny_plugins)
    path.write_text(QUICKISH)
    with pytest.raises(ConfigError, match=r"eval.epochs: expected int, got 'x' \(str\)"):
        load_grid(path, ["eval.epochs='x'"], tiny_plugins)


def test_load_grid_conflicting_plugin_name_is_a_clear_error(tmp_path):
    import plugins_for_tests

    from harness.plugins import load_plugins

    mod = types.ModuleType("dup_plugin")
    mod.register_distillers = hookimpl(lambda register: register(type(
        "R", (), {"name": "random", "Config": plugins_for_tests.Crashes.Config, "distill": lambda s, t: None})))
    plugins = load_plugins(extra=[(mod, "dup", "dup-dist")])
    path = tmp_path / "g.toml"
    path.write_text(QUICKISH.replace('"tiny"', '"digits"').replace('"tiny-mlp", ', ""))
    with pytest.raises(HarnessError, match=r"distiller 'random' is registered by both harness-distillers and "
                                           r"dup-dist") as info:
        load_grid(path, plugins=plugins)
    assert isinstance(info.value, (ConfigError, DuplicateNameError)) and info.value.exit_code == 2


def test_quick_grid_file_is_valid():
    from pathlib import Path

    from harness.plugins import load_plugins

    grid = load_grid(Path(__file__).parents[1] / "benchmarks" / "grids" / "quick.toml", plugins=load_plugins())
    assert grid.name == "quick" and len(grid.trials) == 12


# -- stable trial keys, labels and params --------------------------------------------------------
def keys(doc, plugins) -> list[str]:
    return [t.key for t in build(doc, plugins)]


def test_trial_keys_are_stable(tiny_plugins):
    from harness.plugins import load_plugins
    import plugins_for_tests

    doc = grid_doc({"distiller": ["random", "means", "full"], "ipc": [1, 2]}, seeds=[0, 1],
                   distillers={"means": {"steps": 4}})
    first = keys(doc, tiny_plugins)
    assert len(set(first)) == len(first) == 10
    assert all(len(k) == 16 and int(k, 16) >= 0 for k in first)
    assert keys(doc, tiny_plugins) == first  # same input, same keys
    fresh = load_plugins(extra=[(plugins_for_tests, "tests", "tests-plugins")])
    assert keys(doc, fresh) == first  # independent of the loaded objects
    # independent of the order of tables
    split = grid_doc({"distiller": ["full", "means"], "ipc": [2, 1]}, {"distiller": ["random"], "ipc": [1, 2]},
                     seeds=[1, 0], distillers={"means": {"steps": 4}})
    assert set(keys(split, tiny_plugins)) == set(first)


def test_trial_key_known_value(tiny_plugins):
    """Keys are persisted in MLflow (resume): the hashing scheme must not drift silently."""
    [t] = build(grid_doc(), tiny_plugins)
    import hashlib
    import json
    from dataclasses import asdict

    payload = {"distiller": "random", "dataset": "tiny", "base_dataset": "tiny", "arch": "tiny-mlp", "ipc": 1,
               "n": 3, "seed": 0, "config": [], "recipes": [asdict(t.recipes[0])],
               "versions": [list(v) for v in t.versions]}
    expected = hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]
    assert t.key == expected
    from importlib import metadata

    assert ("harness-distillers", metadata.version("harness-distillers")) in t.versions
    assert ("tests-plugins", "") in t.versions  # not an installed distribution: no version


@pytest.mark.parametrize("change", [
    dict(eval={"epochs": 299}),
    dict(eval={"lr": 0.02}),
    dict(eval={"models": 4}),
    dict(eval={"optimizers": ["sgd", "adam"]}),
    dict(eval={"archs": ["mlp"]}),
    dict(seeds=[1]),
    dict(distillers={"means": {"smoothing": 0.1}}),
    dict(distillers={"means": {"steps": 4}}),
])
def test_trial_key_changes_with_what_defines_the_result(tiny_plugins, change):
    base = grid_doc({"distiller": ["means"]})
    changed = grid_doc({"distiller": ["means"]}, **change)
    assert keys(base, tiny_plugins) != keys(changed, tiny_plugins)


@pytest.mark.parametrize("table", [{"ipc": [2]}, {"arch": ["mlp"]}, {"dataset": ["digits"]}, {"ipc": None, "n": [3]}])
def test_trial_key_changes_with_the_axes(tiny_plugins, table):
    assert keys(grid_doc({"distiller": ["means"]}), tiny_plugins) != keys(grid_doc({"distiller": ["means"], **table}),
                                                                           tiny_plugins)


def test_config_override_equal_to_default_keeps_the_key(tiny_plugins):
    base = grid_doc({"distiller": ["means"]})
    same = grid_doc({"distiller": ["means"]}, distillers={"means": {"steps": 3, "smoothing": 0}})
    assert keys(base, tiny_plugins) == keys(same, tiny_plugins)


def test_labels_and_params(tiny_plugins):
    doc = grid_doc({"distiller": ["random", "full"], "dataset": ["tiny", "digits"], "arch": ["tiny-mlp", "mlp"],
                    "ipc": [1, 2]}, {"distiller": ["means"], "ipc": [1]}, seeds=[0, 1],
                   eval={"optimizers": ["sgd", "distilled"]})
    trials = build(doc, tiny_plugins)
    labels = [t.label for t in trials]
    assert len(set(labels)) == len(labels)  # one MLflow child run name per trial
    assert "random/digits/mlp/ipc2/seed1" in labels and "full/tiny/tiny-mlp/all/seed0" in labels
    assert "means/tiny/tiny-mlp/ipc1/seed0" in labels
    # identical param keys across trials, apart from each distiller's own Config fields
    keysets = {frozenset(k for k in t.params() if not k.startswith("cfg.")) for t in trials}
    assert len(keysets) == 1
    params = next(t.params() for t in trials if t.label == "random/digits/mlp/ipc2/seed1")
    assert params == {
        "distiller": "random", "dataset": "digits", "base_dataset": "digits", "arch": "mlp", "ipc": 2, "n": 20,
        "seed": 1, "budget": "ipc=2", "eval.arch": "mlp", "eval.optimizer": "sgd", "eval.epochs": 300,
        "eval.lr": 0.01, "eval.batch_size": 256, "eval.models": 5, "eval.init": "random", "eval.augment": "none",
        "eval.momentum": 0.9, "eval.weight_decay": 5e-4, "eval.test_size": 0, "eval.model_init": "default",
        "eval.recipes": "mlp/sgd",
    }
    means = next(t.params() for t in trials if t.distiller == "means")
    assert means["eval.recipes"] == "tiny-mlp/sgd,tiny-mlp/distilled"
    assert {k for k in means if k.startswith("cfg.")} == {"cfg.smoothing", "cfg.steps", "cfg.lr", "cfg.model_init"}
    # within one distiller, the keys are identical (MLflow's compare view lines them up)
    for name in ("random", "full", "means"):
        assert len({frozenset(t.params()) for t in trials if t.distiller == name}) == 1


# -- per-table [grid.eval] and [grid.distillers.<name>] ------------------------------------------
def test_per_table_eval_and_config_override_the_top_level(tiny_plugins):
    doc = grid_doc(
        {"distiller": ["random", "means"]},
        {"distiller": ["means"], "eval": {"init": "known", "optimizers": ["distilled"]},
         "distillers": {"means": {"steps": 5}}},
        eval={"epochs": 7}, distillers={"means": {"smoothing": 0.2}},
    )
    trials = build(doc, tiny_plugins)
    first = [t for t in trials if t.distiller == "means" and t.recipes[0].init == "random"]
    known = [t for t in trials if t.recipes[0].init == "known"]
    assert len(first) == 1 and len(known) == 1 and len(trials) == 3
    assert dict(first[0].config) == {"smoothing": 0.2, "steps": 3, "lr": 0.1, "model_init": "default"}
    assert dict(known[0].config) == {"smoothing": 0.2, "steps": 5, "lr": 0.1, "model_init": "default"}  # merged key by key
    assert [r.label for r in known[0].recipes] == ["tiny-mlp/distilled/known-init"]
    assert known[0].recipes[0].epochs == 7 and known[0].key != first[0].key


def test_per_table_overrides_are_validated_with_the_table_named(tiny_plugins):
    bad_eval = grid_doc({}, {"eval": {"epoch": 3}})
    with pytest.raises(ConfigError, match=r"\[\[grid\]\] #2: \[eval\]: unknown key 'epoch'; did you mean 'epochs'\?"):
        build(bad_eval, tiny_plugins)
    known_for_random = grid_doc({"eval": {"init": "known"}})
    with pytest.raises(ConfigError, match="init = 'known' needs a set distilled for a fixed init"):
        build(known_for_random, tiny_plugins)
    bad_cfg = grid_doc({"distiller": ["means"], "distillers": {"means": {"smoothing": 2.0}}})
    with pytest.raises(ConfigError, match=r"\[\[grid\]\] #1: distillers.means: smoothing must be in \[0, 1\)"):
        build(bad_cfg, tiny_plugins)


def test_same_and_the_distill_arch_name_are_one_recipe(tiny_plugins):
    trials = build(grid_doc(eval={"archs": ["same", "tiny-mlp"], "optimizers": ["sgd", "sgd"]}), tiny_plugins)
    assert [r.label for r in trials[0].recipes] == ["tiny-mlp/sgd"]


def test_dsa_augmentation_is_a_labelled_image_only_recipe(tiny_plugins):
    [trial] = build(grid_doc(eval={"augment": "dsa"}), tiny_plugins)
    assert trial.recipes[0].augment == "dsa" and trial.recipes[0].label == "tiny-mlp/sgd/dsa"
    assert trial.params()["eval.augment"] == "dsa"
    with pytest.raises(ConfigError, match=r"eval.augment = 'dsa' augments images \[C, H, W\], but 'tiny-text' is "
                                          r"text data of shape \(4, 4\); use augment = 'none'"):
        build(grid_doc({"dataset": ["tiny-text"]}, eval={"augment": "dsa"}), tiny_plugins)


@pytest.mark.parametrize("path", sorted((Path(__file__).parents[1] / "benchmarks" / "grids").glob("*.toml")),
                         ids=lambda p: p.name)
def test_every_committed_grid_validates(path):
    """A committed grid must stay valid as plugins and their Configs change."""
    from harness.plugins import load_plugins

    grid = load_grid(path, plugins=load_plugins())
    assert grid.trials and grid.name == path.stem


# -- --only: a subset of a grid's trials, keys unchanged -----------------------------------------
def test_select_trials_keeps_matching_labels_with_their_keys(tiny_plugins):
    from harness.grid import select_trials

    grid = build_grid(grid_doc({"distiller": ["random", "means"], "ipc": [1, 2]}, seeds=[0, 1]), tiny_plugins)
    assert select_trials(grid, ()) is grid
    only = select_trials(grid, ["means/*/ipc2/*", "random/*/seed1"])
    assert sorted(t.label for t in only.trials) == [
        "means/tiny/tiny-mlp/ipc2/seed0", "means/tiny/tiny-mlp/ipc2/seed1",
        "random/tiny/tiny-mlp/ipc1/seed1", "random/tiny/tiny-mlp/ipc2/seed1"]
    assert {t.key for t in only.trials} <= {t.key for t in grid.trials}
    assert (only.name, only.seeds) == (grid.name, grid.seeds)
    with pytest.raises(ConfigError, match=r"^--only nope: no trial of grid 'grid' matches; trial names look like "):
        select_trials(grid, ["nope"])



@pytest.mark.parametrize("section, key, literal", [
    ("eval", "lr", "nan"), ("eval", "momentum", "inf"), ("eval", "weight_decay", "-inf"),
    ("distillers.means", "lr", "nan"),
])
def test_non_finite_numbers_are_rejected_before_compute(tiny_plugins, section, key, literal):
    """TOML has nan/inf literals; a run with them would finish at chance accuracy, looking valid."""
    doc = apply_overrides(grid_doc({"distiller": ["means"]}), [f"{section}.{key}={literal}"])
    with pytest.raises(ConfigError, match=rf"{key}: must be a finite number, got -?(nan|inf)"):
        build_grid(doc, tiny_plugins)
