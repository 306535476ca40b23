"""Golden fixtures for ``ld`` / ``ld-rr`` from the authors' own code (not collected by pytest).

Runs the REAL per-step functions of github.com/ondrejbohdal/label-distillation (commit 7ebc088) on a
tiny fixed case and writes what they computed to tests/golden/fixtures/ld*.safetensors:

    OMP_NUM_THREADS=1 .venv/bin/python tests/golden/drivers/ld_reference.py /tmp/ref/ld

where /tmp/ref/ld is an export of the reference repository (see tests/golden/README-ld.md). Nothing of
the reference code is copied here: this driver imports its modules and calls

- ``label_distillation_or2.train`` (one epoch of second-order LD; we feed it a one-batch "epoch" per
  outer step so we can record the state after every step), with ``model_architectures.LeNetMeta``
  (``meta = True``: fast weights), ``soft_cross_entropy`` and ``compute_error_rate`` of that module;
- ``label_distillation_rr.train`` likewise, with ``model_architectures.LeNet`` (the backbone),
  ``AdjustLayer`` and ``get_local_weights`` (the ridge solve);
- ``label_distillation_or2.validate`` / ``label_distillation_rr.validate`` on the 3-step labels (the
  fresh model they build gets the fixture's initial weights);
- ``label_distillation_or2.train`` once more with ``compute_error_rate`` replaced by a scripted error
  sequence, to record the code's own model-reset decisions (its moving-average / patience rule lives
  inside ``train``).

Glue replicated from ``main()`` (the scripts are not importable as functions beyond ``train``):
the module globals ``args`` and ``device`` (or2/rr ``main`` lines 29-30, 235-242), ``M.LeNetMeta.meta =
True`` (or2 line 295), the uniform label init and ``Adam([labels])`` (or2 285-290, rr 284-290), the
model optimiser ``Adam(model.parameters())`` (or2 313, rr 308), ``AdjustLayer`` + ``Adam(.., 0.01)``
(rr 312-317), the zero global classifier (rr 320-321) and the reset-statistics initial values
(or2 372-377, rr 379-384). Compatibility patches (no math): float64 default dtype, CPU device, and
``torch.randperm`` returning a scheduled permutation (the base minibatch draw, or2 566 / rr 579) so
that the minibatches are fixed and can be replayed by our implementation.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import types
from pathlib import Path

import torch

COMMIT = "7ebc088c57a90d0b92c95b15f01ebfe1db163d54"
N_BASE, INNER, TARGET_BATCH, STEPS, CLASSES = 10, 5, 16, 3, 10
INNER_LR = 0.01
SEED = 0
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
# LeNetMeta / LeNet parameter names (code) -> our build_lenet nn.Sequential indices
LENET_NAMES = ["conv1", "conv2", "fc1", "fc2", "fc3"]


def load_reference(ref: Path):
    sys.path.insert(0, str(ref))
    try:
        import tqdm  # noqa: F401  (imported by the scripts; unused by train())
    except ImportError:  # compatibility: a stub, the scripts only use tqdm in main()
        import importlib.machinery

        stub = types.ModuleType("tqdm")
        stub.__spec__ = importlib.machinery.ModuleSpec("tqdm", None)
        sys.modules["tqdm"] = stub
    import label_distillation_or2 as or2
    import label_distillation_rr as rr
    import model_architectures as M

    return or2, rr, M


def make_args(**kw):
    args = argparse.Namespace(
        target="mnist", source="mnist", num_base_examples=N_BASE, inner_batch_size=INNER,
        inner_lr=INNER_LR, batch_size=TARGET_BATCH, epochs=STEPS, print_freq=1, verbose=False,
        resnet=False, balanced_source=True, baseline=False)
    for k, v in kw.items():
        setattr(args, k, v)
    return args


class Scheduled:
    """Replaces torch.randperm while the code's train() runs: returns the scheduled permutations."""

    def __init__(self, perms):
        self.perms, self.i, self.orig = list(perms), 0, torch.randperm

    def __call__(self, n, *a, **k):
        perm = self.perms[self.i]
        self.i += 1
        assert len(perm) == n
        return perm.clone()

    def __enter__(self):
        torch.randperm = self
        return self

    def __exit__(self, *exc):
        torch.randperm = self.orig


VAL_STEPS = 4


class LoadOnInit:
    """While active, every new instance of ``cls`` gets the given (initial) weights right after its
    constructor: how the driver fixes the fresh model the code's ``validate`` builds internally."""

    def __init__(self, cls, state):
        self.cls, self.state, self.orig = cls, state, cls.__init__

    def __enter__(self):
        orig, state = self.orig, self.state

        def init(obj, *a, **k):
            orig(obj, *a, **k)
            obj.load_state_dict({k2: v.double() for k2, v in state.items()})

        self.cls.__init__ = init
        return self

    def __exit__(self, *exc):
        self.cls.__init__ = self.orig


