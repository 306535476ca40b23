"""Label distillation through a ridge-regression layer (LD-RR), first-order.

Bohdal, Hospedales & Yang (2020), "Flexible Dataset Distillation: Learn Labels Instead of Images"
(arXiv:2006.08572), the first-order variant; reference code github.com/ondrejbohdal/label-distillation
at commit 7ebc088, ``label_distillation_rr.py`` with ``model_architectures.LeNet``/``AdjustLayer``
("the code", with line numbers). No gradient goes through a model's training step: the classifier on
top of the backbone is the closed-form solution of a ridge regression onto the soft labels, so the
target loss is a differentiable function of the labels directly::

    x~, y~, (x_v, y_v) as in LD (same base examples for the same seed; labels uniform 1/C)
    phi    <- backbone of task.make_model() (every layer but the final Linear); Adam(phi, model_lr)
    s      <- scale_init (the learned calibration scale); Adam(s, scale_lr)
    W      <- 0, the global classifier [d + 1, C] (last row = bias)
    repeat outer_steps times:                                          (rr_outer_step())
        (x_t', y_t') <- next target minibatch;  (x~', y~') <- base minibatch
        P     <- [phi(x~'), 1]                                              [b, d + 1]
        W_l   <- argmin_W ||P W - y~'||^2 + lambda ||W||^2                  (closed form, lambda = 1)
               = P^T (P P^T + lambda I_b)^-1 y~'      (dual / Woodbury form, the code's)
               = (P^T P + lambda I_(d+1))^-1 P^T y~'  (primal form; the same matrix)
        W     <- (1 - ema_rate) W.detach() + ema_rate W_l                   (slow global classifier)
        L     <- CE(s * [phi(x_t'), 1] W, y_t')
        y~    <- Adam(label_lr) step on grad_y~ L (through W_l);  clamp to [0, 1];  rows / row sums
        L_b   <- soft-CE(s * P W, y~' (the updated labels, detached))
        phi, s <- Adam steps on grad L_b      (the target data train the labels only, as in the code)
        if the moving-average error on x_t' stopped improving (ld.PlateauReset): fresh backbone,
           optimisers, s and W = 0
        every 5 epochs: train a fresh RR model (backbone, W, s) on (x~, y~) for the average model
           lifetime; keep y~ if its validation error is the best so far
    return (x~, best y~)

Hyperparameters (defaults = the code's): as LD for outer steps, label lr, base/target batch, reset
window and validation (see :mod:`harness_distillers.ld`); backbone Adam lr 1e-3 (``Adam(model.parameters())``,
line 308); ridge lambda 1.0 (``get_local_weights``: "we tried 0.01, 0.1, 1.0, 10; 1.0 worked best");
global classifier average 0.99 / 0.01 (line 591); scale ``AdjustLayer(init_scale=1)`` trained by
``Adam(.., 0.01)`` (lines 312-317); model init PyTorch's default (``model_init="default"``).

What follows the code exactly (golden-tested, tests/golden/test_ld.py):
- The learned scale is trained on the BASE loss L_b only: the code keeps target data out of it on
  purpose ("we do not want to learn it using target set data"); L sends gradients to the labels alone.
- L_b back-propagates into the backbone both through P and through W's dependence on W_l, as the
  code's ``feat_loss.backward()`` does; its targets are the labels AFTER this step's update.
- The bias column is appended to the features and regularised with the weights (``feature_add_bias``).
- The code's validation and test models are RR models too (backbone + global classifier, trained
  like the online model; evaluated WITHOUT the scale, which does not change the argmax).

The code's test protocol (lines 478-488, ``test`` 783-876): 20 fresh RR models (backbone, zero global
classifier, scale 1) trained for ``best_num_steps`` steps exactly as the validation models (Adam 1e-3
on the backbone, Adam 0.01 on the scale, global classifier averaged 0.99/0.01 with the ridge solution
of each random base minibatch), evaluated with ``model_eval(input_, w_eval)`` on the test split; mean
error over the 20. ``meta["test_steps"]`` holds ``best_num_steps``.

Deviations, and why (Config options; defaults are the code's):
- The code's backbone is LeNet/AlexNet without its last layer (84/192 features); here it is
  ``task.make_model()`` up to its classifier (:class:`harness.Features`), so the architecture must
  declare ``features=True`` (checked before compute; LeNet's features are the code's backbone exactly).
- ``ridge_form``: "dual" is the code's b x b solve (``torch.inverse`` then products); "auto" (default)
  picks the smaller system, "primal" the (d+1) x (d+1) one. All solve the same problem (tested to
  agree to 1e-10); we use ``linalg.solve`` rather than an explicit inverse (better conditioned).
- The harness evaluates LD-RR labels by training ordinary models with its protocol, like every method.
- ``select_best``, ``val_fraction``, ``target_sampling``, ``cross_balanced`` and the validation
  generator: as in :mod:`harness_distillers.ld`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, ClassVar

from harness import Capabilities, Distiller, DistilledSet, Features

from .ld_common import (
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

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

RIDGE_FORMS = ("auto", "dual", "primal")


def with_bias(features: "torch.Tensor") -> "torch.Tensor":
    """Append a column of ones (the bias input): [b, d] -> [b, d + 1]."""
    import torch

    return torch.cat([features, features.new_ones(features.shape[0], 1)], dim=1)


def ridge_solution(p: "torch.Tensor", y: "torch.Tensor", lam: float, form: str = "auto") -> "torch.Tensor":
    """argmin_W ||p W - y||^2 + lam ||W||^2 for p [b, k], y [b, C]: W [k, C], differentiable.

    "dual" (Woodbury): W = p^T (p p^T + lam I_b)^-1 y, a b x b solve (the code's form);
    "primal": W = (p^T p + lam I_k)^-1 p^T y, a k x k solve; "auto" picks the smaller system.
    """
    import torch

    b, k = p.shape
    if form == "auto":
        form = "dual" if b <= k else "primal"
    if form == "dual":
        gram = p @ p.T + lam * torch.eye(b, dtype=p.dtype, device=p.device)
        return p.T @ torch.linalg.solve(gram, y)
    if form == "primal":
        gram = p.T @ p + lam * torch.eye(k, dtype=p.dtype, device=p.device)
        return torch.linalg.solve(gram, p.T @ y)
    raise ValueError(f"ridge form must be one of {RIDGE_FORMS}, got {form!r}")


@dataclass
class RRModel:
    """An RR model: backbone, its optimiser, the learned scale and its optimiser, the global classifier."""

    features: Features
    params: list
    scale: "torch.Tensor"  # 0-dim leaf
    feat_opt: "torch.optim.Optimizer"
    scale_opt: "torch.optim.Optimizer"
    w_global: "torch.Tensor"  # [d + 1, C], no grad


def fresh_rr_model(model: "nn.Module", cfg: Any, num_classes: int, device: Any, dtype: Any) -> RRModel:
    """The code's (re)start of an RR model: Adam(backbone, model_lr), AdjustLayer(scale_init) with
    Adam(scale_lr), global classifier zeros(d + 1, C) (lines 305-321, 666-680)."""
    import torch

    features = Features(model.to(device).train())  # the classifier's input; the arch declares features=True
    dim = features.dim
    # the scale is float32 as the code's AdjustLayer (torch.FloatTensor), whatever the data's dtype
    scale = torch.tensor(float(cfg.scale_init), device=device, requires_grad=True)
    params = [p for p in features.parameters() if p.requires_grad]
    return RRModel(features, params, scale, torch.optim.Adam(params, lr=cfg.model_lr),
                   torch.optim.Adam([scale], lr=cfg.scale_lr), torch.zeros(dim + 1, num_classes, device=device, dtype=dtype))


def rr_fit_step(m: RRModel, p_base: "torch.Tensor", w: "torch.Tensor", targets: "torch.Tensor") -> float:
    """Backbone and scale step on soft-CE(s * P W, targets); W <- W.detach() becomes the global one."""
    import torch

    base_loss = soft_cross_entropy(m.scale * (p_base @ w), targets)
    grads = torch.autograd.grad(base_loss, m.params + [m.scale], allow_unused=True)
    for p, g in zip(m.params + [m.scale], grads):
        p.grad = None if g is None else g.detach()
    m.feat_opt.step()
    m.scale_opt.step()
    m.w_global = w.detach()
    return float(base_loss.detach())


@dataclass
class RRState:
    """Everything one LD-RR outer step reads and updates (injectable: the golden tests build one)."""

    labels: "torch.Tensor"
    label_opt: "torch.optim.Optimizer"
    model: RRModel


def rr_outer_step(state: RRState, base_x: "torch.Tensor", bi: "torch.Tensor", xt: "torch.Tensor",
                  yt: "torch.Tensor", cfg: Any) -> dict[str, float]:
    """One LD-RR outer step (the code's ``train`` loop body, lines 578-626)."""
    import torch
    import torch.nn.functional as F

    labels, m = state.labels, state.model
    p_base = with_bias(m.features(base_x[bi]))
    w_local = ridge_solution(p_base, labels[bi], cfg.ridge_lambda, cfg.ridge_form)
    w = (1.0 - cfg.ema_rate) * m.w_global + cfg.ema_rate * w_local
    logits = m.scale * (with_bias(m.features(xt)) @ w)
    loss = F.cross_entropy(logits, yt)
    (labels.grad,) = torch.autograd.grad(loss, [labels], retain_graph=True)
    state.label_opt.step()
    renormalise_(labels)
    base_loss = rr_fit_step(m, p_base, w, labels[bi].detach())
    with torch.no_grad():
        err = float((top1(logits) != yt).double().mean())
    return {"loss": float(loss.detach()), "base_loss": base_loss, "target_err": err, "scale": float(m.scale.detach())}


def train_rr_on_labels(task: Any, base_x: "torch.Tensor", labels: "torch.Tensor", steps: int, base_batch: int,
                       cfg: Any, generator: "torch.Generator") -> RRModel:
    """The training half of the code's RR ``validate``/``test`` (lines 717-759, 791-853): a fresh RR
    model (backbone, zero global classifier, scale) trained for ``steps`` steps on random base
    minibatches with the labels. Returned with the backbone in eval mode."""
    m = fresh_rr_model(task.make_model(), cfg, task.num_classes, task.device, labels.dtype)
    labels = labels.detach()
    for _ in range(steps):
        bi = minibatch(len(base_x), base_batch, generator, task.device)
        p_base = with_bias(m.features(base_x[bi]))
        w_local = ridge_solution(p_base, labels[bi], cfg.ridge_lambda, cfg.ridge_form)
        rr_fit_step(m, p_base, (1.0 - cfg.ema_rate) * m.w_global + cfg.ema_rate * w_local, labels[bi])
    m.features.eval()
    return m


def rr_logits(m: RRModel, x: "torch.Tensor") -> "torch.Tensor":
    """What the code's validation and test models predict: ``model(x, w)``, the global classifier
    WITHOUT the scale (lines 768, 862)."""
    return with_bias(m.features(x)) @ m.w_global


def fit_error_rr(task: Any, base_x: "torch.Tensor", base_batch: int, cfg: Any, val_x: "torch.Tensor",
                 val_y: "torch.Tensor", generator: "torch.Generator") -> Callable[["torch.Tensor", int], float]:
    """The code's RR ``validate`` (lines 709-780): :func:`train_rr_on_labels`, then the validation error."""

    def fit(labels: "torch.Tensor", steps: int) -> float:
        m = train_rr_on_labels(task, base_x, labels, steps, base_batch, cfg, generator)
        return classification_error(lambda x: rr_logits(m, x), val_x, val_y)

    return fit


class LDRR(Distiller):
    """Label distillation, first-order through a closed-form ridge-regression head (Bohdal et al. 2020).

    Algorithm, defaults (with their source in the code), test protocol and "Deviations, and why":
    the module docstring. One outer step is :func:`rr_outer_step` (golden-tested).
    """

    name = "ld-rr"
    capabilities = Capabilities(learns_labels=True, cross_dataset=True, needs_features=True)

    @dataclass(frozen=True)
    class Config(LabelDistillationConfig):
        """LD-RR's hyperparameters: the fields shared with LD
        (:class:`~harness_distillers.ld_common.LabelDistillationConfig`, the code's defaults;
        ``model_lr`` trains the backbone) and the ridge-regression head's."""

        method: ClassVar[str] = "ld-rr"
        ridge_lambda: float = 1.0
        """L2 regulariser of the ridge regression (the code's ``l2_regularizer_lambda = 1.0``)."""
        ridge_form: str = "auto"
        """"dual" (Woodbury, b x b; the code's), "primal" ((d+1) x (d+1)) or "auto" (the smaller)."""
        ema_rate: float = 0.01
        """Global classifier W <- (1 - ema_rate) W + ema_rate W_local (the code: 0.99 / 0.01)."""
        scale_init: float = 1.0
        """Initial calibration scale (the code: ``AdjustLayer(init_scale=1)``)."""
        scale_lr: float = 0.01
        """Adam learning rate of the scale (the code: ``Adam(adjust.parameters(), 0.01)``)."""

        def __post_init__(self) -> None:
            super().__post_init__()
            where = self.method
            check_positive(where, ridge_lambda=self.ridge_lambda, scale_init=self.scale_init, scale_lr=self.scale_lr)
            if isinstance(self.ema_rate, bool) or not isinstance(self.ema_rate, (int, float)) or not 0 < self.ema_rate <= 1:
                raise ValueError(f"{where}.ema_rate must be in (0, 1], got {self.ema_rate!r}")
            if self.ridge_form not in RIDGE_FORMS:
                raise ValueError(f"{where}.ridge_form must be one of {RIDGE_FORMS}, got {self.ridge_form!r}")

    @staticmethod
    def state(state: RRState, progress: Progress) -> dict:
        """What a mid-trial checkpoint holds (the harness adds its RNGs and model count)."""
        m = state.model
        return {"labels": state.labels.detach(), "label_opt": state.label_opt.state_dict(),
                "model": m.features.model.state_dict(), "scale": m.scale.detach(), "w_global": m.w_global,
                "feat_opt": m.feat_opt.state_dict(), "scale_opt": m.scale_opt.state_dict(),
                "progress": progress.state_dict()}

    @staticmethod
    def load_state(state: RRState, progress: Progress, saved: dict) -> None:
        import torch

        m = state.model
        with torch.no_grad():
            state.labels.copy_(saved["labels"])
            m.scale.copy_(saved["scale"])
        state.label_opt.load_state_dict(saved["label_opt"])
        m.features.model.load_state_dict(saved["model"])
        m.w_global = saved["w_global"].to(m.w_global.device, m.w_global.dtype)
        m.feat_opt.load_state_dict(saved["feat_opt"])
        m.scale_opt.load_state_dict(saved["scale_opt"])
        progress.load_state_dict(saved["progress"])

    def distill(self, task: Any) -> DistilledSet:
        import torch

        cfg = task.config
        first = task.make_model()
        base = select_base(task, cfg.cross_balanced)  # first draw from task.generator: LD's examples for the seed
        split = split_validation(task, base, cfg.val_fraction, cfg.select_best)
        n, num_classes, device = task.n, task.num_classes, task.device
        base_batch = cfg.base_batch or paper_base_batch(n)
        window = cfg.reset_window or paper_reset_window(n, num_classes)
        targets = TargetBatches(split.target, cfg.target_batch, cfg.target_sampling, task.generator)
        select, vgen = None, None
        if cfg.select_best:
            val = split.val.to(device)
            vgen = validation_generator(task)
            select = ValidationSelect(fit_error_rr(task, base.x, base_batch, cfg, task.x[val], task.y[val], vgen),
                                      cfg.val_every_epochs)
        labels = uniform_labels(n, num_classes, device, task.x.dtype)
        state = RRState(labels, torch.optim.Adam([labels], lr=cfg.label_lr),
                        fresh_rr_model(first, cfg, num_classes, device, task.x.dtype))
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
            m = rr_outer_step(state, base.x, bi, task.x[ti], task.y[ti], cfg)
            if plateau.update(m["target_err"]):
                state.model = fresh_rr_model(task.make_model(), cfg, num_classes, device, task.x.dtype)
            if select is not None and epoch_end:
                select.after_epoch(targets.epoch, step, state.labels, plateau)
            done = step + 1
            task.log(step, **m, resets=len(plateau.lifetimes))
            task.checkpoint(done, lambda: self.state(state, progress))

        labels, chosen = (select.result(state.labels, plateau) if select is not None else
                          (state.labels.detach().clone(), {"selected": "last", "test_steps": plateau.model_lifetime()}))
        meta = {"method": "ld-rr", **base.meta(task), "outer_steps_done": done, "base_batch": base_batch,
                "reset_window": window, "model_resets": len(plateau.lifetimes), "model_lifetimes": plateau.lifetimes,
                "model_lifetime": plateau.model_lifetime(), "target_rows": len(split.target),
                "val_rows": len(split.val), "steps_per_epoch": targets.per_epoch, **chosen}
        return DistilledSet(x=base.x, y=labels, meta=meta)
