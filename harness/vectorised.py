"""Training the K models of an evaluation recipe at once (stacked parameters, one batched forward).

The protocol trains K fresh models per recipe. Where a model's output is a pure function of its
parameters and its batch (no batch norm running statistics, no dropout draws, no recurrent
kernels), K models train as one: their parameters are stacked along a new first dimension, the K
forward passes run as one, and one optimizer steps the stacked tensors (SGD and Adam update
elementwise, so model k moves exactly as its own optimizer would move it). The batched forward
goes layer by layer for models built of common layers (:func:`layered_forward`: a batched matmul
per linear layer, a grouped convolution per convolution) and through ``torch.func.vmap`` of
``functional_call`` for any other model; the first is leaner (on the 2-core AMD EPYC host, K = 5
MLPs trained 1.2-1.3x faster than under vmap and ConvNet-3s 1.1x: results/perf.md). Each model
keeps its own init (built as in the sequential path), its own batch order and augmentation draws
(its own generator, :func:`harness.evaluate.fit`) and is tested on its own. Only float summation
order differs (a batched convolution runs as a grouped one), so per-model accuracies equal the
sequential path's within float tolerance (tests/test_vectorised.py).

Which path runs is the grid's ``eval_mode``: ``auto`` (default) vectorises on CUDA, where K small
models leave the device idle one at a time, and on CPU only models without convolutions. On the
2-core AMD EPYC host K = 5 MLPs trained 1.66-1.88x faster at once, while batched convolutions at
best matched K separate ones (ConvNet-3 0.97-1.02x, where even one model on the K sets at once gains
only 1.00-1.05x; LeNet 0.66-0.95x; five runs of make perf), with K times the memory; the choice
stays fixed so that a grid's path never depends on a timing (results/perf.md). ``vectorised`` asks
for it on any device; ``sequential`` never. Whatever is asked, a model or recipe it cannot do
exactly falls back to sequential. The choice and its reason are the trial tag ``eval.mode/<recipe>``.
"""

from __future__ import annotations

import copy
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Callable

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


BATCHINGS = ("auto", "layers", "vmap")


def stacked(models: list["nn.Module"], batching: str = "auto") -> tuple[dict, Callable, Callable]:
    """The K models' parameters stacked (name -> [K, ...] leaf tensors), ``forward(xs)``: the K
    models' logits [K, B, classes] on their own batches xs [K, B, ...], and ``unstack(name, k)``:
    model k's tensor ``name`` in the model's own layout (a stack may hold another: linear_weights).

    ``batching``: "layers" runs :func:`layered_forward` (one batched call per layer), "vmap"
    ``vmap(functional_call)``; "auto" takes "layers" where :func:`interpretable` says it can."""
    import torch

    batching = resolve_batching(batching, models[0])
    flipped = linear_weights(models[0]) if batching == "layers" else set()
    named = [dict(m.named_parameters()) for m in models]
    params = {}
    for name, p in named[0].items():
        stack = torch.stack([n[name].detach() for n in named])
        stack = stack.transpose(1, 2).contiguous() if name in flipped else stack
        params[name] = stack.requires_grad_(p.requires_grad)

    def unstack(name: str, k: int) -> "torch.Tensor":
        return params[name][k].t() if name in flipped else params[name][k]

    if batching == "layers":
        structure = models[0]  # its layers' settings only; the parameters are the stack's
        return params, lambda xs: layered_forward(structure, params, xs), unstack
    from torch.func import functional_call, vmap

    skeleton = copy.deepcopy(models[0]).to("meta")  # the structure only; parameters come from the stack
    batched = vmap(lambda p, xb: functional_call(skeleton, p, (xb,)))
    return params, lambda xs: batched(params, xs), unstack


def linear_weights(model: "nn.Module") -> set[str]:
    """The names of ``model``'s linear layers' weights: :func:`layered_forward` takes them stacked
    transposed, [K, in, out], so that the batched matmul's backward writes their gradient in their
    own layout (stacked as the models hold them, [K, out, in], every step paid a transposing copy
    of the gradient: K = 5 MLPs trained 1.08-1.11x slower)."""
    from torch import nn

    return {f"{name}.weight" for name, m in model.named_modules() if isinstance(m, nn.Linear)}


def resolve_batching(batching: str, model: "nn.Module") -> str:
    """``batching`` with "auto" resolved for ``model``: "layers" where :func:`interpretable`, else "vmap"."""
    if batching not in BATCHINGS:
        raise ValueError(f"unknown batching {batching!r}; use one of {BATCHINGS}")
    if batching == "auto":
        return "layers" if interpretable(model) else "vmap"
    return batching


