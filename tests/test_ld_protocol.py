"""The "ld-protocol" evaluation recipe: the LD paper's test protocol (Adam 1e-3 for the set's own
model lifetime on random minibatches), beside the shared DC protocol."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from harness.evaluate import evaluate, ld_protocol_applies, soft_cross_entropy, train_model
from harness.grid import build_grid
from harness.specs import DistilledSet
from harness.testing import _build_tiny
from harness.trial import DEFAULT_LR, OPTIMIZERS, Recipe


def _set(n=12, meta=None):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 1, 4, 4, generator=g)
    y = F.one_hot(torch.arange(n) % 3, 3).float()
    return DistilledSet(x, y, meta=dict(meta or {}))


def test_the_recipe_is_adam_for_the_sets_lifetime_on_random_minibatches():
    assert "ld-protocol" in OPTIMIZERS and DEFAULT_LR["ld-protocol"] == 1e-3
    dset = _set()
    torch.manual_seed(3)
    model = _build_tiny((1, 4, 4), 3)
    reference = _build_tiny((1, 4, 4), 3)
    reference.load_state_dict(model.state_dict())
    dset.meta.update(test_steps=7, base_batch=5)
    train_model(model, dset, Recipe(arch="t", optimizer="ld-protocol", lr=1e-3), torch.Generator().manual_seed(1),
                torch.device("cpu"))
    # the same thing written out: 7 Adam steps (no weight decay), 5 examples drawn without replacement each
    opt = torch.optim.Adam(reference.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(1)
    for _ in range(7):
        idx = torch.randperm(12, generator=g)[:5]
        loss = soft_cross_entropy(reference(dset.x[idx]), dset.y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    for a, b in zip(model.parameters(), reference.parameters()):
        assert torch.equal(a, b)


def test_sets_without_a_lifetime_are_refused():
    assert not ld_protocol_applies(_set())
    assert not ld_protocol_applies(_set(meta={"test_steps": 0, "base_batch": 5}))
    assert ld_protocol_applies(_set(meta={"test_steps": 4, "base_batch": 5}))
    recipe = Recipe(arch="tiny-mlp", optimizer="ld-protocol", lr=1e-3, models=1)
    test = (torch.randn(6, 1, 4, 4), torch.arange(6) % 3)
    with pytest.raises(ValueError, match="recipe 'ld-protocol' needs the set's meta 'test_steps'"):
        evaluate(_set(), recipe, lambda: _build_tiny((1, 4, 4), 3), test, 0, torch.device("cpu"))
    ev = evaluate(_set(meta={"test_steps": 4, "base_batch": 5}), recipe, lambda: _build_tiny((1, 4, 4), 3), test, 0,
                  torch.device("cpu"))
    assert len(ev.accs) == 1


@pytest.mark.slow
def test_bench_reports_ld_under_both_protocols_and_others_as_not_applicable(tiny_plugins, tracking_uri, tmp_path):
    from harness.bench import run_bench
    from harness.tracking import Tracker

    doc = {"name": "ldp", "seeds": [0], "device": "cpu",
           "grid": [{"distiller": ["ld", "random"], "dataset": ["tiny"], "arch": ["tiny-mlp"], "ipc": [2]}],
           "eval": {"models": 2, "epochs": 2, "optimizers": ["sgd", "ld-protocol"]},
           "distillers": {"ld": {"outer_steps": 4, "select_best": False}}}
    grid = build_grid(doc, tiny_plugins)
    assert [r.lr for r in grid.trials[0].recipes] == [0.01, 0.001]
    outcome = run_bench(grid, tiny_plugins, tracking_uri=tracking_uri, data_dir=tmp_path)
    assert (outcome.passed, outcome.failed) == (2, 0)
    tracker = Tracker(tracking_uri)
    recipes = {}
    for r in tracker.recipe_runs(tracker.experiment_id("ldp", create=False)):
        recipes.setdefault(r.data.params["distiller"], {})[r.data.params["eval.recipe"]] = r.data.metrics
    assert {"acc_mean", "acc_random", "gain"} <= set(recipes["ld"]["tiny-mlp/ld-protocol"])
    assert set(recipes["random"]) == {"tiny-mlp/sgd"}  # no lifetime: n/a, never faked


def test_ld_protocol_first_fails_the_trial_for_a_set_without_a_lifetime(tiny_plugins, tracking_uri, tmp_path):
    from harness.bench import run_bench

    doc = {"name": "ldp", "seeds": [0], "device": "cpu",
           "grid": [{"distiller": ["random"], "dataset": ["tiny"], "arch": ["tiny-mlp"], "ipc": [1]}],
           "eval": {"models": 1, "epochs": 1, "optimizers": ["ld-protocol"]}}
    outcome = run_bench(build_grid(doc, tiny_plugins), tiny_plugins, tracking_uri=tracking_uri, data_dir=tmp_path)
    assert (outcome.passed, outcome.failed) == (0, 1)
