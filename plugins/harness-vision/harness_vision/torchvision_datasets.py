"""Full image datasets read through torchvision's own dataset classes.

MNIST, Fashion-MNIST, KMNIST, EMNIST-letters, CIFAR-10, CIFAR-100 and SVHN, each opened with the
torchvision class of that name and ``root=data_dir`` (so a directory torchvision or the Dataset
Condensation code already filled works as is), then read vectorised from the object's arrays
(``.data``, ``.targets`` / ``.labels``), never item by item.

Where the files come from, in order:

1. the data directory (torchvision's own layout under it, e.g. ``MNIST/raw/``, ``cifar-10-batches-py/``);
2. Fashion-MNIST only: the Debian package ``dataset-fashion-mnist`` (the four standard IDX .gz files),
   unpacked once into ``<data_dir>/FashionMNIST/raw/`` -- the way to have it without internet;
3. torchvision's download (``download=True``), unless ``HARNESS_OFFLINE=1``.

Anything else -- no files and no download, a failed download, unreadable files -- is one
:class:`harness.DatasetUnavailableError` naming the dataset, the directory and how to get the data.

Module level stays torch-free: the plugin entry point imports it for the catalogue.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import os
import shutil
import socket
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

OFFLINE_ENV = "HARNESS_OFFLINE"  # "1" (or true/yes/on): never try to download

# torchvision opens sockets without a timeout: a network that drops packets instead of refusing
# would hang the preflight forever, so downloads run under this default socket timeout (seconds).
DOWNLOAD_TIMEOUT_S = 60.0

# Where the Debian/Ubuntu package `dataset-fashion-mnist` puts the original files.
FASHION_MNIST_SYSTEM_DIRS: tuple[Path, ...] = (Path("/usr/share/datasets/fashion-mnist"),)
IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")

DIGITS = tuple(str(i) for i in range(10))
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
# CIFAR-100's fine label names in label order (the archive's `meta` file, `fine_label_names`).
CIFAR100_CLASSES = (
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle",
    "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar", "cattle",
    "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch", "crab", "crocodile", "cup", "dinosaur",
    "dolphin", "elephant", "flatfish", "forest", "fox", "girl", "hamster", "house", "kangaroo", "keyboard",
    "lamp", "lawn_mower", "leopard", "lion", "lizard", "lobster", "man", "maple_tree", "motorcycle", "mountain",
    "mouse", "mushroom", "oak_tree", "orange", "orchid", "otter", "palm_tree", "pear", "pickup_truck", "pine_tree",
    "plain", "plate", "poppy", "porcupine", "possum", "rabbit", "raccoon", "ray", "road", "rocket",
    "rose", "sea", "seal", "shark", "shrew", "skunk", "skyscraper", "snail", "snake", "spider",
    "squirrel", "streetcar", "sunflower", "sweet_pepper", "table", "tank", "telephone", "television", "tiger", "tractor",
    "train", "trout", "tulip", "turtle", "wardrobe", "whale", "willow_tree", "wolf", "woman", "worm",
)


@dataclass(frozen=True)
class TorchvisionDataset:
    """One dataset: its torchvision class, normalisation, class names and where its files live."""

    name: str
    tv_class: str  # attribute of torchvision.datasets
    input_shape: tuple[int, int, int]
    mean: tuple[float, ...]  # per channel, of pixels scaled to [0, 1]
    std: tuple[float, ...]
    classes: tuple[str, ...]
    sizes: tuple[int, int]  # train, test
    source: str
    folder: str  # under data_dir, where torchvision looks ("" = data_dir itself)
    tv_kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def description(self) -> str:
        train, test = self.sizes
        return f"{self.source}: {train:,} train / {test:,} test (torchvision {self.tv_class}, files in --data-dir)"


# Normalisation: the Dataset Condensation code's values (utils.get_dataset) for MNIST, FashionMNIST,
# SVHN, CIFAR10 and CIFAR100; KMNIST and EMNIST-letters: the commonly cited training-set statistics.
CATALOGUE: tuple[TorchvisionDataset, ...] = (
    TorchvisionDataset("mnist", "MNIST", (1, 28, 28), (0.1307,), (0.3081,), DIGITS, (60_000, 10_000),
                       "MNIST handwritten digits", "MNIST/raw"),
    TorchvisionDataset("fashion-mnist", "FashionMNIST", (1, 28, 28), (0.2861,), (0.3530,),
                       ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                        "Ankle boot"), (60_000, 10_000),
                       "Zalando's Fashion-MNIST (offline: apt-get install dataset-fashion-mnist)", "FashionMNIST/raw"),
    TorchvisionDataset("kmnist", "KMNIST", (1, 28, 28), (0.1918,), (0.3483,),
                       ("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"), (60_000, 10_000),
                       "Kuzushiji-MNIST, 10 cursive Japanese hiragana", "KMNIST/raw"),
    TorchvisionDataset("emnist-letters", "EMNIST", (1, 28, 28), (0.1722,), (0.3309,),
                       tuple("abcdefghijklmnopqrstuvwxyz"), (124_800, 20_800),
                       "EMNIST letters, 26 case-merged classes, upright", "EMNIST/raw", {"split": "letters"}),
    TorchvisionDataset("cifar10", "CIFAR10", (3, 32, 32), (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010),
                       CIFAR10_CLASSES, (50_000, 10_000), "CIFAR-10 colour images", "cifar-10-batches-py"),
    TorchvisionDataset("cifar100", "CIFAR100", (3, 32, 32), (0.5071, 0.4866, 0.4409), (0.2673, 0.2564, 0.2762),
                       CIFAR100_CLASSES, (50_000, 10_000), "CIFAR-100 colour images, fine labels", "cifar-100-python"),
    TorchvisionDataset("svhn", "SVHN", (3, 32, 32), (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970),
                       DIGITS, (73_257, 26_032), "SVHN house-number digits, cropped 32x32 (no 'extra')", ""),
)
BY_NAME = {d.name: d for d in CATALOGUE}


def offline() -> bool:
    return os.environ.get(OFFLINE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def load(name: str, split: str, data_dir: Path | None) -> tuple[Any, Any]:
    """(x float32 [N, C, H, W] normalised per channel, y int64 [N]) of one split of dataset ``name``."""
    import torch

    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    entry = BY_NAME[name]
    if data_dir is None:
        from harness import default_data_dir

        data_dir = default_data_dir()
    data_dir = Path(data_dir).expanduser()
    ds = open_dataset(entry, split, data_dir)
    x, y = _arrays(entry, ds)
    check_size(entry, split, len(y), data_dir)
    mean = torch.tensor(entry.mean).view(1, -1, 1, 1)
    std = torch.tensor(entry.std).view(1, -1, 1, 1)
    x = x.contiguous().to(torch.float32).div_(255.0).sub_(mean).div_(std)
    return x, y.to(torch.int64)


def check_size(entry: TorchvisionDataset, split: str, n: int, data_dir: Path) -> None:
    """A catalogued dataset has a known size per split: any other is a wrong file, named here."""
    expected = entry.sizes[0 if split == "train" else 1]
    if n == expected:
        return
    from harness import DatasetUnavailableError

    where = data_dir / entry.folder if entry.folder else data_dir
    files = ""
    if entry.tv_class in ("MNIST", "FashionMNIST", "KMNIST"):
        prefix = "train" if split == "train" else "t10k"
        files = f" ({where / f'{prefix}-images-idx3-ubyte'} and its labels file)"
    raise DatasetUnavailableError(
        entry.name, str(where),
        f"its {split} split has {n:,} examples, expected {expected:,}: the files there{files} are not the "
        f"original ones; delete them so they are downloaded again, or copy the originals there")


def open_dataset(entry: TorchvisionDataset, split: str, data_dir: Path) -> Any:
    """The torchvision dataset object, following the module's download policy."""
    from torchvision import datasets as tvd

    cls = getattr(tvd, entry.tv_class)
    kwargs = dict(entry.tv_kwargs)
    if entry.tv_class == "SVHN":
        kwargs["split"] = split
    else:
        kwargs["train"] = split == "train"
    looked_in = str(data_dir / entry.folder) if entry.folder else str(data_dir)

    if entry.name == "fashion-mnist":
        unpack_fashion_mnist(data_dir)
    try:
        return cls(root=str(data_dir), download=False, **kwargs)
    except Exception as exc:  # missing, partial or corrupted files: torchvision raises several kinds
        missing = _reason(exc)
    if offline():
        raise _unavailable(entry, looked_in, data_dir, f"{missing} and {OFFLINE_ENV}=1 forbids downloading")
    try:
        with _socket_timeout(DOWNLOAD_TIMEOUT_S):
            return cls(root=str(data_dir), download=True, **kwargs)
    except Exception as exc:  # no network, mirror down, checksum mismatch, disk full...
        raise _unavailable(entry, looked_in, data_dir, f"{missing} and the download failed ({_reason(exc)})") from exc


