"""Image architectures, as in the Dataset Condensation (DC) code base.

Parameter counts (10 classes): mlp on 1x8x8: 26,122; on 1x28x28: 118,282.
convnet (width 128, depth 3, instance norm) on 1x8x8: 297,738; on 1x28x28: 317,962; on 3x32x32: 320,010.
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
