"""The figures a trial logs (harness/artifacts.py): one mosaic of the images, the labels heatmap."""

from __future__ import annotations

import types

import pytest
import torch
import torch.nn.functional as F

from harness.artifacts import MOSAIC_PAD, mosaic, write_figures
from harness.specs import DistilledSet


def striped_set(channels: int) -> DistilledSet:
    """4 classes x 3 images of 8x8; class c's images are constant c (scaled per image: a flat image
    becomes 0), except one bright pixel at row c, so every tile is recognisable."""
    y = torch.arange(4).repeat(3)
    x = torch.zeros(len(y), channels, 8, 8)
    for i, c in enumerate(y.tolist()):
        x[i, :, c, 0] = 1.0
    return DistilledSet(x, F.one_hot(y, 4).float())


@pytest.mark.parametrize("channels", [1, 3])
def test_the_mosaic_has_one_column_per_class_and_white_gaps(channels):
    canvas = mosaic(striped_set(channels), 4)
    step = 8 + MOSAIC_PAD
    assert canvas.shape == (3 * step - MOSAIC_PAD, 4 * step - MOSAIC_PAD, 3)
    for c in range(4):
        for r in range(3):
            tile = canvas[r * step : r * step + 8, c * step : c * step + 8]
            bright = (tile[..., 0] == 1).nonzero().tolist()
            assert bright == [[c, 0]], (r, c)  # class c's pixel, in class c's column
    assert bool((canvas[8:step] == 1).all())  # the gap between rows is white


def test_figures_are_written(tmp_path):
    spec = types.SimpleNamespace(modality="image", input_shape=(1, 8, 8), num_classes=4,
                                 classes=["a", "b", "c", "d"], decode=None)
    written = write_figures(striped_set(1), spec, tmp_path)
    assert {p.name for p in written} == {"images.png", "labels.png"}
    assert all(p.stat().st_size > 0 for p in written)
