"""SLDD and DD (plugins/harness-distillers): mechanics on the tiny task, not accuracy.

Accuracy claims live in the committed results; here: the contract, gradients reaching what is
learned, labels (unconstrained by default, as in the code; on the simplex as an option), shapes,
determinism, the init, Config errors, the outer-step schedule (decay points a fraction of the run by
default), and that the "distilled" evaluation recipe replays exactly the distill-time inner loop.
Agreement with the authors' code itself: tests/golden/test_sldd_dd.py.
"""

from __future__ import annotations

import dataclasses
import math
import time

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from harness import unroll_gd as unroll
from harness.evaluate import train_model
from harness.specs import DistilledSet
from harness.testing import TINY_CLASSES, TINY_SHAPE, _build_tiny, _tiny_load, check_distiller, make_task
from harness.trial import Recipe
from harness_distillers.dd import DD
from harness_distillers.sldd import (SLDD, decay_interval, initial_labels, outer_lr_at, project_to_simplex,
                                     raw_lr_init)

CPU = torch.device("cpu")
SMALL = dict(outer_steps=3, steps=2, epochs=1)


def run(cls, ipc=2, n=None, seed=0, **config):
    task = make_task(cls, ipc=ipc, n=n, seed=seed, **{**SMALL, **config})
    return cls().distill(task), task


def one_hot_labels(n):
    return F.one_hot(torch.arange(n) % TINY_CLASSES, TINY_CLASSES).float()


# -- the contract ----------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", [SLDD, DD])
def test_check_distiller_passes_with_fixed_init(cls):
    out = check_distiller(cls, **SMALL, init="fixed")
    assert out.init_state is not None


@pytest.mark.parametrize("cls", [SLDD, DD])
def test_check_distiller_with_random_init(cls):
    check_distiller(cls, **SMALL)


def test_random_init_sets_still_honour_the_rest_of_the_contract():
    out, _ = run(SLDD)
    assert out.init_state is None and out.lrs is not None
    out.detached().check(TINY_SHAPE, TINY_CLASSES)


def test_capabilities():
    assert SLDD.capabilities.learns_labels and SLDD.capabilities.fewer_than_classes
    assert not DD.capabilities.learns_labels and not DD.capabilities.fewer_than_classes
    for cls in (SLDD, DD):
        caps = cls.capabilities
        assert caps.learns_inputs and caps.learns_lr and caps.known_init


# -- gradients reach what is learned ---------------------------------------------------------------
def test_one_outer_step_changes_inputs_labels_and_step_sizes():
    out, _ = run(SLDD, outer_steps=1)
    x0 = torch.randn((6, *TINY_SHAPE), generator=make_task(SLDD, ipc=2, **SMALL).generator)  # drawn first
    assert not torch.equal(out.x, x0) and torch.allclose(out.x, x0, atol=0.05)  # one Adam step of lr 0.01
    assert not torch.equal(out.y, one_hot_labels(6))
    assert not torch.allclose(out.lrs, torch.full((2,), 0.02))


def test_dd_labels_stay_exactly_one_hot_while_inputs_and_step_sizes_move():
    out, _ = run(DD, outer_steps=3)
    assert torch.equal(out.y, one_hot_labels(6))
    x0 = torch.randn((6, *TINY_SHAPE), generator=make_task(DD, ipc=2, **SMALL).generator)
    assert not torch.equal(out.x, x0)
    assert not torch.allclose(out.lrs, torch.full((2,), 0.02))


