"""Vectorised evaluation (harness/vectorised.py): K models trained at once must be the K models the
sequential path trains — same init, batches, augmentation and optimizer state per model."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from harness.evaluate import evaluate, train_model
from harness.specs import DistilledSet
from harness.trial import Recipe
from harness.vectorised import choose_mode, interpretable, obstacle, probe, train_together

CPU = torch.device("cpu")


def convnet(width=4, norm="instancenorm"):
    from harness_vision.archs import build_convnet

    return build_convnet((1, 8, 8), 3, width=width, depth=2, norm=norm)


def lenet():
    from harness_vision.archs import build_lenet

    return build_lenet((1, 28, 28), 3)


def alexnet():  # local response norm and padded max pooling: per-example layers of their own
    from harness_vision.archs import build_alexnet

    return build_alexnet((1, 8, 8), 3, width=4, hidden=(8, 8))


def mlp():
    from harness_vision.archs import build_mlp

    return build_mlp((1, 8, 8), 3, width=8)


def soft_set(shape, n=9, classes=3, dtype=torch.float64, meta=None):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(n, *shape, generator=g, dtype=dtype)
    y = torch.softmax(torch.randn(n, classes, generator=g, dtype=dtype), 1)  # soft labels, as distilled sets have
    return DistilledSet(x, y, meta=dict(meta or {}))


def trained_both_ways(build, dset, recipe, k=3, batching="auto"):
    torch.manual_seed(0)
    models = [build().double() for _ in range(k)]
    alone = [train_model(copy.deepcopy(m), dset, recipe, torch.Generator().manual_seed(10 + i), CPU)
             for i, m in enumerate(models)]
    together = train_together([copy.deepcopy(m) for m in models], dset, recipe,
                              [torch.Generator().manual_seed(10 + i) for i in range(k)], CPU, batching=batching)
    return alone, together


@pytest.mark.parametrize("batching", ["layers", "vmap"])
@pytest.mark.parametrize("build,shape", [(mlp, (1, 8, 8)), (convnet, (1, 8, 8)), (lenet, (1, 28, 28)),
                                         (alexnet, (1, 8, 8))],
                         ids=["mlp", "convnet-instancenorm", "lenet", "alexnet"])
@pytest.mark.parametrize("recipe", [
    Recipe(arch="a", epochs=4, batch_size=4),  # SGD, momentum, weight decay, the lr decay at half
    Recipe(arch="a", optimizer="adam", lr=1e-3, epochs=3, batch_size=5),
    Recipe(arch="a", optimizer="ld-protocol", lr=1e-3),
], ids=["sgd", "adam", "ld-protocol"])
def test_each_model_ends_where_the_sequential_path_takes_it(build, shape, recipe, batching):
    assert interpretable(build())  # so "layers" is the path auto takes for these
    dset = soft_set(shape, meta={"test_steps": 6, "base_batch": 4})
    alone, together = trained_both_ways(build, dset, recipe, batching=batching)
    for a, b in zip(alone, together):
        for (name, p), q in zip(a.named_parameters(), b.parameters()):
            assert torch.allclose(p, q, atol=1e-10, rtol=0), name
    assert not torch.equal(together[0][-1].weight, together[1][-1].weight)  # K models, not one K times


class ScaledLinear(nn.Linear):
    """A linear layer whose forward is not nn.Linear's: the layer-by-layer path must not compute it."""

    def forward(self, x):
        return 2 * super().forward(x)


class Reversed(nn.Sequential):
    def forward(self, x):
        for m in reversed(self):
            x = m(x)
        return x


@pytest.mark.parametrize("model,expected", [
    (convnet(norm="none"), True), (nn.Sequential(nn.Conv1d(2, 4, 3, groups=2), nn.GELU(), nn.Flatten()), True),
    (nn.Sequential(nn.Flatten(), ScaledLinear(64, 3)), False),
    (nn.Sequential(nn.Flatten(0), nn.Linear(64, 3)), False),
    (nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.Linear(64, 3)), False),
    (nn.Sequential(nn.Conv2d(1, 2, 3, padding=1, padding_mode="reflect")), False),
    (Reversed(nn.Linear(3, 3), nn.Flatten()), False),
    (nn.Sequential(nn.Flatten(), nn.LayerNorm(64)), False),
], ids=["convnet-nn", "grouped-conv1d", "subclass-forward", "flatten-0", "dropout", "reflect-pad", "own-order",
        "layernorm"])
def test_what_the_layer_by_layer_path_computes(model, expected):
    assert interpretable(model) is expected


@pytest.mark.parametrize("build", [
    lambda: nn.Sequential(nn.Conv1d(2, 4, 3, groups=2, padding=1), nn.GroupNorm(2, 4), nn.Tanh(),
                          nn.AdaptiveAvgPool1d(2), nn.Flatten(), nn.Linear(8, 3)),
    lambda: nn.Sequential(nn.Flatten(1, -1), nn.Unflatten(1, (2, 8)), nn.Linear(8, 4, bias=False),
                          nn.Flatten(), ScaledLinear(8, 3)),  # vmap: not interpretable
], ids=["layers", "vmap"])
def test_other_layers_train_as_their_own_forward_does(build):
    alone, together = trained_both_ways(build, soft_set((2, 8)), Recipe(arch="a", epochs=3, batch_size=4))
    for a, b in zip(alone, together):
        for p, q in zip(a.parameters(), b.parameters()):
            assert torch.allclose(p, q, atol=1e-10, rtol=0)


