"""Image architectures, as in the Dataset Condensation (DC) code base (VICO-UoE/DatasetCondensation,
networks.py) and, for ``lenet`` / ``alexnet``, the Dataset Distillation code (SsnL/dataset-distillation,
networks.py) that the SLDD code uses.

Every builder is ``build(input_shape, num_classes, **size) -> nn.Module`` with input_shape (C, H, W);
torch is imported inside the builders (the plugin entry point is imported by ``harness --help``).
All take 1 or 3 channels at 28 or 32 px; the ``size`` keyword (``width=`` base channels) exists so
tests can build tiny CPU variants, which are not registered. An input an architecture cannot take
raises ValueError naming the sizes it takes.

Instance norm is DC's ``GroupNorm(c, c, affine=True)``. The ``*-bn`` architectures (BatchNorm2d,
DC's ``*BN`` networks) normalise with batch statistics in train mode: train them on batches of more
than one example (DC does); a batch of one with a 1x1 feature map raises in PyTorch.

Parameter counts, 10 classes (tested: tests/test_vision_archs.py parses this table)::

    arch                1x8x8     1x28x28     3x32x32
    mlp                26,122     118,282     411,146
    convnet           298,506     317,706     320,010
    convnet-d1         22,026     329,226     331,530
    convnet-d2        154,506     231,306     233,610
    convnet-d4        298,506     450,186     452,490
    convnet-nn        297,738     316,938     319,242
    convnet-bn        298,506     317,706     320,010
    lenet                   -      61,706      62,006
    alexnet           278,666   1,384,586   1,756,426
    resnet18       11,172,810  11,172,810  11,173,962
    resnet18-bn    11,172,810  11,172,810  11,173,962
    vgg11                   -   9,229,962   9,231,114
    vgg11-bn                -   9,229,962   9,231,114

(- : the architecture does not take that input. Counts are trainable parameters; BatchNorm's running
statistics are buffers. The ConvNets clip their depth on 8x8 inputs, so convnet-d4 is convnet there.)
"""

from __future__ import annotations

import functools
import math

NORMS = ("instancenorm", "batchnorm", "none")


def make_norm(norm: str, channels: int):
    """DC's normalisation layers: instance norm = GroupNorm(c, c, affine), batch norm, or none (Identity)."""
    from torch import nn

    if norm == "instancenorm":
        return nn.GroupNorm(channels, channels, affine=True)
    if norm == "batchnorm":
        return nn.BatchNorm2d(channels)
    if norm == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {norm!r}; use one of {NORMS}")


def _require_px(arch: str, input_shape, sizes=None, minimum=None) -> tuple[int, int, int]:
    """Check (C, H, W): square H == W in ``sizes``, or H and W >= ``minimum``; ValueError otherwise."""
    if len(input_shape) != 3:
        raise ValueError(f"{arch} takes image inputs (C, H, W), not shape {tuple(input_shape)}")
    channels, height, width = input_shape
    if sizes is not None and not (height == width and height in sizes):
        takes = " or ".join(f"{s}x{s}" for s in sizes)
        raise ValueError(f"{arch} takes {takes} inputs, not {height}x{width}")
    if minimum is not None and min(height, width) < minimum:
        raise ValueError(f"{arch} takes inputs of at least {minimum}x{minimum} px, not {height}x{width}")
    return channels, height, width


def build_mlp(input_shape, num_classes, width: int = 128):
    """flatten -> width -> width -> classes (DC's MLP)."""
    from torch import nn

    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), width), nn.ReLU(),
                         nn.Linear(width, width), nn.ReLU(), nn.Linear(width, num_classes))


def build_convnet(input_shape, num_classes, width: int = 128, depth: int = 3, norm: str = "instancenorm"):
    """DC's ConvNet: depth x [conv3x3(pad 1) -> norm -> ReLU -> avgpool 2], then a linear classifier.

    28-px inputs get padding 3 on the first conv, as in DC's ``_make_layers`` (``im_size`` 28 is
    treated as 32), so MNIST-family images see the same 32 -> 16 -> 8 -> 4 maps as CIFAR ones.

    ``norm``: "instancenorm" (GroupNorm(width, width) with affine parameters, DC's default),
    "batchnorm" (DC's ConvNetBN) or "none" (DC's ConvNetNN). The depth shrinks for small inputs so
    that the feature map never pools below 1x1 (8x8 digits: at most depth 3). The pooling is
    :class:`~harness_vision.pooling.AvgPool2x2`: DC's ``nn.AvgPool2d(2, 2)``, bit for bit, faster on CPU.
    """
    import torch
    from torch import nn

    from .pooling import AvgPool2x2

    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; use one of {NORMS}")
    channels, height, width_px = input_shape
    pad_first = 3 if (height, width_px) == (28, 28) else 1
    depth = max(1, min(depth, int(math.log2(min(height, width_px) + 2 * (pad_first - 1)))))
    layers, c = [], channels
    for d in range(depth):
        layers += [nn.Conv2d(c, width, 3, padding=pad_first if d == 0 else 1)]
        if norm != "none":
            layers += [make_norm(norm, width)]
        layers += [nn.ReLU(inplace=True), AvgPool2x2()]  # nn.AvgPool2d(2, 2), bit for bit, faster on CPU
        c = width
    features = nn.Sequential(*layers)
    with torch.no_grad():
        feat = features.eval()(torch.zeros(1, *input_shape)).numel()
    return nn.Sequential(features.train(), nn.Flatten(), nn.Linear(feat, num_classes))


