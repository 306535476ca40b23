"""Tests of the template plugin. Run them with `pytest` in this directory after `pip install -e .`.

`harness.testing.check_distiller` runs the distiller on a tiny synthetic task and checks the whole
plugin contract (class shape, output size and finiteness, labels, determinism, safetensors round
trip, and that the evaluation protocol can train on the result). Keep a test like this for every
distiller you add.
"""

from __future__ import annotations

import pytest
import torch

from harness.testing import check_distiller, make_task
from harness_example.datasets import INPUT_SHAPE, NUM_CLASSES, load_blobs
from harness_example.herding import ExampleHerding


def test_herding_follows_the_contract():
    check_distiller(ExampleHerding)


@pytest.mark.parametrize("config", [{"space": "features"}, {"normalize": True}])
def test_herding_variants_follow_the_contract(config):
    check_distiller(ExampleHerding, **config)


def test_config_rejects_an_unknown_space():
    with pytest.raises(ValueError, match="space must be one of"):
        ExampleHerding.Config(space="pixels")


def test_herding_matches_the_class_mean_better_than_its_first_pick():
    task = make_task(ExampleHerding, ipc=4)
    out = ExampleHerding().distill(task)
    for c in range(task.num_classes):
        mu = task.x[task.y == c].mean(0)
        chosen = out.x[out.y[:, c] == 1]
        assert (chosen.mean(0) - mu).norm() <= (chosen[0] - mu).norm() + 1e-6


def test_dataset_is_deterministic_and_well_formed():
    x, y = load_blobs("train")
    x2, y2 = load_blobs("train")
    assert torch.equal(x, x2) and torch.equal(y, y2)
    assert x.shape[1:] == INPUT_SHAPE and x.dtype == torch.float32
    assert sorted(y.unique().tolist()) == list(range(NUM_CLASSES))
    x_test, _ = load_blobs("test")
    assert not torch.equal(x_test, x[: len(x_test)])  # the test split has its own noise


def test_the_harness_sees_the_plugin():
    """Needs the distribution installed (`pip install -e .`): the entry point is what the harness reads."""
    from harness import load_plugins

    plugins = load_plugins()
    assert not [p for p in plugins.problems if p.distribution == "harness-example-plugin"]
    assert "example-herding" in plugins.distillers
    assert "example-blobs" in plugins.datasets
    assert "example-linear" in plugins.architectures


def test_features_space_needs_an_architecture_that_declares_them():
    """check_trial sees the trial before any compute (`harness validate` calls it)."""
    from harness import ArchitectureSpec, TrialSpec
    from harness.testing import tiny_arch, tiny_dataset

    data, config = tiny_dataset(), ExampleHerding.Config(space="features")
    ExampleHerding.check_trial(config, TrialSpec(data, tiny_arch(), 6, 2, data))
    plain = ArchitectureSpec("plain", ("image",), tiny_arch().build)  # features not declared
    with pytest.raises(ValueError, match="'plain' does not"):
        ExampleHerding.check_trial(config, TrialSpec(data, plain, 6, 2, data))
