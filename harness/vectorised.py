"""Training the K models of an evaluation recipe at once (stacked parameters, ``torch.func.vmap``).

The protocol trains K fresh models per recipe. Where a model's output is a pure function of its
parameters and its batch (no batch norm running statistics, no dropout draws, no recurrent
kernels), K models train as one: their parameters are stacked along a new first dimension,
``vmap(functional_call)`` runs the K forward passes in one call, and one optimizer steps the
stacked tensors (SGD and Adam update elementwise, so model k moves exactly as its own optimizer
would move it). Each model keeps its own init (built as in the sequential path), its own batch
order and augmentation draws (its own generator, :func:`harness.evaluate.fit`) and is tested on
its own. Only float summation order differs (a batched convolution runs as a grouped one), so
per-model accuracies equal the sequential path's within float tolerance (tests/test_vectorised.py).

Which path runs is the grid's ``eval_mode``: ``auto`` (default) vectorises on CUDA, where K small
models leave the device idle one at a time, and on CPU only models without convolutions: there
vmap's batched (grouped) convolutions measured slower than K separate ones, while an MLP trained
1.3-1.7x faster on Intel Xeon hosts (0.83x and 1.32x in two runs on one AMD EPYC host: the CPU and
its load decide; the choice stays fixed so that a grid's path never depends on a timing;
results/perf.md); ``vectorised`` asks for it on any device; ``sequential`` never. Whatever is asked,
a model or recipe it cannot do exactly falls back to sequential. The choice and its reason are the
trial tag ``eval.mode/<recipe>``.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

    from .specs import DistilledSet
    from .trial import Recipe

EVAL_MODES = ("auto", "vectorised", "sequential")
VECTORISED = "vectorised"
VECTORISABLE_OPTIMIZERS = ("sgd", "adam", "ld-protocol")  # "distilled" replays a few GD steps: sequential


def obstacle(model: "nn.Module") -> str | None:
    """Why ``model`` cannot be trained exactly under vmap, or None when it can."""
    from torch import nn

    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            return "batch norm (running statistics)"
        if isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0:
            return "dropout (one random stream per model)"
        if isinstance(m, nn.RNNBase):
            return "recurrent layers"
    if next(model.buffers(), None) is not None:
        return "buffers"
    return None


def choose_mode(model: "nn.Module", recipe: "Recipe", device: "torch.device", requested: str) -> str:
    """``"vectorised"``, or ``"sequential: <why>"``: the path a recipe's models train on."""
    if requested == "sequential":
        return "sequential: eval_mode = sequential"
    if recipe.optimizer not in VECTORISABLE_OPTIMIZERS:
        return f"sequential: optimizer {recipe.optimizer}"
    if recipe.models < 2:
        return "sequential: one model"
    why = obstacle(model)
    if why:
        return f"sequential: {why}"
    if requested == "auto" and device.type != "cuda" and any(type(m).__name__.startswith("Conv")
                                                              for m in model.modules()):
        return f"sequential: convolutions on {device.type} (auto vectorises them on cuda only)"
    return VECTORISED


def stacked_loss(models: list["nn.Module"]) -> tuple[dict, Callable]:
    """The K models' parameters stacked (name -> [K, ...] leaf tensors) and ``loss(params, xbs, ybs)``,
    the sum of the K models' soft-label cross-entropies on their own batches."""
    import torch
    from torch.func import functional_call, vmap

    from .evaluate import soft_cross_entropy

    skeleton = copy.deepcopy(models[0]).to("meta")  # the structure only; parameters come from the stack
    names = [k for k, _ in models[0].named_parameters()]
    params = {k: torch.stack([dict(m.named_parameters())[k].detach() for m in models]) for k in names}
    for k, p in models[0].named_parameters():
        params[k].requires_grad_(p.requires_grad)
    per_model = vmap(lambda p, xb, yb: soft_cross_entropy(functional_call(skeleton, p, (xb,)), yb))

    def loss(xbs: list, ybs: list) -> "torch.Tensor":
        return per_model(params, torch.stack(xbs), torch.stack(ybs)).sum()

    return params, loss


def probe(models: list["nn.Module"], dset: "DistilledSet", device: "torch.device") -> str | None:
    """Run one batched forward and backward on the set's first example (no generator, no optimizer
    touched); the error's type when vmap cannot do this model (e.g. a third-party layer), else None."""
    params, loss = stacked_loss(models)
    x, y = dset.x[:1].to(device), dset.y[:1].to(device)
    try:
        loss([x] * len(models), [y] * len(models)).backward()
    except Exception as exc:  # noqa: BLE001 - any failure means "not under vmap"; sequential is exact
        return f"vmap failed ({type(exc).__name__})"
    return None


def train_together(models: list["nn.Module"], dset: "DistilledSet", recipe: "Recipe",
                   generators: list["torch.Generator"], device: "torch.device",
                   tick: Callable[[], None] | None = None) -> list["nn.Module"]:
    """Train ``models`` (already on ``device``) in place as one stacked model; model k draws from
    ``generators[k]``. Same loop, optimizer and schedule as the sequential path."""
    import torch

    from .evaluate import fit, make_optimizer

    for m in models:
        m.train()
    params, loss = stacked_loss(models)
    opt = make_optimizer(recipe, [p for p in params.values() if p.requires_grad])
    fit(loss, opt, dset.x.to(device), dset.y.to(device), recipe, dset.meta, generators, tick)
    with torch.no_grad():
        for k, m in enumerate(models):
            for name, p in m.named_parameters():
                p.copy_(params[name][k])
    return models
