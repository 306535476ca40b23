"""The public plugin contract: what plugins register and what distillers receive and return.

The reference for plugin authors is docs/contract.md (the guide: docs/plugins.md).

Nothing here imports torch at module level, so ``import harness`` (and ``harness --help``) stays fast.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from dataclasses import KW_ONLY, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Protocol, Sequence, runtime_checkable

from .errors import SpecError

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

MODALITIES = ("image", "text")
NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]*$")


def check_name(kind: str, name: object) -> str:
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise SpecError(
            f"{kind} name {name!r} is invalid: use lower-case letters, digits, '.', '_' or '-'"
        )
    return name


@dataclass(frozen=True)
class DataContext:
    """What dataset hooks are given: the data directory (``--data-dir`` / ``HARNESS_DATA_DIR``) and
    the device the data will live on. It is also path-like (``Path(ctx)``, ``os.fspath(ctx)`` and
    ``str(ctx)`` give the data directory), so a loader written for a plain directory works as is."""

    data_dir: Path
    device: Any = "cpu"

    def __fspath__(self) -> str:
        return str(self.data_dir)

    def __str__(self) -> str:
        return str(self.data_dir)


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset plugin. Every hook receives a :class:`DataContext` ``ctx`` (data directory, device).

    ``load(split, ctx)`` returns ``(x, y)``: a float tensor ``[N, *input_shape]`` (or raw
    inputs such as token ids when ``encoder`` is given) and a long tensor of labels in
    ``[0, num_classes)``; ``split`` is ``"train"`` or ``"test"``. Raise
    :class:`harness.DatasetUnavailableError` when the files are missing and cannot be fetched.
    ``encoder(ctx)`` optionally returns a frozen ``nn.Module`` mapping raw x into the continuous
    space where distillation happens; ``input_shape`` is the shape in that space.
    ``decode(x, ctx)`` optionally renders a batch in input space as one readable string per example
    (text: each position's nearest vocabulary word); reports save it as ``examples.txt``.
    """

    name: str
    num_classes: int
    input_shape: tuple[int, ...]
    _: KW_ONLY
    modality: str = "image"
    load: Callable[[str, DataContext], tuple["torch.Tensor", "torch.Tensor"]] | None = None
    encoder: Callable[[DataContext], "nn.Module"] | None = None
    classes: Sequence[str] | None = None
    decode: Callable[["torch.Tensor", DataContext], list[str]] | None = None
    description: str = ""

    def __post_init__(self) -> None:
        check_name("dataset", self.name)
        where = f"dataset '{self.name}'"
        if not isinstance(self.num_classes, int) or self.num_classes < 2:
            raise SpecError(f"{where}: num_classes must be an int >= 2, got {self.num_classes!r}")
        shape = self.input_shape
        if not isinstance(shape, (tuple, list)) or not shape or not all(
            isinstance(d, int) and d > 0 for d in shape
        ):
            raise SpecError(f"{where}: input_shape must be a tuple of positive ints, got {shape!r}")
        object.__setattr__(self, "input_shape", tuple(shape))
        if self.modality not in MODALITIES:
            raise SpecError(f"{where}: modality must be one of {MODALITIES}, got {self.modality!r}")
        if not callable(self.load):
            raise SpecError(f"{where}: load must be a callable load(split, ctx) -> (x, y)")
        if self.encoder is not None and not callable(self.encoder):
            raise SpecError(f"{where}: encoder must be a callable encoder(ctx) returning an nn.Module, or None")
        if self.decode is not None and not callable(self.decode):
            raise SpecError(f"{where}: decode must be a callable decode(x, ctx) -> list[str], or None")
        if self.classes is not None:
            if len(self.classes) != self.num_classes:
                raise SpecError(
                    f"{where}: {len(self.classes)} class names given for {self.num_classes} classes"
                )
            object.__setattr__(self, "classes", tuple(str(c) for c in self.classes))


