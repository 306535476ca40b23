"""Record golden states of the SLDD and DD reference code (not collected by pytest).

Runs the authors' own ``Trainer`` (``train_distilled_image.py``) of

- SLDD: github.com/ilia10000/dataset-distillation @ 2856332f6366450e43a1a9fc29b2cb5264c573e2
- DD:   github.com/SsnL/dataset-distillation     @ 24e6958cf23bc98de20a7b2714fc76fa7d38b874

on a tiny fixed case (LeNet, 1x28x28, 10 classes, float64, known init) for 3 outer steps and writes
``tests/golden/fixtures/{sldd,sldd_n5,dd}.safetensors``. Usage (from the repository root, with the
two references exported into scratch directories outside the repository, see
``tests/golden/README-sldd-dd.md``)::

    OMP_NUM_THREADS=1 .venv/bin/python tests/golden/drivers/sldd_dd_reference.py /tmp/ref/sldd /tmp/ref/dd

Each case runs in its own subprocess (the two codes share module names). Nothing of the reference
code is copied here: this file imports it from the given path and calls it.
"""

from __future__ import annotations

import importlib.machinery
import json
import subprocess
import sys
import types
from pathlib import Path

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
COMMITS = {"sldd": "2856332f6366450e43a1a9fc29b2cb5264c573e2", "dd": "24e6958cf23bc98de20a7b2714fc76fa7d38b874"}
REPOS = {"sldd": "ilia10000/dataset-distillation", "dd": "SsnL/dataset-distillation"}

# The cases. Shared: LeNet on 1x28x28, 10 classes, known init (one xavier init, --n_nets 1),
# distill_lr 0.02, Adam lr 0.01, 48 random "real" examples in batches of 32 (2 iterations per epoch,
# the second one partial), --decay_epochs 1 (so the third outer step, the first of epoch 1, runs at
# half the lr), 3 outer steps.
COMMON = dict(num_classes=10, nc=1, input_size=28, distill_lr=0.02, lr=0.01, decay_epochs=1, decay_factor=0.5,
              batch_size=32, n_real=48, outer_steps=3, seed=0)
CASES = {
    # 2 steps x 2 epochs, 1 image per class per step: 20 images, T = 4, learned soft labels
    "sldd": dict(code="sldd", distill_steps=2, distill_epochs=2, num_distill_classes=10),
    # fewer images than classes: 5 images of classes 0..4 (--num_distill_classes 5), 1 step x 2 epochs
    "sldd_n5": dict(code="sldd", distill_steps=1, distill_epochs=2, num_distill_classes=5),
    # 1 step x 3 epochs, 10 images (one per class), hard labels
    "dd": dict(code="dd", distill_steps=1, distill_epochs=3, num_distill_classes=10),
}

# the stubs: modules imported at module level by the reference code but never used on the path run
# here (text datasets, distance-based label inits, progress bars); not installed in .venv
STUBS = {
    "torchtext": [], "torchtext.data": [], "torchtext.datasets": [], "torchtext.vocab": ["GloVe"],
    "skimage": [], "skimage.measure": ["compare_ssim", "compare_mse", "compare_nrmse"], "tqdm": ["tqdm"],
}


def _install_stubs() -> None:
    def unused(*args, **kwargs):
        raise RuntimeError("stubbed for the golden driver: not on the path it runs")

    for name, attrs in STUBS.items():
        try:
            __import__(name)
            continue
        except ImportError:
            pass
        mod = types.ModuleType(name)
        mod.__spec__ = importlib.machinery.ModuleSpec(name, None)  # torch's import-time find_spec() needs one
        for a in attrs:
            setattr(mod, a, unused)
        sys.modules[name] = mod
        parent, _, child = name.rpartition(".")
        if parent:
            setattr(sys.modules[parent], child, mod)