def summed_loss(logits: "torch.Tensor", targets: "torch.Tensor") -> "torch.Tensor":
    """The sum over models of each model's soft-label cross-entropy: logits and targets
    [K, B, classes]. Each model's gradient is then its own loss's."""
    from .evaluate import soft_cross_entropy

    return soft_cross_entropy(logits, targets).sum()


# Layers whose output for one example depends on that example alone and on no parameters: the K
# models' batches run through them as one batch of K x B examples. Those acting on each channel
# alone (all but the last two) also run on the grouped layout of convolutions (layered_forward).
_PER_EXAMPLE = ("ReLU", "ReLU6", "LeakyReLU", "ELU", "GELU", "SiLU", "Tanh", "Sigmoid", "Softplus", "Identity",
                "Dropout", "MaxPool1d", "MaxPool2d", "AvgPool1d", "AvgPool2d", "AdaptiveAvgPool1d",
                "AdaptiveAvgPool2d", "AdaptiveMaxPool2d", "LocalResponseNorm", "Flatten")
_ACROSS_CHANNELS = ("LocalResponseNorm", "Flatten")


@lru_cache(maxsize=1)
def _per_example_layers() -> "tuple[tuple[type, ...], tuple[type, ...]]":
    """The classes of :data:`_PER_EXAMPLE`: (all of them, those acting on each channel alone)."""
    from torch import nn

    return (tuple(getattr(nn, name) for name in _PER_EXAMPLE),
            tuple(getattr(nn, name) for name in _PER_EXAMPLE if name not in _ACROSS_CHANNELS))


def interpretable(model: "nn.Module") -> bool:
    """Whether :func:`layered_forward` computes ``model``: nn.Sequential containers (whose forward is
    their children in order) of Linear, Conv1d/Conv2d (zero padding), GroupNorm (these three with
    PyTorch's own forward: a subclass that changes it is not what is computed here) and per-example
    layers (activations, pooling, Flatten from dim 1, Dropout with p = 0; run as themselves).
    Anything else goes through vmap, which needs no list of layers."""
    from torch import nn

    per_example, _ = _per_example_layers()
    own_forward = (nn.Linear.forward, nn.GroupNorm.forward, nn.Conv1d.forward, nn.Conv2d.forward)
    for m in model.modules():
        if type(m) is nn.Sequential:
            continue
        if isinstance(m, (nn.Linear, nn.GroupNorm, nn.Conv1d, nn.Conv2d)):  # computed here, not by m
            if type(m).forward not in own_forward or getattr(m, "padding_mode", "zeros") != "zeros":
                return False
            continue
        if isinstance(m, nn.Flatten) and m.start_dim != 1:
            return False
        if isinstance(m, nn.Dropout) and m.p > 0:
            return False
        if not isinstance(m, per_example) or next(m.parameters(recurse=False), None) is not None:
            return False
    return True


def layered_forward(module: "nn.Module", params: dict, h: "torch.Tensor") -> "torch.Tensor":
    """K models through ``module``'s layers at once: h [K, B, ...] -> [K, B, ...] (see
    :func:`interpretable`). A linear layer is one batched matmul, a convolution one grouped
    convolution (model k's channels are group k), a group norm one group norm over K x groups;
    per-example layers see the K x B examples as one batch. Same arithmetic per model as its own
    forward, up to float summation order.

    Between convolutions the activations stay in the grouped layout, [B, K x C, ...] (model k's
    channels the k-th block), which convolutions, group norms and the layers acting on each channel
    alone take as they are: the K models' activations are rearranged only where a layer needs them
    apart (flatten, linear, local response norm). Rearranging them at every layer cost ConvNet-3
    two copies of its largest activation per step, forward and backward."""
    k = h.shape[0]
    h, grouped = _layers(module, params, h, False, k, "")
    return _apart(h, k) if grouped else h


def _grouped(h: "torch.Tensor") -> "torch.Tensor":
    """[K, B, C, ...] -> [B, K x C, ...]."""
    return h.transpose(0, 1).reshape(h.shape[1], -1, *h.shape[3:])


def _apart(h: "torch.Tensor", k: int) -> "torch.Tensor":
    """[B, K x C, ...] -> [K, B, C, ...] (a view)."""
    return h.reshape(h.shape[0], k, -1, *h.shape[2:]).transpose(0, 1)