@dataclass(frozen=True)
class ArchitectureSpec:
    """An architecture plugin: ``build(input_shape, num_classes) -> nn.Module``.

    ``features=True`` declares that the model ends in a linear classifier: its last ``nn.Linear`` (in
    ``modules()`` order) takes the penultimate feature vector and its output is the model's output.
    Distillers that work on those features (``Capabilities.needs_features``: DM's embedding, LD-RR's
    backbone) can only use architectures that declare it; :class:`harness.Features` reads them, and
    the plan checks every declaration on a built model before any compute.
    """

    name: str
    modalities: tuple[str, ...]
    build: Callable[[tuple[int, ...], int], "nn.Module"]
    description: str = ""
    _: KW_ONLY
    features: bool = False

    def __post_init__(self) -> None:
        check_name("architecture", self.name)
        mods = (self.modalities,) if isinstance(self.modalities, str) else tuple(self.modalities)
        if not mods or any(m not in MODALITIES for m in mods):
            raise SpecError(
                f"architecture '{self.name}': modalities must be drawn from {MODALITIES}, "
                f"got {self.modalities!r}"
            )
        object.__setattr__(self, "modalities", mods)
        if not callable(self.build):
            raise SpecError(f"architecture '{self.name}': build must be a callable")
        if not isinstance(self.features, bool):
            raise SpecError(f"architecture '{self.name}': features must be True or False, got {self.features!r}")


@dataclass(frozen=True)
class Capabilities:
    """What a distiller can do; the grid validator uses these to reject impossible trials."""

    learns_inputs: bool = False  # synthetic inputs are optimised (not real examples)
    learns_labels: bool = False  # soft labels are optimised
    learns_lr: bool = False  # the set carries learned step sizes: enables the "distilled" recipe
    cross_dataset: bool = False  # base examples may come from another dataset
    fewer_than_classes: bool = False  # n < num_classes is supported
    known_init: bool = False  # can carry its init ("known" init eval); see carries_init(config)
    ignores_budget: bool = False  # ipc/n are ignored (e.g. the full training set)
    needs_features: bool = False  # works on penultimate features: the arch must declare features=True


@dataclass(frozen=True)
class TrialSpec:
    """What ``Distiller.check_trial`` sees of a trial, before any compute: the dataset it distils,
    the architecture it distils with, the budget (``n`` total, ``ipc`` per class or None; both None
    for a budget-free distiller) and the base dataset its examples come from (``dataset`` unless
    the grid gives ``base_dataset``)."""

    dataset: DatasetSpec
    arch: ArchitectureSpec
    n: int | None
    ipc: int | None
    base: DatasetSpec

    @property
    def is_image(self) -> bool:
        """Images ``[C, H, W]``: what image augmentations (DSA) can transform."""
        return self.dataset.modality == "image" and len(self.dataset.input_shape) == 3


@runtime_checkable
class DistillerProtocol(Protocol):
    """What the harness needs of a distiller class (duck typing; :class:`Distiller` is the base
    class that also supplies the documented defaults):

    - ``name``: the registry name;
    - ``Config``: a dataclass whose fields (all with defaults: the paper's) are the hyperparameters;
    - ``capabilities``: a :class:`Capabilities` (optional; all False by default);
    - ``distill(self, task: DistillTask) -> DistilledSet``.
    The class is instantiated with no arguments; the validated config arrives as ``task.config``.
    Optional: ``carries_init(config)`` and ``check_trial(config, spec)`` as in :class:`Distiller`.
    The first line of the class docstring is its description in ``harness ls``.
    """

    name: ClassVar[str]
    Config: ClassVar[type]

    def distill(self, task: "DistillTask") -> "DistilledSet": ...


class Distiller:
    """Base class for distillers: subclass it, set ``name``, ``Config`` and ``capabilities``, and
    implement ``distill``. (A class with the same attributes that does not subclass it works too:
    the harness then applies these same defaults.)
    """

    name: ClassVar[str]
    Config: ClassVar[type]
    capabilities: ClassVar[Capabilities] = Capabilities()

    @classmethod
    def carries_init(cls, config: Any) -> bool:
        """Whether sets distilled with ``config`` carry the init they were distilled for ("known"
        init evaluation). Default: ``capabilities.known_init``. Override when it depends on the
        Config (SLDD carries one only with ``init = "fixed"``)."""
        return capabilities_of(cls).known_init

    @classmethod
    def check_trial(cls, config: Any, spec: TrialSpec) -> None:
        """Raise ValueError (one line: the problem and the fix) for a trial this method cannot run
        with ``config``; called by ``harness validate`` and ``bench`` before any compute, after the
        harness's own checks (budget vs classes, capabilities, features). Overrides call
        ``super().check_trial(config, spec)``.

        The default refuses image augmentation on anything but images: a Config with a true ``dsa``
        field (the harness's DSA) on a dataset that is not ``[C, H, W]`` images.
        """
        if getattr(config, "dsa", False) is True and not spec.is_image:
            raise ValueError(f"dsa = true augments images [C, H, W], but dataset '{spec.dataset.name}' is "
                             f"{spec.dataset.modality} data of shape {spec.dataset.input_shape}; set dsa = false for it")

    def distill(self, task: "DistillTask") -> "DistilledSet":  # pragma: no cover - the subclass's job
        raise NotImplementedError(f"distiller '{getattr(self, 'name', type(self).__name__)}' implements no distill(task)")


