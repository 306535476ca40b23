"""Label distillation (LD, LD-RR) and its true-label baseline (LD-base): mechanics on the tiny task.

Accuracy claims live in committed results, not here: these tests check what the algorithms do
(labels learned on the simplex, base images real and untouched, same base examples across
LD / LD-RR / LD-base for a seed, cross-dataset label spaces, the reset rule, config errors).
"""

from __future__ import annotations

import time

import pytest
import torch
import torch.nn.functional as F

import harness_distillers.ld as ld_mod
import harness_distillers.ld_base as ld_base
import harness_distillers.ld_common as ld_common
import harness_distillers.ld_rr as ld_rr_mod
from harness.baseline import random_subset
from harness.errors import ConfigError
from harness.grid import build_config
from harness.testing import TINY_CLASSES, TINY_SHAPE, check_distiller, make_task
from harness_distillers.ld import LD
from harness_distillers.ld_base import LDBase
from harness_distillers.ld_common import PlateauReset, paper_base_batch, paper_reset_window, renormalise_
from harness_distillers.ld_rr import LDRR, ridge_solution

LEARNERS = [LD, LDRR]
FAST = dict(outer_steps=5)


def _distill(cls, **kw):
    ipc = kw.pop("ipc", 2)
    seed = kw.pop("seed", 0)
    task = make_task(cls, ipc=ipc, seed=seed, **kw)
    return task, cls().distill(task)


def _on_simplex(y: torch.Tensor) -> bool:
    return bool((y >= 0).all()) and bool((y <= 1).all()) and torch.allclose(y.sum(1), torch.ones(len(y)), atol=1e-5)


# -- the conformance kit ------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", LEARNERS, ids=lambda c: c.name)
def test_check_distiller_learners(cls):
    out = check_distiller(cls, **FAST)
    assert out.meta["outer_steps_done"] == 5


def test_check_distiller_ld_base():
    out = check_distiller(LDBase)
    assert set(out.y.unique().tolist()) == {0.0, 1.0}


def test_capabilities():
    assert LD.capabilities.learns_labels and LD.capabilities.cross_dataset
    assert LDRR.capabilities.learns_labels and LDRR.capabilities.cross_dataset
    assert not LDBase.capabilities.cross_dataset and not LDBase.capabilities.learns_labels
    assert (LD.name, LDRR.name, LDBase.name) == ("ld", "ld-rr", "ld-base")


# -- what is learned, what is not -----------------------------------------------------------------------
@pytest.mark.parametrize("cls", LEARNERS, ids=lambda c: c.name)
def test_labels_learned_base_inputs_real_and_unchanged(cls):
    task = make_task(cls, ipc=2, **FAST)
    x_before, y_before = task.x.clone(), task.y.clone()
    out = cls().distill(task)
    idx = torch.tensor(out.meta["base_indices"])
    # labels moved away from their uniform init: the outer gradient reaches them
    assert not torch.allclose(out.y, torch.full_like(out.y, 1 / TINY_CLASSES))
    assert not out.y.requires_grad
    # inputs: exactly the real training rows the meta names, bit for bit; the training set untouched
    assert torch.equal(out.x, task.x[idx])
    assert torch.equal(task.x, x_before) and torch.equal(task.y, y_before)
    assert out.meta["base_true_labels"] == task.y[idx].tolist()
    assert out.meta["base"] == "same"


@pytest.mark.parametrize("cls", LEARNERS, ids=lambda c: c.name)
def test_labels_stay_on_simplex_after_every_step(cls, monkeypatch):
    seen = []
    module = ld_mod if cls is LD else ld_rr_mod

    def spy(labels):
        renormalise_(labels)
        seen.append(labels.detach().clone())

    monkeypatch.setattr(module, "renormalise_", spy)
    # a large label step so that the clamp really has work to do; the last labels are returned
    # only without validation-based selection (select_best=True returns the best validated ones)
    _, out = _distill(cls, outer_steps=6, label_lr=0.2, select_best=False)
    assert len(seen) == 6
    for y in seen:
        assert _on_simplex(y)
    assert any(bool((y == 0).any()) for y in seen), "lr 0.2 should push some entries to the clamp"
    assert torch.equal(out.y, seen[-1])


