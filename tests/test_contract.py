"""The plugin contract's declarations: penultimate features, the Distiller base class and its
``check_trial(config, spec)`` default, all decided before any compute."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import pytest
import torch
from torch import nn

import harness
from harness import Capabilities, Distiller, Features, hookimpl
from harness.errors import ConfigError
from harness.features import check_features
from harness.grid import build_grid
from harness.plan import prepare
from harness.plugins import load_plugins
from harness.specs import TrialSpec, carries_init, check_trial
from harness.testing import TINY_CLASSES, TINY_SHAPE, _build_tiny, tiny_arch, tiny_dataset


def _doc(**axes) -> dict:
    return {"grid": [{"distiller": ["random"], "dataset": ["tiny"], "arch": ["tiny-mlp"], "ipc": [1], **axes}],
            "eval": {"epochs": 1, "models": 1}}


# -- Features -------------------------------------------------------------------------------------
def test_features_are_the_classifiers_input_and_the_classifier_never_runs():
    model = _build_tiny(TINY_SHAPE, TINY_CLASSES)
    x = torch.randn(5, *TINY_SHAPE)
    calls = []
    model[3].register_forward_hook(lambda *a: calls.append(1))
    features = Features(model)
    assert features.dim == 16 and features.classifier is model[3]
    assert torch.allclose(features(x), model[2](model[1](model[0](x))))  # flatten -> linear(16) -> relu
    assert calls == []
    backbone = list(features.parameters())
    assert [p.shape for p in backbone] == [p.shape for p in model[1].parameters()]
    assert all(p is q for p, q in zip(backbone, model[1].parameters()))  # a view, not a copy


def test_features_of_a_model_without_a_linear_layer_is_a_clear_error():
    with pytest.raises(TypeError, match="no nn.Linear classifier"):
        Features(nn.Sequential(nn.Conv2d(1, 2, 3)))


def test_check_features_proves_or_refuses_a_declaration():
    x = torch.randn(3, *TINY_SHAPE)
    check_features(_build_tiny(TINY_SHAPE, TINY_CLASSES), x)
    with pytest.raises(ValueError, match="not its last nn.Linear applied to the features"):
        check_features(nn.Sequential(nn.Flatten(), nn.Linear(16, 3), nn.Tanh()), x)
    with pytest.raises(ValueError, match="no nn.Linear classifier"):
        check_features(nn.Sequential(nn.Flatten()), x)


def test_every_shipped_architecture_declares_features_truthfully():
    """The declaration distillers rely on holds for every architecture this repository ships."""
    plugins = load_plugins()
    archs = [(n, s) for n, s, src in plugins.architectures.items() if src != "tests-plugins"]
    assert len(archs) >= 10 and all(s.features for _, s in archs)
    for name, spec in archs:
        shape = (1, 28, 28) if "image" in spec.modalities else (12, 8)
        check_features(spec.build(shape, 4), torch.randn(2, *shape))


def test_a_distiller_needing_features_refuses_an_arch_without_them_at_validate(tiny_plugins):
    for distiller in ("ld-rr", "dm"):
        with pytest.raises(ConfigError, match=rf"distiller '{distiller}' works on penultimate features, but "
                                              rf"architecture 'image-only' does not declare any.*use one that does: .*tiny-mlp"):
            build_grid(_doc(distiller=[distiller], arch=["image-only"]), tiny_plugins)
    assert build_grid(_doc(distiller=["ld-rr"]), tiny_plugins).trials  # tiny-mlp declares them


class _LyingArch:
    """Declares features, but its output is not its last linear layer's (a softmax follows)."""

    @hookimpl
    def register_architectures(self, register):
        build = lambda shape, c: nn.Sequential(nn.Flatten(), nn.Linear(16, c), nn.Softmax(dim=1))  # noqa: E731
        register(harness.ArchitectureSpec("lies", ("image",), build, "declares features wrongly", features=True))


def test_the_plan_proves_each_features_declaration_before_compute(tmp_path):
    import plugins_for_tests

    plugins = load_plugins(extra=[(plugins_for_tests, "tests", "tests-plugins"), (_LyingArch(), "lying", "lying-plugin")])
    grid = build_grid(_doc(arch=["lies"]), plugins)
    with pytest.raises(ConfigError, match=r"architecture 'lies' cannot take dataset 'tiny'.*not its last nn.Linear"):
        prepare(grid, plugins, tmp_path, "cpu")


