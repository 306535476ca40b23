"""Running trials: distill -> check -> evaluate (+ random baseline) -> a TrialResult.

``run_trial`` never raises for a failing trial: the error is recorded and the grid goes on.
Results carry everything the driver needs to log, so executors may run trials anywhere while
the driver stays the only MLflow writer. A trial arrives bound by the plan (:class:`BoundTrial`:
distiller class, Config instance, dataset and architecture specs): nothing is looked up by name here.
"""

from __future__ import annotations

import copy
import json
import math
import shutil
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from .allocator import keep_freed_memory, release_freed_memory
from .errors import TrialError
from .plan import BoundTrial
from .trial import Recipe, Trial, derive_seed

PASSED, FAILED, SKIPPED = "passed", "failed", "skipped"  # skipped: claimed by another driver
MAX_SAVED_EXAMPLES = 10_000  # larger sets (e.g. `full`) are reproducible from the data: not copied
CORE_METRICS = ("acc_mean", "acc_std", "acc_random", "gain")  # per recipe, recipe-free names, in percent


@dataclass
class RecipeResult:
    """One evaluation recipe's outcome: ``metrics`` has the :data:`CORE_METRICS` (percent) and its
    ``eval_seconds``; ``accs`` the per-model accuracies (percent); ``start_ms``/``end_ms`` when its
    evaluation ran (epoch ms), so its MLflow run's duration is the real one."""

    label: str
    params: dict[str, Any]
    metrics: dict[str, float]
    accs: list[float]
    mode: str
    start_ms: int
    end_ms: int


@dataclass
class TrialResult:
    trial: Trial
    status: str
    metrics: dict[str, float] = field(default_factory=dict)
    per_model: dict[str, list[float]] = field(default_factory=dict)
    recipes: list[RecipeResult] = field(default_factory=list)  # one per evaluated recipe, in grid order
    curves: list[tuple[int, dict[str, float]]] = field(default_factory=list)
    tags: dict[str, str] = field(default_factory=dict)
    error: str = ""
    traceback: str = ""
    artifacts_dir: str | None = None
    run_id: str | None = None  # the trial's MLflow run, when the driver created it as the trial started
    curves_sent: int = 0  # how many of ``curves`` already reached that run (streamed)

    @property
    def passed(self) -> bool:
        return self.status == PASSED


class TrialTimeout(TrialError):
    """A trial ran past the grid's ``trial_timeout``."""


class TrialContext:
    """What running trials needs besides the trial: the loaded data, the device, the progress
    display, the random-baseline cache (shared across the trials of a grid), the time limit per
    trial (``timeout`` seconds, None for none) and where curve points go while a trial runs
    (``stream(step, metrics)``, set by the driver)."""

    def __init__(self, data: Any, device: Any, progress: Any = None, timeout: float | None = None,
                 checkpoint_every: float | None = None, eval_mode: str = "auto"):
        self.data, self.device = data, device
        self.eval_mode = eval_mode  # auto | vectorised | sequential (harness.vectorised)
        self.progress = progress
        self.timeout = timeout
        self.checkpoint_every = checkpoint_every  # seconds between mid-trial checkpoints; None: none
        self.stream: Any = None
        self.restart_stream: Any = None  # an executor retrying the trial calls it before the new attempt
        self.baselines: dict[tuple, Any] = {}
        self.deadline: float | None = None

    def checkpoints(self, trial: Trial) -> Any:
        """The trial's :class:`harness.checkpoint.Checkpoints` (keyed by its key), or None when off."""
        if not self.checkpoint_every:
            return None
        from .checkpoint import Checkpoints, checkpoint_root

        return Checkpoints(checkpoint_root() / trial.key, every_seconds=self.checkpoint_every)

    def check_time(self) -> None:
        """Stop a trial past its limit (called at every logged step and every evaluated model)."""
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise TrialTimeout(f"timeout: the trial ran past trial_timeout = {self.timeout:g} s")


_WARMED: set[str] = set()  # devices whose one-time costs this process has paid


