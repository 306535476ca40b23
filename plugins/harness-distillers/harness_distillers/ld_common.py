"""Shared pieces of label distillation (``ld``, ``ld-base``, ``ld-rr``): the base examples, the
validation split, target minibatches, the code's model-reset rule, validation-based label selection
and small helpers. Line numbers cite ``label_distillation_or2.py`` of
github.com/ondrejbohdal/label-distillation at commit 7ebc088 ("the code"); see ``ld.py``.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, ClassVar

from . import checks

if TYPE_CHECKING:  # pragma: no cover
    import torch

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


# -- the Config fields LD and LD-RR share -----------------------------------------------------------
@dataclass(frozen=True)
class LabelDistillationConfig:
    """The hyperparameters LD and LD-RR share, with the code's defaults (each method's Config adds
    its own: LD's inner step and online-model optimiser, LD-RR's ridge head and scale)."""

    method: ClassVar[str] = "ld"  # names the fields in error messages: "<method>.<field> must ..."

    outer_steps: int = PAPER_OUTER_STEPS
    """Outer (label) steps. Default: the code's MNIST budget, 400 epochs x 49 batches of 1,024 =
    19,600 (it runs 800 epochs for 200/500 base examples). CPU grids scale this down."""
    label_lr: float = 1e-3
    """Adam learning rate of the labels (the code: ``torch.optim.Adam([labels])``, default lr)."""
    base_batch: int = 0
    """Base (inner) minibatch size; 0 = the code's rule: half the base examples, within [10, 50]
    (``--inner_batch_size`` of its configs: 10->10, 20->10, 50->25, 100->50, >=200->50); capped at n."""
    target_batch: int = 1024
    """Real target examples per outer step (code ``--batch_size 1024``); capped at the target rows."""
    target_sampling: str = "epochs"
    """"epochs": shuffled passes over the target rows, last batch partial (the code's DataLoader);
    "random": an independent random minibatch every step (a deviation)."""
    model_lr: float = 1e-3
    """Adam learning rate of the online model (LD-RR: of its backbone) and of the validation models
    (the code: ``Adam(model.parameters())``, default lr 1e-3)."""
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
    """Init of every model the method builds (``harness.init``): the code uses PyTorch's default."""
    cross_balanced: bool = False
    """Cross-dataset only: class-balanced base examples (True) or the code's uniformly random
    draw from the base pool (False, its "ubl" configs)."""

    def __post_init__(self) -> None:
        from harness import check_init_scheme

        where = self.method
        check_int(where, "outer_steps", self.outer_steps, 1)
        check_positive(where, label_lr=self.label_lr, model_lr=self.model_lr)
        check_int(where, "base_batch", self.base_batch, 0, " (0 = the paper's rule)")
        check_int(where, "target_batch", self.target_batch, 1)
        check_int(where, "reset_window", self.reset_window, 0, " (0 = the paper's rule)")
        if self.target_sampling not in TARGET_SAMPLING:
            raise ValueError(f"{where}.target_sampling must be one of {TARGET_SAMPLING}, got {self.target_sampling!r}")
        for key in ("select_best", "cross_balanced"):
            if not isinstance(getattr(self, key), bool):
                raise ValueError(f"{where}.{key} must be a bool, got {getattr(self, key)!r}")
        v = self.val_fraction
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 < v < 1.0:
            raise ValueError(f"{where}.val_fraction must be a number in (0, 1), got {v!r}")
        check_int(where, "val_every_epochs", self.val_every_epochs, 1)
        check_init_scheme(self.model_init, f"{where}.model_init")


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

    from harness import class_balanced_indices, class_counts_per_budget

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
    where = "base dataset" if cross else "target dataset"
    index = class_balanced_indices(y_cpu, classes, counts, task.generator, f"base examples (of the {where})")
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

    def state_dict(self) -> dict:
        return {"pos": self.pos, "epoch": self.epoch, "order": self.order}

    def load_state_dict(self, state: dict) -> None:
        self.pos, self.epoch, self.order = int(state["pos"]), int(state["epoch"]), state["order"]


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

    def state_dict(self) -> dict:
        return {"errors": list(self.errors), "steps": self.steps, "lowest": self.lowest,
                "since_lowest": self.since_lowest, "lifetimes": list(self.lifetimes)}

    def load_state_dict(self, state: dict) -> None:
        self.errors = deque(float(e) for e in state["errors"])
        self.steps, self.lowest = int(state["steps"]), float(state["lowest"])
        self.since_lowest, self.lifetimes = int(state["since_lowest"]), [int(v) for v in state["lifetimes"]]

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

    def state_dict(self) -> dict:
        return {"best": self.best, "best_err": self.best_err, "best_steps": self.best_steps,
                "best_step": self.best_step, "history": list(self.history)}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.best_err = state["best"], float(state["best_err"])
        self.best_steps, self.best_step, self.history = int(state["best_steps"]), int(state["best_step"]), state["history"]

    def result(self, labels: "torch.Tensor", plateau: PlateauReset) -> tuple["torch.Tensor", dict]:
        if self.best is None:  # no validation ran (budget shorter than every_epochs epochs)
            return labels.detach().clone(), {"selected": "last (no validation ran)", "val_history": self.history,
                                             "test_steps": plateau.model_lifetime()}
        return self.best, {"selected": "best validation", "selected_step": self.best_step,
                           "val_err": self.best_err, "val_history": self.history, "test_steps": self.best_steps}


@dataclass
class Progress:
    """The bookkeeping of an LD / LD-RR run besides the learned state: target batches, the reset
    rule, the label selection and the validation models' generator. Its ``state_dict`` is what a
    mid-trial checkpoint needs of it."""

    targets: TargetBatches
    plateau: PlateauReset
    select: ValidationSelect | None
    val_generator: "torch.Generator | None"

    def state_dict(self) -> dict:
        return {"targets": self.targets.state_dict(), "plateau": self.plateau.state_dict(),
                "select": None if self.select is None else self.select.state_dict(),
                "val_generator": None if self.val_generator is None else self.val_generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.targets.load_state_dict(state["targets"])
        self.plateau.load_state_dict(state["plateau"])
        if self.select is not None:
            self.select.load_state_dict(state["select"])
        if self.val_generator is not None:
            self.val_generator.set_state(state["val_generator"])


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
    """``checks.check_positive`` for several fields, each named ``<where>.<field>``."""
    for key, value in values.items():
        checks.check_positive(f"{where}.{key}", value)


def check_int(where: str, key: str, value: Any, minimum: int, hint: str = "") -> None:
    """``checks.check_int`` for field ``<where>.<key>``."""
    checks.check_int(f"{where}.{key}", value, minimum, hint)


def soft_cross_entropy(logits: "torch.Tensor", target: "torch.Tensor") -> "torch.Tensor":
    from harness import soft_cross_entropy as sce

    return sce(logits, target)
