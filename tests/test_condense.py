"""DM and DC/DSA (plugins/harness-distillers): mechanics on the tiny task, not accuracy."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from harness.errors import ConfigError
from harness.grid import build_grid
from harness.testing import TINY_CLASSES, TINY_SHAPE, _build_tiny, check_distiller, make_task
from harness import Features
from harness.specs import TrialSpec
from harness.testing import tiny_arch, tiny_dataset
from harness_distillers.condense import ClassSampler, Randomness, freeze_batchnorm, hard_labels, images_per_class
from harness_distillers.dc import DC, DCWithDSA, gradient_distance, loops_for
from harness_distillers.dm import DM

SMALL_DC = dict(iterations=2, outer_loop=2, inner_loop=1, batch_real=8)


# -- the contract ----------------------------------------------------------------------------------
@pytest.mark.parametrize("cls,config", [
    (DM, dict(iterations=3, batch_real=8)),
    (DM, dict(iterations=2, batch_real=8, dsa=False, init="noise")),
    (DC, SMALL_DC),
    (DC, dict(SMALL_DC, dsa=True, init="real")),
    (DCWithDSA, SMALL_DC),
])
def test_contract(cls, config):
    out = check_distiller(cls, ipc=2, **config)
    assert torch.equal(out.y, hard_labels(TINY_CLASSES, 2, "cpu"))  # class blocks, one-hot
    assert out.meta["iterations_done"] == config["iterations"]


def test_dc_default_loops_follow_the_code_and_other_budgets_need_explicit_values():
    assert loops_for(DC.Config(), 1) == (1, 1) and loops_for(DC.Config(), 10) == (10, 50)
    assert loops_for(DC.Config(), 50) == (50, 10)
    assert loops_for(DC.Config(inner_loop=5), 10) == (10, 5)
    with pytest.raises(ValueError, match=r"only for ipc in \[1, 10, 20, 30, 40, 50\], not 2; set both"):
        loops_for(DC.Config(), 2)


@pytest.mark.parametrize("cls", [DM, DC])
def test_budget_must_be_whole_images_per_class(cls):
    with pytest.raises(ValueError, match=r"n=4 is not a multiple of the 3 classes"):
        cls.check_trial(cls.Config(outer_loop=1, inner_loop=1) if cls is DC else cls.Config(),
                        TrialSpec(tiny_dataset(), tiny_arch(), 4, None, tiny_dataset()))
    assert images_per_class(6, 3, "dm") == 2


def test_grid_rejects_impossible_budgets_and_bad_configs_before_compute(tiny_plugins):
    doc = {"grid": [{"distiller": ["dc"], "dataset": ["tiny"], "arch": ["tiny-mlp"], "ipc": [2]}]}
    with pytest.raises(ConfigError, match=r"distiller 'dc': the DC code defines outer_loop/inner_loop only for"):
        build_grid(copy.deepcopy(doc), tiny_plugins)
    ok = {**doc, "distillers": {"dc": {"outer_loop": 2, "inner_loop": 1}}}
    assert len(build_grid(copy.deepcopy(ok), tiny_plugins).trials) == 1
    bad = {"grid": [{"distiller": ["dm"], "dataset": ["tiny"], "arch": ["tiny-mlp"], "n": [4]}]}
    with pytest.raises(ConfigError, match=r"n=4 is not a multiple of the 3 classes"):
        build_grid(bad, tiny_plugins)
    dm_doc = {"grid": [{**doc["grid"][0], "distiller": ["dm"]}]}
    for cfg, message in [({"dsa_strategy": "color_blur"}, "unknown transform"), ({"init": "zeros"}, "init must be one of"),
                         ({"momentum": 1.5}, r"momentum must be a number in \[0, 1\)")]:
        with pytest.raises(ConfigError, match=message):
            build_grid({**copy.deepcopy(dm_doc), "distillers": {"dm": cfg}}, tiny_plugins)


# -- mechanics ---------------------------------------------------------------------------------------
def test_gradient_distance_is_the_codes_layerwise_cosine_distance():
    w = torch.randn(4, 3, 2, 2)
    b = torch.randn(4)
    assert gradient_distance([w, b], [w, b]).abs() < 1e-5  # identical -> 0
    assert torch.allclose(gradient_distance([w], [-w]), torch.tensor(8.0), atol=1e-4)  # opposite: 2 per output unit
    assert torch.allclose(gradient_distance([w * 5], [w]), gradient_distance([w], [w]), atol=1e-5)  # scale-free
    assert gradient_distance([b], [-b]) == 0  # 1-d tensors (biases, norms) are not matched
    lin = torch.randn(5, 7)
    other = torch.randn(5, 7)
    expected = sum(1 - torch.cosine_similarity(lin[i], other[i], dim=0) for i in range(5))
    assert torch.allclose(gradient_distance([lin], [other]), expected, atol=1e-4)


def test_class_sampler_draws_only_the_requested_class_without_replacement():
    x = torch.arange(30.0).view(30, 1)
    y = torch.arange(3).repeat(10)
    sampler = ClassSampler(x, y, 3, torch.Generator().manual_seed(0))
    batch = sampler(1, 6)
    assert len(batch) == 6 and len(set(batch.flatten().tolist())) == 6
    assert all(int(v) % 3 == 1 for v in batch.flatten())
    assert len(sampler(2, 100)) == 10  # capped by the class size, as in the code
    with pytest.raises(ValueError, match=r"classes \[1, 2\] have no training examples"):
        ClassSampler(x, torch.zeros(30, dtype=torch.long), 3, torch.Generator())


@pytest.mark.parametrize("cls,config", [(DM, dict(batch_real=8)), (DC, dict(SMALL_DC))])
def test_images_move_away_from_their_real_init(cls, config):
    config = {**config, "iterations": 1, "init": "real"}
    task = make_task(cls, ipc=2, **config)
    out = cls().distill(task)
    # each synthetic image started as a real image of its class: after one update none is exactly real
    rows = {tuple(r) for r in task.x.flatten(1).tolist()}
    assert not any(tuple(r) in rows for r in out.x.flatten(1).tolist())


def test_dm_step_reduces_the_mean_embedding_gap_for_a_fixed_network():
    torch.manual_seed(0)
    net = _build_tiny(TINY_SHAPE, TINY_CLASSES)
    for p in net.parameters():
        p.requires_grad_(False)
    embed = Features(net)
    real = torch.randn(64, *TINY_SHAPE) + 1.0
    syn = torch.randn(2, *TINY_SHAPE).requires_grad_(True)
    opt = torch.optim.SGD([syn], lr=0.1)
    gaps = []
    for _ in range(5):
        loss = (embed(real).mean(0) - embed(syn).mean(0)).square().sum()
        gaps.append(loss.item())
        opt.zero_grad()
        loss.backward()
        assert syn.grad.abs().sum() > 0
        opt.step()
    assert gaps[-1] < gaps[0]


def test_dc_matching_loss_reaches_the_synthetic_images_through_second_order_gradients():
    task = make_task(DC, ipc=2, **SMALL_DC)
    net = task.make_model()
    params = list(net.parameters())
    syn = torch.randn(6, *TINY_SHAPE).requires_grad_(True)
    loss = DC.matching_loss(net, params, syn, 2, Randomness(task), 8, None)
    (grad,) = torch.autograd.grad(loss, syn)
    assert loss > 0 and grad.abs().sum(dim=(1, 2, 3)).min() > 0  # every synthetic image gets a gradient
    assert all(p.grad is None for p in params)  # the network is not updated by matching


def test_freeze_batchnorm_sets_statistics_from_real_data_then_keeps_them():
    net = nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(32, 3))
    freeze_batchnorm(net, torch.randn(16, 1, 4, 4) * 3 + 5)
    bn = net[1]
    assert not bn.training and net[0].training
    stats = bn.running_mean.clone()
    assert not torch.equal(stats, torch.zeros(2))
    net(torch.randn(2, 1, 4, 4))
    assert torch.equal(bn.running_mean, stats)  # kept while synthetic batches pass


def test_dc_runs_with_batchnorm_architectures():
    def make_bn_model():
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                             nn.Linear(64, TINY_CLASSES))

    task = make_task(DC, ipc=2, **SMALL_DC)
    task.make_model = make_bn_model
    out = DC().distill(task)
    assert torch.isfinite(out.x).all() and out.n == 6


def test_dsa_changes_what_dm_learns_and_stays_deterministic():
    a = DM().distill(make_task(DM, ipc=1, iterations=2, batch_real=8, dsa=True))
    b = DM().distill(make_task(DM, ipc=1, iterations=2, batch_real=8, dsa=False))
    again = DM().distill(make_task(DM, ipc=1, iterations=2, batch_real=8, dsa=True))
    assert not torch.equal(a.x, b.x) and torch.equal(a.x, again.x)


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="iterations must be an int >= 1"):
        DM.Config(iterations=0)
    with pytest.raises(ValueError, match="outer_loop must be an int >= 1"):
        DC.Config(outer_loop=0)
    with pytest.raises(ValueError, match="dsa must be true or false"):
        DC.Config(dsa="yes")


def test_dsa_is_dc_with_the_augmentation_on():
    assert DCWithDSA.Config().dsa is True and DC.Config().dsa is False
    a = DCWithDSA().distill(make_task(DCWithDSA, ipc=2, **SMALL_DC))
    b = DC().distill(make_task(DC, ipc=2, **SMALL_DC, dsa=True))
    assert torch.equal(a.x, b.x)


def test_dm_and_dc_run_on_non_image_inputs_with_dsa_off():
    """DSA is for images: on [L, D] inputs (text) DM and DC run with dsa = false; dsa = true on such
    data is refused at validate for every method (tests/test_contract.py)."""
    for cls, config in ((DM, dict(iterations=1, batch_real=8, dsa=False)), (DC, SMALL_DC)):
        task = make_task(cls, ipc=1, **config)
        task.x = task.x.reshape(len(task.x), 4, 4)  # the tiny data as a 4 x 4 "sentence" (input_shape follows x)
        out = cls().distill(task)
        assert out.x.shape == (3, 4, 4) and out.meta["dsa"] is False


# -- what the golden tests pinned down (tests/golden/test_condense.py) ------------------------------
def test_dm_with_batchnorm_embeds_all_classes_together_as_the_code_does():
    """main_DM.py's ConvNetBN branch: every class's real (and synthetic) batch passes the network at
    once, so batch-norm statistics mix classes; the loss is still per-class mean distances."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                        nn.Linear(64, TINY_CLASSES))
    task = make_task(DM, ipc=2, iterations=1, batch_real=8, dsa=False)
    syn = torch.randn(6, *TINY_SHAPE).requires_grad_(True)
    expected_syn = syn.detach().clone().requires_grad_(True)
    sampler = ClassSampler(task.x, task.y, 3, torch.Generator().manual_seed(5))
    reals = [sampler(c, 8) for c in range(3)]
    rand = Randomness(task)
    rand.sampler = ClassSampler(task.x, task.y, 3, torch.Generator().manual_seed(5))
    reference = copy.deepcopy(net)
    loss = DM.iteration(net, syn, torch.optim.SGD([syn], lr=0.1), ipc=2, batch_real=8, rand=rand, dsa=None)
    embed = Features(reference.train())
    e_real = embed(torch.cat(reals)).detach().view(3, 8, -1).mean(1)
    e_syn = embed(expected_syn).view(3, 2, -1).mean(1)
    joint = (e_real - e_syn).square().sum()
    assert abs(loss - joint.item() / 3) < 1e-5
    per_class = sum((embed(r).mean(0) - embed(expected_syn[2 * c : 2 * c + 2]).mean(0)).square().sum()
                    for c, r in enumerate(reals))
    assert abs(per_class.item() / 3 - loss) > 1e-4  # per-class batches would give another number


@pytest.mark.parametrize("cls", [DM, DC, DCWithDSA])
def test_model_init_defaults_to_the_codes_and_is_validated(cls):
    assert cls.Config().model_init == "default"  # the code's get_network leaves PyTorch's init
    assert cls.Config(model_init="xavier").model_init == "xavier"
    with pytest.raises(ValueError, match="model_init must be one of default, xavier, kaiming"):
        cls.Config(model_init="orthogonal")


@pytest.mark.parametrize("cls,config", [(DM, dict(batch_real=8, iterations=5)),
                                        (DC, dict(SMALL_DC, iterations=5)), (DCWithDSA, dict(SMALL_DC, iterations=5))],
                         ids=["dm", "dc", "dsa"])
def test_a_run_resumed_from_a_mid_trial_checkpoint_ends_exactly_as_an_uninterrupted_one(cls, config):
    from harness.testing import check_resume

    check_resume(cls, crash_after=3, **config)