def _state(case: dict):
    """The ``state`` object the reference's Trainer and networks read (a namespace of options:
    base_options.py defaults, with the case's values). Built by hand because the code's own
    ``options.set_state`` downloads the dataset."""
    import torch

    n_dc = case["num_distill_classes"]
    return types.SimpleNamespace(
        # base_options defaults that the code path reads
        mode="distill_basic", arch="LeNet", init="xavier", init_param=1.0, dropout=False,
        distilled_images_per_class_per_step=1, n_nets=1, local_n_nets=1, sample_n_nets=1,
        local_sample_n_nets=1, train_nets_type="known_init", distributed=False, device=torch.device("cpu"),
        textdata=False, static_labels=0, random_init_labels="", freeze_data=False, reproduction_test=False,
        label_softmax=False, log_interval=-1, checkpoint_interval=-1,
        # the case
        num_classes=case["num_classes"], nc=case["nc"], input_size=case["input_size"],
        distill_steps=case["distill_steps"], distill_epochs=case["distill_epochs"],
        num_distill_classes=n_dc, init_labels=list(range(n_dc)),
        distill_lr=case["distill_lr"], lr=case["lr"], decay_epochs=case["decay_epochs"],
        decay_factor=case["decay_factor"], batch_size=case["batch_size"], epochs=case["outer_steps"],
    )