# The registered ConvNet variants (DC's ConvNetD1/D2/D4, ConvNetNN, ConvNetBN): width 128.
build_convnet_d1 = functools.partial(build_convnet, depth=1)
build_convnet_d2 = functools.partial(build_convnet, depth=2)
build_convnet_d4 = functools.partial(build_convnet, depth=4)
build_convnet_nn = functools.partial(build_convnet, norm="none")
build_convnet_bn = functools.partial(build_convnet, norm="batchnorm")


def build_lenet(input_shape, num_classes):
    """The LeNet of the Dataset Distillation / SLDD code: conv5(6) -> ReLU -> maxpool -> conv5(16) ->
    ReLU -> maxpool -> fc 120 -> fc 84 -> classes. 28-px inputs are padded by 2 so 28 and 32 px
    (1 or 3 channels) both reach a 16x5x5 feature map."""
    from torch import nn

    channels, height, width = input_shape
    if (height, width) not in ((28, 28), (32, 32)):
        raise ValueError(f"lenet takes 28x28 or 32x32 inputs, not {height}x{width}")
    return nn.Sequential(
        nn.Conv2d(channels, 6, 5, padding=2 if height == 28 else 0), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(16 * 5 * 5, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, num_classes),
    )


def build_alexnet(input_shape, num_classes, width: int = 64, hidden: tuple[int, int] = (384, 192)):
    """The CIFAR AlexNet of the Dataset Distillation code (``AlexCifarNet``, also SLDD's):
    conv5x5(width, pad 2) -> ReLU -> maxpool(3, 2, pad 1) -> LRN -> conv5x5(width, pad 2) -> ReLU ->
    LRN -> maxpool(3, 2, pad 1) -> fc hidden[0] -> ReLU -> fc hidden[1] -> ReLU -> fc classes, with
    LocalResponseNorm(4, alpha=0.001/9, beta=0.75, k=1). The flatten size follows the input:
    width*8*8 = 4096 at 32 px (as in the DD code, which takes 3x32x32 only), width*7*7 at 28 px.
    Takes inputs of at least 8x8 px."""
    from torch import nn

    channels, height, width_px = _require_px("alexnet", input_shape, minimum=8)
    pooled = lambda n: (n - 1) // 2 + 1  # noqa: E731  maxpool(3, stride 2, pad 1)
    feat = width * pooled(pooled(height)) * pooled(pooled(width_px))

    def lrn():
        return nn.LocalResponseNorm(4, alpha=0.001 / 9.0, beta=0.75, k=1.0)

    return nn.Sequential(
        nn.Conv2d(channels, width, 5, stride=1, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2, padding=1), lrn(),
        nn.Conv2d(width, width, 5, stride=1, padding=2), nn.ReLU(), lrn(), nn.MaxPool2d(3, 2, padding=1),
        nn.Flatten(), nn.Linear(feat, hidden[0]), nn.ReLU(), nn.Linear(hidden[0], hidden[1]), nn.ReLU(),
        nn.Linear(hidden[1], num_classes),
    )


def build_resnet18(input_shape, num_classes, width: int = 64, norm: str = "instancenorm"):
    """DC's CIFAR-style ResNet-18: BasicBlock x [2, 2, 2, 2] with width-2w-4w-8w channels (64-128-
    256-512), conv3x3 stride-1 stem, no max-pool, global average pool, linear classifier.
    norm "instancenorm" is DC's ``ResNet18`` (registered as ``resnet18``), "batchnorm" DC's
    ``ResNet18BN`` (``resnet18-bn``). Takes inputs of at least 8x8 px (the last map is then 1x1)."""
    channels, _, _ = _require_px("resnet18", input_shape, minimum=8)
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; use one of {NORMS}")
    from .resnet import ResNet

    return ResNet(channels, num_classes, (2, 2, 2, 2), width=width, norm=norm)


build_resnet18_bn = functools.partial(build_resnet18, norm="batchnorm")

VGG11 = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


def build_vgg11(input_shape, num_classes, width: int = 64, norm: str = "instancenorm"):
    """DC's VGG11: cfg 64,M,128,M,256,256,M,512,512,M,512,512,M (channels scaled by width/64), each
    conv3x3(pad 1) -> norm -> ReLU, M = maxpool 2, then Linear(8*width = 512, classes). A 28-px input
    gets padding 3 on the first conv so it behaves like 32 px (DC does this for its 1-channel 28-px
    datasets) and the five poolings end at 1x1. norm "instancenorm" is DC's ``VGG11`` (``vgg11``),
    "batchnorm" DC's ``VGG11BN`` (``vgg11-bn``). Takes 28x28 or 32x32 inputs."""
    from torch import nn

    channels, height, _ = _require_px("vgg11", input_shape, sizes=(28, 32))
    if norm not in NORMS or norm == "none":
        raise ValueError(f"vgg11 norm must be 'instancenorm' or 'batchnorm', not {norm!r}")
    layers, c = [], channels
    for i, v in enumerate(VGG11):
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
            continue
        out = v * width // 64
        layers += [nn.Conv2d(c, out, 3, padding=3 if i == 0 and height == 28 else 1), make_norm(norm, out), nn.ReLU()]
        c = out
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(c, num_classes))


build_vgg11_bn = functools.partial(build_vgg11, norm="batchnorm")