@dataclass(frozen=True)
class LazyDistiller:
    """A distiller registered by import path, so listing it (``harness ls``, ``harness plugins``)
    imports nothing (no torch): ``register(LazyDistiller("sldd", "harness_distillers.sldd:SLDD",
    description, capabilities))``. The class is imported on first use and must match what is
    declared here (name and capabilities); the description is what ``harness ls`` shows."""

    name: str
    path: str  # "package.module:Class"
    description: str = ""
    capabilities: Capabilities = field(default_factory=Capabilities)

    def __post_init__(self) -> None:
        check_name("distiller", self.name)
        if not isinstance(self.path, str) or self.path.count(":") != 1:
            raise SpecError(f"distiller '{self.name}': path must be 'package.module:Class', got {self.path!r}")
        if not isinstance(self.capabilities, Capabilities):
            raise SpecError(f"distiller '{self.name}': capabilities must be a harness.Capabilities")

    def load(self) -> type:
        """Import and validate the class; a SpecError (one line) if it is missing or differs."""
        import importlib

        module, attr = self.path.split(":")
        try:
            cls = getattr(importlib.import_module(module), attr)
        except (Exception, SystemExit) as exc:
            raise SpecError(f"distiller '{self.name}': cannot import {self.path}: {type(exc).__name__}: {exc}") from None
        validate_distiller_class(cls)
        if cls.name != self.name or capabilities_of(cls) != self.capabilities:
            raise SpecError(f"distiller '{self.name}': {self.path} is registered as '{cls.name}' with "
                            f"{capabilities_of(cls)}, not as declared ({self.capabilities})")
        return cls


def capabilities_of(distiller: type) -> Capabilities:
    return getattr(distiller, "capabilities", None) or Capabilities()


def carries_init(distiller: type, config: Any) -> bool:
    """Whether sets distilled with ``config`` carry their init ("known" init evaluation): never
    without ``capabilities.known_init``; else the class's ``carries_init(config)`` (the
    :class:`Distiller` default says yes)."""
    if not capabilities_of(distiller).known_init:
        return False
    hook = getattr(distiller, "carries_init", None)
    return bool(hook(config)) if callable(hook) else True


def check_trial(distiller: type, config: Any, spec: TrialSpec) -> None:
    """The class's ``check_trial(config, spec)``, or :meth:`Distiller.check_trial` for a class
    that neither subclasses :class:`Distiller` nor defines one."""
    hook = getattr(distiller, "check_trial", None)
    if callable(hook):
        hook(config, spec)
    else:
        Distiller.check_trial.__func__(distiller, config, spec)


def describe(obj: object) -> str:
    """First line of an object's ``description`` or docstring."""
    text = getattr(obj, "description", "") or (obj.__doc__ or "")
    return text.strip().splitlines()[0] if text.strip() else ""