def run_validate(mod, cls, init, fixed_input, labels, xt, yt):
    """The code's own ``validate`` on the 3-step labels: a fresh model (the fixture's initial
    weights) trained VAL_STEPS steps on scheduled base minibatches, then error and loss on a
    validation set (here: all 48 target images, one batch)."""
    g = torch.Generator().manual_seed(SEED + 2)
    perms = torch.stack([torch.randperm(N_BASE, generator=g) for _ in range(VAL_STEPS)])
    val_x, val_y = xt.reshape(-1, 1, 28, 28).double(), yt.reshape(-1)
    state = {k[len("init."):]: v for k, v in init.items() if k != "init.scale"}
    with LoadOnInit(cls, state), Scheduled(perms):
        err, loss = mod.validate([(val_x, val_y)], None, torch.nn.CrossEntropyLoss(), 0, fixed_input, labels, VAL_STEPS)
    return {"val.perms": perms, "val.err": torch.tensor(err / 100.0, dtype=torch.float64),
            "val.loss": torch.tensor(loss, dtype=torch.float64)}


def fixed_case():
    """The fixed tiny case: float32-representable values (stored as float32, computed in float64)."""
    g = torch.Generator().manual_seed(SEED)
    base_x = torch.randn(N_BASE, 1, 28, 28, generator=g, dtype=torch.float32)
    xt = torch.randn(STEPS, TARGET_BATCH, 1, 28, 28, generator=g, dtype=torch.float32)
    yt = torch.randint(0, CLASSES, (STEPS, TARGET_BATCH), generator=g)
    # class-dependent shift so that the target loss carries signal
    xt += 0.5 * (yt.float() / CLASSES)[..., None, None, None]
    perms = torch.stack([torch.randperm(N_BASE, generator=g) for _ in range(STEPS)])
    return base_x, xt, yt, perms


def init_weights(model):
    """Fixed weights: the model's own PyTorch default init under a seed, rounded to float32."""
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.float().double())
    return {f"init.{k}": v.detach().float().clone() for k, v in model.state_dict().items()}


def run_ld(or2, M, base_x, xt, yt, perms):
    or2.args, or2.device, or2.num_classes = make_args(), torch.device("cpu"), CLASSES
    M.LeNetMeta.meta = True
    torch.manual_seed(SEED)
    model = M.LeNetMeta(or2.args)
    init = init_weights(model)
    fixed_input = base_x.double()
    labels = torch.zeros((N_BASE, CLASSES), requires_grad=True)
    labels = labels.new_tensor([[float(1.0 / CLASSES) for e in range(CLASSES)] for i in range(N_BASE)], requires_grad=True)
    labels_opt = torch.optim.Adam([labels])
    optimizer = torch.optim.Adam(model.parameters())
    criterion = torch.nn.CrossEntropyLoss()
    stats = ([], 0, 999999999, 0, [], 0)
    out, losses = {}, {}
    with Scheduled(perms):
        for step in range(STEPS):
            loader = [(xt[step].double(), yt[step])]
            res = or2.train(loader, model, fixed_input, labels, criterion, labels_opt, step, optimizer, *stats)
            train_err1, train_loss, labels, model_loss = res[:4]
            stats, model, optimizer = res[4:10], res[10], res[11]
            losses[f"outer_loss.{step + 1}"] = torch.tensor(train_loss, dtype=torch.float64)
            losses[f"inner_loss.{step + 1}"] = torch.tensor(model_loss, dtype=torch.float64)
            losses[f"target_err.{step + 1}"] = torch.tensor(train_err1 / 100.0, dtype=torch.float64)
            if step + 1 in (1, STEPS):
                out[f"labels.{step + 1}"] = labels.detach().clone()
                for k, v in model.state_dict().items():
                    out[f"delta.{step + 1}.{k}"] = (v.detach() - init[f"init.{k}"].double()).float()
    assert stats[4] == [], "no reset expected within 3 steps"
    out.update(run_validate(or2, M.LeNetMeta, init, fixed_input, labels, xt, yt))
    tensors = {**init, "base_x": base_x, "target_x": xt, "target_y": yt, "base_perms": perms, **out, **losses}
    meta = {"functions": "label_distillation_or2.train, label_distillation_or2.validate "
                         "(+ model_architectures.LeNetMeta meta=True)",
            "settings": json.dumps(dict(n_base=N_BASE, inner_batch_size=INNER, target_batch=TARGET_BATCH,
                                        steps=STEPS, inner_lr=INNER_LR, label_lr=1e-3, model_lr=1e-3,
                                        dtype="float64", seed=SEED, classes=CLASSES)),
            "layout": "init.* float32 weights (exact in float64); delta.<step>.* = weights after <step> "
                      "outer steps minus init, rounded to float32; labels.<step> float64; base_perms[s] = "
                      "the code's torch.randperm for step s (first inner_batch_size rows = the base minibatch); "
                      "val.* = the code's validate() on labels.3: a fresh model with the init.* weights, "
                      "VAL_STEPS=4 steps on val.perms[s][:5], error and loss on all 48 target images"}
    return tensors, meta