def test_the_outer_gradient_flows_through_every_unrolled_step():
    """gradcheck (float64) of the outer loss w.r.t. inputs, labels and step sizes through 3 unrolled
    steps: second-order terms included, nothing detached on the way."""
    torch.manual_seed(0)
    net = _build_tiny(TINY_SHAPE, TINY_CLASSES).double()
    theta0 = {k: p.detach().clone().requires_grad_(True) for k, p in net.named_parameters()}
    xr, yr = _tiny_load("train", None)
    xr = xr[:12].double()
    yr = yr[:12]

    def outer(x, y, lrs):
        theta = unroll(net, theta0, list(x.chunk(2)), list(y.chunk(2)), lrs)
        return F.cross_entropy(functional_call(net, theta, (xr,)), yr)

    x = torch.randn(4, *TINY_SHAPE, dtype=torch.float64, requires_grad=True)
    y = torch.softmax(torch.randn(4, TINY_CLASSES, dtype=torch.float64), 1).requires_grad_(True)
    lrs = torch.tensor([0.3, 0.2, 0.1], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(outer, (x, y, lrs), fast_mode=True)


# -- labels ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("label_init", ["onehot", "smoothed", "uniform", "random"])
def test_simplex_constraint_keeps_label_rows_distributions(label_init):
    # label_constraint="simplex" is an option since the code's unconstrained labels became the default
    out, _ = run(SLDD, label_init=label_init, label_constraint="simplex", outer_lr=0.3, outer_steps=4)
    assert (out.y >= 0).all()
    assert torch.allclose(out.y.sum(1), torch.ones(6), atol=1e-6)


def test_unconstrained_labels_are_the_code_s_raw_labels_and_the_default():
    out, _ = run(SLDD, outer_lr=0.3, outer_steps=4)  # big steps leave the simplex
    assert out.meta["label_constraint"] == "none"
    assert not torch.allclose(out.y.sum(1), torch.ones(6), atol=1e-3)
    assert (out.y < 0).any()


def test_project_to_simplex():
    v = torch.tensor([[2.0, 0.0, 0.0], [0.5, 0.5, 0.0], [1.0, 1.0, 1.0], [-1.0, 0.2, 0.4], [0.9, 0.1, -0.3]])
    p = project_to_simplex(v)
    assert torch.allclose(p, torch.tensor([[1.0, 0, 0], [0.5, 0.5, 0], [1 / 3, 1 / 3, 1 / 3], [0, 0.4, 0.6],
                                           [0.9, 0.1, 0.0]]), atol=1e-6)
    q = project_to_simplex(torch.randn(50, 7, generator=torch.Generator().manual_seed(0)) * 3)
    assert (q >= 0).all() and torch.allclose(q.sum(1), torch.ones(50), atol=1e-6)
    assert torch.allclose(project_to_simplex(q), q, atol=1e-6)  # idempotent


def test_labels_start_one_hot_class_balanced_and_first_classes_below_c():
    g = torch.Generator()
    assert initial_labels(6, 3, "onehot", g).argmax(1).tolist() == [0, 1, 2, 0, 1, 2]
    assert initial_labels(2, 3, "onehot", g).argmax(1).tolist() == [0, 1]  # n < C: the first n classes


# -- shapes ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", [SLDD, DD])
def test_shapes_for_ipc(cls):
    out, _ = run(cls, ipc=2, steps=3, epochs=2)
    assert out.x.shape == (6, *TINY_SHAPE) and out.y.shape == (6, TINY_CLASSES)
    assert out.lrs.shape == (6,) and (out.lrs > 0).all()  # steps x epochs, softplus > 0
    assert out.meta["steps"] == 3 and out.meta["epochs"] == 2


def test_sldd_with_fewer_examples_than_classes():
    out, _ = run(SLDD, ipc=None, n=2, steps=1, epochs=3)
    assert out.x.shape == (2, *TINY_SHAPE) and out.y.shape == (2, TINY_CLASSES)
    assert out.lrs.shape == (3,) and (out.lrs > 0).all()
    assert out.y.argmax(1).tolist() == [0, 1]  # classes 0 .. n-1, the code's --num_distill_classes n


def test_dd_refuses_fewer_examples_than_classes():
    with pytest.raises(ValueError, match="fewer than the 3 classes"):
        run(DD, ipc=None, n=2, steps=1)


def test_n_must_split_into_equal_batches_checked_before_any_compute():
    task = make_task(SLDD, ipc=2, **{**SMALL, "steps": 4})
    calls = []
    task.make_model = lambda: calls.append(1)
    with pytest.raises(ValueError, match=r"n=6 .* steps=4"):
        SLDD().distill(task)
    assert not calls


# -- determinism ----------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", [SLDD, DD])
def test_cpu_determinism(cls):
    a, _ = run(cls, seed=3)
    b, _ = run(cls, seed=3)
    c, _ = run(cls, seed=4)
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y) and torch.equal(a.lrs, b.lrs)
    assert not torch.equal(a.x, c.x) and not torch.equal(a.lrs, c.lrs)


# -- the init --------------------------------------------------------------------------------------
def _recording(task):
    made = []
    original = task.make_model

    def make_model():
        model = original()
        made.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return model

    task.make_model = make_model
    return made


@pytest.mark.parametrize("init", ["fixed", "random"])
def test_init_state_iff_fixed_and_equal_to_the_init_used(init):
    task = make_task(SLDD, ipc=2, **{**SMALL, "init": init})
    made = _recording(task)
    out = SLDD().distill(task)
    if init == "fixed":
        assert len(made) == 1  # one init for the whole run
        assert out.init_state.keys() == made[0].keys()
        assert all(torch.equal(out.init_state[k], made[0][k]) for k in made[0])
        assert all(v.device.type == "cpu" for v in out.init_state.values())
    else:
        assert len(made) == SMALL["outer_steps"]  # a fresh init every outer step
        assert out.init_state is None
    assert out.meta["init"] == init


