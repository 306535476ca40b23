"""A trial (what to distill) and its evaluation recipes (how to judge it), with stable keys."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

OPTIMIZERS = ("sgd", "adam", "distilled", "ld-protocol")
AUTOCASTS = ("none", "bf16")
INITS = ("random", "known")
AUGMENTS = ("none", "dsa")
DEFAULT_LR = {"sgd": 0.01, "adam": 0.001, "ld-protocol": 0.001}
# Set meta keys the "ld-protocol" recipe trains by (written by ld, ld-rr and ld-base)
LD_PROTOCOL_META = ("test_steps", "base_batch")


@dataclass(frozen=True)
class Recipe:
    """How fresh models are trained on a distilled set. Defaults: the DC protocol.

    ``optimizer="distilled"`` replays the set's learned step sizes (one full-batch GD step each);
    then ``epochs``/``lr``/``momentum``/``weight_decay`` do not apply.
    ``optimizer="ld-protocol"`` is the LD paper's test protocol (Bohdal et al. 2020, the code's
    ``test()``): Adam(``lr``, default 1e-3, no weight decay, no schedule) for the set's own model
    lifetime ``meta["test_steps"]`` steps, each on a random minibatch of ``meta["base_batch"]``
    examples; ``epochs``/``momentum``/``weight_decay``/``batch_size`` do not apply. The code averages
    20 models (``models = 20``); sets without those meta keys are not evaluated under it (n/a).
    ``init="known"`` starts from the init the set was distilled for (SLDD's "fixed init").
    ``test_size`` > 0 tests on a fixed class-stratified subset of that many test examples, the same
    for every trial and recipe (a stated CPU scaling; the protocol's default is the whole split).
    ``model_init`` is the init scheme of the fresh models (:mod:`harness.init`); the grid resolves
    its default, "distiller", to the distiller's own ``model_init`` so random-init evaluation draws
    from the distribution the set was distilled for.
    """

    arch: str
    optimizer: str = "sgd"
    epochs: int = 300
    lr: float = 0.01
    batch_size: int = 256
    models: int = 5
    init: str = "random"
    augment: str = "none"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    test_size: int = 0  # 0: the whole test split; else a fixed class-stratified subset (CPU grids)
    model_init: str = "default"  # init scheme of evaluation models: default | xavier | kaiming

    @property
    def label(self) -> str:
        """``arch/optimizer`` (+ ``/known-init``, ``/dsa``): the suffix of per-recipe metric names."""
        return (f"{self.arch}/{self.optimizer}" + ("/known-init" if self.init == "known" else "")
                + ("" if self.augment == "none" else f"/{self.augment}"))

    def params(self, prefix: str = "eval.") -> dict[str, Any]:
        return {f"{prefix}{k}": v for k, v in asdict(self).items()}


@dataclass(frozen=True)
class Trial:
    """One distillation run: (distiller, dataset, base, arch, budget, seed, config) + recipes."""

    distiller: str
    dataset: str
    base_dataset: str
    arch: str
    ipc: int | None
    n: int | None  # total synthetic examples; None when the distiller ignores the budget
    seed: int
    config: tuple[tuple[str, Any], ...]
    recipes: tuple[Recipe, ...]
    versions: tuple[tuple[str, str], ...] = ()  # (distribution, version) of the plugins involved
    # (dataset, fingerprint) of the data the trial reads, set by the plan once the data is loaded
    # (harness.data.fingerprint); part of the key, so a run on other data never stands for this one
    data: tuple[tuple[str, str], ...] = ()
    # the validated Config instance ``config`` lists (built once by the grid, handed to the
    # distiller as is); not part of equality or the key, which ``config`` defines
    settings: Any = field(default=None, compare=False, repr=False)
    # CUDA speed options (grid keys ``autocast`` and ``compile``): bf16 autocast around distillation
    # and evaluation, torch.compile of the evaluation models. They change the numbers, so they are
    # keyed, but only when on: the keys of runs made before they existed stay valid.
    autocast: str = "none"
    compile: bool = False

    @property
    def budget(self) -> str:
        if self.ipc is not None:
            return f"ipc={self.ipc}"
        return "all" if self.n is None else f"n={self.n}"

    @property
    def label(self) -> str:
        """``distiller/dataset/arch/budget/seed``: the MLflow child run name."""
        data = self.dataset if self.base_dataset == self.dataset else f"{self.base_dataset}->{self.dataset}"
        budget = self.budget.replace("=", "")
        return f"{self.distiller}/{data}/{self.arch}/{budget}/seed{self.seed}"

    @property
    def key(self) -> str:
        """Stable hash of everything that defines the result: the grid's definition of the trial
        (:attr:`grid_key`), plugin versions included, and the fingerprints of the data it read."""
        if not self.data:
            return self.grid_key
        return _hash({"grid_key": self.grid_key, "data": [list(d) for d in self.data]})

    @property
    def grid_key(self) -> str:
        """The key without data fingerprints: what a grid file defines, computable without loading
        any data (``harness report --grid``), and the key of runs made before fingerprints."""
        payload = {
            "distiller": self.distiller,
            "dataset": self.dataset,
            "base_dataset": self.base_dataset,
            "arch": self.arch,
            "ipc": self.ipc,
            "n": self.n,
            "seed": self.seed,
            "config": [list(kv) for kv in self.config],
            "recipes": [asdict(r) for r in self.recipes],
            "versions": [list(v) for v in self.versions],
        }
        if self.autocast != "none":
            payload["autocast"] = self.autocast
        if self.compile:
            payload["compile"] = True
        return _hash(payload)

    def params(self) -> dict[str, Any]:
        """MLflow params: identical keys across trials of one grid (compare view)."""
        out: dict[str, Any] = {
            "distiller": self.distiller,
            "dataset": self.dataset,
            "base_dataset": self.base_dataset,
            "arch": self.arch,
            "ipc": "" if self.ipc is None else self.ipc,
            "n": "all" if self.n is None else self.n,
            "seed": self.seed,
            "budget": self.budget,
        }
        out.update({f"cfg.{k}": v for k, v in self.config})
        out.update(self.recipes[0].params())
        out["eval.recipes"] = ",".join(r.label for r in self.recipes)
        if self.autocast != "none" or self.compile:  # recorded when on (one grid: all trials alike)
            out.update(autocast=self.autocast, compile=self.compile)
        out.update({f"data.{name}": fp for name, fp in self.data})
        return out


def _hash(payload: Any) -> str:
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def derive_seed(*parts: Any) -> int:
    """A stable 31-bit seed from any parts (trial seed, purpose, index...)."""
    blob = json.dumps(parts, default=str).encode()
    return int.from_bytes(hashlib.sha256(blob).digest()[:4], "little") & 0x7FFFFFFF
