"""2x2 average pooling that computes bit for bit what ``nn.AvgPool2d(2, 2)`` computes, faster on CPU.

ConvNet-3 spent 23% of a CPU training step in PyTorch's average-pool kernels (width 128, batch 256,
one thread; forward 40 ms and backward 48 ms per call on its first map). On large maps the same sums
over a window's four strided views, with the backward as one broadcast copy, take 65 vs 121 ms for
forward + backward on (256, 128, 28, 28). :class:`AvgPool2x2` takes that path on CPU for even-sized
maps of at least a million values (below that PyTorch's kernel is as fast), and PyTorch's kernel
everywhere else (CUDA, odd sizes, small maps).

Exactness: the kernel adds a window's values in scan order from zero and divides by 4, so
``((a + b) + c + d) / 4`` is the same float arithmetic; its backward adds ``grad / 4`` to zeros,
here copied. Forward and backward agree bit for bit (tests/test_vision_archs.py), apart from
the sign of a zero gradient (-0.0 where the kernel's ``0 + g/4`` gives +0.0). The backward is made of
differentiable operations, so second-order methods (DC/DSA gradient matching) differentiate through
it, and a vmap rule is generated for the vectorised evaluation.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

MIN_VALUES = 1 << 20  # smaller maps: PyTorch's kernel is as fast, without a Python autograd node


class _AvgPool2x2(torch.autograd.Function):
    generate_vmap_rule = True

    @staticmethod
    def forward(x: torch.Tensor) -> torch.Tensor:
        return (((x[..., 0::2, 0::2] + x[..., 0::2, 1::2]) + x[..., 1::2, 0::2]) + x[..., 1::2, 1::2]) / 4

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: torch.Tensor) -> None:
        ctx.shape = inputs[0].shape

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        *lead, h, w = grad.shape
        return (grad / 4).unsqueeze(-1).unsqueeze(-3).expand(*lead, h, 2, w, 2).reshape(ctx.shape)


def avg_pool_2x2(x: torch.Tensor) -> torch.Tensor:
    """``F.avg_pool2d(x, 2)``: the strided-view path on CPU for large even maps, the kernel otherwise."""
    if (x.device.type == "cpu" and x.dim() in (3, 4) and x.shape[-1] % 2 == 0 and x.shape[-2] % 2 == 0
            and x.numel() >= MIN_VALUES):
        return _AvgPool2x2.apply(x)
    return F.avg_pool2d(x, 2)


class AvgPool2x2(nn.AvgPool2d):
    """``nn.AvgPool2d(2, 2)`` (same module type, no parameters or state) computed by :func:`avg_pool_2x2`."""

    def __init__(self) -> None:
        super().__init__(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return avg_pool_2x2(x)