def run_rr(rr, M, base_x, xt, yt, perms):
    rr.args, rr.device = make_args(), torch.device("cpu")
    rr.num_out_feats, rr.num_classes = 84, CLASSES  # globals of main() (rr 29, 306), read by train() on a reset
    torch.manual_seed(SEED + 1)
    model = M.LeNet(rr.args)
    init = init_weights(model)
    fixed_input = base_x.double()
    labels = torch.zeros((N_BASE, CLASSES), requires_grad=True)
    labels = labels.new_tensor([[float(1.0 / CLASSES) for e in range(CLASSES)] for i in range(N_BASE)], requires_grad=True)
    labels_opt = torch.optim.Adam([labels])
    feat_opt = torch.optim.Adam(model.parameters())
    adjust = M.AdjustLayer(device=torch.device("cpu"))
    adj_opt = torch.optim.Adam(list(adjust.parameters()), 0.01)
    classifier_weights = torch.zeros(84 + 1, CLASSES, requires_grad=False)
    criterion = torch.nn.CrossEntropyLoss()
    stats = ([], 0, 999999999, 0, [], 0)
    out, losses = {"init.scale": adjust.scale.detach().clone()}, {}
    with Scheduled(perms):
        for step in range(STEPS):
            loader = [(xt[step].double(), yt[step])]
            res = rr.train(loader, model, fixed_input, labels, criterion, labels_opt, step, classifier_weights,
                           feat_opt, *stats, adj_opt, adjust)
            train_err1, train_loss, labels, meta_loss, classifier_weights, feat_loss = res[:6]
            stats = res[6:12]
            model, feat_opt, adj_opt, adjust = res[12:16]
            losses[f"outer_loss.{step + 1}"] = torch.tensor(meta_loss, dtype=torch.float64)
            losses[f"base_loss.{step + 1}"] = torch.tensor(feat_loss, dtype=torch.float64)
            losses[f"target_err.{step + 1}"] = torch.tensor(train_err1 / 100.0, dtype=torch.float64)
            if step + 1 in (1, STEPS):
                out[f"labels.{step + 1}"] = labels.detach().clone()
                out[f"classifier.{step + 1}"] = classifier_weights.detach().clone()
                out[f"scale.{step + 1}"] = adjust.scale.detach().clone()
                for k, v in model.state_dict().items():
                    out[f"delta.{step + 1}.{k}"] = (v.detach() - init[f"init.{k}"].double()).float()
    assert stats[4] == [], "no reset expected within 3 steps"
    out.update(run_validate(rr, M.LeNet, init, fixed_input, labels, xt, yt))
    tensors = {**init, "base_x": base_x, "target_x": xt, "target_y": yt, "base_perms": perms, **out, **losses}
    meta = {"functions": "label_distillation_rr.train, label_distillation_rr.validate, get_local_weights "
                         "(+ model_architectures.LeNet, AdjustLayer)",
            "settings": json.dumps(dict(n_base=N_BASE, inner_batch_size=INNER, target_batch=TARGET_BATCH,
                                        steps=STEPS, ridge_lambda=1.0, ema=0.01, label_lr=1e-3, model_lr=1e-3,
                                        scale_lr=0.01, scale_init=1.0, dtype="float64 (scale: float32, "
                                        "AdjustLayer uses torch.FloatTensor)", seed=SEED + 1, classes=CLASSES)),
            "layout": "as ld.safetensors (val.*: validate() trains a fresh RR model: init.* backbone, zero "
                      "classifier, scale 1); classifier.<step> = the averaged global classifier w [85, 10] "
                      "(last row = bias); scale.<step> = AdjustLayer.scale"}
    return tensors, meta


