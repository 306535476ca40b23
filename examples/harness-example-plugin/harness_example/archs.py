"""The ``example-linear`` architecture: flatten -> one linear layer (softmax regression).

``build(input_shape, num_classes)`` is the ArchitectureSpec contract; it works for any input
shape, so it is registered for both the image and the text modality.
"""

from __future__ import annotations

import math


def build_linear(input_shape, num_classes):
    from torch import nn

    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), num_classes))
