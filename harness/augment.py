"""Differentiable siamese augmentation (DSA), for distillers and for evaluation recipes.

"Dataset Condensation with Differentiable Siamese Augmentation", Zhao & Bilen, ICML 2021; code
github.com/VICO-UoE/DatasetCondensation (``utils.py``: ``ParamDiffAug``, ``DiffAugment``). Every
transform is differentiable in the images, so gradients of a matching loss reach synthetic pixels
through the augmentation. *Siamese*: one random draw is applied to the real and to the synthetic
batch, so both are compared under the same transformation::

    draw = dsa.draw(generator)            # one seed: a transform family and its parameters
    loss = match(embed(draw(x_real)), embed(draw(x_syn)))

Faithful to the code's defaults (``ParamDiffAug``): strategy ``color_crop_cutout_flip_scale_rotate``,
``aug_mode 'S'`` (each draw picks ONE family at random and applies its transforms; ``color`` is
brightness, saturation and contrast in turn), flip probability 0.5, scale ratio 1.2, rotation +-15
degrees, crop by padding 1/8 of the side, cutout of half the side, brightness 1.0, saturation 2.0,
contrast 0.5. A siamese draw shares its parameters across the whole batch (the code sets
``theta[:] = theta[0]`` when a seed is given); ``siamese=False`` draws them per example, as the
code's evaluation and DC's inner loop (``seed=-1``) do.

Same seed, same numbers: ``DSA.draw_from(s)`` is the code's ``DiffAugment(x, strategy, seed=s)``
(the generator re-seeded with s, s+1, ... before each random call, as ``set_seed_DiffAug`` does),
and ``draw_from(s, siamese=False)`` is ``DiffAugment(x, strategy, seed=-1)`` right after
``torch.manual_seed(s)``; random values are drawn in the images' dtype. Checked against the code's
output for every transform in ``tests/golden/test_condense.py`` (max difference 0.0 in float32).
Random numbers come from a CPU generator (the code: the images' device), so CPU and CUDA runs see
the same transformations.

``align_corners`` (scale, rotate): the code passes none and pins torch 1.2.0, which behaves as
True; on torch >= 1.3 the same code gets False. The two differ only for rotations of non-square
images (for square ones, and for any scaling, the grids coincide), so no DC/DSA/DM number on the
papers' square datasets depends on it. True is the default; ``DSAParams(align_corners=False)``
reproduces the code on a recent torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

STRATEGY = "color_crop_cutout_flip_scale_rotate"
FAMILIES = ("color", "crop", "cutout", "flip", "scale", "rotate")


@dataclass(frozen=True)
class DSAParams:
    """``ParamDiffAug`` of the DSA code; defaults are the code's.

    ``align_corners``: how ``rand_scale`` / ``rand_rotate`` resample. The code calls
    ``F.affine_grid(theta, x.shape)`` and ``F.grid_sample(x, grid)`` without the argument and pins
    torch 1.2.0 (``requirements.txt``), which behaves as ``align_corners=True``; the same code run on
    torch >= 1.3 gets ``False`` (torch changed the default). True is the code as published; the two
    differ only when rotating non-square images.
    """

    strategy: str = STRATEGY
    single: bool = True  # aug_mode 'S': one family per draw; False = 'M', every family in turn
    prob_flip: float = 0.5
    ratio_scale: float = 1.2
    ratio_rotate: float = 15.0  # degrees
    ratio_crop_pad: float = 0.125
    ratio_cutout: float = 0.5
    brightness: float = 1.0
    saturation: float = 2.0
    contrast: float = 0.5
    align_corners: bool = True

    def __post_init__(self) -> None:
        unknown = [f for f in self.strategy.split("_") if f not in FAMILIES]
        if unknown or not self.strategy:
            raise ValueError(f"DSA strategy {self.strategy!r}: unknown transform(s) {unknown}; "
                             f"use '_'-joined names from {', '.join(FAMILIES)}")


class _Stream:
    """The random numbers of one draw, in the code's order. Siamese (the code's ``seed >= 0``): the
    generator is re-seeded with seed, seed+1, ... before every random call (``set_seed_DiffAug``),
    and one value is drawn per call, used for the whole batch (the code draws a value per example
    and copies the first: on CPU the first of n draws equals a single draw, so batches of any size
    see the same transform). Per example (the code's ``seed = -1``): one generator seeded once, n
    values per call, as the code draws from torch's global RNG."""

    def __init__(self, seed: int, siamese: bool, n: int):
        self.gen, self.next_seed, self.siamese, self.n = torch.Generator().manual_seed(seed), seed, siamese, n

    def _generator(self) -> torch.Generator:
        if self.siamese:
            self.gen.manual_seed(self.next_seed)
            self.next_seed += 1
        return self.gen

    def rand(self, dtype: torch.dtype) -> torch.Tensor:
        return torch.rand(self.n, generator=self._generator(), dtype=dtype)

    def randint(self, low: int, high: int) -> torch.Tensor:
        return torch.randint(low, high, (self.n,), generator=self._generator())

    def family(self, count: int) -> int:
        """One family index for the whole draw (the code's single-family ``aug_mode 'S'``)."""
        return int(torch.randint(0, count, (1,), generator=self._generator()))


class Draw:
    """One random draw of the augmentation; calling it transforms a batch [B, C, H, W]."""

    def __init__(self, params: DSAParams, seed: int, siamese: bool):
        self.params, self.seed, self.siamese = params, seed, siamese

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"DSA augments image batches [B, C, H, W], got shape {tuple(x.shape)}")
        stream = _Stream(self.seed, self.siamese, 1 if self.siamese else x.shape[0])
        families = self.params.strategy.split("_")
        if self.params.single:
            families = [families[stream.family(len(families))]]
        for family in families:
            for transform in _TRANSFORMS[family]:
                x = transform(x, stream, self.params)
        return x.contiguous()