def test_known_init_is_the_configs_model_init_xavier_by_default():
    out, _ = run(SLDD, init="fixed")
    biases = [v for k, v in out.init_state.items() if k.endswith("bias")]
    assert biases and all(torch.equal(b, torch.zeros_like(b)) for b in biases)  # xavier: zero bias
    out, _ = run(SLDD, init="fixed", model_init="default")
    assert any((v != 0).any() for k, v in out.init_state.items() if k.endswith("bias"))


def test_step_sizes_start_at_lr_init_through_softplus():
    raw = raw_lr_init(0.02, 4)
    assert raw.shape == (4,) and torch.allclose(F.softplus(raw), torch.full((4,), 0.02))
    out, _ = run(SLDD, outer_steps=1, lr_init=0.05)
    assert torch.allclose(out.lrs, torch.full((2,), 0.05), atol=0.01)


# -- Config ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("field, value, message", [
    ("steps", 0, "steps must be an int >= 1"),
    ("epochs", 1.5, "epochs must be an int >= 1"),
    ("init", "known", "init must be one of 'random', 'fixed'"),
    ("lr_init", 0.0, "lr_init must be a positive"),
    ("outer_lr", -1.0, "outer_lr must be a positive"),
    ("betas", (0.5, 1.0), "betas must be two numbers in"),
    ("decay_factor", 1.5, "decay_factor must be in"),
    ("decay_every", 0, "decay_every must be an int >= 1"),
    ("model_init", "glorot", "model_init must be one of default, xavier, kaiming"),
    ("outer_steps", 0, "outer_steps must be an int >= 1"),
    ("batch_size", True, "batch_size must be an int >= 1"),
    ("label_init", "zeros", "label_init must be one of"),
    ("label_constraint", "softmax", "label_constraint must be one of"),
])
def test_bad_config_values_raise_a_clear_value_error(field, value, message):
    with pytest.raises(ValueError, match=message):
        SLDD.Config(**{field: value})


def test_defaults_are_the_codes():
    # changed with the golden tests: labels unconstrained (the SLDD code's), decay every tenth of the
    # run (the code's 40 of 400 epochs), xavier model init (the codes' --init xavier)
    cfg = SLDD.Config()
    assert (cfg.steps, cfg.epochs, cfg.init, cfg.model_init) == (10, 3, "random", "xavier")
    assert (cfg.lr_init, cfg.outer_lr, cfg.betas) == (0.02, 0.01, (0.5, 0.999))
    assert (cfg.decay_factor, cfg.decay_every, cfg.outer_steps, cfg.batch_size) == (0.5, None, 23600, 1024)
    assert decay_interval(cfg) == 2360
    assert (cfg.label_init, cfg.label_constraint) == ("onehot", "none")
    assert DD.Config().model_init == "xavier" and DD.Config().decay_every is None
    assert {f.name for f in dataclasses.fields(DD.Config)} == {f.name for f in dataclasses.fields(SLDD.Config)} - {
        "label_init", "label_constraint"}


# -- schedule, logging, budget ---------------------------------------------------------------------
def test_decay_schedule_counts_outer_steps():
    task = make_task(SLDD, ipc=2, **{**SMALL, "outer_steps": 5, "decay_every": 2})
    logged, totals = [], []
    task._log = lambda step, **m: logged.append((step, m))
    task._total = totals.append
    SLDD().distill(task)
    assert totals == [5]
    assert [s for s, _ in logged] == [0, 1, 2, 3, 4]
    assert [m["outer_lr"] for _, m in logged] == pytest.approx([0.01, 0.01, 0.005, 0.005, 0.0025])
    assert all(math.isfinite(m["loss"]) and m["lr_mean"] > 0 for _, m in logged)
    assert outer_lr_at(SLDD.Config(), 2359) == 0.01 and outer_lr_at(SLDD.Config(), 2360) == 0.005


