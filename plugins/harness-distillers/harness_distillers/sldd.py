"""SLDD: soft-label dataset distillation (Sucholutsky & Schonlau 2021).

"Soft-Label Dataset Distillation and Text Dataset Distillation", Sucholutsky & Schonlau, IJCNN 2021
(arXiv:1910.02551); code github.com/ilia10000/dataset-distillation, a fork of the Dataset
Distillation code of Wang et al. 2018 (github.com/SsnL/dataset-distillation). The algorithm box::

    input : real training data (x_r, y_r); n synthetic examples cut into `steps` equal batches;
            T = steps x epochs unrolled gradient-descent steps
    init  : x~ ~ N(0, I)                     synthetic inputs          [n, *input_shape]
            y~ = one-hot(i mod C)             soft labels (learned)     [n, C]
            eta~_i = softplus^-1(lr_init)     raw step sizes            [T]
    for t = 0 .. outer_steps - 1:                                        (SLDD.distill)
        theta_0 <- a fresh init of `model_init` ("unknown init", init="random")
                or the one fixed init            ("known init",   init="fixed")
        (x_r, y_r) <- the next real minibatch of `batch_size` examples
        --- one outer step ------------------------------------------- (SLDD.outer_step)
        for i = 0 .. T - 1:                       (create_graph: differentiable in x~, y~, eta~)
            b = i mod steps
            theta_{i+1} = theta_i - softplus(eta~_i) * grad_theta CE_soft(f(x~_b; theta_i), y~_b)
        L = CE(f(x_r; theta_T), y_r)
        (x~, y~, eta~) <- Adam(x~, y~, eta~; grad L)   lr = outer_lr * decay_factor^(t // decay_every)
        [y~ <- rows projected onto the probability simplex           (label_constraint="simplex")]
    return x~, y~, softplus(eta~) in replay order, and theta_0 when the init is fixed

The inner loop is ``harness.unroll_gd``; evaluation with the "distilled" recipe replays the set
with the same function (without ``create_graph``): plain GD, step i on batch ``i mod meta["steps"]``
with the learned step size ``lrs[i]`` and the soft-label cross-entropy, from a fresh init
(init="random") or from ``init_state`` ("known" init evaluation).

Checked against the code itself: ``tests/golden/test_sldd_dd.py`` runs :meth:`SLDD.outer_step`
from states recorded by running the reference ``Trainer`` (SLDD at 2856332, DD at 24e6958; see
``tests/golden/README-sldd-dd.md``) and matches its inputs, labels, step sizes and outer loss after
1 and 3 outer steps to 1e-5 (float64). Faithful to the code: Gaussian input init; per-step learning
rates through softplus, raw values initialised at ``log(expm1(distill_lr))``; one Adam (lr 0.01,
betas (0.5, 0.999)) over inputs, labels and raw step sizes with step decay x0.5; a real minibatch
of 1024 per outer step drawn epoch-wise without replacement (the code's shuffled DataLoader, last
partial batch kept); inner loss = soft cross-entropy ``-(y * log_softmax(logits)).sum(1).mean()``
against the learned labels *as given*, unconstrained (the SLDD code's ``task_loss`` =
``cross_entropy_with_probs`` with ``--label_softmax`` off); outer loss = hard-label cross-entropy;
inner steps in train mode, outer loss in eval mode; one model per outer step (``n_nets = 1``),
re-initialised every step for unknown init, initialised once for known init; xavier-normal model
init (``--init xavier``, applied by the harness from ``model_init``).

Deviations, and why:

- Schedules count outer steps, and by default their shape is the code's at any budget: the code halves the Adam lr every ``decay_epochs=40`` of ``epochs=400`` epochs, so
  ``decay_every=None`` means ``outer_steps // 10``; an absolute ``decay_every`` stays possible.
  The code counts epochs over the real training set; on a small training set an epoch-based
  schedule would decay far too early, and a scaled-down CPU run would never decay at all.
  ``outer_steps`` defaults to 23,600 = 400 MNIST epochs x 59 iterations (60,000 / 1,024, last
  partial batch kept). The lr of outer step t is ``outer_lr * decay_factor^(t // decay_every)``:
  the first decay after 10% of the run, 9 halvings in all, as the code's ``StepLR`` under the
  PyTorch of its time (0.4/1.0: decays at epochs 40, 80, ..., 360). Under PyTorch >= 1.1 the code's
  ``scheduler.step()`` at the top of every epoch shifts each decay one epoch earlier (39, ..., 399);
  that is an API change, not the authors' schedule.
- ``n`` comes from the trial (``ipc x C`` or ``n``) and is cut into ``steps`` batches; the code
  instead derives ``n = distill_steps x images_per_class_per_step x num_distill_classes``. Example
  i starts as class ``i mod C``. Wherever the code can express the configuration the labels are
  identical (per-step batches of a multiple of C images: every step holds each class equally; and
  ``n < C`` with ``steps=1``: classes ``0 .. n-1``, the code's ``--num_distill_classes n``). With
  per-step batches of m < C images and several steps the code repeats classes ``0 .. m-1`` in every
  step; here the steps cover successive classes (10 images, 2 steps, 10 classes: every class once).
- ``label_constraint="simplex"`` (an option, not the default) projects the labels onto the
  probability simplex after every Adam step. The code leaves them unconstrained: rows can go
  negative or stop summing to one. The evaluator applies the same soft cross-entropy to ``y`` as
  given, which is linear in the labels, so an unconstrained set replays exactly. Measured on
  mnist-subset (known init, 10 images, 600 outer steps): PyTorch's default init, no decay inside the
  run and simplex labels reached 28%; xavier init, decay inside the run and unconstrained labels
  74% (the reference code itself: 62%). The projection is one of those changes, hence not the default.
- The paper's headline 10- and 5-image MNIST runs use ``distill_steps 1`` (the code README's
  known-init command); the default here is the code's ``distill_steps 10``, so set ``steps=1`` (or
  any divisor of n) for those budgets: n must be a multiple of ``steps``.
- The real data are the trial's training set as the harness loads it (the harness's own
  normalisation), not the code's ``torchvision`` pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from harness import Capabilities, Distiller, DistilledSet, TrialError, check_init_scheme, unroll_gd

from .checks import check_choice, check_int, check_positive

# -- hyperparameters -------------------------------------------------------------------------------


@dataclass(frozen=True)
class UnrolledGDConfig:
    """Hyperparameters shared by DD and SLDD: defaults of the Dataset Distillation code
    (Wang et al. 2018, ``base_options.py``), which the SLDD fork keeps unchanged.

    Attributes:
        steps: ``--distill_steps`` (10). Number of equal consecutive batches the n synthetic examples
            are cut into; one GD step per batch. n must be a multiple of it. The SLDD paper's 10- and
            5-image MNIST results use 1.
        epochs: ``--distill_epochs`` (3). Passes over the batches: ``steps x epochs`` unrolled GD
            steps, each with its own learned step size.
        init: ``--train_nets_type`` (``unknown_init``). "random": a fresh model init every outer step
            (the set must train any init of the architecture); "fixed": one init for the whole run
            ("known init", the code's ``known_init`` with ``--n_nets 1``: one model initialised once
            and never reset), returned as ``init_state`` for known-init evaluation.
        model_init: ``--init`` (``xavier``, with ``--init_param 1``): the init scheme of every model
            init, one of :data:`harness.init.INIT_SCHEMES`; "xavier" = xavier_normal gain 1, zero
            bias (the code's ``init_weights``). Applied by the harness: ``task.make_model()`` returns
            models already initialised with it. "default" = the architecture's PyTorch init.
        lr_init: ``--distill_lr`` (0.02, MNIST; the code uses 0.001 for CIFAR-10). Initial value of
            every learned step size: softplus of a raw parameter initialised at
            ``log(expm1(lr_init))``, as the code does.
        outer_lr: ``--lr`` (0.01). Adam learning rate for inputs, labels and raw step sizes.
        betas: Adam betas, hard-coded (0.5, 0.999) in the code's ``Trainer``.
        decay_factor: ``--decay_factor`` (0.5). Multiplies the Adam lr every ``decay_every`` outer steps.
        decay_every: None (default): ``max(1, outer_steps // 10)``, the code's ``--decay_epochs 40``
            of ``--epochs 400``, so the schedule has the code's shape at any budget (2,360 at the
            default ``outer_steps``). An int: an absolute number of outer steps. Never epochs.
        outer_steps: 23,600 = the code's ``--epochs 400`` x 59 iterations per MNIST epoch (60,000 /
            1,024, last partial batch kept): the paper's number of outer (Adam) steps. Grids on CPU
            scale it down explicitly; the decay points scale with it.
        batch_size: ``--batch_size`` (1024). Real examples per outer step (capped by the training set).
    """

    steps: int = 10
    epochs: int = 3
    init: Literal["random", "fixed"] = "random"
    model_init: str = "xavier"
    lr_init: float = 0.02
    outer_lr: float = 0.01
    betas: tuple[float, float] = (0.5, 0.999)
    decay_factor: float = 0.5
    decay_every: int | None = None
    outer_steps: int = 23600
    batch_size: int = 1024

    def __post_init__(self) -> None:
        check_int("steps", self.steps, 1)
        check_int("epochs", self.epochs, 1)
        check_choice("init", self.init, ("random", "fixed"))
        check_init_scheme(self.model_init, "model_init")
        check_positive("lr_init", self.lr_init)
        check_positive("outer_lr", self.outer_lr)
        betas = tuple(self.betas) if isinstance(self.betas, (list, tuple)) else None
        if betas is None or len(betas) != 2 or not all(
            isinstance(b, (int, float)) and not isinstance(b, bool) and 0.0 <= b < 1.0 for b in betas
        ):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas!r}")
        object.__setattr__(self, "betas", (float(betas[0]), float(betas[1])))  # frozen: normalise once
        if isinstance(self.decay_factor, bool) or not isinstance(self.decay_factor, (int, float)) \
                or not 0.0 < self.decay_factor <= 1.0:
            raise ValueError(f"decay_factor must be in (0, 1], got {self.decay_factor!r}")
        if self.decay_every is not None:
            check_int("decay_every", self.decay_every, 1)
        check_int("outer_steps", self.outer_steps, 1)
        check_int("batch_size", self.batch_size, 1)


def decay_interval(config: UnrolledGDConfig) -> int:
    """Outer steps between two lr decays: ``decay_every``, or a tenth of the run when it is None."""
    return config.decay_every if config.decay_every is not None else max(1, config.outer_steps // 10)


def outer_lr_at(config: UnrolledGDConfig, step: int) -> float:
    """The Adam learning rate at outer step ``step`` (0-based): step decay counted in outer steps."""
    return config.outer_lr * config.decay_factor ** (step // decay_interval(config))


def raw_lr_init(lr_init: float, count: int, device: torch.device | str = "cpu",
                dtype: torch.dtype | None = None) -> torch.Tensor:
    """``count`` raw step sizes with ``softplus(raw) = lr_init``: ``log(expm1(lr_init))``, the code's
    "undo the softplus" init (computed in the tensor's dtype, as the code does)."""
    return torch.full((count,), float(lr_init), device=device, dtype=dtype).expm1_().log_()


# -- the inner loop: unrolled gradient descent ----------------------------------------------------


# -- labels ---------------------------------------------------------------------------------------


def project_to_simplex(v: torch.Tensor) -> torch.Tensor:
    """Euclidean projection of each row onto the probability simplex (Duchi et al. 2008)."""
    c = v.shape[1]
    u, _ = torch.sort(v, dim=1, descending=True)
    css = u.cumsum(dim=1) - 1.0
    k = torch.arange(1, c + 1, device=v.device, dtype=v.dtype)
    rho = ((u - css / k) > 0).sum(dim=1, keepdim=True)  # >= 1: the largest entry always qualifies
    tau = css.gather(1, rho - 1) / rho.to(v.dtype)
    return (v - tau).clamp_min(0.0)


def initial_labels(n: int, num_classes: int, kind: str, generator: torch.Generator) -> torch.Tensor:
    """Label init values (CPU). Example i belongs to class ``i mod C`` (classes 0..n-1 when n < C).

    "onehot": the SLDD code's default; "smoothed": one-hot smoothed by 0.1 (the code's ``smoothed``);
    "uniform": 1/C everywhere; "random": U(0, 1) entries (the code's ``uniform`` random init),
    normalised per row when the labels are kept on the simplex.
    """
    onehot = F.one_hot(torch.arange(n) % num_classes, num_classes).float()
    if kind == "onehot":
        return onehot
    if kind == "smoothed":
        return onehot * 0.9 + 0.1 / num_classes
    if kind == "uniform":
        return torch.full((n, num_classes), 1.0 / num_classes)
    if kind == "random":
        return torch.rand((n, num_classes), generator=generator)
    raise ValueError(f"unknown label init {kind!r}")


class LearnedLabels:
    """Soft labels optimised with the inputs (SLDD): used as given by the inner loss."""

    def __init__(self, init: torch.Tensor, constraint: str, device: torch.device):
        self.constraint = constraint
        if constraint == "simplex":
            init = init / init.sum(dim=1, keepdim=True)
        self.param = init.to(device).requires_grad_(True)

    @property
    def params(self) -> list[torch.Tensor]:
        return [self.param]

    def value(self) -> torch.Tensor:
        return self.param

    @torch.no_grad()
    def after_step(self) -> None:
        if self.constraint == "simplex":
            self.param.copy_(project_to_simplex(self.param))


class FixedLabels:
    """Hard labels frozen one-hot (DD)."""

    def __init__(self, onehot: torch.Tensor, device: torch.device):
        self.onehot = onehot.to(device)

    @property
    def params(self) -> list[torch.Tensor]:
        return []

    def value(self) -> torch.Tensor:
        return self.onehot

    def after_step(self) -> None:
        pass


# -- the real data ---------------------------------------------------------------------------------


class RealBatches:
    """Index batches of the real data, epoch after epoch, each epoch a fresh permutation
    (the code's shuffled DataLoader; the last, partial batch of an epoch is kept). Its position is
    part of a checkpoint (``state_dict``), so a resumed run sees the batches an uninterrupted one would."""

    def __init__(self, n_real: int, batch_size: int, generator: torch.Generator):
        self.n, self.batch, self.generator = n_real, min(batch_size, n_real), generator
        self.order: torch.Tensor | None = None
        self.pos = 0

    def next(self) -> torch.Tensor:
        if self.order is None or self.pos >= self.n:
            self.order, self.pos = torch.randperm(self.n, generator=self.generator), 0
        idx = self.order[self.pos : self.pos + self.batch]
        self.pos += self.batch
        return idx

    def state_dict(self) -> dict:
        return {"order": self.order, "pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        self.order, self.pos = state["order"], int(state["pos"])


# -- what is learned -------------------------------------------------------------------------------


class Synthetic:
    """The learned state of a run: inputs ``x``, the labels, raw step sizes, and their one Adam.

    The code's ``Trainer.init_data_optim``: one ``Adam(lr=outer_lr, betas=betas)`` over every
    learned tensor (its lr is set per outer step by :meth:`SLDD.outer_step`)."""

    def __init__(self, x: torch.Tensor, labels: LearnedLabels | FixedLabels, raw_lrs: torch.Tensor,
                 outer_lr: float, betas: tuple[float, float]):
        self.x = x.requires_grad_(True)
        self.labels = labels
        self.raw_lrs = raw_lrs.requires_grad_(True)
        self.learned = [self.x, *labels.params, self.raw_lrs]
        self.opt = torch.optim.Adam(self.learned, lr=outer_lr, betas=betas)

    def lrs(self) -> torch.Tensor:
        """The step sizes in replay order: ``softplus(raw)``."""
        return F.softplus(self.raw_lrs)


# -- the distiller ---------------------------------------------------------------------------------


class SLDD(Distiller):
    """Soft-label dataset distillation: synthetic inputs, soft labels and step sizes through unrolled GD."""

    name = "sldd"
    capabilities = Capabilities(learns_inputs=True, learns_labels=True, learns_lr=True,
                                fewer_than_classes=True, known_init=True)

    @classmethod
    def carries_init(cls, config) -> bool:
        """Only a set distilled for one fixed init ("known init") carries that init."""
        return config.init == "fixed"

    @classmethod
    def check_trial(cls, config, spec) -> None:
        """Before compute (grid validation): the n examples must split into ``steps`` equal batches."""
        super().check_trial(config, spec)
        n = spec.n
        if n < config.steps or n % config.steps:
            raise ValueError(f"n={n} synthetic examples cannot be cut into steps={config.steps} equal batches; "
                             f"set steps to a divisor of n (the SLDD paper's 10- and 5-image runs use steps=1)")

    @dataclass(frozen=True)
    class Config(UnrolledGDConfig):
        """SLDD hyperparameters: the Dataset Distillation code's defaults (see
        :class:`UnrolledGDConfig`) plus the soft labels of the SLDD fork.

        Attributes:
            label_init: ``--random_init_labels`` ("": one-hot of ``--init_labels``, by default
                ``0 .. num_distill_classes - 1`` repeated per image per class). "onehot" (default) |
                "smoothed" (one-hot smoothed by 0.1) | "uniform" (1/C) | "random" (U(0,1) entries).
                Example i starts as class i mod C.
            label_constraint: "none" (default): the code's unconstrained labels, learned by Adam
                with the inputs and used as given by the inner loss (rows may leave the simplex;
                the evaluator's soft cross-entropy is linear in the labels, so replay stays exact).
                "simplex": project every row onto the probability simplex after each Adam step
                (not in the code; see the module's "Deviations, and why").
        """

        label_init: Literal["onehot", "smoothed", "uniform", "random"] = "onehot"
        label_constraint: Literal["none", "simplex"] = "none"

        def __post_init__(self) -> None:
            super().__post_init__()
            check_choice("label_init", self.label_init, ("onehot", "smoothed", "uniform", "random"))
            check_choice("label_constraint", self.label_constraint, ("none", "simplex"))

    # -- what DD overrides --------------------------------------------------------------------------
    def make_labels(self, values: torch.Tensor, cfg, device: torch.device) -> LearnedLabels | FixedLabels:
        """The labels object from initial values [n, C] (learned, with the Config's constraint)."""
        return LearnedLabels(values, cfg.label_constraint, device)

    def label_values(self, task, cfg) -> torch.Tensor:
        return initial_labels(task.n, task.num_classes, cfg.label_init, task.generator)

    def check_task(self, task, cfg) -> None:
        if task.n < cfg.steps or task.n % cfg.steps:
            raise ValueError(
                f"{self.name}: n={task.n} synthetic examples cannot be cut into steps={cfg.steps} equal "
                f"batches; set steps to a divisor of n (the SLDD paper's 10- and 5-image runs use steps=1)"
            )

    def meta(self, cfg) -> dict:
        return {"label_init": cfg.label_init, "label_constraint": cfg.label_constraint}

    # -- the algorithm ------------------------------------------------------------------------------
    def init_synthetic(self, task, cfg) -> Synthetic:
        """x~ ~ N(0, I), the initial labels, raw step sizes with softplus(raw) = lr_init."""
        x = torch.randn((task.n, *task.input_shape), generator=task.generator).to(task.device)
        labels = self.make_labels(self.label_values(task, cfg), cfg, task.device)
        raw = raw_lr_init(cfg.lr_init, cfg.steps * cfg.epochs, task.device)
        return Synthetic(x, labels, raw, cfg.outer_lr, cfg.betas)

    def outer_step(self, syn: Synthetic, net: nn.Module, xr: torch.Tensor, yr: torch.Tensor, lr: float,
                   steps: int, step: int = 0) -> float:
        """One outer step from theta_0 = ``net``'s parameters: T unrolled GD steps on the synthetic
        batches (train mode), the cross-entropy of the result on the real batch (eval mode), one
        Adam step with learning rate ``lr`` on inputs, labels and raw step sizes, then the label
        constraint. Returns the outer loss (before the update). ``step`` only names the step in errors.

        The code's ``Trainer.forward`` + ``backward`` + ``accumulate_grad`` + ``optimizer.step()``
        (its hand-written reverse pass through the unrolled steps is the gradient autograd takes here).
        """
        theta0 = {k: p.detach().clone().requires_grad_(True) for k, p in net.named_parameters() if p.requires_grad}
        net.train()
        theta = unroll_gd(net, theta0, list(syn.x.chunk(steps)), list(syn.labels.value().chunk(steps)), syn.lrs())
        net.eval()
        loss = F.cross_entropy(functional_call(net, theta, (xr,)), yr)
        if not torch.isfinite(loss):
            raise TrialError(f"{self.name}: outer loss became {loss.item()} at outer step {step}; "
                             f"lower lr_init or outer_lr")
        grads = torch.autograd.grad(loss, syn.learned)
        for group in syn.opt.param_groups:
            group["lr"] = lr
        for p, g in zip(syn.learned, grads):
            p.grad = g
        syn.opt.step()
        syn.labels.after_step()
        return loss.item()

    @staticmethod
    def state(syn: Synthetic, batches: RealBatches, loss: float) -> dict:
        """What a checkpoint holds besides the harness's RNGs: the learned tensors, their Adam, the
        position in the real data and the last loss."""
        return {"learned": [p.detach() for p in syn.learned], "opt": syn.opt.state_dict(),
                "batches": batches.state_dict(), "loss": loss}

    @staticmethod
    def load_state(syn: Synthetic, batches: RealBatches, state: dict) -> None:
        with torch.no_grad():
            for p, saved in zip(syn.learned, state["learned"]):
                p.copy_(saved)
        syn.opt.load_state_dict(state["opt"])
        batches.load_state_dict(state["batches"])

    def distill(self, task) -> DistilledSet:
        cfg = task.config
        self.check_task(task, cfg)
        device = task.device
        syn = self.init_synthetic(task, cfg)  # x~, y~, eta~ and their Adam

        fixed, init_state = None, None
        if cfg.init == "fixed":  # known init: one model init for the whole run
            fixed = task.make_model().to(device)
            init_state = {k: v.detach().cpu().clone() for k, v in fixed.state_dict().items()}

        batches = RealBatches(len(task.x), cfg.batch_size, task.generator)
        task.expect_steps(cfg.outer_steps)
        done, loss = 0, None
        saved = task.restore()  # a mid-trial checkpoint: continue where it stopped
        if saved is not None:
            done, state = saved
            self.load_state(syn, batches, state)
            loss = state["loss"]
        for step in range(done, cfg.outer_steps):
            if task.time_left() <= 0:
                break
            net = fixed if fixed is not None else task.make_model().to(device)  # theta_0
            idx = batches.next().to(task.x.device)  # the next real minibatch
            xr, yr = task.x[idx].to(device), task.y[idx].to(device)
            lr = outer_lr_at(cfg, step)
            loss = self.outer_step(syn, net, xr, yr, lr, cfg.steps, step)
            done = step + 1
            task.log(step, loss=loss, lr_mean=syn.lrs().mean().item(), outer_lr=lr)
            task.checkpoint(done, lambda: self.state(syn, batches, loss))

        meta = {"steps": cfg.steps, "epochs": cfg.epochs, "init": cfg.init, "outer_steps_done": done,
                "final_loss": loss, "decay_every": decay_interval(cfg), **self.meta(cfg)}
        return DistilledSet(
            x=syn.x.detach().clone(),
            y=syn.labels.value().detach().clone(),
            lrs=syn.lrs().detach().clone(),
            meta=meta,
            init_state=init_state,
        )
