"""The ``example-blobs`` dataset: SYNTHETIC data, generated on the fly, no files, no download.

Four classes, each an isotropic Gaussian blob around a fixed random centre in a 1x8x8 "image"
space. Every value comes from a ``torch.Generator`` with a fixed seed, so the train and test
splits are identical on every machine and every call. It exists to exercise the plugin machinery
and to make tests fast; it says nothing about how a method does on real images.

A real dataset plugin loads files from ``data_dir`` (downloading them when possible) and raises
``harness.DatasetUnavailableError(name, looked_in, how_to_get)`` when they are missing.
"""

from __future__ import annotations

from pathlib import Path

NUM_CLASSES = 4
INPUT_SHAPE = (1, 8, 8)
CLASSES = ("blob-0", "blob-1", "blob-2", "blob-3")
PER_CLASS = {"train": 64, "test": 32}
SPLIT_SEED = {"train": 0, "test": 1}  # noise of each split
CENTER_SEED = 2024  # the class centres (shared by both splits)
CENTER_SCALE = 0.35  # per-pixel std of the centres: classes overlap a little, so budgets matter
NOISE_STD = 1.0  # per-pixel std of the examples around their centre


def load_blobs(split: str, data_dir: Path | None = None):
    """Return ``(x, y)``: x float32 ``[N, 1, 8, 8]``, y int64 ``[N]`` in ``[0, 4)``, classes in order.

    ``data_dir`` is unused (the data is generated); the signature is the DatasetSpec contract.
    """
    import torch

    if split not in PER_CLASS:
        raise ValueError(f"example-blobs: unknown split {split!r}; use 'train' or 'test'")
    centers = CENTER_SCALE * torch.randn(NUM_CLASSES, *INPUT_SHAPE,
                                         generator=torch.Generator().manual_seed(CENTER_SEED))
    y = torch.arange(NUM_CLASSES).repeat_interleave(PER_CLASS[split])
    noise = torch.randn(len(y), *INPUT_SHAPE, generator=torch.Generator().manual_seed(SPLIT_SEED[split]))
    return centers[y] + NOISE_STD * noise, y