def test_decay_points_are_a_tenth_of_the_run_by_default():
    """The code halves its lr every 40 of 400 epochs: by default every outer_steps // 10 steps, so
    a scaled-down run decays as the paper's does (9 halvings inside the run), only sooner."""
    cfg = SLDD.Config(outer_steps=600)
    lrs = [outer_lr_at(cfg, s) for s in range(600)]
    assert decay_interval(cfg) == 60 and lrs[59] == 0.01 and lrs[60] == 0.005
    assert lrs[-1] == pytest.approx(0.01 * 0.5**9) and len(set(lrs)) == 10
    assert decay_interval(SLDD.Config(outer_steps=5)) == 1  # never zero
    assert decay_interval(SLDD.Config(outer_steps=600, decay_every=100)) == 100  # absolute still possible
    task = make_task(SLDD, ipc=2, **{**SMALL, "outer_steps": 20})
    logged = []
    task._log = lambda step, **m: logged.append(m["outer_lr"])
    SLDD().distill(task)
    assert logged == pytest.approx([0.01 * 0.5 ** (s // 2) for s in range(20)])


def test_stops_at_the_deadline_and_returns_the_current_set():
    task = make_task(SLDD, ipc=2, **SMALL)
    task.deadline = time.monotonic() - 1
    out = SLDD().distill(task)
    assert out.meta["outer_steps_done"] == 0
    out.detached().check(TINY_SHAPE, TINY_CLASSES)
    assert torch.equal(out.y, one_hot_labels(6))


# -- evaluation replays the distill-time inner loop ------------------------------------------------
@pytest.mark.parametrize("cls", [SLDD, DD])
def test_distilled_recipe_replays_the_inner_loop(cls):
    out, _ = run(cls, init="fixed", steps=2, epochs=2)
    out = out.detached()
    xt, _ = _tiny_load("test", None)

    net = _build_tiny(TINY_SHAPE, TINY_CLASSES)
    net.load_state_dict(out.init_state)
    theta0 = {k: p.detach().clone().requires_grad_(True) for k, p in net.named_parameters()}
    theta = unroll(net, theta0, list(out.x.chunk(out.meta["steps"])), list(out.y.chunk(out.meta["steps"])), out.lrs)
    unrolled = functional_call(net, {k: v.detach() for k, v in theta.items()}, (xt,))

    model = _build_tiny(TINY_SHAPE, TINY_CLASSES)
    model.load_state_dict(out.init_state)
    train_model(model, DistilledSet(out.x, out.y, out.lrs, out.meta), Recipe(arch="tiny-mlp", optimizer="distilled"),
                torch.Generator().manual_seed(0), CPU)
    with torch.no_grad():
        replayed = model(xt)
    assert torch.allclose(unrolled, replayed, atol=1e-5)
    assert torch.equal(unrolled.argmax(1), replayed.argmax(1))
    assert not torch.allclose(replayed, net(xt), atol=1e-3)  # the replay did train the model


# -- the grid knows SLDD's constraints before any compute ------------------------------------------
def _grid(tiny_plugins, table_eval=None, cfg=None, n=10):
    from harness.grid import build_grid

    table = {"distiller": ["sldd"], "dataset": ["digits"], "arch": ["mlp"], "n": [n]}
    if table_eval:
        table["eval"] = table_eval
    if cfg:
        table["distillers"] = {"sldd": cfg}
    return build_grid({"grid": [table]}, tiny_plugins)


def test_known_init_evaluation_needs_a_fixed_init_config(tiny_plugins):
    from harness.errors import ConfigError

    with pytest.raises(ConfigError, match="does not carry one \\(set its Config so it distils for a fixed init"):
        _grid(tiny_plugins, {"init": "known", "optimizers": ["distilled"]})
    grid = _grid(tiny_plugins, {"init": "known", "optimizers": ["distilled"]}, {"init": "fixed"})
    assert [r.label for r in grid.trials[0].recipes] == ["mlp/distilled/known-init"]


def test_budget_that_does_not_split_into_steps_is_rejected_before_compute(tiny_plugins):
    from harness.errors import ConfigError

    with pytest.raises(ConfigError, match="distiller 'sldd': n=5 synthetic examples cannot be cut into steps=10"):
        _grid(tiny_plugins, n=5)
    assert _grid(tiny_plugins, cfg={"steps": 1}, n=5).trials[0].n == 5


@pytest.mark.parametrize("cls", [SLDD, DD], ids=["sldd", "dd"])
@pytest.mark.parametrize("init", ["random", "fixed"])
def test_a_run_resumed_from_a_mid_trial_checkpoint_ends_exactly_as_an_uninterrupted_one(cls, init):
    """Crash in the 3rd of 6 outer steps (with decay and a batch position mid-epoch), resume from the
    checkpoint after step 2: the final inputs, labels and step sizes are identical."""
    from harness.testing import check_resume

    check_resume(cls, crash_after=3, outer_steps=6, steps=2, epochs=1, init=init, batch_size=32, decay_every=2)