# -- the Distiller base class and check_trial -----------------------------------------------------
class _Subclassed(Distiller):
    name = "subclassed"
    capabilities = Capabilities(known_init=True)

    @dataclass
    class Config:
        dsa: bool = True


class _DuckTyped:
    name = "duck"

    @dataclass
    class Config:
        dsa: bool = True

    def distill(self, task):  # pragma: no cover - never run
        raise AssertionError


def _spec(dataset) -> TrialSpec:
    return TrialSpec(dataset, tiny_arch(), 6, 2, dataset)


def test_base_class_defaults():
    assert carries_init(_Subclassed, _Subclassed.Config()) is True  # known_init and no override
    assert carries_init(_DuckTyped, _DuckTyped.Config()) is False  # no known_init capability
    with pytest.raises(NotImplementedError, match="subclassed"):
        _Subclassed().distill(None)


@pytest.mark.parametrize("cls", [_Subclassed, _DuckTyped])
def test_dsa_on_anything_but_images_is_refused_the_same_way_for_every_method(cls):
    text = harness.DatasetSpec("words", 3, (4, 4), modality="text", load=lambda split, ctx: None)
    check_trial(cls, cls.Config(), _spec(tiny_dataset()))  # images: fine
    check_trial(cls, cls.Config(dsa=False), _spec(text))  # no DSA: fine
    with pytest.raises(ValueError, match=r"dsa = true augments images \[C, H, W\], but dataset 'words' is text "
                                         r"data of shape \(4, 4\); set dsa = false for it"):
        check_trial(cls, cls.Config(), _spec(text))


def test_dm_with_its_default_dsa_on_text_fails_at_validate(tiny_plugins):
    doc = _doc(distiller=["dm"], dataset=["tiny-text"])
    with pytest.raises(ConfigError, match="distiller 'dm': dsa = true augments images"):
        build_grid(copy.deepcopy(doc), tiny_plugins)
    assert build_grid({**doc, "distillers": {"dm": {"dsa": False}}}, tiny_plugins).trials


def test_every_builtin_distiller_subclasses_the_base_class():
    plugins = load_plugins()
    names = [name for name, _, src in plugins.distillers.items() if src == "harness-distillers"]
    builtins = [plugins.distillers.get(name) for name in names]
    assert len(builtins) == 10 and all(issubclass(cls, Distiller) for cls in builtins)
    assert all(isinstance(cls(), harness.DistillerProtocol) for cls in builtins)


# -- distillers registered by import path ---------------------------------------------------------
def test_builtin_distillers_are_listed_without_importing_them_and_declare_what_their_classes_say():
    from harness_distillers.plugin import DISTILLERS

    from harness.specs import describe

    for ref in DISTILLERS:  # the declaration ls shows is the class's own (load() checks name and capabilities)
        assert isinstance(ref, harness.LazyDistiller) and describe(ref.load()) == ref.description, ref.name
    code = ("import sys; from click.testing import CliRunner; from harness.cli import cli; "
            "out = CliRunner().invoke(cli, ['ls', 'distillers']); "
            "print(out.exit_code, 'sldd' in out.output, 'torch' in sys.modules)")
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.stdout.split() == ["0", "True", "False"], proc.stdout + proc.stderr


def test_a_lazy_distiller_that_does_not_match_its_class_is_one_clear_error(tiny_plugins):
    from harness.errors import SpecError

    bad_path = harness.LazyDistiller("ghost", "harness_distillers.nope:Ghost", "missing")
    with pytest.raises(SpecError, match=r"distiller 'ghost': cannot import harness_distillers.nope:Ghost: "
                                        r"ModuleNotFoundError"):
        bad_path.load()
    wrong_caps = harness.LazyDistiller("sldd", "harness_distillers.sldd:SLDD", "x", Capabilities())
    with pytest.raises(SpecError, match=r"registered as 'sldd' with .*not as declared"):
        wrong_caps.load()
    with pytest.raises(SpecError, match="path must be 'package.module:Class'"):
        harness.LazyDistiller("odd", "no_colon_here")
