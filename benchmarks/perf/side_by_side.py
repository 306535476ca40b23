"""Outer-step time of ``ld``, ``ld-rr`` and ``sldd`` beside the authors' own code, in one run.

    mkdir -p /tmp/ref/ld /tmp/ref/sldd
    git --git-dir=<mirror of ondrejbohdal/label-distillation> archive HEAD | tar -x -C /tmp/ref/ld
    git --git-dir=<mirror of ilia10000/dataset-distillation> archive HEAD | tar -x -C /tmp/ref/sldd
    .venv/bin/python benchmarks/perf/side_by_side.py --ld /tmp/ref/ld --sldd /tmp/ref/sldd
    # -> results/perf/side-by-side.json; `make perf` then adds it to results/perf.md

The reference code runs from the scratch exports (never copied here), through the golden drivers'
glue (tests/golden/drivers/: module globals, LeNetMeta fast weights, the SLDD ``state`` namespace
and the loop body of its ``Trainer.train``). The setting is the seeds' MNIST one on the 4,000-image
mnist-subset, LeNet, float32, ``torch.set_num_threads(--threads)``: LD / LD-RR with 100 base images
(10 per class), base batch 50, target batch 1,024; SLDD known init, 10 images, 1 step x 3 epochs,
real batch 1,024.

- **theirs, data included**: the code's step over its own input path: ``torchvision.datasets.MNIST``
  (the subset written as MNIST idx files in the scratch dir), ``ToTensor`` + ``Normalize``,
  ``DataLoader(batch_size=1024, shuffle=True)``, as in its ``main()``; LD: ``train`` for one epoch,
  SLDD: the loop body of ``Trainer.train`` over ``prefetch_train_loader_iter``; seconds per outer
  step = one epoch's time / its batches.
- **ours**: ``LD`` / ``LDRR`` (``select_best=False``: the code's ``train`` does not validate; its
  ``main()`` validates every 5 epochs) and ``SLDD``, marginal seconds per outer step from two
  budgets (set-up not counted).

Rounds alternate theirs / ours so both see the same machine load; the JSON keeps every round and
the report (benchmarks/perf/report.py) shows medians and ours / theirs.

Allocator (:mod:`harness.allocator`): the harness keeps freed blocks in the C heap of a trial
process; the authors' code runs with glibc's default, which maps and zeroes every large activation
again each step. Each round therefore runs two child processes, one per setting, each timing both
codes: ``default`` (the codes as they run on their own: "theirs as shipped") and ``kept`` (the
harness's setting, applied to their code too). ``--allocator default|kept`` runs one setting in
this process only.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import platform
import statistics
import struct
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
BASE_PER_CLASS, BASE_BATCH, TARGET_BATCH = 10, 50, 1024
OURS_SHORT, OURS_LONG = 2, 10


def write_mnist_idx(root: Path, x: torch.Tensor, y: torch.Tensor, prefix: str) -> None:
    """Images (normalised, as the harness loads them) back to uint8 MNIST idx files."""
    from harness_vision.datasets import MNIST_MEAN, MNIST_STD

    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    pixels = ((x * MNIST_STD + MNIST_MEAN) * 255).round().clamp(0, 255).to(torch.uint8).reshape(len(x), 28, 28)
    (raw / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 2051, len(x), 28, 28)
                                                     + pixels.numpy().tobytes())
    (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, len(y))
                                                     + y.to(torch.uint8).numpy().tobytes())


def their_loader(root: Path):
    import torchvision.datasets as datasets
    import torchvision.transforms as transforms

    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))])
    train = datasets.MNIST(str(root), train=True, transform=transform, download=False)
    return torch.utils.data.DataLoader(train, batch_size=TARGET_BATCH, shuffle=True)


def base_images(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    rows = [(y == c).nonzero().flatten()[torch.randperm(int((y == c).sum()), generator=g)[:BASE_PER_CLASS]]
            for c in range(10)]
    return x[torch.cat(rows)].clone()


def their_ld_epoch(or2, M, loader, fixed_input, make_args) -> tuple[float, int]:
    """One epoch of the code's second-order LD ``train``: (seconds, outer steps)."""
    or2.args, or2.device, or2.num_classes = make_args(), torch.device("cpu"), 10
    M.LeNetMeta.meta = True
    model = M.LeNetMeta(or2.args)
    labels = torch.full((len(fixed_input), 10), 0.1, requires_grad=True)
    labels_opt, optimizer = torch.optim.Adam([labels]), torch.optim.Adam(model.parameters())
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        or2.train(loader, model, fixed_input, labels, torch.nn.CrossEntropyLoss(), labels_opt, 0, optimizer,
                  [], 0, 999999999, 0, [], 0)
    return time.perf_counter() - start, len(loader)


