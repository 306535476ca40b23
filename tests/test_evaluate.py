"""The evaluation protocol (harness/evaluate.py) and the random-subset baseline."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from harness.baseline import class_counts_per_budget, random_subset, spread_over_steps
from harness.evaluate import EvalResult, evaluate, soft_cross_entropy, train_model
from harness.specs import DistilledSet
from harness.testing import TINY_CLASSES, TINY_SHAPE, _build_tiny, _tiny_load
from harness.trial import Recipe

CPU = torch.device("cpu")


def build():
    return _build_tiny(TINY_SHAPE, TINY_CLASSES)


def full_set():
    x, y = _tiny_load("train", None)
    return DistilledSet(x, F.one_hot(y, TINY_CLASSES).float())


def test_soft_cross_entropy_equals_cross_entropy_on_one_hot():
    logits = torch.randn(7, 5)
    y = torch.randint(0, 5, (7,))
    assert torch.allclose(soft_cross_entropy(logits, F.one_hot(y, 5).float()), F.cross_entropy(logits, y))


def test_soft_cross_entropy_uses_the_whole_distribution():
    logits = torch.tensor([[2.0, 0.0]])
    half = soft_cross_entropy(logits, torch.tensor([[0.5, 0.5]]))
    expected = -0.5 * (F.log_softmax(logits, 1)).sum()
    assert torch.allclose(half, expected)


def test_training_on_real_data_beats_chance():
    result = evaluate(full_set(), Recipe(arch="t", epochs=20, models=2), build, _tiny_load("test", None), 0, CPU)
    assert len(result.accs) == 2
    assert result.mean > 0.9  # three well-separated blobs


def test_evaluation_is_deterministic_for_a_seed():
    recipe = Recipe(arch="t", epochs=2, models=2, batch_size=16)
    test = _tiny_load("test", None)
    dset = random_subset(*_tiny_load("train", None), TINY_CLASSES, 2, 6, torch.Generator().manual_seed(0))
    a = evaluate(dset, recipe, build, test, 0, CPU)
    b = evaluate(dset, recipe, build, test, 0, CPU)
    assert a.accs == b.accs


def test_std_is_population_std_over_models():
    r = EvalResult(Recipe(arch="t"), accs=[0.5, 0.7])
    assert r.mean == pytest.approx(0.6)
    assert r.std == pytest.approx(0.1)


def test_lr_decays_at_half_the_epochs(monkeypatch):
    seen = []
    real_step = torch.optim.SGD.step

    def spy(self, *a, **k):
        seen.append(self.param_groups[0]["lr"])
        return real_step(self, *a, **k)

    monkeypatch.setattr(torch.optim.SGD, "step", spy)
    model = build()
    train_model(model, full_set(), Recipe(arch="t", epochs=4, batch_size=1000, lr=0.01),
                torch.Generator().manual_seed(0), CPU)
    assert seen == pytest.approx([0.01, 0.01, 0.001, 0.001])


def test_sgd_recipe_uses_dc_protocol_hyperparameters(monkeypatch):
    captured = {}
    real = torch.optim.SGD.__init__

    def spy(self, params, **kw):
        captured.update(kw)
        real(self, params, **kw)

    monkeypatch.setattr(torch.optim.SGD, "__init__", spy)
    train_model(build(), full_set(), Recipe(arch="t", epochs=1), torch.Generator(), CPU)
    assert captured == {"lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4}


def test_distilled_recipe_replays_learned_step_sizes():
    x, y = _tiny_load("train", None)
    dset = DistilledSet(x[:6], F.one_hot(y[:6], TINY_CLASSES).float(), lrs=torch.tensor([0.0, 0.0]))
    torch.manual_seed(0)
    model = build()
    before = [p.clone() for p in model.parameters()]
    train_model(model, dset, Recipe(arch="t", optimizer="distilled"), torch.Generator(), CPU)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # zero step sizes: no change
    dset.lrs = torch.tensor([0.5])
    train_model(model, dset, Recipe(arch="t", optimizer="distilled"), torch.Generator(), CPU)
    assert not all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_distilled_recipe_needs_lrs_and_known_init_needs_state():
    test = _tiny_load("test", None)
    with pytest.raises(ValueError, match="learned step sizes"):
        evaluate(full_set(), Recipe(arch="t", optimizer="distilled"), build, test, 0, CPU)
    with pytest.raises(ValueError, match="init_state"):
        evaluate(full_set(), Recipe(arch="t", init="known", epochs=1), build, test, 0, CPU)


def test_known_init_starts_every_model_from_the_given_state():
    torch.manual_seed(123)
    state = build().state_dict()
    test = _tiny_load("test", None)
    zero = DistilledSet(full_set().x[:3], full_set().y[:3], lrs=torch.tensor([0.0]))
    known = evaluate(zero, Recipe(arch="t", optimizer="distilled", init="known", models=2), build, test, 0, CPU, state)
    model = build()
    model.load_state_dict(state)
    from harness.evaluate import accuracy

    assert known.accs == [accuracy(model, *test)] * 2


@pytest.mark.parametrize("ipc,n,expected", [(2, 6, [2, 2, 2]), (None, 2, None), (None, 7, None)])
def test_random_subset_is_class_balanced(ipc, n, expected):
    x, y = _tiny_load("train", None)
    s = random_subset(x, y, TINY_CLASSES, ipc, n, torch.Generator().manual_seed(0))
    counts = s.y.sum(0).tolist()
    assert s.n == n and sum(counts) == n
    if expected:
        assert counts == expected
    assert max(counts) - min(counts) <= 1
    # every chosen example is a real training example with its true label
    for xi, yi in zip(s.x, s.y.argmax(1)):
        match = (x == xi).flatten(1).all(1).nonzero().flatten()
        assert len(match) == 1 and y[match[0]] == yi


def test_the_distilled_recipes_baseline_spreads_every_class_over_the_steps():
    """A class-grouped subset replayed in 2 steps: each step's batch gets half of every class (the DD
    code's random_train), the same examples, none lost."""
    x, y = _tiny_load("train", None)
    s = random_subset(x, y, TINY_CLASSES, 4, 4 * TINY_CLASSES, torch.Generator().manual_seed(0))
    spread = spread_over_steps(s, 2)
    for batch in spread.y.chunk(2):
        assert batch.sum(0).tolist() == [2.0] * TINY_CLASSES
    assert sorted(map(tuple, spread.x.flatten(1).tolist())) == sorted(map(tuple, s.x.flatten(1).tolist()))
    assert spread_over_steps(s, 1) is s


