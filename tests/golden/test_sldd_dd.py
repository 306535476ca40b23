"""Golden tests: our SLDD and DD compute what the authors' code computes.

The fixtures hold states recorded by running the reference ``Trainer`` of the SLDD code
(ilia10000/dataset-distillation @ 2856332) and the DD code (SsnL/dataset-distillation @ 24e6958)
for 3 outer steps on a tiny fixed case (LeNet, 1x28x28, 10 classes, known init, float64); see
``tests/golden/README-sldd-dd.md`` and ``tests/golden/drivers/sldd_dd_reference.py``. From the same
initial state (weights, synthetic inputs, labels, raw step sizes) and the same real batches, our
code must give the same outer losses, gradients, inputs, labels and step sizes (atol 1e-5).

Two paths are checked: :meth:`SLDD.outer_step` step by step (with gradients), and ``distill()``
end to end with only its two random draws (the synthetic init and the real-batch order) replaced
by the recorded ones, so the loop glue (fixed init, lr schedule, batch feeding) is the one a
trial runs.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from harness.specs import DistillTask
from harness_distillers import sldd as sldd_module
from harness_distillers.dd import DD
from harness_distillers.sldd import SLDD, RealBatches, Synthetic, initial_labels, outer_lr_at, raw_lr_init
from harness_vision.archs import build_lenet

FIXTURES = Path(__file__).parent / "fixtures"
CASES = {"sldd": SLDD, "sldd_n5": SLDD, "dd": DD}
ATOL = 1e-5
CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def float64_single_thread():
    threads, dtype = torch.get_num_threads(), torch.get_default_dtype()
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_num_threads(threads)
    torch.set_default_dtype(dtype)


def load(name: str) -> tuple[dict[str, torch.Tensor], dict]:
    from safetensors import safe_open

    with safe_open(str(FIXTURES / f"{name}.safetensors"), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        meta = f.metadata()
    return tensors, meta


def settings(meta: dict) -> dict:
    return json.loads(meta["settings"])


def config(cls, s: dict):
    """Our Config for the case: the reference's options, its 2 iterations per epoch x
    ``--decay_epochs 1`` as an absolute decay every 2 outer steps."""
    iters_per_epoch = -(-s["n_real"] // s["batch_size"])
    return cls.Config(steps=s["distill_steps"], epochs=s["distill_epochs"], init="fixed", model_init="xavier",
                      lr_init=s["distill_lr"], outer_lr=s["lr"], decay_factor=s["decay_factor"],
                      decay_every=s["decay_epochs"] * iters_per_epoch, outer_steps=s["outer_steps"],
                      batch_size=s["batch_size"])


def fixed_net(t: dict, meta: dict) -> torch.nn.Module:
    """Our LeNet (harness-vision) holding the reference's init (its flat parameter vector, in the
    same module order)."""
    net = build_lenet((1, 28, 28), 10).double()
    params = list(net.parameters())
    assert [list(p.shape) for p in params] == json.loads(meta["param_shapes"])
    with torch.no_grad():
        for p, v in zip(params, t["init.theta"].double().split([p.numel() for p in params])):
            p.copy_(v.view_as(p))
    return net


def initial_synthetic(cls, t: dict, cfg) -> Synthetic:
    labels = cls().make_labels(t["init.y"].clone(), cfg, CPU)
    return Synthetic(t["init.x"].double().clone(), labels, t["init.raw_lrs"].clone(), cfg.outer_lr, cfg.betas)


def real_batch(t: dict, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    idx = t[f"step{step}.real_idx"]
    return t["real.x"][idx].double(), t["real.y"][idx]


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item()


# -- the initial state is ours ----------------------------------------------------------------------
@pytest.mark.parametrize("name", CASES)
def test_initial_labels_step_sizes_and_schedule_are_the_codes(name):
    cls = CASES[name]
    t, meta = load(name)
    s = settings(meta)
    cfg = config(cls, s)
    # raw step sizes: log(expm1(distill_lr)), the code's "undo the softplus"
    assert max_diff(raw_lr_init(cfg.lr_init, cfg.steps * cfg.epochs, dtype=torch.float64), t["init.raw_lrs"]) < 1e-15
    # labels: example i is class i mod C (the code's init_labels 0..num_distill_classes-1 per step)
    assert torch.equal(initial_labels(s["n"], s["num_classes"], "onehot", torch.Generator()).double(), t["init.y"])
    # the outer lr per step: --decay_epochs 1 with 2 iterations per epoch = decay every 2 outer steps
    assert [outer_lr_at(cfg, k) for k in range(3)] == t["outer_lr"].tolist()
    # the real batches: epoch-wise permutations, last partial batch kept
    batches = RealBatches(s["n_real"], s["batch_size"], torch.Generator())
    sizes = [len(batches.next()) for _ in range(3)]
    assert sizes == [len(t[f"step{k}.real_idx"]) for k in (1, 2, 3)]
    assert set(torch.cat([t["step1.real_idx"], t["step2.real_idx"]]).tolist()) == set(range(s["n_real"]))


# -- the outer step, step by step -------------------------------------------------------------------
@pytest.mark.parametrize("name", CASES)
def test_outer_steps_match_the_reference(name):
    cls = CASES[name]
    t, meta = load(name)
    cfg = config(cls, settings(meta))
    net = fixed_net(t, meta)
    syn = initial_synthetic(cls, t, cfg)
    learns_labels = "after1.y" in t
    for step in (1, 2, 3):
        xr, yr = real_batch(t, step)
        loss = cls().outer_step(syn, net, xr, yr, outer_lr_at(cfg, step - 1), cfg.steps, step - 1)
        assert abs(loss - t["loss"][step - 1].item()) < ATOL, f"outer loss at step {step}"
        if step in (1, 3):
            # gradients of the outer loss (before Adam): the code's hand-written reverse pass;
            # grad_x is stored in float32, so compare relative to its scale
            gx = t[f"step{step}.grad_x"]
            assert max_diff(syn.x.grad, gx) < 1e-5 * gx.abs().max().item() + 1e-9
            assert max_diff(syn.raw_lrs.grad, t[f"step{step}.grad_raw_lrs"]) < ATOL
            if learns_labels:
                assert max_diff(syn.labels.param.grad, t[f"step{step}.grad_y"]) < ATOL
            # the learned state after Adam
            assert max_diff(syn.x, t[f"after{step}.x"]) < ATOL
            assert max_diff(syn.raw_lrs, t[f"after{step}.raw_lrs"]) < ATOL
            if learns_labels:
                assert max_diff(syn.labels.value(), t[f"after{step}.y"]) < ATOL
            else:
                assert torch.equal(syn.labels.value(), t["init.y"])
    if learns_labels:  # the code's labels are unconstrained: rows leave the simplex
        assert not torch.allclose(t["after3.y"].sum(1), torch.ones(len(t["after3.y"])), atol=1e-6)


# -- distill() end to end -------------------------------------------------------------------------
@pytest.mark.parametrize("name", CASES)
def test_distill_matches_the_reference_from_the_recorded_draws(name, monkeypatch):
    cls = CASES[name]
    t, meta = load(name)
    s = settings(meta)
    cfg = config(cls, s)

    class Injected(cls):
        def init_synthetic(self, task, cfg):  # the recorded synthetic init instead of a fresh draw
            return initial_synthetic(cls, t, cfg)

    class RecordedBatches(RealBatches):  # the code's DataLoader order
        def __init__(self, n_real, batch_size, generator):
            assert (n_real, batch_size) == (s["n_real"], s["batch_size"])
            super().__init__(n_real, batch_size, generator)
            self.k = 0

        def next(self):
            self.k += 1
            return t[f"step{self.k}.real_idx"]

    monkeypatch.setattr(sldd_module, "RealBatches", RecordedBatches)
    made = []

    def make_model():  # the harness would return an xavier init; the recorded one is one of those
        made.append(1)
        return fixed_net(t, meta)

    logged = []
    task = DistillTask(x=t["real.x"].double(), y=t["real.y"], num_classes=s["num_classes"], ipc=None,
                       n=s["n"], make_model=make_model, config=cfg, device=CPU, generator=torch.Generator(),
                       _log=lambda step, **m: logged.append(m))
    out = Injected().distill(task)
    assert len(made) == 1  # known init: one model init for the whole run
    assert [m["loss"] for m in logged] == pytest.approx(t["loss"].tolist(), abs=ATOL)
    assert [m["outer_lr"] for m in logged] == t["outer_lr"].tolist()
    assert max_diff(out.x, t["after3.x"]) < ATOL
    assert max_diff(out.lrs, torch.nn.functional.softplus(t["after3.raw_lrs"])) < ATOL
    assert max_diff(out.y, t["after3.y"] if "after3.y" in t else t["init.y"]) < ATOL
    assert all(torch.equal(out.init_state[k], v) for k, v in fixed_net(t, meta).state_dict().items())


def test_fixtures_record_their_reference_and_settings():
    for name in CASES:
        _, meta = load(name)
        code = settings(meta)["code"]
        assert meta["commit"] == {"sldd": "2856332f6366450e43a1a9fc29b2cb5264c573e2",
                                  "dd": "24e6958cf23bc98de20a7b2714fc76fa7d38b874"}[code]
        assert "Trainer" in meta["functions"]
        assert (FIXTURES / f"{name}.safetensors").stat().st_size < 1_000_000
