"""harness-vision's torchvision datasets: real loaders on small files in each dataset's native format.

Every test writes files exactly as the original archives lay them out (IDX with its magic numbers,
CIFAR's pickled batches, SVHN's .mat) and reads them back through the production path: the real
torchvision classes with ``download=False`` and ``HARNESS_OFFLINE=1``. Only the MD5 check of the
CIFAR/SVHN files is replaced (the generated files cannot match the real archives' checksums).
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import pickle
import socket
import struct
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import torch

from harness.errors import DatasetUnavailableError
from harness_vision import torchvision_datasets as tvd
from test_cli_errors import assert_one_error_line, harness_cli

NAMES = ["mnist", "fashion-mnist", "kmnist", "emnist-letters", "cifar10", "cifar100", "svhn"]
SIZES = {"mnist": (20, 10), "fashion-mnist": (20, 10), "kmnist": (20, 10), "emnist-letters": (52, 26),
         "cifar10": (20, 10), "cifar100": (200, 100), "svhn": (30, 10)}


# -- writers of the native formats ----------------------------------------------------------------------
def write_idx_images(path: Path, images: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    n, h, w = images.shape
    path.write_bytes(struct.pack(">IIII", 2051, n, h, w) + images.astype(np.uint8).tobytes())


def write_idx_labels(path: Path, labels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(struct.pack(">II", 2049, len(labels)) + labels.astype(np.uint8).tobytes())


def _labels(n: int, k: int, rng) -> np.ndarray:
    """n labels covering all k classes equally, shuffled."""
    return rng.permutation(np.arange(n) % k)


def generate(name: str, root: Path, seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Write ``name``'s train and test files under ``root`` in the native layout torchvision reads.

    Returns split -> (uint8 images [N, C, H, W] as they should come out upright, labels 0..C-1).
    """
    rng = np.random.RandomState(seed)
    out = {}
    for split, n in zip(("train", "test"), SIZES[name]):
        if name in ("mnist", "fashion-mnist", "kmnist"):
            x, y = rng.randint(0, 256, (n, 28, 28)).astype(np.uint8), _labels(n, 10, rng)
            folder = root / {"mnist": "MNIST", "fashion-mnist": "FashionMNIST", "kmnist": "KMNIST"}[name] / "raw"
            prefix = "train" if split == "train" else "t10k"
            write_idx_images(folder / f"{prefix}-images-idx3-ubyte", x)
            write_idx_labels(folder / f"{prefix}-labels-idx1-ubyte", y)
            out[split] = (x[:, None], y)
        elif name == "emnist-letters":
            upright, y = rng.randint(0, 256, (n, 28, 28)).astype(np.uint8), _labels(n, 26, rng)
            folder = root / "EMNIST" / "raw"
            # the EMNIST files store images transposed and letters as 1..26
            write_idx_images(folder / f"emnist-letters-{split}-images-idx3-ubyte", upright.transpose(0, 2, 1))
            write_idx_labels(folder / f"emnist-letters-{split}-labels-idx1-ubyte", y + 1)
            out[split] = (upright[:, None], y)
        elif name in ("cifar10", "cifar100"):
            k = 10 if name == "cifar10" else 100
            x, y = rng.randint(0, 256, (n, 3, 32, 32)).astype(np.uint8), _labels(n, k, rng)
            rows = x.reshape(n, 3072)  # CIFAR rows: the red plane, then green, then blue, each row-major
            if name == "cifar10":
                folder = root / "cifar-10-batches-py"
                if split == "train":
                    files = [(f"data_batch_{i + 1}", part) for i, part in enumerate(np.array_split(np.arange(n), 5))]
                else:
                    files = [("test_batch", np.arange(n))]
                batches = {f: {"batch_label": f, "data": rows[i], "labels": y[i].tolist()} for f, i in files}
                meta = ("batches.meta", {"label_names": list(tvd.CIFAR10_CLASSES)})
            else:
                folder = root / "cifar-100-python"
                batches = {split: {"data": rows, "fine_labels": y.tolist(), "coarse_labels": (y // 5).tolist()}}
                meta = ("meta", {"fine_label_names": list(tvd.CIFAR100_CLASSES)})
            folder.mkdir(parents=True, exist_ok=True)
            for fname, entry in [*batches.items(), meta]:
                (folder / fname).write_bytes(pickle.dumps(entry, protocol=2))
            out[split] = (x, y)
        elif name == "svhn":
            from scipy.io import savemat

            x, y = rng.randint(0, 256, (n, 3, 32, 32)).astype(np.uint8), _labels(n, 10, rng)
            root.mkdir(parents=True, exist_ok=True)
            # X is [H, W, C, N]; the digit 0 is labelled 10
            savemat(root / f"{split}_32x32.mat", {"X": x.transpose(2, 3, 1, 0),
                                                   "y": np.where(y == 0, 10, y).astype(np.uint8)[:, None]})
            out[split] = (x, y)
    return out


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """Offline, no MD5 of generated CIFAR/SVHN files, no Fashion-MNIST package: the data dir is all there is."""
    import torchvision.datasets.cifar as tv_cifar
    import torchvision.datasets.svhn as tv_svhn

    monkeypatch.setenv("HARNESS_OFFLINE", "1")
    exists = lambda fpath, md5=None: os.path.isfile(fpath)  # noqa: E731 -- existence, not checksum
    monkeypatch.setattr(tv_cifar, "check_integrity", exists)
    monkeypatch.setattr(tv_svhn, "check_integrity", exists)
    monkeypatch.setattr(tvd, "FASHION_MNIST_SYSTEM_DIRS", (tmp_path / "no-such-package",))
    for name, sizes in SIZES.items():  # the generated files are small: the catalogue expects their sizes
        monkeypatch.setitem(tvd.BY_NAME, name, dataclasses.replace(tvd.BY_NAME[name], sizes=sizes))


def expected_x(name: str, images: np.ndarray) -> np.ndarray:
    entry = tvd.BY_NAME[name]
    mean = np.array(entry.mean, dtype=np.float32).reshape(1, -1, 1, 1)
    std = np.array(entry.std, dtype=np.float32).reshape(1, -1, 1, 1)
    return (images.astype(np.float32) / 255.0 - mean) / std


# -- the catalogue and its registration ------------------------------------------------------------------
def test_registered_with_shapes_classes_and_descriptions():
    from torchvision import datasets as tv

    from harness.plugins import load_plugins

    plugins = load_plugins()
    expected = {"mnist": (10, (1, 28, 28)), "fashion-mnist": (10, (1, 28, 28)), "kmnist": (10, (1, 28, 28)),
                "emnist-letters": (26, (1, 28, 28)), "cifar10": (10, (3, 32, 32)), "cifar100": (100, (3, 32, 32)),
                "svhn": (10, (3, 32, 32))}
    for name, (k, shape) in expected.items():
        spec = plugins.datasets.get(name)
        assert (spec.num_classes, spec.input_shape, spec.modality) == (k, shape, "image")
        assert len(spec.classes) == len(set(spec.classes)) == k
        assert " train / " in spec.description and " test" in spec.description
    assert list(plugins.datasets.get("fashion-mnist").classes) == tv.FashionMNIST.classes
    assert list(plugins.datasets.get("kmnist").classes) == tv.KMNIST.classes
    assert list(plugins.datasets.get("emnist-letters").classes) == tv.EMNIST.classes_split_dict["letters"][1:]
    assert list(plugins.datasets.get("cifar100").classes[:3]) == ["apple", "aquarium_fish", "baby"]


def test_plugin_module_stays_torch_free():
    import subprocess
    import sys

    code = "import sys, harness_vision.plugin; print('torch' in sys.modules, 'torchvision' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == "False False", proc.stderr


# -- reading the native formats --------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_reads_native_files_through_torchvision(name, tmp_path, offline):
    raw = generate(name, tmp_path / "data")
    for split in ("train", "test"):
        x, y = tvd.load(name, split, tmp_path / "data")
        images, labels = raw[split]
        entry = tvd.BY_NAME[name]
        assert x.dtype == torch.float32 and y.dtype == torch.int64 and x.is_contiguous()
        assert x.shape == (SIZES[name][split == "test"], *entry.input_shape)
        assert y.tolist() == labels.tolist()
        assert torch.bincount(y, minlength=len(entry.classes)).tolist() == [len(y) // len(entry.classes)] * len(entry.classes)
        np.testing.assert_allclose(x.numpy(), expected_x(name, images), rtol=0, atol=1e-6)
    # the registered spec reads the same thing (a partial of the same function)
    from harness.plugins import load_plugins

    xs, ys = load_plugins().datasets.get(name).load("test", tmp_path / "data")
    assert torch.equal(xs, x) and torch.equal(ys, y)


def test_emnist_letters_are_upright_and_labelled_from_zero(tmp_path, offline):
    root = tmp_path / "data"
    generate("emnist-letters", root)
    stroke = np.zeros((26, 28, 28), dtype=np.uint8)
    stroke[:, 3, :] = 255  # a horizontal stroke in row 3 when upright
    write_idx_images(root / "EMNIST/raw/emnist-letters-test-images-idx3-ubyte", stroke.transpose(0, 2, 1))
    write_idx_labels(root / "EMNIST/raw/emnist-letters-test-labels-idx1-ubyte", np.arange(1, 27))
    x, y = tvd.load("emnist-letters", "test", root)
    assert y.tolist() == list(range(26))
    bright = x[0, 0] > 0
    assert bright[3].all() and int(bright.sum()) == 28  # the stroke is a row, not a column


def test_svhn_label_10_is_the_digit_0(tmp_path, offline):
    raw = generate("svhn", tmp_path / "data")
    from scipy.io import loadmat

    stored = loadmat(tmp_path / "data" / "train_32x32.mat")["y"].ravel()
    assert 0 not in stored and 10 in stored
    _, y = tvd.load("svhn", "train", tmp_path / "data")
    assert y.tolist() == raw["train"][1].tolist() and int(y.min()) == 0 and int(y.max()) == 9


def test_per_channel_normalisation_maps_pixels_exactly(tmp_path, offline):
    root = tmp_path / "data"
    generate("cifar10", root)
    x, _ = tvd.load("cifar10", "test", root)
    # a pixel equal to the channel mean maps to ~0, 0 and 255 map to -mean/std and (1-mean)/std
    mean, std = np.array(tvd.BY_NAME["cifar10"].mean), np.array(tvd.BY_NAME["cifar10"].std)
    assert np.allclose(x.amin(dim=(0, 2, 3)).numpy(), -mean / std, atol=1e-5)
    assert np.allclose(x.amax(dim=(0, 2, 3)).numpy(), (1 - mean) / std, atol=1e-5)


# -- missing data: one clear error -----------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_missing_files_offline_is_one_clear_error(name, tmp_path, offline):
    data_dir = tmp_path / "empty"
    with pytest.raises(DatasetUnavailableError) as info:
        tvd.load(name, "train", data_dir)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"dataset '{name}' is not available (looked in {data_dir}")
    assert "HARNESS_OFFLINE=1 forbids downloading" in message and "--data-dir" in message
    assert ("apt-get install dataset-fashion-mnist" in message) == (name == "fashion-mnist")
    assert not data_dir.exists()  # offline: nothing created


def test_a_failed_download_is_one_clear_error_with_a_timeout(tmp_path, monkeypatch):
    """Online but the network fails: torchvision's download error becomes one line; the attempt ran
    under the module's socket timeout, restored afterwards."""
    from torchvision import datasets as tv

    monkeypatch.delenv("HARNESS_OFFLINE", raising=False)
    seen = []

    def no_network(self):
        seen.append(socket.getdefaulttimeout())
        raise URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(tv.MNIST, "download", no_network)
    before = socket.getdefaulttimeout()
    with pytest.raises(DatasetUnavailableError) as info:
        tvd.load("mnist", "test", tmp_path / "empty")
    assert seen == [tvd.DOWNLOAD_TIMEOUT_S] and socket.getdefaulttimeout() == before
    message = str(info.value)
    assert "\n" not in message and "the download failed (URLError: <urlopen error [Errno -2]" in message


def test_corrupted_files_are_reported_not_crashed(tmp_path, offline):
    root = tmp_path / "data"
    generate("kmnist", root)
    (root / "KMNIST/raw/train-images-idx3-ubyte").write_bytes(b"\x00\x00\x00")  # truncated
    with pytest.raises(DatasetUnavailableError, match="dataset 'kmnist' is not available .*forbids downloading"):
        tvd.load("kmnist", "train", root)


def test_bench_on_missing_mnist_fails_before_compute_with_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_OFFLINE", "1")
    (tmp_path / "grid.toml").write_text(
        'name = "mnist-missing"\n[[grid]]\ndistiller = ["random"]\ndataset = ["mnist"]\narch = ["mlp"]\nipc = [1]\n'
        "[eval]\nepochs = 1\nmodels = 1\n"
    )
    empty, store = tmp_path / "empty-data", tmp_path / "store" / "mlflow.db"
    proc = harness_cli("bench", "grid.toml", "--data-dir", str(empty), "--device", "cpu",
                       "--tracking-uri", f"sqlite:///{store}", cwd=tmp_path)
    assert_one_error_line(proc, "error: dataset 'mnist' is not available", f"looked in {empty}", "--data-dir")
    assert not store.exists()  # preflight: rejected before MLflow was opened


# -- Fashion-MNIST from the Debian package ---------------------------------------------------------------
def test_fashion_mnist_is_unpacked_from_the_package_files(tmp_path, monkeypatch, offline):
    package = tmp_path / "usr-share-datasets-fashion-mnist"
    raw = generate("fashion-mnist", tmp_path / "source")
    package.mkdir()
    for f in tvd.IDX_FILES:
        (package / f"{f}.gz").write_bytes(gzip.compress((tmp_path / "source/FashionMNIST/raw" / f).read_bytes()))
    monkeypatch.setattr(tvd, "FASHION_MNIST_SYSTEM_DIRS", (tmp_path / "absent", package))
    data_dir = tmp_path / "data"
    x, y = tvd.load("fashion-mnist", "train", data_dir)
    assert y.tolist() == raw["train"][1].tolist()
    np.testing.assert_allclose(x.numpy(), expected_x("fashion-mnist", raw["train"][0]), rtol=0, atol=1e-6)
    unpacked = data_dir / "FashionMNIST" / "raw"
    assert sorted(p.name for p in unpacked.iterdir()) == sorted(tvd.IDX_FILES)  # no temp files left
    assert all((unpacked / f).stat().st_mode & 0o044 for f in tvd.IDX_FILES)  # readable by others
    assert tvd.unpack_fashion_mnist(data_dir) is False  # already there: not unpacked again


def test_real_fashion_mnist_from_the_debian_package(tmp_path, monkeypatch):
    package = Path("/usr/share/datasets/fashion-mnist")
    if not all((package / f"{f}.gz").is_file() for f in tvd.IDX_FILES):
        pytest.skip(f"the Debian package dataset-fashion-mnist is not installed ({package} lacks the four IDX .gz "
                    "files); `apt-get install dataset-fashion-mnist` to run this test")
    monkeypatch.setenv("HARNESS_OFFLINE", "1")
    x, y = tvd.load("fashion-mnist", "train", tmp_path)
    xt, yt = tvd.load("fashion-mnist", "test", tmp_path)
    assert x.shape == (60_000, 1, 28, 28) and xt.shape == (10_000, 1, 28, 28)
    assert torch.bincount(y).tolist() == [6_000] * 10 and torch.bincount(yt).tolist() == [1_000] * 10
    assert abs(float(x.mean())) < 0.01 and abs(float(x.std()) - 1) < 0.01  # the normalisation fits the data


# -- cross-dataset: the LD paper's EMNIST-letters -> MNIST ---------------------------------------------------
def test_cross_dataset_ld_emnist_letters_to_mnist(tmp_path, offline, tracking_uri):
    from harness.bench import run_bench
    from harness.grid import build_grid, read_grid_file
    from harness.plugins import load_plugins
    from harness.specs import DistilledSet
    from harness.tracking import Tracker

    data_dir = tmp_path / "data"
    generate("emnist-letters", data_dir)
    generate("mnist", data_dir)
    (tmp_path / "ld.toml").write_text(
        'name = "ld-cross"\ndevice = "cpu"\n[[grid]]\ndistiller = ["ld"]\ndataset = ["mnist"]\n'
        'base_dataset = ["emnist-letters"]\narch = ["mlp"]\nipc = [1]\n'
        "[eval]\nepochs = 1\nmodels = 1\n[distillers.ld]\nouter_steps = 3\n"
    )
    plugins = load_plugins()
    grid = build_grid(read_grid_file(tmp_path / "ld.toml"), plugins, source="ld.toml")
    outcome = run_bench(grid, plugins, tracking_uri=tracking_uri, data_dir=data_dir)
    assert (outcome.passed, outcome.failed) == (1, 0), outcome
    tracker = Tracker(tracking_uri)
    [run] = tracker.trial_runs(tracker.experiment_id("ld-cross", create=False))
    assert run.info.run_name == "ld/emnist-letters->mnist/mlp/ipc1/seed0"
    path = tracker.client.download_artifacts(run.info.run_id, "distilled.safetensors", str(tmp_path))
    dset = DistilledSet.load(path)
    assert dset.x.shape == (10, 1, 28, 28) and dset.y.shape == (10, 10)  # letters as inputs, digit labels
    base_x, _ = tvd.load("emnist-letters", "train", data_dir)
    assert all((base_x == xi).flatten(1).all(1).any() for xi in dset.x)  # every input is a real letter
    assert dset.meta["base_dataset"] == "emnist-letters"


def test_a_catalogued_dataset_of_the_wrong_size_names_the_file(tmp_path, monkeypatch):
    """A consistent but truncated MNIST (e.g. 100 images) is refused, naming the file, instead of
    running as if it were MNIST."""
    from harness import DatasetUnavailableError

    monkeypatch.setenv("HARNESS_OFFLINE", "1")
    generate("mnist", tmp_path)
    with pytest.raises(DatasetUnavailableError, match=r"its train split has \d+ examples, expected 60,000: the "
                                                       r"files there \(.*MNIST/raw/train-images-idx3-ubyte and"):
        tvd.load("mnist", "train", tmp_path)