def test_renormalise_clamps_and_normalises():
    y = torch.tensor([[-0.5, 0.5, 1.5], [0.2, 0.2, 0.6], [-1.0, -2.0, 0.0]])
    renormalise_(y)
    assert torch.allclose(y[0], torch.tensor([0.0, 1 / 3, 2 / 3]))
    assert torch.allclose(y[1], torch.tensor([0.2, 0.2, 0.6]))
    assert torch.allclose(y[2], torch.full((3,), 1 / 3))  # an all-zero row falls back to uniform
    assert _on_simplex(y)


@pytest.mark.parametrize("cls", LEARNERS + [LDBase], ids=lambda c: c.name)
@pytest.mark.parametrize("ipc", [1, 3])
def test_shapes_for_ipc(cls, ipc):
    kw = {} if cls is LDBase else dict(outer_steps=2)
    _, out = _distill(cls, ipc=ipc, **kw)
    assert out.x.shape == (ipc * TINY_CLASSES, *TINY_SHAPE)
    assert out.y.shape == (ipc * TINY_CLASSES, TINY_CLASSES)
    counts = torch.bincount(torch.tensor(out.meta["base_true_labels"]), minlength=TINY_CLASSES)
    assert counts.tolist() == [ipc] * TINY_CLASSES  # class-balanced


@pytest.mark.parametrize("cls", LEARNERS, ids=lambda c: c.name)
def test_cpu_determinism_and_seed_dependence(cls):
    _, a = _distill(cls, seed=0, **FAST)
    _, b = _distill(cls, seed=0, **FAST)
    _, c = _distill(cls, seed=1, **FAST)
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y) and a.meta == b.meta
    assert a.meta["base_indices"] != c.meta["base_indices"]


@pytest.mark.parametrize("cls", LEARNERS, ids=lambda c: c.name)
def test_logs_every_outer_step(cls):
    task = make_task(cls, ipc=1, **FAST)
    logged, expected = [], []
    task._log = lambda step, **m: logged.append((step, m))
    task._total = expected.append
    cls().distill(task)
    assert expected == [5]
    assert [s for s, _ in logged] == list(range(5))
    assert all("loss" in m and "target_err" in m for _, m in logged)


@pytest.mark.parametrize("cls", LEARNERS, ids=lambda c: c.name)
def test_stops_when_time_is_up(cls):
    task = make_task(cls, ipc=1, outer_steps=1000)
    task.deadline = time.monotonic() - 1.0
    out = cls().distill(task)
    assert out.meta["outer_steps_done"] == 0
    assert torch.allclose(out.y, torch.full_like(out.y, 1 / TINY_CLASSES))


def test_ld_sgd_online_model_option():
    _, out = _distill(LD, model_optimizer="sgd", **FAST)
    assert _on_simplex(out.y) and out.meta["outer_steps_done"] == 5


# -- the same base examples across LD, LD-RR and LD-base -------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ld_base_picks_lds_base_examples_with_true_labels(seed):
    _, ld = _distill(LD, seed=seed, outer_steps=2)
    _, rr = _distill(LDRR, seed=seed, outer_steps=2)
    task, base = _distill(LDBase, seed=seed)
    assert base.meta["base_indices"] == ld.meta["base_indices"] == rr.meta["base_indices"]
    assert torch.equal(base.x, ld.x) and torch.equal(base.x, rr.x)
    idx = torch.tensor(base.meta["base_indices"])
    assert torch.equal(base.y, F.one_hot(task.y[idx], TINY_CLASSES).float())


def test_base_examples_are_the_random_subset_for_the_same_generator():
    task = make_task(LD, ipc=2, outer_steps=1)
    gen = torch.Generator().manual_seed(task.generator.initial_seed())
    subset = random_subset(task.x, task.y, TINY_CLASSES, 2, task.n, gen)
    assert torch.equal(LD().distill(task).x, subset.x)


def test_ld_base_label_smoothing():
    task, out = _distill(LDBase, label_smoothing=0.3)
    idx = torch.tensor(out.meta["base_indices"])
    expected = F.one_hot(task.y[idx], TINY_CLASSES).float() * 0.7 + 0.1
    assert torch.allclose(out.y, expected)


