"""Label distillation through a ridge-regression layer (LD-RR), first-order.

Bohdal, Hospedales & Yang (2020), "Flexible Dataset Distillation: Learn Labels Instead of Images"
(arXiv:2006.08572), the first-order variant; reference code github.com/ondrejbohdal/label-distillation,
``label_distillation_rr.py`` and ``model_architectures.AdjustLayer`` ("the code"). No gradient goes
through a model's training step: the classifier on top of the backbone is the closed-form solution
of a ridge regression onto the soft labels, so the target loss is a differentiable function of the
labels directly::

    x~, y~ as in LD (same base examples for the same seed; labels uniform 1/C, on the simplex)
    phi    <- backbone of task.make_model() (every layer but the final Linear); Adam(phi, model_lr)
    s      <- scale_init (the learned calibration scale); Adam(s, scale_lr)
    W      <- 0, the global classifier [d + 1, C] (last row = bias)
    repeat outer_steps times:
        (x_t', y_t') <- target minibatch;  (x~', y~') <- base minibatch
        P     <- [phi(x~'), 1]                                              [b, d + 1]
        W_l   <- argmin_W ||P W - y~'||^2 + lambda ||W||^2                  (closed form, lambda = 1)
               = P^T (P P^T + lambda I_b)^-1 y~'      (dual / Woodbury form, used when b <= d + 1)
               = (P^T P + lambda I_(d+1))^-1 P^T y~'  (primal form otherwise; the same matrix)
        W     <- (1 - ema_rate) W.detach() + ema_rate W_l                   (slow global classifier)
        L     <- CE(s * [phi(x_t'), 1] W, y_t')
        y~    <- Adam(label_lr) step on grad_y~ L (through W_l);  clamp to [0, 1];  rows / row sums
        L_b   <- soft-CE(s * P W, y~' (the updated labels, detached))
        phi, s <- Adam steps on grad L_b      (the target data train the labels only, as in the code)
        if the moving-average error on x_t' stopped improving (ld.PlateauReset): fresh backbone,
           optimisers, s and W = 0
    return (x~, y~)

What follows the code exactly, and where this differs:
- The learned scale is trained on the BASE loss L_b only (Adam, lr 0.01, init 1): the code keeps
  target data out of it on purpose ("we do not want to learn it using target set data"); the target
  loss L sends gradients to the labels alone.
- L_b back-propagates into the backbone both through P and through W's dependence on W_l, as the
  code's ``feat_loss.backward()`` does.
- The bias column is appended to the features and regularised with the weights (the code's
  ``feature_add_bias``); lambda = 1.0 (the code: "we tried 0.01, 0.1, 1.0, 10; 1.0 worked best").
- The code's backbone is LeNet/AlexNet without its last layer (84/192 features); here it is
  ``task.make_model()`` minus its final ``nn.Linear``, which requires an ``nn.Sequential`` ending
  in one (every harness architecture is one); anything else raises a clear error.
- The code always uses the dual form (its base batch, <= 50, is below its feature size); here the
  form is chosen by size (``ridge_form = "auto"``) and both are tested to agree.
- The code evaluates LD-RR labels by training the same RR model (backbone + global classifier) from
  scratch; the harness trains ordinary models on (x~, y~) with its protocol, like every method.
- Label selection by validation error, minibatch sampling, budget and cross-dataset balancing:
  as in :mod:`harness_distillers.ld`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from harness import Capabilities, DistilledSet

from .ld import (
    PAPER_OUTER_STEPS,
    PlateauReset,
    check_int,
    check_positive,
    minibatch,
    paper_base_batch,
    paper_reset_window,
    renormalise_,
    select_base,
    soft_cross_entropy,
    uniform_labels,
)

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

RIDGE_FORMS = ("auto", "dual", "primal")


def split_backbone(model: "nn.Module") -> tuple["nn.Module", int]:
    """``(feature extractor, feature dim)``: an ``nn.Sequential`` without its final ``nn.Linear``.

    The feature extractor shares its modules with ``model`` (a view, not a copy).
    """
    from torch import nn

    if not isinstance(model, nn.Sequential) or len(model) < 2 or not isinstance(model[-1], nn.Linear):
        raise TypeError(
            f"ld-rr replaces the model's last layer by a ridge-regression classifier and needs an "
            f"nn.Sequential whose last module is an nn.Linear (features = all modules before it); "
            f"the architecture built a {type(model).__name__}"
            + (f" ending in {type(model[-1]).__name__}" if isinstance(model, nn.Sequential) and len(model) else "")
        )
    return model[:-1], int(model[-1].in_features)


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


class LDRR:
    """Label distillation, first-order through a closed-form ridge-regression head (Bohdal et al. 2020)."""

    name = "ld-rr"
    capabilities = Capabilities(learns_labels=True, cross_dataset=True)

    @dataclass
    class Config:
        outer_steps: int = PAPER_OUTER_STEPS
        """Outer (label) steps; default the code's MNIST budget, 400 epochs x 49 batches = 19,600."""
        label_lr: float = 1e-3
        """Adam learning rate of the labels (the code: ``torch.optim.Adam([labels])``, default lr)."""
        ridge_lambda: float = 1.0
        """L2 regulariser of the ridge regression (the code's ``l2_regularizer_lambda = 1.0``)."""
        ridge_form: str = "auto"
        """"dual" (Woodbury, b x b; the code's), "primal" ((d+1) x (d+1)) or "auto" (the smaller)."""
        ema_rate: float = 0.01
        """Global classifier W <- (1 - ema_rate) W + ema_rate W_local (the code: 0.99 / 0.01)."""
        base_batch: int = 0
        """Base minibatch size; 0 = the code's rule (half the base examples, within [10, 50]); <= n."""
        target_batch: int = 1024
        """Real target examples per outer step (code ``--batch_size 1024``); capped at len(task.x)."""
        model_lr: float = 1e-3
        """Adam learning rate of the backbone (the code: ``Adam(model.parameters())``, default lr)."""
        scale_init: float = 1.0
        """Initial calibration scale (the code: ``AdjustLayer(init_scale=1)``)."""
        scale_lr: float = 0.01
        """Adam learning rate of the scale (the code: ``Adam(adjust.parameters(), 0.01)``)."""
        reset_window: int = 0
        """Model reset window and patience in steps; 0 = the code's rule (50; 200 for n > 100;
        100 for more than 10 classes). See :class:`harness_distillers.ld.PlateauReset`."""

        def __post_init__(self) -> None:
            where = "ld-rr"
            check_int(where, "outer_steps", self.outer_steps, 1)
            check_positive(where, label_lr=self.label_lr, ridge_lambda=self.ridge_lambda,
                           model_lr=self.model_lr, scale_init=self.scale_init, scale_lr=self.scale_lr)
            if isinstance(self.ema_rate, bool) or not isinstance(self.ema_rate, (int, float)) or not 0 < self.ema_rate <= 1:
                raise ValueError(f"{where}.ema_rate must be in (0, 1], got {self.ema_rate!r}")
            if self.ridge_form not in RIDGE_FORMS:
                raise ValueError(f"{where}.ridge_form must be one of {RIDGE_FORMS}, got {self.ridge_form!r}")
            check_int(where, "base_batch", self.base_batch, 0, " (0 = the paper's rule)")
            check_int(where, "target_batch", self.target_batch, 1)
            check_int(where, "reset_window", self.reset_window, 0, " (0 = the paper's rule)")

    def distill(self, task: Any) -> DistilledSet:
        import torch
        import torch.nn.functional as F

        cfg = task.config
        first = task.make_model()
        split_backbone(first)  # fail before any compute if the architecture cannot be split
        base = select_base(task)  # first draw from task.generator: the same examples as LD for this seed
        n, num_classes, device = task.n, task.num_classes, task.device
        base_batch = cfg.base_batch or paper_base_batch(n)
        window = cfg.reset_window or paper_reset_window(n, num_classes)
        labels = uniform_labels(n, num_classes, device)
        label_opt = torch.optim.Adam([labels], lr=cfg.label_lr)
        plateau = PlateauReset(window)

        def fresh(model=None):
            features, dim = split_backbone((task.make_model() if model is None else model).to(device).train())
            scale = torch.tensor(float(cfg.scale_init), device=device, requires_grad=True)
            params = [p for p in features.parameters() if p.requires_grad]
            return (features, params, scale, torch.optim.Adam(params, lr=cfg.model_lr),
                    torch.optim.Adam([scale], lr=cfg.scale_lr), torch.zeros(dim + 1, num_classes, device=device))

        features, params, scale, feat_opt, scale_opt, w_global = fresh(first)
        task.expect_steps(cfg.outer_steps)
        done = 0
        for step in range(cfg.outer_steps):
            if task.time_left() <= 0:
                break
            ti = minibatch(len(task.x), cfg.target_batch, task.generator, device)
            bi = minibatch(n, base_batch, task.generator, device)
            xt, yt = task.x[ti], task.y[ti]

            p_base = with_bias(features(base.x[bi]))
            w_local = ridge_solution(p_base, labels[bi], cfg.ridge_lambda, cfg.ridge_form)
            w = (1.0 - cfg.ema_rate) * w_global + cfg.ema_rate * w_local
            logits = scale * (with_bias(features(xt)) @ w)
            loss = F.cross_entropy(logits, yt)
            (labels.grad,) = torch.autograd.grad(loss, [labels], retain_graph=True)
            label_opt.step()
            renormalise_(labels)

            base_loss = soft_cross_entropy(scale * (p_base @ w), labels[bi].detach())
            grads = torch.autograd.grad(base_loss, params + [scale], allow_unused=True)
            for p, g in zip(params + [scale], grads):
                p.grad = None if g is None else g.detach()
            feat_opt.step()
            scale_opt.step()
            w_global = w.detach()
            with torch.no_grad():
                err = float((logits.argmax(1) != yt).float().mean())
            del grads, w, w_local, p_base, logits
            if plateau.update(err):
                features, params, scale, feat_opt, scale_opt, w_global = fresh()
            done = step + 1
            task.log(step, loss=float(loss.detach()), base_loss=float(base_loss.detach()), target_err=err,
                     scale=float(scale.detach()), resets=len(plateau.lifetimes))

        meta = {"method": "ld-rr", **base.meta(task), "outer_steps_done": done,
                "base_batch": base_batch, "reset_window": window,
                "model_resets": len(plateau.lifetimes), "model_lifetimes": plateau.lifetimes}
        return DistilledSet(x=base.x, y=labels.detach().clone(), meta=meta)
