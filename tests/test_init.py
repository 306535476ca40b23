"""harness.init: model init schemes, applied by the harness while distilling and evaluating,
recorded in params, trial keys and the report's protocol column."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from harness.errors import ConfigError
from harness.grid import build_grid
from harness.init import INIT_SCHEMES, check_init_scheme, distill_init, init_model
from harness.report import _inits, _protocol


def small_net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 8, 3), nn.GroupNorm(2, 8), nn.ReLU(), nn.Flatten(),
                         nn.Linear(8 * 26 * 26, 400), nn.BatchNorm1d(400), nn.Linear(400, 10))


def test_default_leaves_the_constructor_init_untouched():
    torch.manual_seed(0)
    net = small_net()
    before = copy.deepcopy(net.state_dict())
    torch.manual_seed(1)
    init_model(net, "default")
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


@pytest.mark.parametrize("scheme", ["xavier", "kaiming"])
def test_gaussian_schemes_zero_biases_reset_norms_and_match_their_std(scheme):
    torch.manual_seed(0)
    net = small_net()
    with torch.no_grad():  # make norm layers visibly non-default first
        net[1].weight.fill_(3.0)
        net[5].bias.fill_(2.0)
    init_model(net, scheme)
    linear = net[4]
    fan_in, fan_out = linear.in_features, linear.out_features
    want = math.sqrt(2.0 / (fan_in + fan_out)) if scheme == "xavier" else math.sqrt(2.0 / fan_in)
    assert linear.weight.std().item() == pytest.approx(want, rel=0.02)
    assert abs(linear.weight.mean().item()) < 0.05 * want  # normal around zero, not uniform-shifted
    for m in (net[0], net[4], net[6]):
        assert torch.count_nonzero(m.bias) == 0
    for m in (net[1], net[5]):
        assert torch.all(m.weight == 1) and torch.all(m.bias == 0)


def test_schemes_are_seeded_by_the_global_rng():
    nets = []
    for _ in range(2):
        torch.manual_seed(7)
        nets.append(init_model(small_net(), "xavier"))
    assert all(torch.equal(a, b) for a, b in zip(nets[0].state_dict().values(), nets[1].state_dict().values()))


def test_unknown_scheme_is_one_clear_error():
    assert INIT_SCHEMES == ("default", "xavier", "kaiming")
    with pytest.raises(ValueError, match="model_init must be one of default, xavier, kaiming; got 'glorot'"):
        check_init_scheme("glorot")
    with pytest.raises(ValueError):
        init_model(small_net(), "glorot")


def test_distill_init_reads_the_config_field():
    class WithInit:
        model_init = "xavier"

    class Without:
        pass

    assert distill_init(WithInit()) == "xavier"
    assert distill_init(Without()) == "default"  # third-party distillers without the field


def test_task_make_model_applies_the_configs_init():
    from plugins_for_tests import ClassMeans

    from harness.testing import make_task

    task = make_task(ClassMeans, ipc=1, model_init="xavier")
    biases = [m.bias for m in task.make_model().modules() if isinstance(m, nn.Linear)]
    assert biases and all(torch.count_nonzero(b) == 0 for b in biases)
    task = make_task(ClassMeans, ipc=1)  # "default": PyTorch's init leaves biases non-zero
    assert any(torch.count_nonzero(m.bias) for m in task.make_model().modules() if isinstance(m, nn.Linear))


def _doc(**eval_table):
    return {"grid": [{"distiller": ["means"], "dataset": ["tiny"], "arch": ["tiny-mlp"], "ipc": [1]}],
            "eval": {"models": 1, "epochs": 1, **eval_table},
            "distillers": {"means": {"model_init": "xavier"}}}


def test_eval_model_init_defaults_to_the_distillers_and_is_recorded(tiny_plugins):
    [trial] = build_grid(_doc(), tiny_plugins).trials
    assert trial.recipes[0].model_init == "xavier"  # "distiller" resolved, so the key records it
    params = trial.params()
    assert params["cfg.model_init"] == "xavier" and params["eval.model_init"] == "xavier"
    [explicit] = build_grid(_doc(model_init="default"), tiny_plugins).trials
    assert explicit.recipes[0].model_init == "default"
    assert explicit.key != trial.key
    [other] = build_grid({**_doc(), "distillers": {"means": {"model_init": "default"}}}, tiny_plugins).trials
    assert other.key not in (trial.key, explicit.key)
    assert other.recipes[0].model_init == "default"


def test_unknown_eval_model_init_is_one_line(tiny_plugins):
    with pytest.raises(ConfigError, match=r"eval.model_init: unknown value 'xavir'; did you mean 'xavier'\?"):
        build_grid(_doc(model_init="xavir"), tiny_plugins)


def test_evaluation_models_get_the_recipes_init(monkeypatch):
    import harness.evaluate as ev
    from harness.specs import DistilledSet
    from harness.testing import _build_tiny
    from harness.trial import Recipe

    seen = []
    real = ev.init_model
    monkeypatch.setattr(ev, "init_model", lambda model, scheme: seen.append(scheme) or real(model, scheme))
    x, y = torch.randn(6, 4), torch.eye(3).repeat(2, 1)
    test = (torch.randn(9, 4), torch.arange(9) % 3)
    recipe = Recipe(arch="tiny-mlp", epochs=1, models=2, model_init="kaiming")
    ev.evaluate(DistilledSet(x, y), recipe, lambda: _build_tiny((4,), 3), test, 0, torch.device("cpu"))
    assert seen == ["kaiming", "kaiming"]


def test_report_protocol_names_the_inits():
    assert _inits("xavier", "xavier") == "init xavier"
    assert _inits("xavier", "default") == "init xavier, eval init default"
    assert _inits("", None) == "init default"  # runs logged before inits were recorded
    assert _inits("-", "default") == "init default"  # a distiller without a model_init field
    assert _protocol("lenet/sgd", 300, 5, "0", "init xavier") == "300 ep x 5, init xavier"
    assert _protocol("lenet/ld-protocol", 300, 20, "0", "init default") == "Adam, LD lifetime x 20, init default"
    assert _protocol("lenet/distilled", 300, 5, "2000", "init default") == \
        "learned steps x 5, init default, test 2000"