# -- cross-dataset ------------------------------------------------------------------------------------
def _cross_task(cls, ipc=2, **config):
    """A target task whose base pool is a different 'dataset': 4 classes labelled 5..8, shifted inputs."""
    task = make_task(cls, ipc=ipc, base=True, **config)
    g = torch.Generator().manual_seed(123)
    base_y = torch.arange(5, 9).repeat_interleave(6)
    base_x = 10.0 + torch.randn(len(base_y), *TINY_SHAPE, generator=g)
    task.base = (base_x, base_y)
    return task


@pytest.mark.parametrize("cls", LEARNERS, ids=lambda c: c.name)
def test_cross_dataset_inputs_from_base_labels_in_target_space(cls):
    task = _cross_task(cls, ipc=2, outer_steps=4, cross_balanced=True)
    out = cls().distill(task)
    base_x, base_y = task.base
    idx = torch.tensor(out.meta["base_indices"])
    assert out.meta["base"] == "cross-dataset"
    assert torch.equal(out.x, base_x[idx])  # real base-pool rows, untouched
    assert bool((out.x > 5).all())  # none of them is a target example (targets are near 0)
    assert out.y.shape == (2 * TINY_CLASSES, TINY_CLASSES)  # the TARGET's label space
    assert _on_simplex(out.y)
    # balanced over the base pool's own 4 classes: 6 examples -> 2, 2, 1, 1 (extras at random)
    counts = torch.bincount(base_y[idx] - 5, minlength=4)
    assert sorted(counts.tolist()) == [1, 1, 2, 2]
    assert out.meta["base_true_labels"] == base_y[idx].tolist()


def test_cross_dataset_with_the_kits_base_pool():
    task = make_task(LD, ipc=2, base=True, outer_steps=3)
    out = LD().distill(task)
    idx = torch.tensor(out.meta["base_indices"])
    assert torch.equal(out.x, task.base[0][idx]) and out.y.shape == (6, TINY_CLASSES)


def test_ld_base_refuses_cross_dataset():
    task = _cross_task(LDBase)
    with pytest.raises(ValueError, match="cross-dataset"):
        LDBase().distill(task)


def test_cross_dataset_input_shape_mismatch_is_a_clear_error():
    task = make_task(LD, ipc=1, base=True, outer_steps=1)
    task.base = (torch.zeros(12, 1, 5, 5), torch.arange(3).repeat(4))
    with pytest.raises(ValueError, match="same input space"):
        LD().distill(task)


def test_too_few_examples_per_class_is_a_clear_error():
    task = make_task(LD, ipc=31, outer_steps=1)  # the tiny set has 30 per class
    with pytest.raises(ValueError, match="fewer than the 31 base examples"):
        LD().distill(task)


# -- the model-reset rule -----------------------------------------------------------------------------
def test_plateau_reset_on_a_flat_error():
    rule = PlateauReset(window=3)
    # 3 steps fill the window; then 3 steps without a new minimum are tolerated; the 7th resets
    fired = [rule.update(0.5) for _ in range(14)]
    assert [i + 1 for i, f in enumerate(fired) if f] == [7, 14]
    assert rule.lifetimes == [3, 3]


def test_plateau_reset_after_improvement_stops():
    rule = PlateauReset(window=2)
    errors = [1.0, 1.0, 0.5, 0.5, 0.5, 0.5, 0.5]
    fired = [rule.update(e) for e in errors]
    # minimum (window sum 1.0) reached at step 4; steps 5, 6 tolerated; step 7 resets
    assert fired == [False] * 6 + [True]
    assert rule.lifetimes == [4]
    assert len(rule.errors) == 0 and rule.steps == 0  # statistics restart after a reset


def test_plateau_never_resets_while_improving():
    rule = PlateauReset(window=5)
    assert not any(rule.update(1.0 - i / 1000) for i in range(500))
    assert rule.lifetimes == []


def test_plateau_window_validation():
    with pytest.raises(ValueError, match="window"):
        PlateauReset(0)