def their_rr_epoch(rr, M, loader, fixed_input, make_args) -> tuple[float, int]:
    """One epoch of the code's LD-RR ``train`` (ridge-regression head): (seconds, outer steps)."""
    rr.args, rr.device = make_args(), torch.device("cpu")
    rr.num_out_feats, rr.num_classes = 84, 10
    model = M.LeNet(rr.args)
    labels = torch.full((len(fixed_input), 10), 0.1, requires_grad=True)
    labels_opt, feat_opt = torch.optim.Adam([labels]), torch.optim.Adam(model.parameters())
    adjust = M.AdjustLayer(device=torch.device("cpu"))
    adj_opt = torch.optim.Adam(list(adjust.parameters()), 0.01)
    classifier = torch.zeros(84 + 1, 10, requires_grad=False)
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        rr.train(loader, model, fixed_input, labels, torch.nn.CrossEntropyLoss(), labels_opt, 0, classifier,
                 feat_opt, [], 0, 999999999, 0, [], 0, adj_opt, adjust)
    return time.perf_counter() - start, len(loader)


def their_sldd_epoch(ref: Path, loader) -> tuple[float, int]:
    """One epoch of the SLDD code's outer steps (known init, 10 images, 1 step x 3 epochs): the loop
    body of ``Trainer.train`` as the golden driver runs it, over the code's MNIST loader."""
    import sldd_dd_reference as glue

    if str(ref) not in sys.path:
        sys.path.insert(0, str(ref))
        glue._install_stubs()
    import networks
    import train_distilled_image

    case = {**glue.COMMON, "distill_steps": 1, "distill_epochs": 3, "num_distill_classes": 10,
            "batch_size": TARGET_BATCH, "decay_epochs": 40, "outer_steps": 1 << 30}
    state = glue._state(case)
    state.train_loader = loader
    trainer = train_distilled_image.Trainer(state, networks.get_networks(state, N=1))
    start, steps = time.perf_counter(), 0
    for epoch, it, (rdata, rlabel) in trainer.prefetch_train_loader_iter():
        if epoch > 0:
            break
        if it == 0:
            trainer.scheduler.step()
        trainer.optimizer.zero_grad(set_to_none=False)
        model = trainer.models[0]
        schedule = trainer.get_steps()
        loss, saved = trainer.forward(model, rdata, rlabel, schedule)
        trainer.accumulate_grad([trainer.backward(model, rdata, rlabel, schedule, saved)])
        trainer.optimizer.step()
        steps += 1
    return time.perf_counter() - start, steps