def reset_sequences():
    """Scripted error sequences (percent, as the code's compute_error_rate returns): exact multiples of
    100/1024 so that window sums are exact in binary floating point for both implementations."""
    g = torch.Generator().manual_seed(7)
    q = 100.0 / 1024
    seqs = {}
    seqs["flat"] = [512 * q] * 160
    # improving with noise, then a plateau with noise (the shape of a real online-model error curve)
    improving = [round(900 - 4 * i + float(torch.randint(-40, 41, (1,), generator=g))) for i in range(150)]
    plateau = [round(300 + float(torch.randint(-40, 41, (1,), generator=g))) for _ in range(250)]
    seqs["improve_then_plateau"] = [k * q for k in improving + plateau]
    # slow steady improvement under noise: never resets
    seqs["slow_improvement"] = [round(900 - 1.5 * i + float(torch.randint(-20, 21, (1,), generator=g))) * q
                                for i in range(400)]
    # ties: the window sum returns exactly to its minimum (not an improvement)
    seqs["ties"] = ([600 * q] * 50 + [500 * q] * 10 + [600 * q] * 10) * 4
    return seqs


def run_resets(or2, M):
    """Feed each scripted error sequence through the code's own train() and record its decisions."""
    or2.args, or2.device = make_args(num_base_examples=N_BASE, inner_batch_size=N_BASE, batch_size=2), torch.device("cpu")
    M.LeNetMeta.meta = True
    out = {}
    for name, seq in reset_sequences().items():
        torch.manual_seed(0)
        errs = iter(seq)
        real = or2.compute_error_rate
        or2.compute_error_rate = lambda output, target, topk=(1,): [torch.tensor(next(errs))]
        built = []
        orig_init = M.LeNetMeta.__init__

        def counting_init(self, args, _orig=orig_init):
            built.append(1)
            _orig(self, args)

        M.LeNetMeta.__init__ = counting_init
        try:
            model = M.LeNetMeta(or2.args)
            fixed_input = torch.randn(N_BASE, 1, 28, 28)
            labels = torch.full((N_BASE, CLASSES), 0.1, requires_grad=True)
            labels_opt, optimizer = torch.optim.Adam([labels]), torch.optim.Adam(model.parameters())
            stats = ([], 0, 999999999, 0, [], 0)
            resets, lifetimes_seen = [], 0
            x, y = torch.randn(2, 1, 28, 28), torch.tensor([0, 1])
            for step in range(len(seq)):
                res = or2.train([(x, y)], model, fixed_input, labels, torch.nn.CrossEntropyLoss(), labels_opt,
                                step, optimizer, *stats)
                labels, stats, model, optimizer = res[2], res[4:10], res[10], res[11]
                if len(stats[4]) > lifetimes_seen:
                    lifetimes_seen = len(stats[4])
                    resets.append(step + 1)
        finally:
            or2.compute_error_rate = real
            M.LeNetMeta.__init__ = orig_init
        assert len(built) == 1 + len(resets)
        out[f"reset.{name}.errors"] = torch.tensor(seq, dtype=torch.float64)
        out[f"reset.{name}.reset_steps"] = torch.tensor(resets, dtype=torch.int64)
        out[f"reset.{name}.lifetimes"] = torch.tensor(stats[4], dtype=torch.int64)
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ref", type=Path, help="an export of ondrejbohdal/label-distillation at commit " + COMMIT)
    parser.add_argument("--out", type=Path, default=FIXTURES)
    a = parser.parse_args(argv)
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float64)
    or2, rr, M = load_reference(a.ref.resolve())
    base_x, xt, yt, perms = fixed_case()

    from safetensors.torch import save_file

    a.out.mkdir(parents=True, exist_ok=True)
    common = {"commit": COMMIT, "source": "github.com/ondrejbohdal/label-distillation",
              "driver": "tests/golden/drivers/ld_reference.py", "torch": torch.__version__}
    with contextlib.redirect_stdout(io.StringIO()):  # the code prints every step
        ld_t, ld_meta = run_ld(or2, M, base_x, xt, yt, perms)
        ld_t.update(run_resets(or2, M))
        rr_t, rr_meta = run_rr(rr, M, base_x, xt, yt, perms)
    ld_meta["reset_functions"] = ("label_distillation_or2.train with compute_error_rate replaced by a scripted "
                                  "sequence (percent); reset.<name>.reset_steps = 1-based outer steps at which the "
                                  "code restarted its model; lifetimes = its num_steps_list")
    save_file({k: v.contiguous() for k, v in ld_t.items()}, str(a.out / "ld.safetensors"), {**common, **ld_meta})
    save_file({k: v.contiguous() for k, v in rr_t.items()}, str(a.out / "ld_rr.safetensors"), {**common, **rr_meta})
    for name in ("ld.safetensors", "ld_rr.safetensors"):
        print(name, (a.out / name).stat().st_size, "bytes")


if __name__ == "__main__":
    main()