def test_paper_rules():
    assert [paper_base_batch(n) for n in (6, 10, 20, 50, 100, 200, 500)] == [6, 10, 10, 25, 50, 50, 50]
    assert [paper_reset_window(n, 10) for n in (10, 100, 200)] == [50, 50, 200]
    assert paper_reset_window(100, 49) == 100


@pytest.mark.parametrize("cls", LEARNERS, ids=lambda c: c.name)
def test_reset_re_initialises_the_model(cls, monkeypatch):
    module = ld_mod if cls is LD else ld_rr_mod

    class ResetAtSteps2And4(PlateauReset):
        calls = 0

        def update(self, err):
            self.calls += 1
            if self.calls in (2, 4):
                self.lifetimes.append(self.calls)
                return True
            return False

    monkeypatch.setattr(module, "PlateauReset", ResetAtSteps2And4)
    task = make_task(cls, ipc=1, outer_steps=6, select_best=False)  # validation models are built too
    built = []
    make_model = task.make_model
    task.make_model = lambda: built.append(1) or make_model()
    out = cls().distill(task)
    assert len(built) == 3  # the first model + one per reset
    assert out.meta["model_resets"] == 2


# -- LD-RR pieces -------------------------------------------------------------------------------------
@pytest.mark.parametrize("b,k", [(5, 9), (9, 5)])
def test_ridge_dual_equals_primal_and_solves_the_problem(b, k):
    g = torch.Generator().manual_seed(0)
    p = torch.randn(b, k, generator=g, dtype=torch.float64)
    y = torch.rand(b, 3, generator=g, dtype=torch.float64)
    dual, primal = ridge_solution(p, y, 1.0, "dual"), ridge_solution(p, y, 1.0, "primal")
    assert torch.allclose(dual, primal, atol=1e-10)
    assert torch.allclose(ridge_solution(p, y, 1.0), dual)
    # stationarity of ||p W - y||^2 + lam ||W||^2
    assert torch.allclose(p.T @ (p @ dual - y) + 1.0 * dual, torch.zeros_like(dual), atol=1e-10)


def test_ridge_is_differentiable_in_the_labels():
    p = torch.randn(4, 6, dtype=torch.float64)
    y = torch.rand(4, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: ridge_solution(p, t, 1.0), (y,))


# -- configuration errors -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "cls,field,value",
    [
        (LD, "outer_steps", 0), (LD, "outer_steps", 2.5), (LD, "label_lr", 0.0), (LD, "inner_lr", -0.01),
        (LD, "base_batch", -1), (LD, "target_batch", 0), (LD, "reset_window", -5), (LD, "model_lr", "x"),
        (LD, "model_optimizer", "rmsprop"), (LD, "target_sampling", "shuffle"), (LD, "val_fraction", 0.0),
        (LD, "val_fraction", 1.0), (LD, "val_every_epochs", 0), (LD, "select_best", "yes"), (LD, "cross_balanced", 1),
        (LDRR, "target_sampling", "x"), (LDRR, "val_fraction", -0.1),
        (LDRR, "ridge_lambda", 0.0), (LDRR, "ema_rate", 0.0), (LDRR, "ema_rate", 1.5), (LDRR, "ridge_form", "qr"),
        (LDRR, "scale_lr", -1.0), (LDRR, "outer_steps", True),
        (LDBase, "label_smoothing", 1.0), (LDBase, "label_smoothing", -0.1),
    ],
)
def test_bad_config_values_raise_clear_errors(cls, field, value):
    with pytest.raises(ValueError, match=rf"{cls.name}\.{field} must"):
        cls.Config(**{field: value})


@pytest.mark.parametrize("cls", LEARNERS, ids=lambda c: c.name)
def test_bad_model_init_names_the_field(cls):
    with pytest.raises(ValueError, match=rf"{cls.name}\.model_init must be one of default, xavier, kaiming"):
        cls.Config(model_init="orthogonal")


def test_bad_config_is_reported_by_the_grid_before_compute():
    with pytest.raises(ConfigError, match=r"ld\.outer_steps must be an int >= 1"):
        build_config(LD, {"outer_steps": 0}, "distillers.ld")