def validate_distiller_class(cls: object) -> type:
    """Validate a registered distiller class against the contract (static checks only)."""
    name = getattr(cls, "name", None)
    check_name("distiller", name)
    where = f"distiller '{name}'"
    if not isinstance(cls, type):
        raise SpecError(f"{where}: register the class, not an instance")
    config = getattr(cls, "Config", None)
    if not (isinstance(config, type) and dataclasses.is_dataclass(config)):
        raise SpecError(f"{where}: needs a nested dataclass `Config` (hyperparameters with defaults)")
    missing = [
        f.name
        for f in dataclasses.fields(config)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise SpecError(f"{where}: Config fields {missing} need defaults (the paper's values)")
    if not callable(getattr(cls, "distill", None)):
        raise SpecError(f"{where}: needs a method distill(self, task) -> DistilledSet")
    caps = getattr(cls, "capabilities", None)
    if caps is not None and not isinstance(caps, Capabilities):
        raise SpecError(f"{where}: capabilities must be a harness.Capabilities")
    return cls


@dataclass
class DistillTask:
    """Everything a distiller gets. Tensors are already on ``device``, in input space."""

    x: "torch.Tensor"
    y: "torch.Tensor"
    num_classes: int
    ipc: int | None
    n: int
    make_model: Callable[[], "nn.Module"]
    config: Any
    device: "torch.device"
    generator: "torch.Generator"
    base: tuple["torch.Tensor", "torch.Tensor"] | None = None
    deadline: float | None = None  # time.monotonic() value after which the distiller should stop
    dataset: str = ""
    base_dataset: str = ""  # name of the dataset `base` comes from ("" when base is None)
    seed: int = 0
    _log: Callable[..., None] = field(default=lambda step, **m: None, repr=False)
    _total: Callable[[int], None] = field(default=lambda total: None, repr=False)
    _checkpoint: Callable[[int, Callable[[], dict]], None] = field(default=lambda step, state: None, repr=False)
    _restore: Callable[[], "tuple[int, dict] | None"] = field(default=lambda: None, repr=False)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    def log(self, step: int, **metrics: float) -> None:
        """Record metrics at an outer step (MLflow curves) and advance the progress bar."""
        self._log(step, **metrics)

    def expect_steps(self, total: int) -> None:
        """Tell the progress bar how many outer steps ``distill`` will log."""
        self._total(total)

    def time_left(self) -> float:
        return float("inf") if self.deadline is None else self.deadline - time.monotonic()

    def checkpoint(self, step: int, state: Callable[[], dict]) -> None:
        """Offer the distiller's state after ``step`` outer steps: ``state()`` returns a nested dict
        of tensors, numbers and strings (optimiser ``state_dict()``s included) and is called only
        when the harness saves (:mod:`harness.checkpoint`: every few minutes)."""
        self._checkpoint(step, state)

    def restore(self) -> "tuple[int, dict] | None":
        """``(steps done, state)`` of this trial's last checkpoint, or None. Call it after building
        the initial state and before the loop: it also rewinds ``generator``, torch's global RNG and
        ``make_model()`` to where they were at the checkpoint, so the run continues exactly."""
        return self._restore()


@dataclass
class DistilledSet:
    """A distilled dataset: inputs ``x`` [n, *input_shape], soft labels ``y`` [n, C].

    ``lrs`` holds learned step sizes (for the "distilled" evaluation recipe); ``init_state`` the
    model initialisation the set was distilled for ("known" init evaluation). ``meta`` is a
    JSON-serialisable dict. Saved with safetensors: no pickle, safe to load from anyone.
    """

    x: "torch.Tensor"
    y: "torch.Tensor"
    lrs: "torch.Tensor | None" = None
    meta: dict = field(default_factory=dict)
    init_state: "dict[str, torch.Tensor] | None" = None

    @property
    def n(self) -> int:
        return int(self.x.shape[0])

    def check(self, input_shape: Sequence[int], num_classes: int) -> None:
        """Raise :class:`harness.errors.TrialError` if the set is malformed or not finite."""
        import torch

        from .errors import TrialError

        if tuple(self.x.shape[1:]) != tuple(input_shape):
            raise TrialError(f"distilled x has shape {tuple(self.x.shape)}, expected [n, *{tuple(input_shape)}]")
        if self.y.dim() != 2 or self.y.shape != (self.x.shape[0], num_classes):
            raise TrialError(f"distilled y has shape {tuple(self.y.shape)}, expected [{self.n}, {num_classes}]")
        for label, t in (("x", self.x), ("y", self.y), ("lrs", self.lrs)):
            if t is not None and not bool(torch.isfinite(t).all()):
                raise TrialError(f"distilled {label} contains NaN or inf")

    def detached(self) -> "DistilledSet":
        """A CPU copy without autograd history (what is saved and evaluated)."""
        cpu = lambda t: None if t is None else t.detach().to("cpu").contiguous()  # noqa: E731
        state = None if self.init_state is None else {k: cpu(v) for k, v in self.init_state.items()}
        return DistilledSet(cpu(self.x).float(), cpu(self.y).float(), cpu(self.lrs), dict(self.meta), state)

    def save(self, path: str | Path) -> Path:
        from safetensors.torch import save_file

        s = self.detached()
        tensors = {"x": s.x, "y": s.y}
        if s.lrs is not None:
            tensors["lrs"] = s.lrs
        for k, v in (s.init_state or {}).items():
            tensors[f"init.{k}"] = v
        path = Path(path)
        save_file(tensors, str(path), metadata={"meta": json.dumps(s.meta, default=str)})
        return path

    @classmethod
    def load(cls, path: str | Path) -> "DistilledSet":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("meta", "{}"))
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        init = {k[5:]: v for k, v in tensors.items() if k.startswith("init.")}
        return cls(tensors["x"], tensors["y"], tensors.get("lrs"), meta, init or None)