def warm_up(device: Any) -> None:
    """Pay this process's one-time costs before any trial is timed, so that the first trial of a
    process is timed like the others: torch imports its compiler stack the first time an optimizer
    is built (``torch._dynamo``, 1.2 s here), a CUDA device creates its context and library handles
    on first use, and every trial draws its figures with matplotlib. Measured on three identical DM
    trials (digits, 20 iterations): the first took 2.85 s to distil and the others 0.21-0.23 s;
    after this warm-up, 0.224, 0.225 and 0.213 s. Executors' workers call it while they set up (it
    then does not count against a trial's time limit); :func:`run_trial` calls it otherwise."""
    import torch

    if str(device) in _WARMED:
        return
    _WARMED.add(str(device))
    try:
        weight = torch.zeros(1, 1, 1, 1, device=device, requires_grad=True)
        for make in (torch.optim.SGD, torch.optim.Adam):
            optimizer = make([weight], lr=0.0)
            torch.nn.functional.conv2d(torch.ones(1, 1, 2, 2, device=device), weight).sum().backward()
            optimizer.step()
            optimizer.zero_grad()
        (weight.flatten(1) @ weight.flatten(1).T).sum().item()  # matmul handles, and a device sync
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot  # noqa: F401 - the artifacts' figures
    except Exception:  # noqa: BLE001 - only a head start: whatever fails here, the trial meets and reports
        pass


def run_trial(bound: BoundTrial, ctx: TrialContext) -> TrialResult:
    """Distil and evaluate one trial; failures become a FAILED result, never an exception."""
    import torch

    from .data import device_name

    warm_up(ctx.device)  # before any of the trial's clocks start
    trial = bound.trial
    result = TrialResult(trial, PASSED)
    result.tags = {"device": device_name(ctx.device), "torch_version": torch.__version__}
    if keep_freed_memory():  # freed blocks stay in the heap during the trial (speed), not across trials
        release_freed_memory()
        result.tags["malloc"] = "freed blocks kept"
    progress = ctx.progress
    if progress:
        progress.trial_started(trial)
    ctx.deadline = None if ctx.timeout is None else time.monotonic() + ctx.timeout
    try:
        dset, measure = _distill(bound, ctx, result)
        result.metrics["distill_seconds"] = measure.seconds
        result.metrics["n_distilled"] = float(dset.n)
        eval_peak_mb = _evaluate_all(bound, ctx, dset, result)
        result.metrics["peak_mem_mb"] = max(measure.peak_mb, eval_peak_mb)
        bad = [k for k, v in result.metrics.items() if not math.isfinite(v)]
        if bad:
            raise TrialError(f"non-finite metrics: {', '.join(bad)}")
        result.artifacts_dir = _write_artifacts(bound, ctx, dset)
    except KeyboardInterrupt:
        raise
    except (Exception, SystemExit) as exc:  # the grid goes on (even if a distiller calls sys.exit)
        result.status = FAILED
        first = (f"distiller code called sys.exit({exc.code!r})" if isinstance(exc, SystemExit)
                 else (str(exc).strip().splitlines() or [""])[0])
        result.error = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
        result.traceback = traceback.format_exc()
    checkpoints = ctx.checkpoints(trial)
    if checkpoints is not None:
        checkpoints.clear()  # the trial ended (passed or failed): it starts afresh if run again
    if progress:
        progress.trial_done(trial, result)
    return result