def our_step(cls, x, y, steps: int) -> float:
    from harness.specs import DistillTask
    from harness_vision.archs import build_lenet

    counter = iter(range(1 << 20))

    def make_model():
        torch.manual_seed(next(counter))
        return build_lenet((1, 28, 28), 10)

    ipc, config = ((1, cls.Config(outer_steps=steps, steps=1, epochs=3)) if cls.name == "sldd" else
                   (BASE_PER_CLASS, cls.Config(outer_steps=steps, select_best=False)))
    task = DistillTask(x=x, y=y, num_classes=10, ipc=ipc, n=10 * ipc, make_model=make_model, config=config,
                       device=torch.device("cpu"), generator=torch.Generator().manual_seed(0))
    start = time.perf_counter()
    cls().distill(task)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ld", type=Path, required=True, help="export of ondrejbohdal/label-distillation (7ebc088)")
    parser.add_argument("--sldd", type=Path, default=None, help="export of ilia10000/dataset-distillation (2856332)")
    parser.add_argument("--scratch", type=Path, default=Path("/tmp/harness-side-by-side"),
                        help="where the MNIST idx files are written (outside the repo)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=REPO / "results" / "perf" / "side-by-side.json")
    parser.add_argument("--allocator", choices=("both", "default", "kept"), default="both",
                        help="both (default): each round one child process per setting; else this process only")
    a = parser.parse_args(argv)
    if a.allocator == "both":
        return both_allocators(a)
    if a.allocator == "kept":
        from harness.allocator import keep_freed_memory

        if not keep_freed_memory():
            raise SystemExit("--allocator kept needs glibc (Linux) and HARNESS_MALLOC unset")
    torch.set_num_threads(a.threads)
    torch.set_default_dtype(torch.float32)
    sys.path.insert(0, str(REPO / "tests" / "golden" / "drivers"))
    from ld_reference import load_reference, make_args  # noqa: E402  (the golden driver's glue)

    from harness_distillers.ld import LD
    from harness_distillers.ld_rr import LDRR
    from harness_distillers.sldd import SLDD
    from harness_vision.datasets import load_mnist_subset

    x, y = load_mnist_subset("train", None)
    xt, yt = load_mnist_subset("test", None)
    write_mnist_idx(a.scratch, x, y, "train")
    write_mnist_idx(a.scratch, xt, yt, "t10k")
    loader = their_loader(a.scratch)
    fixed_input = base_images(x, y)
    try:  # both codes import tqdm at module level (for progress bars off this path)
        import tqdm  # noqa: F401
    except ImportError:
        import importlib.machinery
        import types

        stub = types.ModuleType("tqdm")
        stub.__spec__ = importlib.machinery.ModuleSpec("tqdm", None)
        stub.tqdm = lambda iterable=None, *args, **kwargs: iterable
        sys.modules["tqdm"] = stub
    or2, rr, M = load_reference(a.ld.resolve())

    def args(**kw):
        return make_args(num_base_examples=len(fixed_input), inner_batch_size=BASE_BATCH, batch_size=TARGET_BATCH,
                         **kw)

    cases = [("ld", lambda: their_ld_epoch(or2, M, loader, fixed_input, args), LD),
             ("ld-rr", lambda: their_rr_epoch(rr, M, loader, fixed_input, args), LDRR)]
    if a.sldd is not None:
        def their_sldd() -> tuple[float, int]:
            with contextlib.redirect_stdout(io.StringIO()):  # the code prints every epoch
                return their_sldd_epoch(a.sldd.resolve(), loader)

        cases.append(("sldd", their_sldd, SLDD))
    rounds: dict[str, list[float]] = {f"{name}/{who}": [] for name, _, _ in cases for who in ("theirs", "ours")}
    for r in range(a.rounds + 1):  # round 0 warms both up and is not kept
        for name, theirs, cls in cases:
            seconds, steps = theirs()
            ours = (our_step(cls, x, y, OURS_LONG) - our_step(cls, x, y, OURS_SHORT)) / (OURS_LONG - OURS_SHORT)
            if r:
                rounds[f"{name}/theirs"].append(seconds / steps)
                rounds[f"{name}/ours"].append(ours)
                print(f"round {r} {name}: theirs {seconds / steps * 1e3:.1f} ms/step, ours {ours * 1e3:.1f} ms/step",
                      flush=True)
    result = {"setting": {"dataset": "mnist-subset (4,000 train)", "arch": "lenet", "base_images": len(fixed_input),
                          "base_batch": BASE_BATCH, "target_batch": TARGET_BATCH, "threads": a.threads,
                          "dtype": "float32", "ours": "select_best=False, marginal over "
                                                      f"{OURS_SHORT}->{OURS_LONG} steps",
                          "theirs": "train() over the code's MNIST DataLoader (PIL, ToTensor, Normalize)"},
              "reference": {"ld": "ondrejbohdal/label-distillation 7ebc088: label_distillation_or2.train, "
                                  "label_distillation_rr.train",
                            "sldd": "ilia10000/dataset-distillation 2856332: train_distilled_image.Trainer "
                                    "(forward, backward, accumulate_grad, optimizer.step)"},
              "machine": {"node": platform.node(), "cpus": torch.get_num_threads(), "torch": torch.__version__},
              "allocator": a.allocator,
              "seconds_per_step": rounds,
              "median": {k: statistics.median(v) for k, v in rounds.items()},
              "when": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2))
    for name, _, _ in cases:
        med = result["median"]
        print(f"{name}: ours / theirs = {med[f'{name}/ours'] / med[f'{name}/theirs']:.2f}")
    print(f"wrote {a.out}")
    return 0


def both_allocators(a: argparse.Namespace) -> int:
    """Each round: one child process per allocator setting (order alternating), each a warm-up round
    and one timed round of both codes; their rounds merged into one JSON, keyed ``<setting>:<case>``."""
    import os
    import subprocess
    import tempfile

    passed = ["--ld", str(a.ld), "--scratch", str(a.scratch), "--threads", str(a.threads),
              *(["--sldd", str(a.sldd)] if a.sldd is not None else [])]
    merged: dict | None = None
    for r in range(a.rounds):
        for setting in (("default", "kept") if r % 2 == 0 else ("kept", "default")):
            with tempfile.TemporaryDirectory() as tmp:
                out = Path(tmp) / "round.json"
                env = {k: v for k, v in os.environ.items() if k != "HARNESS_MALLOC"}
                subprocess.run([sys.executable, __file__, *passed, "--rounds", "1", "--allocator", setting,
                                "--out", str(out)], check=True, env=env)
                child = json.loads(out.read_text())
            if merged is None:
                merged = {**child, "allocator": "both", "seconds_per_step": {}}
            for key, values in child["seconds_per_step"].items():
                merged["seconds_per_step"].setdefault(f"{setting}:{key}", []).extend(values)
    assert merged is not None
    merged["median"] = {k: statistics.median(v) for k, v in merged["seconds_per_step"].items()}
    merged["when"] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(merged, indent=2))
    med = merged["median"]
    for name in sorted({k.split(":", 1)[1].split("/")[0] for k in med}):
        print(f"{name}: ours (kept) / theirs (as shipped) = {med[f'kept:{name}/ours'] / med[f'default:{name}/theirs']:.2f}; "
              f"same allocator: {med[f'kept:{name}/ours'] / med[f'kept:{name}/theirs']:.2f} (kept), "
              f"{med[f'default:{name}/ours'] / med[f'default:{name}/theirs']:.2f} (default)")
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