def _arrays(entry: TorchvisionDataset, ds: Any) -> tuple[Any, Any]:
    """uint8 images [N, C, H, W] and labels [N] from the dataset object's arrays."""
    import numpy as np
    import torch

    if entry.tv_class in ("MNIST", "FashionMNIST", "KMNIST"):
        return ds.data.unsqueeze(1), ds.targets
    if entry.tv_class == "EMNIST":
        # The EMNIST files store every image transposed (column-major); swap H and W to make the
        # letters upright. Letters are labelled 1..26 (0 is an unused "N/A" class): shift to 0..25.
        return ds.data.transpose(1, 2).unsqueeze(1), ds.targets - 1
    if entry.tv_class in ("CIFAR10", "CIFAR100"):
        return torch.from_numpy(ds.data).permute(0, 3, 1, 2), torch.from_numpy(np.asarray(ds.targets, dtype=np.int64))
    if entry.tv_class == "SVHN":  # torchvision already made it [N, C, H, W] and mapped label 10 to digit 0
        return torch.from_numpy(ds.data), torch.from_numpy(ds.labels)
    raise AssertionError(f"no array reader for torchvision {entry.tv_class}")


def unpack_fashion_mnist(data_dir: Path) -> bool:
    """Fill ``<data_dir>/FashionMNIST/raw/`` from the Debian package's .gz files, if it lacks any of
    the four files and the package is installed. Each file is written to a temporary name and renamed,
    so a concurrent or interrupted run never leaves a half-written file. True if anything was unpacked."""
    raw = data_dir / "FashionMNIST" / "raw"
    missing = [f for f in IDX_FILES if not (raw / f).is_file()]
    source = next((d for d in FASHION_MNIST_SYSTEM_DIRS if all((d / f"{f}.gz").is_file() for f in IDX_FILES)), None)
    if not missing or source is None:
        return False
    try:
        raw.mkdir(parents=True, exist_ok=True)
        for f in missing:
            fd, tmp = tempfile.mkstemp(dir=raw, prefix=f".{f}.", suffix=".tmp")
            try:
                with os.fdopen(fd, "wb") as out, gzip.open(source / f"{f}.gz", "rb") as src:
                    shutil.copyfileobj(src, out, length=1 << 20)
                os.chmod(tmp, 0o644)  # mkstemp creates 0600; the data dir may be shared
                os.replace(tmp, raw / f)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
    except (OSError, EOFError) as exc:  # unwritable data dir, truncated package file
        from harness import DatasetUnavailableError

        raise DatasetUnavailableError(
            "fashion-mnist", str(raw),
            f"could not unpack {source} there ({_reason(exc)}); use a writable --data-dir / HARNESS_DATA_DIR",
        ) from exc
    return True


def _unavailable(entry: TorchvisionDataset, looked_in: str, data_dir: Path, reason: str) -> Exception:
    from harness import DatasetUnavailableError

    how = (f"{reason}; run once with internet access (without {OFFLINE_ENV}=1) to download it into {data_dir}, "
           f"or point --data-dir / HARNESS_DATA_DIR at a directory that has it")
    if entry.name == "fashion-mnist":
        how += f", or `apt-get install dataset-fashion-mnist` (read from {FASHION_MNIST_SYSTEM_DIRS[0]})"
    return DatasetUnavailableError(entry.name, looked_in, how)


def _reason(exc: BaseException, limit: int = 160) -> str:
    """A short one-line reason (the CLI prints errors as a single line)."""
    text = " ".join(str(exc).split())
    if isinstance(exc, RuntimeError) and text.startswith("Dataset not found"):
        return "its files are missing or corrupted"  # torchvision's text advises download=True: not ours to give
    text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


@contextlib.contextmanager
def _socket_timeout(seconds: float):
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def loader(name: str):
    """``DatasetSpec.load`` for ``name`` (a picklable partial, so executors can ship it)."""
    return functools.partial(load, name)
