"""What the dataset-condensation methods (DC, DSA, DM) share: a fixed number of synthetic images
per class with hard labels, real images drawn per class, and the networks' feature extractor."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from harness import DistilledSet
from harness import DSA, DSAParams, dsa_draw_seed
from harness import TrialError


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


class Embedding:
    """The features a network's classifier sees: the input of its last ``nn.Linear`` (the DC code's
    ``net.embed``: ConvNet's flattened feature map; MLP/LeNet's last hidden layer). Read with a
    forward pre-hook, so any architecture ending in a linear classifier works unchanged."""

    def __init__(self, model: nn.Module, method: str):
        linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
        if not linears:
            raise TrialError(f"{method} matches the features in front of the classifier, but this "
                             f"architecture has no nn.Linear layer; use one that ends in a linear classifier")
        self.model, self.classifier = model, linears[-1]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        seen: list[torch.Tensor] = []
        handle = self.classifier.register_forward_pre_hook(lambda _module, args: seen.append(args[0]))
        try:
            self.model(x)
        finally:
            handle.remove()
        return seen[-1].flatten(1)


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
