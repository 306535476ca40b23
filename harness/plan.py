"""The plan: everything checked before any compute, shared by ``harness validate`` and ``harness bench``.

``prepare(grid, plugins, ...)`` takes a validated grid (names, types, capabilities, configs and
recipes: :mod:`harness.grid`) and checks what needs the data: every dataset loads (or is reported
missing with how to get it), every budget fits the real class counts, every test subset fits the
test split, and every (architecture, dataset) pair builds and runs a forward pass (and, where the
architecture declares penultimate features, really ends in its linear classifier). ``validate``
prints the plan; ``bench`` executes it. So ``validate`` saying "ok" means ``bench`` starts computing.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from .grid import Grid
from .specs import ArchitectureSpec, DatasetSpec
from .trial import Trial


@dataclass(frozen=True)
class BoundTrial:
    """A trial with everything it runs resolved by the plan, so the runner looks nothing up by
    name: the distiller class, its validated Config instance (built once by the grid), the dataset
    spec and every architecture it distils or evaluates with."""

    trial: Trial
    distiller: type
    dataset: DatasetSpec
    archs: Mapping[str, ArchitectureSpec]

    @property
    def config(self) -> Any:
        return self.trial.settings

    def builder(self, arch: str) -> Callable[[], Any]:
        """A fresh, untrained model of ``arch`` for this trial's dataset (torch's default init)."""
        build, spec = self.archs[arch].build, self.dataset
        return lambda: build(spec.input_shape, spec.num_classes)


def bind(trial: Trial, plugins: Any) -> BoundTrial:
    if trial.settings is None:
        raise ValueError(f"trial {trial.label} carries no Config instance; build trials with harness.grid")
    archs = {a: plugins.architectures.get(a) for a in (trial.arch, *(r.arch for r in trial.recipes))}
    return BoundTrial(trial, plugins.distillers.get(trial.distiller), plugins.datasets.get(trial.dataset), archs)


@dataclass
class Plan:
    grid: Grid
    data: Any  # harness.data.DataCache with every split the trials need, loaded
    device: Any  # torch.device
    trials: list[BoundTrial] = field(default_factory=list)  # grid.trials, bound, in the same order

    @property
    def datasets(self) -> dict[str, tuple[int, int]]:
        """Loaded datasets: name -> (train examples, test examples)."""
        names = sorted({n for t in self.grid.trials for n in (t.dataset, t.base_dataset)})
        out = {}
        for name in names:
            test = len(self.data.get(name, "test")[1]) if any(t.dataset == name for t in self.grid.trials) else 0
            out[name] = (len(self.data.get(name, "train")[1]), test)
        return out

    def describe(self) -> str:
        recipes = {r.label for t in self.grid.trials for r in t.recipes}
        loaded = ", ".join(f"{n} ({tr:,} train" + (f" / {te:,} test)" if te else ")")
                           for n, (tr, te) in self.datasets.items())
        return (f"ok: grid '{self.grid.name}' has {len(self.grid.trials)} trials over seeds {self.grid.seeds}; "
                f"recipes: {', '.join(sorted(recipes))}\n"
                f"data: {loaded} from {self.data.data_dir}")


def prepare(grid: Grid, plugins: Any, data_dir: Path | None = None, device: str | None = None) -> Plan:
    """Load every dataset the grid needs and run the data-dependent checks; raise ConfigError
    (or DatasetUnavailableError) with one line on the first problem."""
    from .data import DataCache, check_budgets, default_data_dir, resolve_device

    dev = resolve_device(device or grid.device)
    fast = sorted({k for t in grid.trials for k, on in (("autocast", t.autocast != "none"), ("compile", t.compile)) if on})
    if fast and dev.type != "cuda":
        from .errors import ConfigError

        raise ConfigError(f"{' and '.join(fast)} speed up CUDA runs; this grid runs on {dev.type}: remove "
                          f"{' and '.join(fast)} from the grid, or run with --device cuda")
    data = DataCache(plugins, Path(data_dir) if data_dir else default_data_dir(), dev)
    for trial in grid.trials:  # every dataset is loaded (or found missing) before any compute
        for name in {trial.dataset, trial.base_dataset}:
            data.get(name, "train")
        data.get(trial.dataset, "test")
    check_budgets(grid.trials, plugins, data)
    check_architectures(grid.trials, plugins)
    trials = [with_data(t, data) for t in grid.trials]
    grid = dataclasses.replace(grid, trials=trials)
    return Plan(grid, data, dev, [bind(t, plugins) for t in trials])


def with_data(trial: Trial, data: Any) -> Trial:
    """The trial with the fingerprints of the data it reads (part of its key): the dataset's train
    and test splits, and the base dataset's train split when the base examples come from elsewhere."""
    prints = [("fingerprint", data.fingerprint(trial.dataset))]
    if trial.base_dataset != trial.dataset:
        prints.append(("base_fingerprint", data.fingerprint(trial.base_dataset, ("train",))))
    return dataclasses.replace(trial, data=tuple(prints), settings=trial.settings)


def check_architectures(trials: list, plugins: Any) -> None:
    """Build every (architecture, dataset) pair once and run a tiny forward pass, so an
    architecture that cannot take a dataset's input size fails as one clear line."""
    import torch

    from .errors import ConfigError
    from .features import check_features

    pairs = {(a, t.dataset) for t in trials for a in {t.arch, *(r.arch for r in t.recipes)}}
    for arch, dataset in sorted(pairs):
        spec = plugins.datasets.get(dataset)
        try:
            model = plugins.architectures.get(arch).build(spec.input_shape, spec.num_classes)
            with torch.no_grad():
                out = model.eval()(torch.zeros(2, *spec.input_shape))
            if tuple(out.shape) != (2, spec.num_classes):
                raise ValueError(f"it outputs shape {tuple(out.shape)}, expected (batch, {spec.num_classes})")
            if plugins.architectures.get(arch).features:  # the declaration distillers rely on, proven
                check_features(model, torch.randn(2, *spec.input_shape, generator=torch.Generator().manual_seed(0)))
        except Exception as exc:
            raise ConfigError(f"architecture '{arch}' cannot take dataset '{dataset}' "
                              f"({'x'.join(map(str, spec.input_shape))}): {exc}; pick another architecture") from None