def _layers(module: "nn.Module", params: dict, h: "torch.Tensor", grouped: bool, k: int,
            prefix: str) -> "tuple[torch.Tensor, bool]":
    """:func:`layered_forward` over ``module``'s children: (h, whether h is in the grouped layout)."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    _, channel_local = _per_example_layers()
    for name, m in module.named_children():
        def p(kind: str) -> "torch.Tensor":
            return params[f"{prefix}{name}.{kind}"]

        if type(m) is nn.Sequential:
            h, grouped = _layers(m, params, h, grouped, k, f"{prefix}{name}.")
        elif isinstance(m, (nn.Conv1d, nn.Conv2d)):
            w = p("weight")
            conv = F.conv1d if isinstance(m, nn.Conv1d) else F.conv2d
            h = conv(h if grouped else _grouped(h), w.reshape(-1, *w.shape[2:]),
                     p("bias").reshape(-1) if m.bias is not None else None, m.stride, m.padding, m.dilation,
                     k * m.groups)
            grouped = True
        elif isinstance(m, nn.GroupNorm):
            h = F.group_norm(h if grouped else _grouped(h), k * m.num_groups,
                             p("weight").reshape(-1) if m.affine else None,
                             p("bias").reshape(-1) if m.affine else None, m.eps)
            grouped = True
        elif grouped and isinstance(m, channel_local):
            h = m(h)  # acts on each channel alone: model k's block of channels stays its own
        else:
            if grouped:
                h, grouped = _apart(h, k), False
            if isinstance(m, nn.Linear):
                flat = h.reshape(k, -1, h.shape[-1])
                out = (torch.baddbmm(p("bias").unsqueeze(1), flat, p("weight")) if m.bias is not None
                       else torch.bmm(flat, p("weight")))  # the weight stacked [K, in, out] (linear_weights)
                h = out.reshape(*h.shape[:-1], out.shape[-1])
            else:
                out = m(h.flatten(0, 1))
                h = out.reshape(k, -1, *out.shape[1:])
    return h, grouped


def probe(models: list["nn.Module"], dset: "DistilledSet", device: "torch.device",
          precision: Any = None) -> str | None:
    """Run one batched forward and backward on the set's first two examples (no generator, no
    optimizer touched; under ``precision``, the context training runs in) and compare each model's
    logits with its own forward's; why the K models cannot train at once (e.g. a third-party layer
    vmap cannot batch), or None when they can."""
    import contextlib

    import torch

    batching = resolve_batching("auto", models[0])
    params, forward, _ = stacked(models, batching)
    x, y = dset.x[:2].to(device), dset.y[:2].to(device)
    with precision or contextlib.nullcontext():
        try:
            logits = forward(x.expand(len(models), *x.shape))
            summed_loss(logits, y.expand(len(models), *y.shape)).backward()
        except Exception as exc:  # noqa: BLE001 - any failure means "not batched"; sequential is exact
            return f"{'batched layers' if batching == 'layers' else 'vmap'} failed ({type(exc).__name__})"
        with torch.no_grad():
            own = torch.stack([m(x) for m in models])
    # Loose enough for TF32 convolutions on CUDA and bf16 autocast (the batched and the per-model
    # kernels round differently); a layer computed wrongly is off by its whole size.
    tolerance = 1e-2 if logits.dtype in (torch.float32, torch.float64) else 1e-1
    if (logits.detach() - own).abs().max() > tolerance * own.abs().max() + 1e-5:
        return "batched forward differs from the models' own"
    return None


def train_together(models: list["nn.Module"], dset: "DistilledSet", recipe: "Recipe",
                   generators: list["torch.Generator"], device: "torch.device",
                   tick: Callable[[], None] | None = None, batching: str = "auto") -> list["nn.Module"]:
    """Train ``models`` (already on ``device``) in place as one stacked model; model k draws from
    ``generators[k]``. Same loop, optimizer and schedule as the sequential path. ``batching``: see
    :func:`stacked`."""
    import torch

    from .evaluate import fit, make_optimizer

    for m in models:
        m.train()
    params, forward, unstack = stacked(models, batching)
    opt = make_optimizer(recipe, [p for p in params.values() if p.requires_grad])
    fit(lambda xbs, ybs: summed_loss(forward(torch.stack(xbs)), torch.stack(ybs)), opt,
        dset.x.to(device), dset.y.to(device), recipe, dset.meta, generators, tick)
    with torch.no_grad():
        for k, m in enumerate(models):
            for name, p in m.named_parameters():
                p.copy_(unstack(name, k))
    return models
