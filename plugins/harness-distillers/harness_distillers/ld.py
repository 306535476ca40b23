"""Label distillation (LD), second-order, and its true-label baseline (LD-base).

Bohdal, Hospedales & Yang (2020), "Flexible Dataset Distillation: Learn Labels Instead of Images"
(arXiv:2006.08572); reference code github.com/ondrejbohdal/label-distillation at commit 7ebc088,
``label_distillation_or2.py`` (cited below as "the code", with line numbers). The images are *real*
and never change; only their labels are learned::

    input: target training set (x_t, y_t) with C classes; a base pool (x_b, y_b): the target
           itself or another dataset (cross-dataset LD, e.g. EMNIST letters -> MNIST)
    x~    <- n real base examples, class-balanced over the base pool's own classes     (fixed)
    (x_v, y_v) <- a held-out validation part of the TARGET TRAINING set (never the test split)
    y~    <- 1/C everywhere: n learnable labels in the TARGET label space, [n, C]
    theta <- task.make_model();  model optimiser Adam(theta, model_lr)
    repeat outer_steps times:                                            (outer_step())
        (x_t', y_t') <- next target minibatch (shuffled epochs of the rest of the training set)
        (x~', y~')   <- random base minibatch (base_batch examples)
        g      <- grad_theta CE(f_theta(x~'), y~')                         (create_graph=True)
        theta' <- theta - inner_lr * g                                     (one inner SGD step)
        L      <- CE(f_theta'(x_t'), y_t')                                 (second-order in y~)
        y~     <- Adam(label_lr) step on grad_y~ L;  y~ <- clamp(y~, 0, 1);  rows / row sums
        theta  <- model-optimiser step with g                              (online model)
        if the moving-average error of f_theta' on the target minibatches has stopped
           improving (PlateauReset): theta <- task.make_model(), fresh optimiser
        every 5 epochs: train a fresh model on (x~, y~) for the average model lifetime and keep
           y~ if its error on (x_v, y_v) is the best so far                (ValidationSelect)
    return (x~, best y~)

Everything random is drawn from ``task.generator`` (first the base examples, then the validation
split, then the minibatches) and new models come from ``task.make_model()``, so a run is
deterministic on CPU for a seed. ``tests/golden/test_ld.py`` checks one to three outer steps, and the
reset rule, against the code's own ``train()`` (fixtures written by tests/golden/drivers/ld_reference.py).

Hyperparameters (defaults = the code's; its MNIST configs ``experiment_configs/ld_*_mn_to_mn_*or2*``):
outer steps 19,600 (400 epochs x 49 batches); label Adam lr 1e-3 (``Adam([labels])``, line 290);
inner lr 0.01 (``--inner_lr``); base batch = its ``--inner_batch_size`` (10->10, 20->10, 50->25,
100->50, >=200->50); target batch 1,024 (``--batch_size``); online model Adam lr 1e-3 (line 313);
reset window = patience = ``stats_gap`` (50; 200 for n > 100; 100 for CIFAR-100/K-49; lines 549-554);
validation every 5 epochs (line 389) on 10,000 of MNIST's 60,000 training images (1/6; lines 52-54);
model init: PyTorch's default (the code never re-initialises LeNet/AlexNet), ``model_init="default"``.

The code's test protocol (lines 469-478, ``test`` 744-809), for reference (the harness evaluates
every method with its own protocol; what that protocol needs is kept in ``DistilledSet.meta``): 20
fresh models of the distill architecture (PyTorch default init), each trained with
``Adam(model.parameters())`` (lr 1e-3, no weight decay, no schedule) for ``best_num_steps`` steps,
one random base minibatch of ``inner_batch_size`` examples with the learned soft labels per step
(soft cross-entropy), then evaluated on the whole test split; reported as the mean error over the
20. ``best_num_steps`` is the number of steps the validation run used for the selected labels: the
online model's current age if it was never reset, else int(mean of its last 3 lifetimes) (lines
391-394). Stored as ``meta["test_steps"]``; the lifetimes as ``meta["model_lifetimes"]``.

Deviations, and why (each one a Config option whose default is the code's behaviour):
- ``select_best=False``: return the labels after the last step instead of the best-validated ones
  (no validation split; all of the training set is target data). For ablations and short runs.
- ``val_fraction``: the code holds out 10,000 of MNIST/KMNIST's 60,000 training images (1/6), 5,000
  of CIFAR's 50,000 (1/10) and 23,237 of K-49's 232,365 (1/10); the harness has no fixed split, so
  the held-out part is this fraction of ``task.x`` (default 1/6, the MNIST ratio; on the 4,000-image
  mnist-subset: 667 validation, 3,333 target), drawn at random from the rows that are not base
  examples (the code's base examples come from its post-split training part, so never validation).
- ``target_sampling="random"``: independent random minibatches instead of the code's shuffled
  epochs (``DataLoader(shuffle=True)``, last batch partial). The budget is counted in outer steps.
- ``model_optimizer="sgd"``: the online model takes the inner SGD step itself (no Adam).
- ``cross_balanced=True``: cross-dataset base examples class-balanced over the base pool's own
  classes (design.md section 6) instead of the code's uniformly random draw ("ubl" configs).
Kept without an option (no effect on a run that the code completes):
- A label row clamped to all zeros is reset to uniform (the code divides by zero: NaN labels).
- The validation runs draw their minibatches from their own generator (seeded once from
  ``task.generator``), so how long they train does not shift the distillation's minibatch draws;
  in the code they share the global RNG with it. An outer budget that ends before the first
  validation returns the last labels (the code would fail: ``best_labels`` undefined).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from harness import Capabilities, DistilledSet

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

MODEL_OPTIMIZERS = ("adam", "sgd")
TARGET_SAMPLING = ("epochs", "random")

# The code's outer-step budget: 400 epochs over 50,000 MNIST training images in batches of 1,024,
# i.e. 400 x ceil(50000 / 1024) = 400 x 49 = 19,600 steps (n <= 100 base examples; 800 epochs,
# 39,200 steps, for n = 200 and 500; CIFAR-10: 400 x 44 = 17,600).
PAPER_OUTER_STEPS = 19_600
# The code's validation split of MNIST / KMNIST: 10,000 of 60,000 training images (lines 52-54).
PAPER_VAL_FRACTION = 1.0 / 6.0
# The code validates every 5 epochs (``if epoch % 5 == 4``, line 389).
PAPER_VAL_EVERY_EPOCHS = 5


# -- shared pieces (LD, LD-base, LD-RR) ------------------------------------------------------------
@dataclass
class BaseExamples:
    """The fixed real examples LD learns labels for."""

    x: "torch.Tensor"  # [n, *input_shape], a copy of pool rows (never modified)
    index: "torch.Tensor"  # [n] long (CPU): rows of the pool
    labels: "torch.Tensor"  # [n] long (CPU): their true labels in the POOL's label space
    cross: bool  # True when the pool is task.base (another dataset)

    def meta(self, task: Any) -> dict:
        return {
            "base": "cross-dataset" if self.cross else "same",
            "base_dataset": (getattr(task, "base_dataset", "") or "task.base") if self.cross else (task.dataset or "target"),
            "target_dataset": task.dataset,
            "base_indices": self.index.tolist(),
            "base_true_labels": self.labels.tolist(),
        }


def select_base(task: Any, cross_balanced: bool = True) -> BaseExamples:
    """Draw the n base examples: real, from ``task.base`` if given else the target.

    The FIRST use of ``task.generator`` by LD, LD-base and LD-RR, so for one task seed all three
    pick exactly the same examples. Within the target dataset the counts and the draw are those of
    :func:`harness.baseline.random_subset` (``ipc`` per class, or ``n`` spread evenly with the
    extras on random classes; per class in label order, a random permutation of that class's rows),
    so for the same generator state LD's base examples are that random subset. Cross-dataset,
    ``cross_balanced=False`` (the code's "ubl" configs: the first batch of a shuffled loader) draws
    ``n`` pool rows uniformly at random; True spreads ``n`` evenly over the base pool's own classes
    (its distinct labels, ascending).
    """
    import torch

    from harness.baseline import class_counts_per_budget

    cross = task.base is not None
    pool_x, pool_y = task.base if cross else (task.x, task.y)
    if tuple(pool_x.shape[1:]) != tuple(task.x.shape[1:]):
        raise ValueError(
            f"base examples have shape {tuple(pool_x.shape[1:])} but the target's inputs have shape "
            f"{tuple(task.x.shape[1:])}; cross-dataset LD needs a base dataset in the same input space"
        )
    y_cpu = pool_y.detach().cpu().long()
    if cross and not cross_balanced:
        if len(y_cpu) < task.n:
            raise ValueError(f"the base dataset has {len(y_cpu)} examples, fewer than the {task.n} base examples requested")
        index = torch.randperm(len(y_cpu), generator=task.generator)[: task.n]
        x = pool_x[index.to(pool_x.device)].detach().clone().to(task.device)
        return BaseExamples(x, index, y_cpu[index], cross)
    if cross:
        classes = torch.unique(y_cpu).tolist()
        counts = class_counts_per_budget(len(classes), None, task.n, task.generator)
    else:
        classes = list(range(task.num_classes))
        counts = class_counts_per_budget(task.num_classes, task.ipc, task.n, task.generator)
    picked = []
    where = "base dataset" if cross else "target dataset"
    for c, k in zip(classes, counts):
        if k == 0:
            continue
        rows = (y_cpu == c).nonzero().flatten()
        if len(rows) < k:
            raise ValueError(
                f"class {c} of the {where} has {len(rows)} examples, fewer than the {k} base examples requested"
            )
        picked.append(rows[torch.randperm(len(rows), generator=task.generator)[:k]])
    index = torch.cat(picked)
    x = pool_x[index.to(pool_x.device)].detach().clone().to(task.device)
    return BaseExamples(x, index, y_cpu[index], cross)


@dataclass
class Split:
    """The target training set split into distillation targets and a held-out validation part."""

    target: "torch.Tensor"  # [m] long (CPU): rows of task.x used as target minibatches
    val: "torch.Tensor"  # [v] long (CPU): held-out rows of task.x (empty when validation is off)


def split_validation(task: Any, base: BaseExamples, fraction: float, enabled: bool) -> Split:
    """Hold out ``round(fraction * len(task.x))`` random rows of the TRAINING set for validation.

    Drawn from ``task.generator`` right after the base examples, among the rows that are not base
    examples (the code's base examples come from the part left after its split). The rest, base rows
    included (as in the code), are the target data. Off: every row is a target row, nothing drawn.
    """
    import torch

    rows = torch.arange(len(task.x))
    if not enabled:
        return Split(rows, rows[:0])
    size = int(round(fraction * len(task.x)))
    candidates = rows
    if not base.cross:
        keep = torch.ones(len(task.x), dtype=torch.bool)
        keep[base.index] = False
        candidates = rows[keep]
    if not 1 <= size < len(candidates):
        raise ValueError(
            f"val_fraction {fraction:g} of {len(task.x)} training examples gives {size} validation "
            f"examples; need at least 1 and fewer than the {len(candidates)} non-base rows (or select_best=False)"
        )
    val = candidates[torch.randperm(len(candidates), generator=task.generator)[:size]]
    mask = torch.ones(len(task.x), dtype=torch.bool)
    mask[val] = False
    return Split(rows[mask], val.sort().values)


class TargetBatches:
    """Target minibatches: shuffled epochs over ``rows`` with a partial last batch (the code's
    ``DataLoader(train_set, batch_size, shuffle=True)``), or independent random draws."""

    def __init__(self, rows: "torch.Tensor", batch: int, mode: str, generator: "torch.Generator") -> None:
        self.rows, self.batch, self.mode, self.generator = rows, min(batch, len(rows)), mode, generator
        self.per_epoch = math.ceil(len(rows) / self.batch)
        self.pos = 0
        self.epoch = 0  # completed epochs
        self.order = rows

    def next(self) -> tuple["torch.Tensor", bool]:
        """(row indices of task.x, True if this batch ends an epoch)."""
        import torch

        if self.mode == "epochs":
            if self.pos == 0:
                self.order = self.rows[torch.randperm(len(self.rows), generator=self.generator)]
            idx = self.order[self.pos * self.batch:(self.pos + 1) * self.batch]
        else:
            idx = self.rows[torch.randperm(len(self.rows), generator=self.generator)[: self.batch]]
        self.pos += 1
        if self.pos == self.per_epoch:
            self.pos, self.epoch = 0, self.epoch + 1
            return idx, True
        return idx, False


def paper_base_batch(n: int) -> int:
    """The code's base (inner) minibatch size for n base examples: half of them, within [10, 50]
    (its configs: 10->10, 20->10, 50->25, 100->50, 200->50, 500->50), never more than n."""
    return min(n, max(10, min(50, n // 2)))


def paper_reset_window(n: int, num_classes: int) -> int:
    """The code's ``stats_gap``: 100 for its targets with more than 10 classes (CIFAR-100, K-49),
    else 200 when there are more than 100 base examples, else 50."""
    if num_classes > 10:
        return 100
    return 200 if n > 100 else 50


class PlateauReset:
    """The code's model-reset rule (``train``, lines 614-660): reset when the moving average of the
    online model's error has not reached a new minimum for a while.

    ``update(err)`` takes the error of one outer step (the updated model f_theta' on the target
    minibatch) and returns True when the model must be reset now. Exactly as the code:
    1. the first ``window`` errors fill the window; after the ``window``-th the lowest
       moving-average sum is that window's sum;
    2. afterwards the window slides by one error per step; a strictly lower sum becomes the new
       lowest and clears the counter; otherwise the counter grows while it is below ``patience``;
    3. a step that does not improve when the counter already equals ``patience`` triggers the reset,
       i.e. the (patience + 1)-th consecutive step without a new minimum. The statistics restart
       from empty and ``lifetimes`` records the step at which the minimum was reached.
    The code uses the same value for the window and the patience. Golden-tested against the code's
    own ``train()`` on scripted error sequences (tests/golden/test_ld.py).
    """

    def __init__(self, window: int, patience: int | None = None) -> None:
        if window < 1:
            raise ValueError(f"reset window must be >= 1, got {window}")
        self.window = window
        self.patience = window if patience is None else patience
        self.lifetimes: list[int] = []
        self._clear()

    def _clear(self) -> None:
        self.errors: deque[float] = deque()
        self.steps = 0  # steps since the last reset (the code's current_num_steps)
        self.lowest = float("inf")
        self.since_lowest = 0

    @property
    def moving_average(self) -> float:
        return sum(self.errors) / len(self.errors) if self.errors else float("nan")

    def update(self, err: float) -> bool:
        self.steps += 1
        self.errors.append(float(err))
        if len(self.errors) <= self.window:
            if self.steps == self.window:
                self.lowest, self.since_lowest = sum(self.errors), 0
            return False
        self.errors.popleft()
        total = sum(self.errors)
        if total < self.lowest:
            self.lowest, self.since_lowest = total, 0
        elif self.since_lowest < self.patience:
            self.since_lowest += 1
        else:
            self.lifetimes.append(self.steps - self.since_lowest - 1)
            self._clear()
            return True
        return False

    def model_lifetime(self) -> int:
        """The number of training steps the code gives a fresh model (validation and test): the
        current model's age if it was never reset, else int(mean of the last 3 lifetimes) (lines 391-394)."""
        if not self.lifetimes:
            return self.steps
        last = self.lifetimes[-3:]
        return int(sum(last) / len(last))


@dataclass
class ValidationSelect:
    """The code's label selection (lines 388-402): every ``every_epochs`` epochs train a fresh model
    on the current labels for the average model lifetime, measure its error on the held-out part of
    the training set, keep the labels if that error is <= the best so far (later labels win ties)."""

    fit_error: Callable[["torch.Tensor", int], float]  # (labels, steps) -> validation error in [0, 1]
    every_epochs: int = PAPER_VAL_EVERY_EPOCHS
    best: "torch.Tensor | None" = None
    best_err: float = float("inf")
    best_steps: int = 0
    best_step: int = -1
    history: list = field(default_factory=list)

    def after_epoch(self, epoch: int, step: int, labels: "torch.Tensor", plateau: PlateauReset) -> None:
        """Call when epoch ``epoch`` (1-based count of completed epochs) ended at outer step ``step``."""
        if epoch % self.every_epochs != 0:
            return
        steps = plateau.model_lifetime()
        err = float(self.fit_error(labels.detach(), steps))
        self.history.append({"step": step, "epoch": epoch, "val_err": err, "train_steps": steps})
        if err <= self.best_err:
            self.best, self.best_err, self.best_steps, self.best_step = labels.detach().clone(), err, steps, step

    def result(self, labels: "torch.Tensor", plateau: PlateauReset) -> tuple["torch.Tensor", dict]:
        if self.best is None:  # no validation ran (budget shorter than every_epochs epochs)
            return labels.detach().clone(), {"selected": "last (no validation ran)", "val_history": self.history,
                                             "test_steps": plateau.model_lifetime()}
        return self.best, {"selected": "best validation", "selected_step": self.best_step,
                           "val_err": self.best_err, "val_history": self.history, "test_steps": self.best_steps}


def validation_generator(task: Any) -> "torch.Generator":
    """A generator for validation models' minibatches, seeded once from ``task.generator``."""
    import torch

    seed = int(torch.randint(0, 2**62, (1,), generator=task.generator))
    return torch.Generator().manual_seed(seed)


def top1(logits: "torch.Tensor") -> "torch.Tensor":
    """Predicted classes as the code's ``compute_error_rate`` takes them: ``topk(1)``. Not argmax:
    the two break exact ties differently, and ties are real here (LD-RR's logits are all equal while
    the labels are still uniform, at its first step)."""
    return logits.topk(1, 1, True, True)[1].squeeze(1)


def classification_error(predict: Callable[["torch.Tensor"], "torch.Tensor"], x: "torch.Tensor",
                         y: "torch.Tensor", batch: int = 1024) -> float:
    """Top-1 error of ``predict`` (logits) over (x, y), in batches, without gradients."""
    import torch

    wrong = 0
    with torch.no_grad():
        for i in range(0, len(x), batch):
            wrong += int((top1(predict(x[i:i + batch])) != y[i:i + batch]).sum())
    return wrong / max(1, len(x))


def uniform_labels(n: int, num_classes: int, device: Any, dtype: Any = None) -> "torch.Tensor":
    import torch

    return torch.full((n, num_classes), 1.0 / num_classes, device=device, dtype=dtype, requires_grad=True)


def renormalise_(labels: "torch.Tensor") -> None:
    """The code's projection after each label step (lines 594-595): clamp to [0, 1], divide each row
    by its sum. (A row clamped to all zeros, possible only with very large steps, is set back to
    uniform; the code would divide by zero.)"""
    import torch

    with torch.no_grad():
        labels.clamp_(0.0, 1.0)
        sums = labels.sum(dim=1, keepdim=True)
        labels.div_(sums.clamp_min(torch.finfo(labels.dtype).tiny))
        dead = (sums <= 0).flatten()
        if bool(dead.any()):
            labels[dead] = 1.0 / labels.shape[1]


def minibatch(size: int, batch: int, generator: "torch.Generator", device: Any) -> "torch.Tensor":
    """``batch`` distinct random rows out of ``size`` (drawn from ``generator`` on CPU): the code's
    ``torch.randperm(size)[:batch]``."""
    import torch

    return torch.randperm(size, generator=generator)[: min(batch, size)].to(device)


def check_positive(where: str, **values: Any) -> None:
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ValueError(f"{where}.{key} must be a number > 0, got {value!r}")


def check_int(where: str, key: str, value: Any, minimum: int, hint: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{where}.{key} must be an int >= {minimum}{hint}, got {value!r}")


def check_common(where: str, cfg: Any) -> None:
    """Validation of the fields LD and LD-RR share (sampling, selection, init)."""
    from harness.init import check_init_scheme

    if cfg.target_sampling not in TARGET_SAMPLING:
        raise ValueError(f"{where}.target_sampling must be one of {TARGET_SAMPLING}, got {cfg.target_sampling!r}")
    for key in ("select_best", "cross_balanced"):
        if not isinstance(getattr(cfg, key), bool):
            raise ValueError(f"{where}.{key} must be a bool, got {getattr(cfg, key)!r}")
    v = cfg.val_fraction
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 < v < 1.0:
        raise ValueError(f"{where}.val_fraction must be a number in (0, 1), got {v!r}")
    check_int(where, "val_every_epochs", cfg.val_every_epochs, 1)
    check_init_scheme(cfg.model_init, f"{where}.model_init")


def soft_cross_entropy(logits: "torch.Tensor", target: "torch.Tensor") -> "torch.Tensor":
    from harness.evaluate import soft_cross_entropy as sce

    return sce(logits, target)


# -- LD -----------------------------------------------------------------------------------------------
@dataclass
class LDState:
    """Everything one LD outer step reads and updates (injectable: the golden tests build one)."""

    labels: "torch.Tensor"  # [n, C] leaf, requires_grad
    label_opt: "torch.optim.Optimizer"
    model: "nn.Module"
    model_opt: "torch.optim.Optimizer | None"  # None: model_optimizer="sgd"


def outer_step(state: LDState, base_x: "torch.Tensor", bi: "torch.Tensor", xt: "torch.Tensor",
               yt: "torch.Tensor", inner_lr: float) -> dict[str, float]:
    """One LD outer step (the code's ``train`` loop body, lines 565-605): inner SGD step on the base
    minibatch ``base_x[bi]`` with create_graph, label step on CE of the updated model on (xt, yt),
    projection, then the online model's own step with the same inner gradient.
    Returns the outer loss, the inner loss and the updated model's error on (xt, yt)."""
    import torch
    import torch.nn.functional as F
    from torch.func import functional_call

    labels, model = state.labels, state.model
    names = [k for k, p in model.named_parameters() if p.requires_grad]
    params = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    inner = soft_cross_entropy(functional_call(model, (params, buffers), (base_x[bi],)), labels[bi])
    grads = torch.autograd.grad(inner, [params[k] for k in names], create_graph=True, allow_unused=True)
    grads = [torch.zeros_like(params[k]) if g is None else g for k, g in zip(names, grads)]
    fast = dict(params)
    fast.update({k: params[k] - inner_lr * g for k, g in zip(names, grads)})
    logits = functional_call(model, (fast, buffers), (xt,))
    loss = F.cross_entropy(logits, yt)
    (labels.grad,) = torch.autograd.grad(loss, [labels])
    state.label_opt.step()
    renormalise_(labels)

    with torch.no_grad():  # the online model's own step, on the same base minibatch (old labels)
        if state.model_opt is not None:
            for k, g in zip(names, grads):
                params[k].grad = g.detach()
            state.model_opt.step()
        else:
            for k, g in zip(names, grads):
                params[k].sub_(inner_lr * g.detach())
        err = float((top1(logits) != yt).double().mean())
    return {"loss": float(loss.detach()), "inner_loss": float(inner.detach()), "target_err": err}


def train_on_labels(task: Any, base_x: "torch.Tensor", labels: "torch.Tensor", steps: int, base_batch: int,
                    model_lr: float, generator: "torch.Generator") -> "nn.Module":
    """The training half of the code's ``validate``/``test`` (lines 703-720, 769-786): a fresh model,
    ``Adam(model_lr)``, ``steps`` steps on random base minibatches with the labels (soft CE).
    Returned in eval mode."""
    import torch

    model = task.make_model().to(task.device).train()
    opt = torch.optim.Adam(model.parameters(), lr=model_lr)
    for _ in range(steps):
        bi = minibatch(len(base_x), base_batch, generator, task.device)
        loss = soft_cross_entropy(model(base_x[bi]), labels[bi].detach())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model.eval()


def fit_error_ld(task: Any, base_x: "torch.Tensor", base_batch: int, model_lr: float, val_x: "torch.Tensor",
                 val_y: "torch.Tensor", generator: "torch.Generator") -> Callable[["torch.Tensor", int], float]:
    """The code's ``validate`` (lines 687-741): :func:`train_on_labels`, then the validation error."""

    def fit(labels: "torch.Tensor", steps: int) -> float:
        model = train_on_labels(task, base_x, labels, steps, base_batch, model_lr, generator)
        return classification_error(model, val_x, val_y)

    return fit


class LD:
    """Label distillation (second-order): learn soft labels for fixed real base images (Bohdal et al. 2020).

    The algorithm, every default with its source in the code, the code's test protocol and the
    "Deviations, and why" list are in the module docstring; each Config field names its default's
    origin. ``distill`` is the algorithm box; one outer step is :func:`outer_step` (golden-tested).
    """

    name = "ld"
    capabilities = Capabilities(learns_labels=True, cross_dataset=True)

    @dataclass
    class Config:
        outer_steps: int = PAPER_OUTER_STEPS
        """Outer (label) steps. Default: the code's MNIST budget, 400 epochs x 49 batches of 1,024 =
        19,600 (it runs 800 epochs for 200/500 base examples). CPU grids scale this down."""
        label_lr: float = 1e-3
        """Adam learning rate of the labels (the code: ``torch.optim.Adam([labels])``, default lr)."""
        inner_lr: float = 0.01
        """Step size of the one inner SGD step through which the labels are learned (code
        ``--inner_lr 0.01``)."""
        base_batch: int = 0
        """Base (inner) minibatch size; 0 = the code's rule: half the base examples, within [10, 50]
        (``--inner_batch_size`` of its configs: 10->10, 20->10, 50->25, 100->50, >=200->50); capped at n."""
        target_batch: int = 1024
        """Real target examples per outer step (code ``--batch_size 1024``); capped at the target rows."""
        target_sampling: str = "epochs"
        """"epochs": shuffled passes over the target rows, last batch partial (the code's DataLoader);
        "random": an independent random minibatch every step (a deviation)."""
        model_optimizer: str = "adam"
        """How the online model is trained on (base, labels) with the inner gradient: "adam" (the
        code: ``torch.optim.Adam(model.parameters())``, lr ``model_lr``) or "sgd" (the inner SGD step
        itself made permanent, detached: theta <- theta - inner_lr * g; a deviation)."""
        model_lr: float = 1e-3
        """Adam learning rate of the online model and of the validation models (the code: Adam's
        default 1e-3)."""
        reset_window: int = 0
        """Model reset: moving-average window AND patience in steps (the code's ``stats_gap``, one
        value for both); 0 = the code's rule: 50, or 200 for more than 100 base examples, or 100 for
        targets with more than 10 classes. See :class:`PlateauReset` for the exact rule."""
        select_best: bool = True
        """Keep the labels with the best validation error (the code) instead of the last ones."""
        val_fraction: float = PAPER_VAL_FRACTION
        """Held-out fraction of the TRAINING set for validation (select_best only); the code's MNIST
        ratio, 10,000 of 60,000. On mnist-subset (4,000): 667 validation rows."""
        val_every_epochs: int = PAPER_VAL_EVERY_EPOCHS
        """Validate after every this many epochs over the target rows (the code: 5)."""
        model_init: str = "default"
        """Init of every model LD builds (``harness.init``): the code uses PyTorch's default init."""
        cross_balanced: bool = False
        """Cross-dataset only: class-balanced base examples (True) or the code's uniformly random
        draw from the base pool (False, its "ubl" configs)."""

        def __post_init__(self) -> None:
            where = "ld"
            check_int(where, "outer_steps", self.outer_steps, 1)
            check_positive(where, label_lr=self.label_lr, inner_lr=self.inner_lr, model_lr=self.model_lr)
            check_int(where, "base_batch", self.base_batch, 0, " (0 = the paper's rule)")
            check_int(where, "target_batch", self.target_batch, 1)
            check_int(where, "reset_window", self.reset_window, 0, " (0 = the paper's rule)")
            if self.model_optimizer not in MODEL_OPTIMIZERS:
                raise ValueError(f"{where}.model_optimizer must be one of {MODEL_OPTIMIZERS}, got {self.model_optimizer!r}")
            check_common(where, self)

    def new_state(self, task: Any, n: int) -> LDState:
        import torch

        cfg = task.config
        labels = uniform_labels(n, task.num_classes, task.device, task.x.dtype)
        model, model_opt = self.fresh_model(task)
        return LDState(labels, torch.optim.Adam([labels], lr=cfg.label_lr), model, model_opt)

    @staticmethod
    def fresh_model(task: Any) -> tuple["nn.Module", "torch.optim.Optimizer | None"]:
        import torch

        cfg = task.config
        model = task.make_model().to(task.device).train()
        opt = torch.optim.Adam(model.parameters(), lr=cfg.model_lr) if cfg.model_optimizer == "adam" else None
        return model, opt

    def distill(self, task: Any) -> DistilledSet:
        cfg = task.config
        base = select_base(task, cfg.cross_balanced)  # first draw from task.generator: shared with LD-base, LD-RR
        split = split_validation(task, base, cfg.val_fraction, cfg.select_best)
        n, device = task.n, task.device
        base_batch = cfg.base_batch or paper_base_batch(n)
        window = cfg.reset_window or paper_reset_window(n, task.num_classes)
        targets = TargetBatches(split.target, cfg.target_batch, cfg.target_sampling, task.generator)
        select = None
        if cfg.select_best:
            val = split.val.to(device)
            select = ValidationSelect(fit_error_ld(task, base.x, base_batch, cfg.model_lr, task.x[val], task.y[val],
                                                   validation_generator(task)), cfg.val_every_epochs)
        state = self.new_state(task, n)
        plateau = PlateauReset(window)

        task.expect_steps(cfg.outer_steps)
        done = 0
        for step in range(cfg.outer_steps):
            if task.time_left() <= 0:
                break
            ti, epoch_end = targets.next()
            ti = ti.to(device)
            bi = minibatch(n, base_batch, task.generator, device)
            m = outer_step(state, base.x, bi, task.x[ti], task.y[ti], cfg.inner_lr)
            if plateau.update(m["target_err"]):
                state.model, state.model_opt = self.fresh_model(task)
            if select is not None and epoch_end:
                select.after_epoch(targets.epoch, step, state.labels, plateau)
            done = step + 1
            task.log(step, **m, resets=len(plateau.lifetimes))

        labels, chosen = (select.result(state.labels, plateau) if select is not None else
                          (state.labels.detach().clone(), {"selected": "last", "test_steps": plateau.model_lifetime()}))
        meta = {"method": "ld", **base.meta(task), "outer_steps_done": done, "base_batch": base_batch,
                "reset_window": window, "model_resets": len(plateau.lifetimes), "model_lifetimes": plateau.lifetimes,
                "model_lifetime": plateau.model_lifetime(), "target_rows": len(split.target),
                "val_rows": len(split.val), "steps_per_epoch": targets.per_epoch, **chosen}
        return DistilledSet(x=base.x, y=labels, meta=meta)


# -- LD-base --------------------------------------------------------------------------------------------
def paper_baseline_checkpoints(n: int) -> tuple[int, list[int]]:
    """The code's ``find_best_num_steps`` schedule (lines 819-861): (max steps, the 1-based step
    counts after which it validates). n <= 100: 1,000 steps, at 10, 25, 75 and every 50;
    n > 100: 1,701 steps, at 10, 25, 75, 101, 201, 301, 501, 701, 1001, 1201, 1501, 1701."""
    if n > 100:
        return 1701, [10, 25, 75, 101, 201, 301, 501, 701, 1001, 1201, 1501, 1701]
    return 1000, sorted({10, 25, 75} | set(range(50, 1001, 50)))


def best_num_steps(task: Any, base_x: "torch.Tensor", labels: "torch.Tensor", base_batch: int, model_lr: float,
                   val_x: "torch.Tensor", val_y: "torch.Tensor", generator: "torch.Generator") -> tuple[int, list]:
    """The code's ``find_best_num_steps`` (lines 812-889): ONE fresh model trained with Adam on
    random base minibatches of the (true) labels; validated at the checkpoints; the step count with
    the strictly lowest validation error. Returns (steps, [(steps, error), ...])."""
    import torch

    total, checkpoints = paper_baseline_checkpoints(len(base_x))
    model = task.make_model().to(task.device).train()
    opt = torch.optim.Adam(model.parameters(), lr=model_lr)
    best, lowest, history = 0, float("inf"), []
    for it in range(1, total + 1):
        model.train()
        bi = minibatch(len(base_x), base_batch, generator, task.device)
        loss = soft_cross_entropy(model(base_x[bi]), labels[bi])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if it in checkpoints:
            model.eval()
            err = classification_error(model, val_x, val_y)
            history.append((it, err))
            if err < lowest:
                best, lowest = it, err
    return best, history


class LDBase:
    """LD's comparison: the same real base examples as LD (same seed) with their true one-hot labels.

    With ``select_steps`` (the code's baseline, default) it also runs the code's
    ``find_best_num_steps`` on LD's validation split (the same held-out rows as LD for the seed) and
    records the number of Adam steps its test protocol trains baseline models for in
    ``meta["test_steps"]`` (the labels themselves do not depend on it). Deviation: none in the labels;
    ``select_steps=False`` skips the validation run (then no ``test_steps``).
    """

    name = "ld-base"
    capabilities = Capabilities()  # true labels exist only when the base examples are target examples

    @dataclass
    class Config:
        label_smoothing: float = 0.0
        """Label smoothing of the true labels, y <- (1 - s) * onehot + s / C (the code's
        ``--label_smoothing``: 0 for its plain baseline, used in its "_ls" baseline runs)."""
        select_steps: bool = True
        """Find the code's number of test training steps on the validation split (meta only)."""
        val_fraction: float = PAPER_VAL_FRACTION
        """Held-out fraction of the training set for that (the same split as LD's for the seed)."""
        base_batch: int = 0
        """Minibatch size of that validation run; 0 = the code's rule (as LD)."""
        model_lr: float = 1e-3
        """Adam learning rate of that validation run (the code: Adam's default)."""
        model_init: str = "default"
        """Init of the validation model (the code: PyTorch's default)."""

        def __post_init__(self) -> None:
            from harness.init import check_init_scheme

            s = self.label_smoothing
            if isinstance(s, bool) or not isinstance(s, (int, float)) or not 0.0 <= s < 1.0:
                raise ValueError(f"ld-base.label_smoothing must be in [0, 1), got {s!r}")
            if not isinstance(self.select_steps, bool):
                raise ValueError(f"ld-base.select_steps must be a bool, got {self.select_steps!r}")
            v = self.val_fraction
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 < v < 1.0:
                raise ValueError(f"ld-base.val_fraction must be a number in (0, 1), got {v!r}")
            check_int("ld-base", "base_batch", self.base_batch, 0, " (0 = the paper's rule)")
            check_positive("ld-base", model_lr=self.model_lr)
            check_init_scheme(self.model_init, "ld-base.model_init")

    def distill(self, task: Any) -> DistilledSet:
        import torch.nn.functional as F

        if task.base is not None:
            raise ValueError(
                "ld-base gives LD's base examples their TRUE labels, which exist only when the base "
                "examples come from the target dataset; with base examples from another dataset "
                "(cross-dataset) use base_dataset = 'same' for ld-base, or compare with 'random'"
            )
        cfg = task.config
        task.expect_steps(1)
        base = select_base(task)  # identical draw to LD's for the same task seed
        y = F.one_hot(base.labels, task.num_classes).to(task.x.dtype).to(task.device)
        s = cfg.label_smoothing
        if s:
            y = y * (1.0 - s) + s / task.num_classes
        meta = {"method": "ld-base", **base.meta(task), "label_smoothing": s}
        if cfg.select_steps:
            split = split_validation(task, base, cfg.val_fraction, True)  # LD's split for this seed
            val = split.val.to(task.device)
            base_batch = cfg.base_batch or paper_base_batch(task.n)
            steps, history = best_num_steps(task, base.x, y, base_batch, cfg.model_lr, task.x[val], task.y[val],
                                            validation_generator(task))
            meta.update({"test_steps": steps, "val_history": [{"train_steps": k, "val_err": e} for k, e in history],
                         "val_rows": len(split.val), "base_batch": base_batch})
        task.log(0, examples=len(base.index))
        return DistilledSet(x=base.x, y=y, meta=meta)