def test_a_batched_forward_that_differs_from_the_models_own_is_refused(monkeypatch):
    import harness.vectorised as vectorised

    real = vectorised.layered_forward
    monkeypatch.setattr(vectorised, "layered_forward", lambda *a, **k: real(*a, **k) * 1.05)
    models = [mlp() for _ in range(3)]
    assert probe(models, soft_set((1, 8, 8), dtype=torch.float32), CPU) == \
        "batched forward differs from the models' own"
    monkeypatch.undo()
    assert probe(models, soft_set((1, 8, 8), dtype=torch.float32), CPU) is None


class ChannelRoll(nn.ReLU):
    """A subclass of a layer that acts on each channel alone which mixes channels instead."""

    def forward(self, x):
        return torch.relu(x.roll(1, dims=1))


def test_a_layer_that_mixes_the_models_channels_in_the_grouped_layout_is_refused():
    """Between convolutions the K models' channels lie side by side ([B, K x C, ...]); a layer that
    claims to act on each channel alone but rolls them over hands model k's channel to model k + 1:
    the check sees it and the recipe trains sequentially. The same layer after a linear layer, where
    the models' activations lie apart, is exact."""
    def mixed():
        return nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), ChannelRoll(), nn.Flatten(), nn.Linear(128, 3))

    def apart():
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 4), ChannelRoll(), nn.Linear(4, 3))

    dset = soft_set((1, 8, 8), dtype=torch.float32)
    assert interpretable(mixed()) and interpretable(apart())
    assert probe([mixed() for _ in range(3)], dset, CPU) == "batched forward differs from the models' own"
    assert probe([apart() for _ in range(3)], dset, CPU) is None


def test_dsa_augmentation_draws_from_each_models_own_generator():
    dset = soft_set((1, 8, 8))
    alone, together = trained_both_ways(convnet, dset, Recipe(arch="a", epochs=2, batch_size=4, augment="dsa"))
    for a, b in zip(alone, together):
        for p, q in zip(a.parameters(), b.parameters()):
            assert torch.allclose(p, q, atol=1e-10, rtol=0)


def test_per_model_accuracies_equal_the_sequential_paths():
    x = torch.randn(60, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    y = torch.arange(60) % 3
    x += y.view(-1, 1, 1, 1).float()  # learnable
    dset = DistilledSet(x[:30], F.one_hot(y[:30], 3).float())
    recipe = Recipe(arch="convnet", epochs=5, batch_size=8, models=4)
    seq = evaluate(dset, recipe, convnet, (x[30:], y[30:]), 0, CPU, mode="sequential")
    vec = evaluate(dset, recipe, convnet, (x[30:], y[30:]), 0, CPU, mode="vectorised")
    assert vec.mode == "vectorised" and seq.mode.startswith("sequential")
    assert vec.accs == seq.accs


@pytest.mark.parametrize("layer,why", [(nn.BatchNorm1d(8), "batch norm"), (nn.Dropout(0.5), "dropout"),
                                       (nn.LSTM(8, 8), "recurrent"), (nn.Dropout(0.0), None)])
def test_what_cannot_be_vectorised_exactly_is_named(layer, why):
    model = nn.Sequential(nn.Linear(4, 8), layer)
    reason = obstacle(model)
    assert (reason is None) if why is None else why in reason


def test_the_mode_is_chosen_by_device_model_and_recipe():
    sgd = Recipe(arch="a", models=5)
    assert choose_mode(mlp(), sgd, CPU, "auto") == "vectorised"  # measured faster on CPU
    assert choose_mode(convnet(), sgd, CPU, "auto") == \
        "sequential: convolutions on cpu (auto vectorises them on cuda only)"
    assert choose_mode(convnet(), sgd, torch.device("cuda"), "auto") == "vectorised"
    assert choose_mode(mlp(), sgd, CPU, "vectorised") == "vectorised"
    assert choose_mode(mlp(), sgd, CPU, "sequential") == "sequential: eval_mode = sequential"
    assert choose_mode(convnet(norm="batchnorm"), sgd, torch.device("cuda"), "auto").startswith("sequential: batch norm")
    assert choose_mode(mlp(), Recipe(arch="a", optimizer="distilled"), CPU, "vectorised") == \
        "sequential: optimizer distilled"
    assert choose_mode(mlp(), Recipe(arch="a", models=1), CPU, "vectorised") == "sequential: one model"


class DataDependent(nn.Module):
    """A layer vmap cannot batch (Python control flow on a tensor's value)."""

    def forward(self, x):
        return x if x.sum().item() > -1e9 else -x


def test_a_layer_vmap_cannot_do_falls_back_to_the_sequential_result():
    def build():
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 3), DataDependent())

    dset = soft_set((1, 8, 8), dtype=torch.float32)
    test = (torch.randn(12, 1, 8, 8), torch.arange(12) % 3)
    recipe = Recipe(arch="a", epochs=3, batch_size=4, models=3)
    vec = evaluate(dset, recipe, build, test, 0, CPU, mode="vectorised")
    seq = evaluate(dset, recipe, build, test, 0, CPU, mode="sequential")
    assert vec.mode.startswith("sequential: vmap failed (")
    assert vec.accs == seq.accs


def test_tick_is_called_every_epoch_on_both_paths():
    dset = soft_set((1, 8, 8), dtype=torch.float32)
    test = (torch.randn(6, 1, 8, 8), torch.arange(6) % 3)
    for mode in ("vectorised", "sequential"):
        ticks = []
        evaluate(dset, Recipe(arch="a", epochs=3, models=2), mlp, test, 0, CPU, mode=mode,
                 tick=lambda: ticks.append(1))
        assert len(ticks) == 3 * (1 if mode == "vectorised" else 2)