def test_class_counts_spread_the_remainder_at_random():
    counts = class_counts_per_budget(10, None, 5, torch.Generator().manual_seed(0))
    assert sorted(counts) == [0] * 5 + [1] * 5


def test_random_subset_reports_impossible_budget():
    x, y = _tiny_load("train", None)
    with pytest.raises(ValueError, match="fewer than"):
        random_subset(x, y, TINY_CLASSES, 1000, 3000, torch.Generator())


def test_distilled_recipe_uses_one_batch_per_step(monkeypatch):
    """meta["steps"] = 2: step i trains on batch i mod 2 of the set."""
    x, y = _tiny_load("train", None)
    dset = DistilledSet(x[:4], F.one_hot(y[:4], TINY_CLASSES).float(), lrs=torch.full((4,), 0.1), meta={"steps": 2})
    seen = []
    model = build()
    real_forward = model.forward
    model.forward = lambda inp: (seen.append(inp.clone()), real_forward(inp))[1]
    train_model(model, dset, Recipe(arch="t", optimizer="distilled"), torch.Generator(), CPU)
    assert [len(s) for s in seen] == [2, 2, 2, 2]
    assert torch.equal(seen[0], x[:2]) and torch.equal(seen[1], x[2:4]) and torch.equal(seen[2], x[:2])


def test_dsa_recipe_augments_every_batch_reproducibly(monkeypatch):
    """augment="dsa": each training batch goes through DSA (per-example draws); same seed, same models."""
    import harness.augment as augment

    seen = []
    original = augment.DSA.__call__

    def spy(self, x, generator):
        out = original(self, x, generator)
        seen.append((x.clone(), out))
        return out

    monkeypatch.setattr(augment.DSA, "__call__", spy)
    dset = full_set()
    recipe = Recipe(arch="t", epochs=2, models=1, batch_size=45, augment="dsa")
    a = evaluate(dset, recipe, build, _tiny_load("test", None), 0, CPU)
    assert len(seen) == 2 * 2  # 2 epochs x 2 batches of 45
    assert any(not torch.equal(x, out) for x, out in seen)
    assert evaluate(dset, recipe, build, _tiny_load("test", None), 0, CPU).accs == a.accs
    assert recipe.label == "t/sgd/dsa" and Recipe(arch="t").label == "t/sgd"


# every registered architecture but the -bn twins of resnet18 and vgg11 (the same convolutions; in eval mode
# their batch norm is per example)
REGISTERED = [("mnist-subset", a) for a in ("mlp", "lenet", "alexnet", "convnet", "convnet-bn", "convnet-d1",
                                            "convnet-d2", "convnet-d4", "convnet-nn")] + \
             [("cifar10", a) for a in ("convnet", "resnet18", "vgg11")] + \
             [("rotten-tomatoes", a) for a in ("textcnn", "bilstm", "rnn")]


@pytest.fixture(scope="module")
def plugins():
    from harness.plugins import load_plugins

    return load_plugins()


@pytest.mark.parametrize("dataset, arch", REGISTERED, ids=lambda v: v)
def test_testing_in_batches_gives_one_batchs_logits_bit_for_bit(plugins, dataset, arch):
    """The test pass's batches (TEST_BATCH, the DC code's 256) change no logit of the registered
    architectures on a CPU, the last, smaller batch included: the batch size is memory and time only."""
    from harness.evaluate import TEST_BATCH

    spec = plugins.datasets.get(dataset)
    torch.manual_seed(0)
    model = plugins.architectures.get(arch).build(spec.input_shape, spec.num_classes).eval()
    x = torch.randn(TEST_BATCH + 16, *spec.input_shape)
    with torch.no_grad():
        batched = torch.cat([model(x[i : i + TEST_BATCH]) for i in range(0, len(x), TEST_BATCH)])
        assert torch.equal(batched, model(x))


def test_the_test_pass_runs_in_the_dc_codes_batches(monkeypatch):
    from harness.evaluate import TEST_BATCH

    seen = []
    model = build()
    monkeypatch.setattr(model, "forward", lambda x, real=model.forward: seen.append(len(x)) or real(x))
    test = (torch.randn(600, *TINY_SHAPE), torch.randint(0, TINY_CLASSES, (600,)))
    evaluate(full_set(), Recipe(arch="t", epochs=1, models=1), lambda: model, test, 0, CPU)
    assert TEST_BATCH == 256 and seen[-3:] == [256, 256, 88]
