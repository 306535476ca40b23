"""Loading datasets into input space, once per process, with checks and clear errors."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .errors import ConfigError, DatasetUnavailableError, HarnessError


TEST_SUBSET_SEED = 20260101  # fixed: a test subset is the same in every run and every grid


def default_data_dir() -> Path:
    """``$HARNESS_DATA_DIR``, else ``$XDG_CACHE_HOME/distill-harness/data`` (~/.cache/...)."""
    if os.environ.get("HARNESS_DATA_DIR"):
        return Path(os.environ["HARNESS_DATA_DIR"]).expanduser()
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "distill-harness" / "data"


def resolve_device(name: str) -> Any:
    """``auto`` -> cuda if available, else cpu. Unavailable devices are a ConfigError."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device '{name}' requested but CUDA is not available here; use --device cpu or auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"device '{name}' does not exist: {torch.cuda.device_count()} CUDA device(s) visible")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device '{name}' requested but MPS is not available here; use --device cpu or auto")
    return device


def device_name(device: Any) -> str:
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return device.type


class DataCache:
    """(dataset, split) -> (x, y) in input space on ``device``; each loaded once."""

    def __init__(self, plugins: Any, data_dir: Path, device: Any):
        from .specs import DataContext

        self.plugins, self.data_dir, self.device = plugins, Path(data_dir), device
        self.ctx = DataContext(self.data_dir, device)  # what dataset hooks receive
        self._cache: dict[tuple[str, str], tuple[Any, Any]] = {}

    def get(self, name: str, split: str) -> tuple[Any, Any]:
        if (name, split) not in self._cache:
            self._cache[(name, split)] = self._load(name, split)
        return self._cache[(name, split)]

    def fingerprint(self, name: str, splits: tuple[str, ...] = ("train", "test")) -> str:
        """The fingerprints of ``name``'s splits, e.g. ``train 4000:3f2a.. test 1000:9c1e..``."""
        key = (name, "fingerprint/" + "+".join(splits))
        if key not in self._cache:
            self._cache[key] = " ".join(f"{s} {fingerprint(*self.get(name, s))}" for s in splits)
        return self._cache[key]

    def test(self, name: str, size: int = 0) -> tuple[Any, Any]:
        """The test split, or (``size`` > 0) a fixed class-stratified subset of ``size`` examples:
        each class keeps its share (rounded down, the remainder going to the first examples of a
        fixed permutation), so every trial and recipe is tested on the same examples."""
        import torch

        x, y = self.get(name, "test")
        if not size or size >= len(y):
            return x, y
        if (name, f"test/{size}") not in self._cache:
            order = torch.randperm(len(y), generator=torch.Generator().manual_seed(TEST_SUBSET_SEED))
            y_cpu = y.cpu()[order]
            keep = torch.zeros(len(y), dtype=torch.bool)
            for c in y_cpu.unique():
                members = torch.nonzero(y_cpu == c).flatten()
                keep[members[: int(size * len(members) / len(y))]] = True
            keep[torch.nonzero(~keep).flatten()[: size - int(keep.sum())]] = True
            idx = order[keep].sort().values.to(y.device)
            self._cache[(name, f"test/{size}")] = (x[idx], y[idx])
        return self._cache[(name, f"test/{size}")]

    def _load(self, name: str, split: str) -> tuple[Any, Any]:
        import torch

        spec = self.plugins.datasets.get(name)
        try:
            x, y = spec.load(split, self.ctx)
        except HarnessError:
            raise
        except Exception as exc:  # a loader bug or unreadable files: say which dataset
            raise HarnessError(f"dataset '{name}' ({split}) failed to load: {type(exc).__name__}: {exc}") from exc
        where = f"dataset '{name}' ({split})"
        if not (isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor)) or len(x) != len(y) or len(x) == 0:
            raise HarnessError(f"{where}: load() must return two tensors (x, y) of equal, non-zero length")
        y = y.long()
        if int(y.min()) < 0 or int(y.max()) >= spec.num_classes:
            raise HarnessError(f"{where}: labels must lie in [0, {spec.num_classes})")
        if spec.encoder is not None:
            x = encode(spec.encoder(self.ctx), x, self.device)
        x = x.float()
        if tuple(x.shape[1:]) != spec.input_shape:
            raise HarnessError(f"{where}: inputs have shape {tuple(x.shape[1:])}, spec says {spec.input_shape}")
        return x.to(self.device), y.to(self.device)


FINGERPRINT_ROWS = 64


def fingerprint(x: Any, y: Any) -> str:
    """A cheap fingerprint of a split: its size, every label (hence the class counts) and the bytes
    of 64 evenly spaced examples. A truncated, relabelled or different file changes it; computing it
    costs milliseconds even for ImageNet-sized splits."""
    import hashlib

    import torch

    n = len(y)
    rows = torch.linspace(0, n - 1, min(FINGERPRINT_ROWS, n)).long().to(x.device)
    h = hashlib.sha256(f"n={n};shape={tuple(x.shape[1:])}".encode())
    h.update(y.detach().cpu().to(torch.int64).numpy().tobytes())
    h.update(x[rows].detach().cpu().to(torch.float32).contiguous().numpy().tobytes())
    return f"{n}:{h.hexdigest()[:12]}"


def encode(encoder: Any, x: Any, device: Any, batch: int = 1024) -> Any:
    """Map raw inputs (e.g. token ids) through a frozen encoder into input space."""
    import torch

    encoder = encoder.to(device).eval()
    with torch.no_grad():
        return torch.cat([encoder(x[i : i + batch].to(device)).cpu() for i in range(0, len(x), batch)])


def check_budgets(trials: list, plugins: Any, data: DataCache) -> None:
    """Before compute: every budget must fit the real data it is drawn from (the random baseline
    draws ``ipc`` real examples per class of the target; base examples come from the base set)."""
    import torch

    for trial in trials:
        size, n_test = trial.recipes[0].test_size, len(data.get(trial.dataset, "test")[1])
        if size > n_test:
            raise ConfigError(f"trial {trial.label}: eval.test_size = {size} exceeds the {n_test} test examples "
                              f"of '{trial.dataset}'; use test_size <= {n_test} (0 = all)")
        if trial.n is None:
            continue
        spec = plugins.datasets.get(trial.dataset)
        _, y = data.get(trial.dataset, "train")
        counts = torch.bincount(y.cpu(), minlength=spec.num_classes)
        if trial.ipc is not None and int(counts.min()) < trial.ipc:
            c = int(counts.argmin())
            raise ConfigError(
                f"trial {trial.label}: ipc = {trial.ipc} but class {c} of '{trial.dataset}' has only "
                f"{int(counts[c])} training examples; use ipc <= {int(counts.min())}"
            )
        for name in {trial.dataset, trial.base_dataset}:
            size = len(data.get(name, "train")[1])
            if trial.n > size:
                raise ConfigError(f"trial {trial.label}: n = {trial.n} exceeds the {size} training examples of '{name}'")
