"""Image architectures, as in the Dataset Condensation (DC) code base.

Parameter counts (10 classes): mlp on 1x8x8: 26,122; on 1x28x28: 118,282.
convnet (width 128, depth 3, instance norm) on 1x8x8: 298,506; on 1x28x28: 308,746; on 3x32x32: 320,010.
lenet on 1x28x28: 61,706; on 3x32x32: 62,006.
"""

from __future__ import annotations

import math


def build_mlp(input_shape, num_classes, width: int = 128):
    """flatten -> width -> width -> classes (DC's MLP)."""
    from torch import nn

    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), width), nn.ReLU(),
                         nn.Linear(width, width), nn.ReLU(), nn.Linear(width, num_classes))


def build_convnet(input_shape, num_classes, width: int = 128, depth: int = 3, norm: str = "instancenorm"):
    """DC's ConvNet: depth x [conv3x3(pad 1) -> norm -> ReLU -> avgpool 2], then a linear classifier.

    Instance norm is GroupNorm(width, width) with affine parameters, as in the DC code. The depth
    shrinks for small inputs so that the feature map never pools below 1x1 (8x8 digits: depth 3).
    """
    import torch
    from torch import nn

    channels, height, width_px = input_shape
    depth = max(1, min(depth, int(math.log2(min(height, width_px)))))
    layers, c = [], channels
    for _ in range(depth):
        layers += [nn.Conv2d(c, width, 3, padding=1)]
        if norm == "instancenorm":
            layers += [nn.GroupNorm(width, width, affine=True)]
        layers += [nn.ReLU(inplace=True), nn.AvgPool2d(2, 2)]
        c = width
    features = nn.Sequential(*layers)
    with torch.no_grad():
        feat = features(torch.zeros(1, *input_shape)).numel()
    return nn.Sequential(features, nn.Flatten(), nn.Linear(feat, num_classes))


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
