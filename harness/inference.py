"""Forward passes without gradients in cache-sized pieces: the evaluation's test pass, DM's real
embeddings.

On a CPU a big batch streams each layer's output through memory; a batch whose largest activation
fits in the last-level cache runs several times faster. An example's outputs depend on its batch
only through the kernels torch picks for the batch's size (oneDNN and BLAS take other paths for a
few examples: a convolution of one example, LeNet's layers below 12 on two threads), so pieces are
never smaller than MIN_PIECE and the examples are spread evenly over them (no small remainder):
then the pieces give the whole batch's outputs bit for bit, for every registered architecture on
this host (tests/test_evaluate.py); where a host's kernels differ, by float rounding at most.
Measured on the 2-core AMD EPYC host (32 MiB L3; /tmp scratch scripts, medians of 3 alternating
rounds): ConvNet-3 tested 10,000 MNIST-shaped images in 9.0 s in pieces of 16 vs 20.6 s in
2048s (2.3x; on 2048 images 1.9 s at 16, 3.1 s at 32, 4.3 s at 256); ResNet-18 1.5-1.7x in
pieces of 32, VGG-11 1.4x, AlexNet 1.8x, TextCNN 2.0x, the BiLSTM 1.3x; LeNet (256), the RNN and
the MLP (2048) gain nothing. A DM iteration on ConvNet-3 (MNIST subset, ipc 10, 256 real images
a class, DSA on) took 2.58 s instead of 5.23 s, the synthetic images bit for bit the same.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

CPU_ACTIVATION_BUDGET = 8 << 20  # bytes: the largest activation of a piece, a quarter of this host's L3
MIN_PIECE = 16  # examples: below, kernels for small batches may round differently (see above)


def _tensors(value: Any) -> list["torch.Tensor"]:
    import torch

    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in _tensors(v)]
    return []


def batch_dependent(model: "nn.Module") -> str | None:
    """Why an example's output depends on the rest of its batch in ``model``'s current mode (batch
    norm or dropout in training mode), or None when it does not."""
    from torch import nn

    for m in model.modules():
        if m.training and isinstance(m, nn.modules.batchnorm._BatchNorm):
            return "batch norm in training mode"
        if m.training and isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0:
            return "dropout in training mode"
    return None


def inference_batch(model: "nn.Module", x: "torch.Tensor", device: "torch.device", most: int = 2048) -> int:
    """How many examples of ``x`` to pass through ``model`` at once without gradients, in its current
    mode (for :func:`in_pieces`). On a CPU: ``most`` halved until the largest activation of that
    many examples (a forward of one example shows it) fits in CPU_ACTIVATION_BUDGET, but not below
    MIN_PIECE. All of ``x`` where the model's mode makes outputs depend on the batch
    (:func:`batch_dependent`). ``most`` off CPU. The budget is fixed, not read from the host's
    cache: a trial computes the same way on every host."""
    import torch

    if batch_dependent(model):
        return max(len(x), 1)
    if device.type != "cpu":
        return most
    sizes = [x[:1].numel() * x.element_size()]
    hooks = [m.register_forward_hook(lambda _m, _in, out: sizes.extend(t.numel() * t.element_size()
                                                                       for t in _tensors(out)))
             for m in model.modules()]
    try:
        with torch.no_grad():
            model(x[:1])
    finally:
        for hook in hooks:
            hook.remove()
    batch = most
    while batch > MIN_PIECE and batch * max(sizes) > CPU_ACTIVATION_BUDGET:
        batch = max(MIN_PIECE, batch // 2)
    return batch


def pieces(n: int, batch: int) -> list[slice]:
    """``n`` examples as consecutive pieces of ``batch`` to just under ``2 * batch`` (spread evenly:
    no small remainder piece), or one piece when ``n <= batch``."""
    count = max(1, n // max(batch, 1))
    size, extra = divmod(n, count)
    bounds = [0]
    for i in range(count):
        bounds.append(bounds[-1] + size + (i < extra))
    return [slice(a, b) for a, b in zip(bounds, bounds[1:])]


def in_pieces(function: Any, x: "torch.Tensor", batch: int) -> "torch.Tensor":
    """``function(x)``, computed as ``function`` of :func:`pieces` of ``x``, concatenated."""
    import torch

    if batch >= len(x):
        return function(x)
    return torch.cat([function(x[piece]) for piece in pieces(len(x), batch)])
