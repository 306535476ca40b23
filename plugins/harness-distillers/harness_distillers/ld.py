"""Label distillation (LD), second-order, and its true-label baseline (LD-base).

Bohdal, Hospedales & Yang (2020), "Flexible Dataset Distillation: Learn Labels Instead of Images"
(arXiv:2006.08572); reference code github.com/ondrejbohdal/label-distillation,
``label_distillation_or2.py`` (cited below as "the code"). The images are *real* and never change;
only their labels are learned::

    input: target training set (x_t, y_t) with C classes; a base pool (x_b, y_b): the target
           itself or another dataset (cross-dataset LD, e.g. EMNIST letters -> MNIST)
    x~    <- n real base examples, class-balanced over the base pool's own classes     (fixed)
    y~    <- 1/C everywhere: n learnable labels in the TARGET label space, [n, C]
    theta <- task.make_model();  model optimiser Adam(theta, model_lr)
    repeat outer_steps times:
        (x_t', y_t') <- random target minibatch (target_batch examples)
        (x~', y~')   <- random base minibatch (base_batch examples)
        g      <- grad_theta CE(f_theta(x~'), y~')                         (create_graph=True)
        theta' <- theta - inner_lr * g                                     (one inner SGD step)
        L      <- CE(f_theta'(x_t'), y_t')                                 (second-order in y~)
        y~     <- Adam(label_lr) step on grad_y~ L;  y~ <- clamp(y~, 0, 1);  rows / row sums
        theta  <- model-optimiser step with g.detach()                     (online model)
        if the moving-average error of f_theta' on the target minibatches has stopped
           improving (PlateauReset): theta <- task.make_model(), fresh optimiser
    return (x~, y~)

Everything random is drawn from ``task.generator`` (first the base examples, then the minibatches)
and new models come from ``task.make_model()``, so a run is deterministic on CPU for a seed.

Deviations from the code, all deliberate:
- The code keeps the labels with the best *validation* error (a fresh model trained on them every
  5 epochs on a 10,000-image held-out split); the harness has no validation split and evaluates
  the set itself, so LD returns the labels after the last step.
- The code walks through shuffled epochs of the target set; here every step draws a fresh random
  minibatch (without replacement inside the batch). The budget is counted in outer steps.
- The code's test protocol (Adam for the average model lifetime) is replaced by the harness's
  protocol, identical for every method; the lifetimes are kept in ``meta["model_lifetimes"]``.
- Cross-dataset, the code draws the base examples at random ("ubl", unbalanced); here they are
  class-balanced over the base pool's own classes, as for within-dataset LD (design.md section 6).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from harness import Capabilities, DistilledSet

if TYPE_CHECKING:  # pragma: no cover
    import torch

MODEL_OPTIMIZERS = ("adam", "sgd")

# The code's outer-step budget: 400 epochs over 50,000 MNIST training images in batches of 1,024,
# i.e. 400 x ceil(50000 / 1024) = 400 x 49 = 19,600 steps (n <= 100 base examples; 800 epochs,
# 39,200 steps, for n = 200 and 500; CIFAR-10: 400 x 44 = 17,600).
PAPER_OUTER_STEPS = 19_600


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


def select_base(task: Any) -> BaseExamples:
    """Draw the n base examples: real, class-balanced, from ``task.base`` if given else the target.

    The FIRST use of ``task.generator`` by LD, LD-base and LD-RR, so for one task seed all three
    pick exactly the same examples. Within the target dataset the counts and the draw are those of
    :func:`harness.baseline.random_subset` (``ipc`` per class, or ``n`` spread evenly with the
    extras on random classes; per class in label order, a random permutation of that class's rows),
    so for the same generator state LD's base examples are that random subset. Cross-dataset, ``n``
    is spread evenly over the base pool's own classes (its distinct labels, ascending).
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
    """The code's model-reset rule: reset when the moving average of the online model's error has
    not reached a new minimum for a while.

    ``update(err)`` takes the error of one outer step (the updated model f_theta' on the target
    minibatch) and returns True when the model must be reset now. Exactly as the code:
    1. the first ``window`` errors fill the window; after the ``window``-th the lowest
       moving-average sum is that window's sum;
    2. afterwards the window slides by one error per step; a strictly lower sum becomes the new
       lowest and clears the counter; otherwise the counter grows while it is below ``patience``;
    3. a step that does not improve when the counter already equals ``patience`` triggers the reset,
       i.e. the (patience + 1)-th consecutive step without a new minimum. The statistics restart
       from empty and ``lifetimes`` records the step at which the minimum was reached.
    The code uses the same value for the window and the patience.
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
        self.steps = 0  # steps since the last reset
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


def uniform_labels(n: int, num_classes: int, device: Any) -> "torch.Tensor":
    import torch

    return torch.full((n, num_classes), 1.0 / num_classes, device=device, requires_grad=True)


def renormalise_(labels: "torch.Tensor") -> None:
    """The code's projection after each label step: clamp to [0, 1], divide each row by its sum.
    (A row clamped to all zeros, possible only with very large steps, is set back to uniform.)"""
    import torch

    with torch.no_grad():
        labels.clamp_(0.0, 1.0)
        sums = labels.sum(dim=1, keepdim=True)
        labels.div_(sums.clamp_min(torch.finfo(labels.dtype).tiny))
        dead = (sums <= 0).flatten()
        if bool(dead.any()):
            labels[dead] = 1.0 / labels.shape[1]


def minibatch(size: int, batch: int, generator: "torch.Generator", device: Any) -> "torch.Tensor":
    """``batch`` distinct random rows out of ``size`` (drawn from ``generator`` on CPU)."""
    import torch

    return torch.randperm(size, generator=generator)[: min(batch, size)].to(device)


def check_positive(where: str, **values: Any) -> None:
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ValueError(f"{where}.{key} must be a number > 0, got {value!r}")


def check_int(where: str, key: str, value: Any, minimum: int, hint: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{where}.{key} must be an int >= {minimum}{hint}, got {value!r}")


def soft_cross_entropy(logits: "torch.Tensor", target: "torch.Tensor") -> "torch.Tensor":
    from harness.evaluate import soft_cross_entropy as sce

    return sce(logits, target)


# -- LD -----------------------------------------------------------------------------------------------
class LD:
    """Label distillation (second-order): learn soft labels for fixed real base images (Bohdal et al. 2020)."""

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
        """Real target examples per outer step (code ``--batch_size 1024``); capped at len(task.x)."""
        model_optimizer: str = "adam"
        """How the online model is trained on (base, labels) with the inner gradient: "adam" (the
        code: ``torch.optim.Adam(model.parameters())``, lr ``model_lr``) or "sgd" (the inner SGD step
        itself made permanent, detached: theta <- theta - inner_lr * g)."""
        model_lr: float = 1e-3
        """Adam learning rate of the online model (the code: Adam's default 1e-3); "adam" only."""
        reset_window: int = 0
        """Model reset: moving-average window AND patience in steps (the code's ``stats_gap``, one
        value for both); 0 = the code's rule: 50, or 200 for more than 100 base examples, or 100 for
        targets with more than 10 classes. See :class:`PlateauReset` for the exact rule."""

        def __post_init__(self) -> None:
            where = "ld"
            check_int(where, "outer_steps", self.outer_steps, 1)
            check_positive(where, label_lr=self.label_lr, inner_lr=self.inner_lr, model_lr=self.model_lr)
            check_int(where, "base_batch", self.base_batch, 0, " (0 = the paper's rule)")
            check_int(where, "target_batch", self.target_batch, 1)
            check_int(where, "reset_window", self.reset_window, 0, " (0 = the paper's rule)")
            if self.model_optimizer not in MODEL_OPTIMIZERS:
                raise ValueError(f"{where}.model_optimizer must be one of {MODEL_OPTIMIZERS}, got {self.model_optimizer!r}")

    def distill(self, task: Any) -> DistilledSet:
        import torch
        import torch.nn.functional as F
        from torch.func import functional_call

        cfg = task.config
        base = select_base(task)  # first draw from task.generator: shared with LD-base and LD-RR
        n, num_classes, device = task.n, task.num_classes, task.device
        base_batch = cfg.base_batch or paper_base_batch(n)
        window = cfg.reset_window or paper_reset_window(n, num_classes)
        labels = uniform_labels(n, num_classes, device)
        label_opt = torch.optim.Adam([labels], lr=cfg.label_lr)
        plateau = PlateauReset(window)

        def fresh_model():
            model = task.make_model().to(device).train()
            opt = torch.optim.Adam(model.parameters(), lr=cfg.model_lr) if cfg.model_optimizer == "adam" else None
            return model, opt

        model, model_opt = fresh_model()
        task.expect_steps(cfg.outer_steps)
        done = 0
        for step in range(cfg.outer_steps):
            if task.time_left() <= 0:
                break
            ti = minibatch(len(task.x), cfg.target_batch, task.generator, device)
            bi = minibatch(n, base_batch, task.generator, device)
            xt, yt = task.x[ti], task.y[ti]

            names = [k for k, p in model.named_parameters() if p.requires_grad]
            params = dict(model.named_parameters())
            buffers = dict(model.named_buffers())
            inner = soft_cross_entropy(functional_call(model, (params, buffers), (base.x[bi],)), labels[bi])
            grads = torch.autograd.grad(inner, [params[k] for k in names], create_graph=True, allow_unused=True)
            grads = [torch.zeros_like(params[k]) if g is None else g for k, g in zip(names, grads)]
            fast = dict(params)
            fast.update({k: params[k] - cfg.inner_lr * g for k, g in zip(names, grads)})
            logits = functional_call(model, (fast, buffers), (xt,))
            loss = F.cross_entropy(logits, yt)
            (labels.grad,) = torch.autograd.grad(loss, [labels])
            label_opt.step()
            renormalise_(labels)

            with torch.no_grad():  # the online model's own step, on the same base minibatch
                if model_opt is not None:
                    for k, g in zip(names, grads):
                        params[k].grad = g.detach()
                    model_opt.step()
                else:
                    for k, g in zip(names, grads):
                        params[k].sub_(cfg.inner_lr * g.detach())
                err = float((logits.argmax(1) != yt).float().mean())
            del grads, fast, logits
            reset = plateau.update(err)
            if reset:
                model, model_opt = fresh_model()
            done = step + 1
            task.log(step, loss=float(loss.detach()), inner_loss=float(inner.detach()), target_err=err,
                     resets=len(plateau.lifetimes))

        meta = {"method": "ld", **base.meta(task), "outer_steps_done": done,
                "base_batch": base_batch, "reset_window": window,
                "model_resets": len(plateau.lifetimes), "model_lifetimes": plateau.lifetimes}
        return DistilledSet(x=base.x, y=labels.detach().clone(), meta=meta)


# -- LD-base --------------------------------------------------------------------------------------------
class LDBase:
    """LD's comparison: the same real base examples as LD (same seed) with their true one-hot labels."""

    name = "ld-base"
    capabilities = Capabilities()  # true labels exist only when the base examples are target examples

    @dataclass
    class Config:
        label_smoothing: float = 0.0
        """Label smoothing of the true labels, y <- (1 - s) * onehot + s / C (the code's
        ``--label_smoothing``: 0 for its plain baseline, used in its "_ls" baseline runs)."""

        def __post_init__(self) -> None:
            s = self.label_smoothing
            if isinstance(s, bool) or not isinstance(s, (int, float)) or not 0.0 <= s < 1.0:
                raise ValueError(f"ld-base.label_smoothing must be in [0, 1), got {s!r}")

    def distill(self, task: Any) -> DistilledSet:
        import torch.nn.functional as F

        if task.base is not None:
            raise ValueError(
                "ld-base gives LD's base examples their TRUE labels, which exist only when the base "
                "examples come from the target dataset; with base examples from another dataset "
                "(cross-dataset) use base_dataset = 'same' for ld-base, or compare with 'random'"
            )
        task.expect_steps(1)
        base = select_base(task)  # identical draw to LD's for the same task seed
        y = F.one_hot(base.labels, task.num_classes).float().to(task.device)
        s = task.config.label_smoothing
        if s:
            y = y * (1.0 - s) + s / task.num_classes
        task.log(0, examples=len(base.index))
        return DistilledSet(x=base.x, y=y, meta={"method": "ld-base", **base.meta(task), "label_smoothing": s})
