"""The evaluation protocol: one implementation for every method, so the comparison is fair.
Its reference, with every default and seed, is docs/protocol.md.

K fresh models of the evaluation architecture are trained on the distilled set with soft-label
cross-entropy and tested on the real test set. Defaults follow the DC protocol (SGD, momentum 0.9,
lr 0.01, weight decay 5e-4, 300 epochs, lr x0.1 at half, K = 5); ``std`` is the population std
over models, as in the DC code. Model k of a trial gets the same init seed whichever set it is
trained on, so the distilled set and its random-subset baseline are compared pairwise.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from .init import init_model
from .specs import DistilledSet
from .trial import Recipe, derive_seed

# Test examples per forward: the DC code's test loader (``utils.get_dataset``: batch_size=256,
# shuffle=False). An example's logits are the same in batches of 256 as in one batch, bit for bit, for
# the registered architectures (tests/test_evaluate.py); what changes is memory and time. At 2048,
# ConvNet-3's activations pass the allocator's 1 GiB mmap threshold (harness.allocator): its test
# pass on 10,000 MNIST-shaped images peaked at 4.4 GB of RSS and took 15.8 s; at 256, 1.1 GB and 9.7 s
# (one fresh process each, the trial's allocator setting; /tmp scratch script on the 2-core AMD EPYC
# host). ResNet-18 1.07x; the rest within +-6%, but the RNN and the MLP 0.74x (+29 ms and +6 ms).
TEST_BATCH = 256


@dataclass
class EvalResult:
    recipe: Recipe
    accs: list[float] = field(default_factory=list)
    seconds: float = 0.0
    mode: str = ""  # "vectorised", or "sequential: <why>" (harness.vectorised.choose_mode)

    @property
    def mean(self) -> float:
        return sum(self.accs) / len(self.accs)

    @property
    def std(self) -> float:
        m = self.mean
        return math.sqrt(sum((a - m) ** 2 for a in self.accs) / len(self.accs))


def precision(autocast: str, device: torch.device) -> Any:
    """A trial's ``autocast`` (grid key) as a context: bf16 autocast on the device, or nothing."""
    if autocast == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def ld_protocol_applies(dset: DistilledSet) -> bool:
    """Whether a set carries what the "ld-protocol" recipe trains by (its model lifetime)."""
    from .trial import LD_PROTOCOL_META

    return all(isinstance(dset.meta.get(k), int) and dset.meta[k] > 0 for k in LD_PROTOCOL_META)


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against a distribution per example (one-hot rows give the usual CE), averaged
    over the examples: [B, classes] -> a scalar; [K, B, classes] -> one loss per model, [K]."""
    return -(target * F.log_softmax(logits, dim=-1)).sum(dim=-1).mean(dim=-1)


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = TEST_BATCH) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(x), batch):
        correct += (model(x[i : i + batch]).argmax(1) == y[i : i + batch]).sum().item()
    return correct / len(x)


def train_model(model: nn.Module, dset: DistilledSet, recipe: Recipe, generator: torch.Generator,
                device: torch.device, tick: Callable[[], None] | None = None) -> nn.Module:
    """Train ``model`` in place on a distilled set under ``recipe`` (``tick`` is called every epoch,
    or every 100 steps of "ld-protocol": the trial's time limit is checked there)."""
    x, y = dset.x.to(device), dset.y.to(device)
    model.train()
    if recipe.optimizer == "distilled":
        return _replay_learned_steps(model, x, y, dset.lrs.to(device), int(dset.meta.get("steps", 1)))
    opt = make_optimizer(recipe, [p for p in model.parameters() if p.requires_grad])
    fit(lambda xb, yb: soft_cross_entropy(model(xb[0]), yb[0]), opt, x, y, recipe, dset.meta, [generator], tick)
    return model


def make_optimizer(recipe: Recipe, params: list[torch.Tensor]) -> torch.optim.Optimizer:
    """SGD (momentum, weight decay) or Adam (weight decay) at ``recipe.lr``; "ld-protocol" is the LD
    code's Adam without weight decay. Every update is elementwise, so one optimizer over K models'
    stacked parameters updates each model as its own optimizer would (the vectorised path)."""
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(params, lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay)
    if recipe.optimizer == "ld-protocol":
        return torch.optim.Adam(params, lr=recipe.lr)
    return torch.optim.Adam(params, lr=recipe.lr, weight_decay=recipe.weight_decay)


def fit(loss_of: Callable[[list[torch.Tensor], list[torch.Tensor]], torch.Tensor], opt: torch.optim.Optimizer,
        x: torch.Tensor, y: torch.Tensor, recipe: Recipe, meta: dict, generators: list[torch.Generator],
        tick: Callable[[], None] | None = None) -> None:
    """The protocol's training loop for one model or several trained together.

    Model k draws its batch order (and its augmentation) from ``generators[k]`` alone, so it sees
    the same batches whether it trains alone or beside others. ``loss_of(xbs, ybs)`` gets one batch
    per model and returns the loss to minimise (for several models, the sum of their losses: each
    model's gradient is then its own loss's).

    "sgd"/"adam": ``recipe.epochs`` epochs of shuffled minibatches of ``recipe.batch_size``, the lr
    x0.1 at half (the DC protocol). "ld-protocol": the LD code's test training
    (``label_distillation_or2.py`` ``test()``): ``meta["test_steps"]`` steps, each on
    ``meta["base_batch"]`` examples drawn at random without replacement (clamped to the set's size).
    """
    n, device = len(x), x.device

    def step(indices: list[torch.Tensor], augment: Callable | None = None) -> None:
        xbs = [x[i] if augment is None else augment(x[i], g) for i, g in zip(indices, generators)]
        loss = loss_of(xbs, [y[i] for i in indices])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    if recipe.optimizer == "ld-protocol":
        steps, batch = int(meta["test_steps"]), min(int(meta["base_batch"]), n)
        for s in range(steps):
            step([torch.randperm(n, generator=g)[:batch].to(device) for g in generators])
            if tick and s % 100 == 99:
                tick()
        return
    augment = _augmentation(recipe)
    decay_at = recipe.epochs // 2
    for epoch in range(recipe.epochs):
        if epoch == decay_at and epoch > 0:
            for group in opt.param_groups:
                group["lr"] *= 0.1
        orders = [torch.randperm(n, generator=g).to(device) for g in generators]
        for i in range(0, n, recipe.batch_size):
            step([order[i : i + recipe.batch_size] for order in orders], augment)
        if tick:
            tick()


def _augmentation(recipe: Recipe) -> Callable | None:
    """``augment="dsa"``: DSA with parameters drawn per example for every batch (the DSA code's
    evaluation); its seeds come from the batch generator, so runs stay reproducible."""
    if recipe.augment == "dsa":
        from .augment import DSA

        return DSA()
    return None


def unroll_gd(model: nn.Module, params: dict[str, torch.Tensor], xs: list[torch.Tensor], ys: list[torch.Tensor],
              lrs: torch.Tensor, create_graph: bool = True) -> dict[str, torch.Tensor]:
    """``len(lrs)`` plain GD steps of ``model`` from ``params`` (name -> tensor): step i on batch
    ``i mod len(xs)`` with step size ``lrs[i]`` and the soft-label cross-entropy. With
    ``create_graph`` the result is differentiable in the batches, the labels and the step sizes (what
    SLDD/DD distil through); without, it is the "distilled" recipe's replay. One function for both,
    so a set is evaluated by exactly the inner loop it was distilled with."""
    from torch.func import functional_call

    names = list(params)
    for i in range(len(lrs)):
        b = i % len(xs)
        loss = soft_cross_entropy(functional_call(model, params, (xs[b],)), ys[b])
        grads = torch.autograd.grad(loss, [params[k] for k in names], create_graph=create_graph)
        params = {k: params[k] - lrs[i] * g for k, g in zip(names, grads)}
    return params


def _replay_learned_steps(model: nn.Module, x: torch.Tensor, y: torch.Tensor, lrs: torch.Tensor,
                          steps: int = 1) -> nn.Module:
    """The SLDD/DD test procedure: plain GD (no momentum), one step per learned step size.

    The set is split into ``steps`` equal consecutive batches (``meta["steps"]``, default 1 = the
    whole set); step i uses batch i mod steps, so ``len(lrs) = steps x epochs`` replays the epochs.
    """
    params = {k: p.detach().clone().requires_grad_(True) for k, p in model.named_parameters() if p.requires_grad}
    theta = unroll_gd(model, params, list(x.chunk(steps)), list(y.chunk(steps)), lrs.flatten(), create_graph=False)
    with torch.no_grad():
        for k, p in model.named_parameters():
            if k in theta:
                p.copy_(theta[k])
    return model


def evaluate(dset: DistilledSet, recipe: Recipe, build_model: Callable[[], nn.Module],
             test: tuple[torch.Tensor, torch.Tensor], seed: int, device: torch.device,
             init_state: dict[str, torch.Tensor] | None = None,
             on_model: Callable[[int, float], None] | None = None, mode: str = "auto",
             tick: Callable[[], None] | None = None, autocast: str = "none", compile: bool = False) -> EvalResult:
    """Train ``recipe.models`` fresh models on ``dset``; return their test accuracies.

    ``mode`` (the grid's ``eval_mode``): whether the K models train at once
    (:mod:`harness.vectorised`); the path taken is ``EvalResult.mode``. ``on_model(k, acc)`` is
    called as each model is tested, ``tick()`` every epoch (the trial's time limit).
    ``autocast="bf16"`` trains and tests under bf16 autocast; ``compile`` runs each model through
    ``torch.compile`` (sequential path; the grid allows both on CUDA only)."""
    from .vectorised import VECTORISED, choose_mode, probe, train_together

    if recipe.optimizer == "distilled" and dset.lrs is None:
        raise ValueError("recipe 'distilled' needs learned step sizes, but the set has none")
    if recipe.optimizer == "ld-protocol" and not ld_protocol_applies(dset):
        raise ValueError("recipe 'ld-protocol' needs the set's meta 'test_steps' and 'base_batch' "
                         "(recorded by ld, ld-rr and ld-base)")
    if recipe.init == "known" and init_state is None:
        raise ValueError("recipe init 'known' needs the set's init_state, but it has none")
    result = EvalResult(recipe)
    start = time.perf_counter()

    def fresh(k: int) -> tuple[nn.Module, torch.Generator]:
        """Model k and its batch generator: the same whichever path trains it."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(seed, "eval-model", recipe.arch, k))
            model = init_model(build_model(), recipe.model_init)
        if recipe.init == "known":
            model.load_state_dict(init_state)
        return model.to(device), torch.Generator().manual_seed(derive_seed(seed, "eval-batches", recipe.label, k))

    def tested(k: int, model: nn.Module) -> None:
        with precision(autocast, device):
            acc = accuracy(model, *test)
        result.accs.append(acc)
        if on_model:
            on_model(k, acc)

    first = fresh(0)
    result.mode = "sequential: compile" if compile else choose_mode(first[0], recipe, device, mode)
    if result.mode == VECTORISED:
        pairs = [first] + [fresh(k) for k in range(1, recipe.models)]
        models = [m for m, _ in pairs]
        failed = probe(models, dset, device, precision(autocast, device))
        if failed:
            result.mode = f"sequential: {failed}"
        else:
            with precision(autocast, device):
                train_together(models, dset, recipe, [g for _, g in pairs], device, tick)
            for k, model in enumerate(models):
                tested(k, model)
    if result.mode != VECTORISED:
        for k in range(recipe.models):
            model, generator = first if k == 0 else fresh(k)
            if compile:
                model = torch.compile(model)
            with precision(autocast, device):
                train_model(model, dset, recipe, generator, device, tick)
            tested(k, model)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    result.seconds = time.perf_counter() - start
    return result
