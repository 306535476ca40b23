"""What the dataset-condensation methods (DC, DSA, DM) share: their common Config fields, a fixed
number of synthetic images per class with hard labels, and real images drawn per class."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from harness import DSA, DSA_STRATEGY, DSAParams, DistilledSet, check_init_scheme, dsa_draw_seed

from .checks import check_bool, check_choice, check_fraction, check_int, check_positive


@dataclass(frozen=True)
class CondensationConfig:
    """The hyperparameters DC, DSA and DM share (the DatasetCondensation code's flags; each method's
    Config documents its own defaults).

    Attributes:
        iterations: ``--Iteration``: outer iterations, each from a freshly initialised network.
        lr_img: ``--lr_img``: SGD learning rate of the synthetic images.
        momentum: SGD momentum of the images (0.5, hard-coded in the code's ``optimizer_img``).
        batch_real: ``--batch_real`` (256): real images per class per matching step.
        init: ``--init``: "noise" (N(0, I)) or "real" (random real images of each class).
        dsa: differentiable siamese augmentation (``--method DSA`` / DM's ``--dsa_strategy``); image
            data only (``Distiller.check_trial`` refuses it on anything else before compute).
        dsa_strategy: ``--dsa_strategy`` ("color_crop_cutout_flip_scale_rotate").
        model_init: init of the networks (``default``: PyTorch's own, as the code's ``get_network``
            leaves them; see :mod:`harness.init`).
    """

    iterations: int = 1000
    lr_img: float = 0.1
    momentum: float = 0.5
    batch_real: int = 256
    init: str = "noise"
    dsa: bool = False
    dsa_strategy: str = DSA_STRATEGY
    model_init: str = "default"

    def __post_init__(self) -> None:
        check_int("iterations", self.iterations, 1)
        check_positive("lr_img", self.lr_img)
        check_fraction("momentum", self.momentum)
        check_int("batch_real", self.batch_real, 1)
        check_choice("init", self.init, ("noise", "real"))
        check_bool("dsa", self.dsa)
        DSAParams(strategy=self.dsa_strategy)  # names unknown transforms
        check_init_scheme(self.model_init, "model_init")


def images_per_class(n: int, num_classes: int, method: str) -> int:
    """DC/DSA/DM learn ``ipc`` images for every class: n must be a multiple of the class count."""
    if n < num_classes or n % num_classes:
        raise ValueError(f"{method} learns the same number of images for every class: n={n} is not a "
                         f"multiple of the {num_classes} classes; use ipc (images per class) instead of n")
    return n // num_classes


class ClassSampler:
    """Random real images of one class (the code's ``get_images(c, n)``: a fresh permutation of the
    class's indices per call, first n taken)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, num_classes: int, generator: torch.Generator):
        self.x, self.generator = x, generator
        labels = y.cpu()
        self.indices = [torch.nonzero(labels == c).flatten() for c in range(num_classes)]
        empty = [c for c, idx in enumerate(self.indices) if len(idx) == 0]
        if empty:
            raise ValueError(f"classes {empty} have no training examples to condense from")

    def __call__(self, c: int, n: int) -> torch.Tensor:
        idx = self.indices[c]
        pick = idx[torch.randperm(len(idx), generator=self.generator)[:n]]
        return self.x[pick.to(self.x.device)]


class Randomness:
    """Every random choice DC, DSA and DM make, from the trial's generator: which real images
    (``real``), the synthetic noise init (``noise``), the order of an inner-loop epoch (``order``)
    and the seed of a DSA draw (``dsa_seed``; siamese in matching, per example in DC's inner loop).
    The golden tests pass a stand-in that replays the choices the reference code made."""

    def __init__(self, task):
        self.generator = task.generator
        self.sampler = ClassSampler(task.x, task.y, task.num_classes, task.generator)

    def real(self, c: int, n: int) -> torch.Tensor:
        return self.sampler(c, n)

    def noise(self, shape) -> torch.Tensor:
        return torch.randn(tuple(shape), generator=self.generator)

    def order(self, n: int) -> torch.Tensor:
        return torch.randperm(n, generator=self.generator)

    def dsa_seed(self, siamese: bool) -> int:
        return dsa_draw_seed(self.generator)


def initial_images(task, ipc: int, init: str, rand: Randomness) -> torch.Tensor:
    """``[C * ipc, *shape]`` in class blocks (class c at rows c*ipc .. (c+1)*ipc - 1), from N(0, I)
    ("noise") or from random real images of each class ("real"); a leaf that requires grad."""
    if init == "real":
        x = torch.cat([rand.real(c, ipc).detach().to(task.device) for c in range(task.num_classes)])
    else:
        x = rand.noise((task.num_classes * ipc, *task.input_shape)).to(task.device)
    return x.clone().requires_grad_(True)


def image_optimizer(syn: torch.Tensor, lr: float, momentum: float) -> torch.optim.Optimizer:
    """The codes' ``optimizer_img``: SGD on the synthetic images with momentum (0.5 in the code),
    created once per run, so its momentum carries across iterations."""
    return torch.optim.SGD([syn], lr=lr, momentum=momentum)


def resume_images(task, syn: torch.Tensor, opt: torch.optim.Optimizer) -> int:
    """Continue from the trial's mid-trial checkpoint, if any: the images and their optimiser as
    saved by :func:`offer_checkpoint` (the harness rewinds the RNGs). Returns the iterations done."""
    saved = task.restore()
    if saved is None:
        return 0
    done, state = saved
    with torch.no_grad():
        syn.copy_(state["images"])
    opt.load_state_dict(state["opt"])
    return done


def offer_checkpoint(task, done: int, syn: torch.Tensor, opt: torch.optim.Optimizer) -> None:
    task.checkpoint(done, lambda: {"images": syn.detach(), "opt": opt.state_dict()})


def class_labels(num_classes: int, ipc: int, device) -> torch.Tensor:
    """The class index of every synthetic image (class blocks): ``[0]*ipc + [1]*ipc + ...``."""
    return torch.arange(num_classes, device=device).repeat_interleave(ipc)


def dsa_for(cfg) -> DSA | None:
    """The configured DSA (``dsa_strategy``), or None when ``dsa`` is off."""
    if not cfg.dsa:
        return None
    return DSA(DSAParams(strategy=cfg.dsa_strategy))


def hard_labels(num_classes: int, ipc: int, device) -> torch.Tensor:
    """Class-block labels [0]*ipc + [1]*ipc + ...: one-hot rows [C * ipc, C]."""
    return F.one_hot(torch.arange(num_classes).repeat_interleave(ipc), num_classes).float().to(device)


def condensed_set(x: torch.Tensor, ipc: int, num_classes: int, **meta) -> DistilledSet:
    return DistilledSet(x=x.detach().clone(), y=hard_labels(num_classes, ipc, x.device), meta=meta)


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def freeze_batchnorm(model: nn.Module, real: torch.Tensor) -> None:
    """The DC code's fix for tiny synthetic batches: set BatchNorm statistics from a real batch
    (16 per class), then keep them (BatchNorm layers in eval mode)."""
    model.train()
    with torch.no_grad():
        model(real)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
