"""Label distillation (LD), second-order. Its true-label baseline is ``ld_base.py``, the pieces it
shares with LD-base and LD-RR ``ld_common.py``.

Bohdal, Hospedales & Yang (2020), "Flexible Dataset Distillation: Learn Labels Instead of Images"
(arXiv:2006.08572); reference code github.com/ondrejbohdal/label-distillation at commit 7ebc088,
``label_distillation_or2.py`` (cited below as "the code", with line numbers). The images are *real*
and never change; only their labels are learned::

    input: target training set (x_t, y_t) with C classes; a base pool (x_b, y_b): the target
           itself or another dataset (cross-dataset LD, e.g. EMNIST letters -> MNIST)
    x~    <- n real base examples: class-balanced from the target; uniformly random from another
           dataset (the code's "ubl" cross-dataset configs)                          (fixed)
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

The code's test protocol (lines 469-478, ``test`` 744-809), available as the evaluation recipe
``optimizers = ["ld-protocol"]`` beside the shared DC protocol (it reads ``DistilledSet.meta``): 20
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
  classes (this harness's earlier default) instead of the code's uniformly random draw ("ubl").
Kept without an option (no effect on a run that the code completes):
- A label row clamped to all zeros is reset to uniform (the code divides by zero: NaN labels).
- The validation runs draw their minibatches from their own generator (seeded once from
  ``task.generator``), so how long they train does not shift the distillation's minibatch draws;
  in the code they share the global RNG with it. An outer budget that ends before the first
  validation returns the last labels (the code would fail: ``best_labels`` undefined).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, ClassVar

from harness import Capabilities, Distiller, DistilledSet

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

from .ld_common import (
    MODEL_OPTIMIZERS,
    LabelDistillationConfig,
    PlateauReset,
    Progress,
    TargetBatches,
    ValidationSelect,
    check_positive,
    classification_error,
    minibatch,
    paper_base_batch,
    paper_reset_window,
    renormalise_,
    select_base,
    soft_cross_entropy,
    split_validation,
    top1,
    uniform_labels,
    validation_generator,
)


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


class LD(Distiller):
    """Label distillation (second-order): learn soft labels for fixed real base images (Bohdal et al. 2020).

    The algorithm, every default with its source in the code, the code's test protocol and the
    "Deviations, and why" list are in the module docstring; each Config field names its default's
    origin. ``distill`` is the algorithm box; one outer step is :func:`outer_step` (golden-tested).
    """

    name = "ld"
    capabilities = Capabilities(learns_labels=True, cross_dataset=True)

    @dataclass(frozen=True)
    class Config(LabelDistillationConfig):
        """LD's hyperparameters: the fields shared with LD-RR
        (:class:`~harness_distillers.ld_common.LabelDistillationConfig`, the code's defaults) and
        LD's inner step and online-model optimiser."""

        method: ClassVar[str] = "ld"
        inner_lr: float = 0.01
        """Step size of the one inner SGD step through which the labels are learned (code
        ``--inner_lr 0.01``)."""
        model_optimizer: str = "adam"
        """How the online model is trained on (base, labels) with the inner gradient: "adam" (the
        code: ``torch.optim.Adam(model.parameters())``, lr ``model_lr``) or "sgd" (the inner SGD step
        itself made permanent, detached: theta <- theta - inner_lr * g; a deviation)."""

        def __post_init__(self) -> None:
            super().__post_init__()
            check_positive(self.method, inner_lr=self.inner_lr)
            if self.model_optimizer not in MODEL_OPTIMIZERS:
                raise ValueError(f"{self.method}.model_optimizer must be one of {MODEL_OPTIMIZERS}, "
                                 f"got {self.model_optimizer!r}")

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

    @staticmethod
    def state(state: LDState, progress: Progress) -> dict:
        """What a mid-trial checkpoint holds (the harness adds its RNGs and model count)."""
        return {"labels": state.labels.detach(), "label_opt": state.label_opt.state_dict(),
                "model": state.model.state_dict(),
                "model_opt": None if state.model_opt is None else state.model_opt.state_dict(),
                "progress": progress.state_dict()}

    @staticmethod
    def load_state(state: LDState, progress: Progress, saved: dict) -> None:
        import torch

        with torch.no_grad():
            state.labels.copy_(saved["labels"])
        state.label_opt.load_state_dict(saved["label_opt"])
        state.model.load_state_dict(saved["model"])
        if state.model_opt is not None:
            state.model_opt.load_state_dict(saved["model_opt"])
        progress.load_state_dict(saved["progress"])

    def distill(self, task: Any) -> DistilledSet:
        cfg = task.config
        base = select_base(task, cfg.cross_balanced)  # first draw from task.generator: shared with LD-base, LD-RR
        split = split_validation(task, base, cfg.val_fraction, cfg.select_best)
        n, device = task.n, task.device
        base_batch = cfg.base_batch or paper_base_batch(n)
        window = cfg.reset_window or paper_reset_window(n, task.num_classes)
        targets = TargetBatches(split.target, cfg.target_batch, cfg.target_sampling, task.generator)
        select, vgen = None, None
        if cfg.select_best:
            val = split.val.to(device)
            vgen = validation_generator(task)
            select = ValidationSelect(fit_error_ld(task, base.x, base_batch, cfg.model_lr, task.x[val], task.y[val],
                                                   vgen), cfg.val_every_epochs)
        state = self.new_state(task, n)
        plateau = PlateauReset(window)
        progress = Progress(targets, plateau, select, vgen)

        task.expect_steps(cfg.outer_steps)
        done = 0
        saved = task.restore()  # a mid-trial checkpoint: continue where it stopped
        if saved is not None:
            done, snapshot = saved
            self.load_state(state, progress, snapshot)
        for step in range(done, cfg.outer_steps):
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
            task.checkpoint(done, lambda: self.state(state, progress))

        labels, chosen = (select.result(state.labels, plateau) if select is not None else
                          (state.labels.detach().clone(), {"selected": "last", "test_steps": plateau.model_lifetime()}))
        meta = {"method": "ld", **base.meta(task), "outer_steps_done": done, "base_batch": base_batch,
                "reset_window": window, "model_resets": len(plateau.lifetimes), "model_lifetimes": plateau.lifetimes,
                "model_lifetime": plateau.model_lifetime(), "target_rows": len(split.target),
                "val_rows": len(split.val), "steps_per_epoch": targets.per_epoch, **chosen}
        return DistilledSet(x=base.x, y=labels, meta=meta)