def test_defaults_are_the_papers():
    cfg = LD.Config()
    assert (cfg.outer_steps, cfg.label_lr, cfg.inner_lr, cfg.target_batch, cfg.model_lr) == (19_600, 1e-3, 0.01, 1024, 1e-3)
    rr = LDRR.Config()
    assert (rr.ridge_lambda, rr.ema_rate, rr.scale_init, rr.scale_lr) == (1.0, 0.01, 1.0, 0.01)
    # the code's behaviour by default (golden-tested / read from label_distillation_or2.py): shuffled
    # epochs of the target set, validation every 5 epochs on 1/6 of the training set (MNIST's 10,000
    # of 60,000) keeping the best labels, PyTorch's default init (LeNet is never re-initialised)
    for c in (cfg, rr):
        assert (c.target_sampling, c.select_best, c.val_every_epochs, c.model_init) == ("epochs", True, 5, "default")
        assert c.cross_balanced is False  # the code's cross-dataset configs draw base examples at random
        assert c.val_fraction == pytest.approx(10_000 / 60_000)
    assert LDBase.Config().label_smoothing == 0.0


# -- the code's validation split, epochs and best-labels selection ----------------------------------------
@pytest.mark.parametrize("cls", LEARNERS, ids=lambda c: c.name)
def test_validation_split_is_held_out_training_data(cls):
    task = make_task(cls, ipc=2, outer_steps=1)
    base = ld_common.select_base(task)
    split = ld_common.split_validation(task, base, 1 / 6, True)
    val, target = set(split.val.tolist()), set(split.target.tolist())
    assert len(val) == round(len(task.x) / 6)
    assert not val & target and val | target == set(range(len(task.x)))  # a partition of task.x
    assert not val & set(base.index.tolist())  # never a base example (they are target rows, as in the code)
    assert set(base.index.tolist()) <= target
    off = ld_common.split_validation(task, base, 1 / 6, False)
    assert len(off.val) == 0 and len(off.target) == len(task.x)


def test_validation_split_too_small_is_a_clear_error():
    task = make_task(LD, ipc=1, outer_steps=1)
    with pytest.raises(ValueError, match="val_fraction"):
        ld_common.split_validation(task, ld_common.select_base(task), 0.001, True)


def test_target_batches_are_shuffled_epochs_with_a_partial_last_batch():
    rows = torch.arange(10, 33)  # 23 rows, batch 10 -> 10, 10, 3
    g = torch.Generator().manual_seed(0)
    tb = ld_common.TargetBatches(rows, 10, "epochs", g)
    assert tb.per_epoch == 3
    for epoch in range(2):
        seen, ends = [], []
        for _ in range(3):
            idx, end = tb.next()
            seen.append(idx)
            ends.append(end)
        assert [len(i) for i in seen] == [10, 10, 3] and ends == [False, False, True]
        assert sorted(torch.cat(seen).tolist()) == rows.tolist()  # every row exactly once per epoch
        assert tb.epoch == epoch + 1
    rnd = ld_common.TargetBatches(rows, 10, "random", g)
    assert all(len(rnd.next()[0]) == 10 for _ in range(5)) and rnd.epoch == 1


def test_model_lifetime_rule():
    rule = PlateauReset(window=10)
    for _ in range(5):
        rule.update(0.5)
    assert rule.lifetimes == [] and rule.model_lifetime() == 5  # never reset: the current age
    rule.lifetimes = [10, 20, 31, 40]
    assert rule.model_lifetime() == int((20 + 31 + 40) / 3)  # int(mean of the last 3) = 30


def test_validation_select_keeps_the_best_and_later_ties():
    errors = iter([0.5, 0.4, 0.6, 0.4, 0.7])
    asked = []

    def fit(labels, steps):
        asked.append(steps)
        return next(errors)

    sel = ld_common.ValidationSelect(fit, every_epochs=2)
    rule = PlateauReset(window=100)
    for epoch in range(1, 11):
        rule.update(0.5)
        sel.after_epoch(epoch, step=epoch * 10 - 1, labels=torch.full((2, 2), float(epoch)), plateau=rule)
    assert [h["epoch"] for h in sel.history] == [2, 4, 6, 8, 10]  # every 2nd epoch
    assert asked == [2, 4, 6, 8, 10]  # trained for the current model age (never reset)
    labels, meta = sel.result(torch.zeros(2, 2), rule)
    assert torch.equal(labels, torch.full((2, 2), 8.0))  # 0.4 at epoch 4 and 8: the later one wins
    assert meta["selected_step"] == 79 and meta["test_steps"] == 8 and meta["val_err"] == 0.4