class DSA:
    """The augmentation; ``draw(generator)`` gives a :class:`Draw` to apply to several batches."""

    def __init__(self, params: DSAParams | None = None):
        self.params = params or DSAParams()

    def draw(self, generator: torch.Generator, siamese: bool = True) -> Draw:
        return self.draw_from(draw_seed(generator), siamese)

    def draw_from(self, seed: int, siamese: bool = True) -> Draw:
        """The draw the DSA code makes with ``DiffAugment(x, strategy, seed=seed)`` (siamese) or,
        per example, with ``seed=-1`` right after ``torch.manual_seed(seed)``."""
        return Draw(self.params, seed, siamese)

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Augment one batch with parameters drawn per example (the code's evaluation mode)."""
        return self.draw(generator, siamese=False)(x)


def draw_seed(generator: torch.Generator) -> int:
    """A draw's seed from a generator (the code takes ``int(time.time() * 1000) % 100000``)."""
    return int(torch.randint(2**31 - 1, (1,), generator=generator))


# -- the transforms: (x, stream, params) -> x; the stream gives 1 (siamese) or B values per call ----
# Random values are drawn in the images' dtype (the code draws in torch's default dtype, which is
# the images' dtype in its runs), on CPU (the code: on the images' device), so CPU and CUDA runs
# see the same transformations.


def _col(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return v.to(x.device).view(-1, 1, 1, 1)


def _brightness(x, stream, p):
    return x + (_col(stream.rand(x.dtype), x) - 0.5) * p.brightness


def _saturation(x, stream, p):
    mean = x.mean(dim=1, keepdim=True)
    return (x - mean) * (_col(stream.rand(x.dtype), x) * p.saturation) + mean


def _contrast(x, stream, p):
    mean = x.mean(dim=[1, 2, 3], keepdim=True)
    return (x - mean) * (_col(stream.rand(x.dtype), x) + p.contrast) + mean


def _crop(x, stream, p):
    """Translate by up to ``ratio_crop_pad`` of the side; pixels shifted in are zero (padding)."""
    b, c, h, w = x.shape
    sh, sw = int(h * p.ratio_crop_pad + 0.5), int(w * p.ratio_crop_pad + 0.5)
    th = stream.randint(-sh, sh + 1).view(-1, 1)
    tw = stream.randint(-sw, sw + 1).view(-1, 1)
    rows = (torch.arange(h).view(1, h) + th + 1).clamp(0, h + 1).expand(b, h).to(x.device)
    cols = (torch.arange(w).view(1, w) + tw + 1).clamp(0, w + 1).expand(b, w).to(x.device)
    padded = F.pad(x, [1, 1, 1, 1])
    out = padded.gather(2, rows.view(b, 1, h, 1).expand(b, c, h, w + 2))
    return out.gather(3, cols.view(b, 1, 1, w).expand(b, c, h, w))


def _cutout(x, stream, p):
    """Zero a square of ``ratio_cutout`` of the side centred at a random position."""
    _, _, h, w = x.shape
    ch, cw = int(h * p.ratio_cutout + 0.5), int(w * p.ratio_cutout + 0.5)
    oh = stream.randint(0, h + (1 - ch % 2)).view(-1, 1) - ch // 2
    ow = stream.randint(0, w + (1 - cw % 2)).view(-1, 1) - cw // 2
    rows, cols = torch.arange(h).view(1, h), torch.arange(w).view(1, w)
    in_rows = (rows >= oh) & (rows < oh + ch)
    in_cols = (cols >= ow) & (cols < ow + cw)
    mask = ~(in_rows.view(-1, h, 1) & in_cols.view(-1, 1, w))
    return x * mask.to(device=x.device, dtype=x.dtype).unsqueeze(1)


def _flip(x, stream, p):
    return torch.where(_col(stream.rand(x.dtype), x) < p.prob_flip, x.flip(3), x)


def _affine(x, theta, p):
    theta = theta.to(device=x.device).expand(x.shape[0], 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=p.align_corners)
    return F.grid_sample(x, grid, align_corners=p.align_corners)


def _scale(x, stream, p):
    lo, hi = 1.0 / p.ratio_scale, p.ratio_scale
    sx = stream.rand(x.dtype) * (hi - lo) + lo
    sy = stream.rand(x.dtype) * (hi - lo) + lo
    zero = torch.zeros_like(sx)
    theta = torch.stack([torch.stack([sx, zero, zero], 1), torch.stack([zero, sy, zero], 1)], 1)
    return _affine(x, theta, p)


def _rotate(x, stream, p):
    angle = (stream.rand(x.dtype) - 0.5) * 2 * p.ratio_rotate / 180 * math.pi
    cos, sin, zero = torch.cos(angle), torch.sin(angle), torch.zeros_like(angle)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    return _affine(x, theta, p)


_TRANSFORMS = {
    "color": (_brightness, _saturation, _contrast),
    "crop": (_crop,),
    "cutout": (_cutout,),
    "flip": (_flip,),
    "scale": (_scale,),
    "rotate": (_rotate,),
}