def run_case(name: str, ref: str) -> None:
    """One case, in this process: import the reference from ``ref``, run 3 outer steps, save."""
    import torch
    from safetensors.torch import save_file

    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float64)
    case = {**COMMON, **CASES[name]}
    sys.path.insert(0, ref)
    _install_stubs()
    import networks  # noqa: E402  (the reference's)
    import train_distilled_image  # noqa: E402

    state = _state(case)
    torch.manual_seed(case["seed"])

    # the known-init model: the code's load_train_models() for known_init = get_networks (LeNet,
    # init_weights with --init xavier); weights rounded to float32-representable values so the
    # fixture stores them exactly in float32 (all computation below is float64)
    models = networks.get_networks(state, N=1)
    with torch.no_grad():
        for m in models:
            m.flat_w.copy_(m.flat_w.float().double())
    shapes = [list(s) for s in models[0]._weights_shapes]
    names = [f"{type(m).__name__}.{n}" for m, n in models[0]._weights_module_names]
    theta0 = models[0].flat_w.detach().clone()

    # the "real" data: random images (float32-representable) and labels, the code's DataLoader
    # (shuffle=True, last partial batch kept); each item carries its index so the batches are recorded
    g = torch.Generator().manual_seed(1)
    real_x = torch.randn(case["n_real"], case["nc"], case["input_size"], case["input_size"], generator=g,
                         dtype=torch.float32)
    real_y = torch.randint(0, case["num_classes"], (case["n_real"],), generator=g)
    dataset = torch.utils.data.TensorDataset(real_x.double(), real_y, torch.arange(case["n_real"]))
    state.train_loader = torch.utils.data.DataLoader(dataset, batch_size=case["batch_size"], shuffle=True)

    trainer = train_distilled_image.Trainer(state, models)  # init_data_optim: x ~ N(0,1), labels, raw lrs, Adam
    with torch.no_grad():  # synthetic init rounded to float32-representable values (stored exactly)
        for d in trainer.data:
            d.copy_(d.float().double())
    if case["code"] == "sldd":
        # the SLDD code builds its labels with dtype=torch.float (float32) whatever the default dtype;
        # cast to float64 so the whole case runs in float64 (values: exact one-hot)
        for lab in trainer.labels:
            lab.data = lab.data.double()
            lab.grad = torch.zeros_like(lab)
    # the StepLR semantics of the code's PyTorch (0.4/1.0): the constructor leaves last_epoch at -1,
    # so the scheduler.step() at the top of epoch e gives lr * gamma^(e // decay_epochs). PyTorch >= 1.1
    # steps once in the constructor, which would shift the code's schedule one epoch earlier.
    trainer.scheduler.last_epoch = -1

    def learned():
        out = {"x": torch.cat([d.detach() for d in trainer.data]),
               "raw_lrs": trainer.raw_distill_lrs.detach().reshape(-1).clone()}
        labels = torch.cat([lab.detach() for lab in trainer.labels])
        if labels.dim() == 1:  # DD: class indices
            labels = torch.nn.functional.one_hot(labels, case["num_classes"]).double()
        out["y"] = labels.clone()
        return out

    def grads():
        out = {"x": torch.cat([d.grad for d in trainer.data]), "raw_lrs": trainer.raw_distill_lrs.grad.reshape(-1)}
        if case["code"] == "sldd":
            out["y"] = torch.cat([lab.grad for lab in trainer.labels])
        return {k: v.detach().clone() for k, v in out.items()}

    init = learned()
    tensors = {
        "init.theta": theta0.float(), "init.x": init["x"].float(), "init.y": init["y"],
        "init.raw_lrs": init["raw_lrs"], "real.x": real_x, "real.y": real_y,
    }
    losses, lrs = [], []

    # the loop body of Trainer.train() (DD train_distilled_image.py lines 211-264, SLDD lines 280-336),
    # for sample_n_nets == n_nets == 1, without logging/checkpointing/evaluation:
    step = 0
    for epoch, it, (rdata, rlabel, ridx) in trainer.prefetch_train_loader_iter():
        if step == case["outer_steps"]:
            break
        if it == 0:
            trainer.scheduler.step()
        trainer.optimizer.zero_grad(set_to_none=False)  # PyTorch >= 2.0 defaults to None grads; the code adds into them
        tmodels = trainer.models
        steps = trainer.get_steps()
        grad_infos, step_losses = [], []
        for model in tmodels:
            if state.train_nets_type == "unknown_init":
                model.reset(state)
            l, saved = trainer.forward(model, rdata, rlabel, steps)
            step_losses.append(l.detach())
            grad_infos.append(trainer.backward(model, rdata, rlabel, steps, saved))
            del l, saved
        lr_now = trainer.optimizer.param_groups[0]["lr"]
        trainer.accumulate_grad(grad_infos)
        for t in [p.grad for p in trainer.params]:
            t.div_(state.sample_n_nets)
        trainer.optimizer.step()

        step += 1
        tensors[f"step{step}.real_idx"] = ridx.clone()
        losses.append(torch.stack(step_losses).sum().item() / state.sample_n_nets)
        lrs.append(lr_now)
        if step in (1, 3):
            for k, v in learned().items():
                if k != "y" or case["code"] == "sldd":
                    tensors[f"after{step}.{k}"] = v
            for k, v in grads().items():
                tensors[f"step{step}.grad_{k}"] = v.float() if k == "x" else v

    tensors["loss"] = torch.tensor(losses)
    tensors["outer_lr"] = torch.tensor(lrs)
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    settings = {**case, "n": int(init["x"].shape[0]), "T": case["distill_steps"] * case["distill_epochs"],
                "train_nets_type": "known_init", "init": "xavier", "init_param": 1.0, "n_nets": 1,
                "distilled_images_per_class_per_step": 1}
    meta = {
        "reference": f"github.com/{REPOS[case['code']]}", "commit": COMMITS[case["code"]],
        "functions": "networks.get_networks (LeNet, networks.utils.init_weights), train_distilled_image.Trainer: "
                     "__init__/init_data_optim, get_steps, prefetch_train_loader_iter, forward, backward, "
                     "accumulate_grad, optimizer.step, scheduler.step; loop glue of Trainer.train (see driver)",
        "settings": json.dumps(settings, sort_keys=True),
        "param_names": json.dumps(names), "param_shapes": json.dumps(shapes),
        "dtype": "float64 (init.theta, init.x, real.x, step*.grad_x stored as float32; the first three are "
                 "float32-representable, so exact)",
        "torch": torch.__version__,
        "driver": "tests/golden/drivers/sldd_dd_reference.py",
    }
    FIXTURES.mkdir(parents=True, exist_ok=True)
    out = FIXTURES / f"{name}.safetensors"
    save_file(tensors, str(out), metadata=meta)
    print(f"{name}: wrote {out} ({out.stat().st_size / 1e6:.2f} MB); losses {losses}; lrs {lrs}")


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[0] == "--case":  # the subprocess
        run_case(argv[1], argv[2])
        return 0
    if len(argv) != 2:
        print(__doc__)
        return 2
    refs = {"sldd": str(Path(argv[0]).resolve()), "dd": str(Path(argv[1]).resolve())}
    for name, case in CASES.items():
        subprocess.run([sys.executable, __file__, "--case", name, refs[case["code"]]], check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