@pytest.mark.parametrize("cls", LEARNERS, ids=lambda c: c.name)
def test_select_best_returns_validated_labels_and_records_the_protocol(cls, monkeypatch):
    module = ld_mod if cls is LD else ld_rr_mod
    snapshots = []
    real = module.renormalise_

    def spy(labels):
        real(labels)
        snapshots.append(labels.detach().clone())

    monkeypatch.setattr(module, "renormalise_", spy)
    task, out = _distill(cls, ipc=2, outer_steps=12)
    meta = out.meta
    assert meta["steps_per_epoch"] == 1 and meta["val_rows"] == 15 and meta["target_rows"] == 75
    assert [h["step"] for h in meta["val_history"]] == [4, 9]  # after epochs 5 and 10
    best = min(meta["val_history"], key=lambda h: (h["val_err"], -h["step"]))
    assert meta["selected_step"] == best["step"] and meta["test_steps"] == best["train_steps"]
    assert torch.equal(out.y, snapshots[best["step"]])
    assert meta["model_lifetime"] == 12 and meta["model_lifetimes"] == []
    _, last = _distill(cls, ipc=2, outer_steps=12, select_best=False)
    assert last.meta["selected"] == "last" and last.meta["val_rows"] == 0


@pytest.mark.parametrize("cls", LEARNERS, ids=lambda c: c.name)
def test_short_run_without_validation_returns_the_last_labels(cls):
    _, out = _distill(cls, ipc=2, outer_steps=3)  # 5 epochs never complete
    assert out.meta["selected"].startswith("last") and out.meta["val_history"] == []


def test_ld_base_finds_the_codes_test_steps_on_lds_validation_split():
    task, out = _distill(LDBase, ipc=2)
    _, ld = _distill(LD, ipc=2, outer_steps=1)
    assert out.meta["val_rows"] == ld.meta["val_rows"] == 15
    steps = [h["train_steps"] for h in out.meta["val_history"]]
    assert steps == [10, 25, 50, 75] + list(range(100, 1001, 50))  # the code's checkpoints, n <= 100
    best = min(out.meta["val_history"], key=lambda h: (h["val_err"], h["train_steps"]))  # first minimum
    assert out.meta["test_steps"] == best["train_steps"]
    assert ld_base.paper_baseline_checkpoints(200)[0] == 1701
    _, off = _distill(LDBase, ipc=2, select_steps=False)
    assert "test_steps" not in off.meta and torch.equal(off.y, out.y)


@pytest.mark.parametrize("cls", LEARNERS, ids=lambda c: c.name)
def test_cross_dataset_default_is_the_codes_random_draw(cls):
    """The code's cross-dataset configs ("ubl") take the first batch of a shuffled base loader."""
    task = _cross_task(cls, ipc=2, outer_steps=2)
    gen = torch.Generator().manual_seed(task.generator.initial_seed())
    expected = torch.randperm(len(task.base[1]), generator=gen)[:6]
    out = cls().distill(task)
    assert out.meta["base_indices"] == expected.tolist()
    assert torch.equal(out.x, task.base[0][expected])


@pytest.mark.parametrize("cls", [LD, LDRR], ids=["ld", "ld-rr"])
@pytest.mark.parametrize("extra", [{}, {"reset_window": 2}], ids=["plain", "with-resets"])
def test_a_run_resumed_from_a_mid_trial_checkpoint_ends_exactly_as_an_uninterrupted_one(cls, extra):
    """Crash mid-run (after a validation epoch; with resets, after a model reset), resume from the
    checkpoint: the same labels, selection and model lifetimes as the uninterrupted run."""
    from harness.testing import check_resume

    out = check_resume(cls, crash_after=9, ipc=2, outer_steps=14, target_batch=16, val_every_epochs=1, **extra)
    assert out.meta["selected"] == "best validation" and len(out.meta["val_history"]) > 1
    assert (out.meta["model_resets"] > 0) == bool(extra)