def _distill(bound: BoundTrial, ctx: TrialContext, result: TrialResult):
    import torch

    from .checkpoint import ModelCounter
    from .init import distill_init, init_model
    from .measure import Measure
    from .specs import DistillTask

    trial, cls, spec = bound.trial, bound.distiller, bound.dataset
    config = bound.config
    if not getattr(type(config), "__dataclass_params__", None) or not type(config).__dataclass_params__.frozen:
        config = copy.deepcopy(config)  # a mutable Config: what the distiller changes is not what was recorded
    x, y = ctx.data.get(trial.dataset, "train")
    base = ctx.data.get(trial.base_dataset, "train") if trial.base_dataset != trial.dataset else None
    build = bound.builder(trial.arch)
    scheme = distill_init(config)
    counter = ModelCounter()

    def make_model() -> torch.nn.Module:
        """A fresh model of the distill arch, initialised with the Config's ``model_init``."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(trial.seed, "distill-model", counter.next()))
            return init_model(build(), scheme).to(ctx.device)

    def log(step: int, **metrics: float) -> None:
        point = (int(step), {k: float(v) for k, v in metrics.items()})
        result.curves.append(point)
        if ctx.stream:
            ctx.stream(*point)
        if ctx.progress:
            ctx.progress.step(step, metrics)
        ctx.check_time()

    task = DistillTask(
        x=x, y=y, num_classes=spec.num_classes, ipc=trial.ipc, deadline=ctx.deadline,
        n=trial.n if trial.n is not None else len(x), make_model=make_model, config=config,
        device=ctx.device, generator=torch.Generator().manual_seed(derive_seed(trial.seed, "distill")),
        base=base, dataset=trial.dataset, base_dataset=trial.base_dataset if base is not None else "",
        seed=trial.seed, _log=log,
        _total=(ctx.progress.expect_steps if ctx.progress else (lambda total: None)),
    )
    checkpoints = ctx.checkpoints(trial)
    finished = checkpoints.load_finished() if checkpoints is not None else None
    if finished is not None:  # distilled before an interruption during evaluation: evaluate that set
        dset, record = finished
        for step, metrics in record["curves"]:
            log(step, **metrics)
        return dset, SimpleNamespace(seconds=record["distill_seconds"], peak_mb=record["peak_mb"])
    torch.manual_seed(derive_seed(trial.seed, "global"))  # for distillers that use the global RNG
    if checkpoints is not None:
        checkpoints.attach(task, counter)
    from .evaluate import precision

    with Measure(ctx.device) as measure, precision(trial.autocast, ctx.device):
        dset = cls().distill(task)  # a failure is cleared by run_trial; an interruption keeps the checkpoint
    if not hasattr(dset, "check"):
        raise TrialError(f"distiller '{trial.distiller}' returned {type(dset).__name__}, not a DistilledSet")
    dset = dset.detached()
    dset.check(spec.input_shape, spec.num_classes)
    if trial.n is not None and dset.n != trial.n:  # a budget-free distiller (full) has trial.n None
        raise TrialError(f"distiller '{trial.distiller}' returned {dset.n} examples for a budget of {trial.n} "
                         f"({trial.budget}); a distilled set must have exactly the budget's size")
    if checkpoints is not None and checkpoints.earlier_seconds:  # resumed: the time it took before counts too
        measure = SimpleNamespace(seconds=measure.seconds + checkpoints.earlier_seconds, peak_mb=measure.peak_mb)
    if checkpoints is not None and dset.n <= MAX_SAVED_EXAMPLES:  # kept until the trial is logged
        checkpoints.save_finished(dset, {"distill_seconds": measure.seconds, "peak_mb": measure.peak_mb,
                                         "curves": result.curves})
    return dset, measure


def _evaluate_all(bound: BoundTrial, ctx: TrialContext, dset: Any, result: TrialResult) -> float:
    """Evaluate every recipe into ``result.recipes`` (and the first one's core metrics into
    ``result.metrics``); returns the peak memory (MB) while doing so."""
    from .evaluate import evaluate, ld_protocol_applies
    from .measure import Measure

    trial = bound.trial
    eval_seconds = 0.0
    if ctx.progress:
        ctx.progress.evaluating(trial, sum(r.models for r in trial.recipes))
    def on_model(k: int, acc: float) -> None:
        if ctx.progress:
            ctx.progress.model_done(acc)
        ctx.check_time()

    with Measure(ctx.device) as measure:
        for i, recipe in enumerate(trial.recipes):
            if recipe.optimizer == "ld-protocol" and not ld_protocol_applies(dset):
                if i == 0:
                    raise TrialError(f"the first eval recipe is 'ld-protocol' but the set of '{trial.distiller}' "
                                     f"records no model lifetime (meta test_steps/base_batch); list sgd first")
                continue  # not applicable to this set: reported as n/a, never faked
            start_ms = int(time.time() * 1000)
            build = bound.builder(recipe.arch)
            test = ctx.data.test(trial.dataset, recipe.test_size)
            ev = evaluate(dset, recipe, build, test, trial.seed, ctx.device, dset.init_state, on_model,
                          mode=ctx.eval_mode, tick=ctx.check_time, autocast=trial.autocast, compile=trial.compile)
            rand = _random_baseline(bound, recipe, ctx, dset, ev)
            metrics = {"acc_mean": 100 * ev.mean, "acc_std": 100 * ev.std, "acc_random": 100 * rand.mean,
                       "gain": 100 * (ev.mean - rand.mean), "eval_seconds": ev.seconds}
            eval_seconds += ev.seconds
            label = recipe.label
            accs = [100 * a for a in ev.accs]
            result.per_model[label] = accs
            result.tags[f"eval.mode/{label}"] = ev.mode
            result.recipes.append(RecipeResult(label, recipe.params(), metrics, accs, ev.mode, start_ms,
                                               int(time.time() * 1000)))
            if len(result.recipes) == 1:  # the trial's own run: its first recipe, under the same names
                result.metrics.update({k: metrics[k] for k in CORE_METRICS})
    result.metrics["eval_seconds"] = eval_seconds
    return measure.peak_mb


def _random_baseline(bound: BoundTrial, recipe: Recipe, ctx: TrialContext, dset: Any, ev: Any):
    """Random real subset at the same budget and recipe; cached across distillers.

    Known-init recipes start from the trial's own init, so they are not shared across trials.
    A budget-free trial (the full set) is its own random subset: acc_random = acc_mean, gain 0.
    A "distilled" recipe replays the set's learned step sizes on the subset (hard labels, split into
    the set's ``steps`` batches, each class spread evenly over them): the DD code's baseline
    (``--test_distilled_images random_train --test_distilled_lrs loaded``); it depends on the set's
    step sizes, so it is never shared across trials.
    """
    import torch

    from .baseline import random_subset, spread_over_steps
    from .evaluate import evaluate
    from .trial import LD_PROTOCOL_META

    trial, spec = bound.trial, bound.dataset
    if trial.n is None:
        return ev
    x, y = ctx.data.get(trial.dataset, "train")
    n, ipc = trial.n, trial.ipc
    # "ld-protocol": the subset trains for the set's own model lifetime and batch, which are part of the key
    protocol = {k: dset.meta[k] for k in LD_PROTOCOL_META} if recipe.optimizer == "ld-protocol" else {}
    key = (trial.dataset, ipc, n, trial.seed, recipe, tuple(protocol.values()), trial.autocast, trial.compile)
    shared = recipe.init == "random" and recipe.optimizer != "distilled"
    if shared and key in ctx.baselines:
        return ctx.baselines[key]
    gen = torch.Generator().manual_seed(derive_seed(trial.seed, "random-subset", trial.dataset))
    subset = random_subset(x, y, spec.num_classes, ipc, n, gen)
    subset.meta.update(protocol)
    if recipe.optimizer == "distilled":
        subset = spread_over_steps(subset, int(dset.meta.get("steps", 1)))
        subset.lrs = dset.lrs
    ev = evaluate(subset, recipe, bound.builder(recipe.arch), ctx.data.test(trial.dataset, recipe.test_size),
                  trial.seed, ctx.device, dset.init_state, on_model=lambda k, acc: ctx.check_time(),
                  mode=ctx.eval_mode, tick=ctx.check_time, autocast=trial.autocast, compile=trial.compile)
    if shared:
        ctx.baselines[key] = ev
    return ev


def _write_artifacts(bound: BoundTrial, ctx: TrialContext, dset: Any) -> str:
    from .artifacts import write_figures
    from .lifecycle import trial_dir

    trial, spec = bound.trial, bound.dataset
    out = trial_dir()
    try:
        (out / "trial.json").write_text(json.dumps(
            {"trial": trial.label, "key": trial.key, "params": trial.params(),
             "recipes": [r.params("") for r in trial.recipes]}, indent=2, default=str))
        if dset.n <= MAX_SAVED_EXAMPLES:
            dset.save(out / "distilled.safetensors")
        write_figures(dset, spec, out, ctx.data.ctx)
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)  # no temp directory outlives its trial
        raise
    return str(out)
