"""Golden fixtures for dc / dsa / dm from the authors' code (DatasetCondensation, VICO-UoE).

Usage (see tests/golden/README-condense.md)::

    mkdir -p /tmp/ref/dc && git --git-dir=<mirror of VICO-UoE/DatasetCondensation> archive HEAD | tar -x -C /tmp/ref/dc
    OMP_NUM_THREADS=1 .venv/bin/python tests/golden/drivers/condense_reference.py /tmp/ref/dc

This is OUR driver: it imports the reference ``utils.py`` / ``networks.py`` and runs the reference
``main.py`` (DC, DSA) and ``main_DM.py`` (DM) ``main()`` functions themselves, unchanged except for
the textual patches in ``PATCHES`` (dtype and torch-version compatibility; every one is listed in the
README). The loops run on a tiny fixed data set fed through a replaced ``get_dataset``; the driver
observes them from outside:

- ``get_network`` is wrapped: it builds the code's network (seeded by a scripted clock), converts it
  to float64 and records its initial weights; at the start of iteration it+1 it reads ``image_syn``,
  ``loss_avg`` and the trained ``net`` of iteration it from main()'s frame, and stops main() after
  ``ITERATIONS`` iterations.
- ``numpy.random.permutation`` (the code's ``get_images``) is wrapped to record every permutation,
  i.e. exactly which real images each matching step used.
- ``torch.utils.data.DataLoader`` (DC's inner loop on the synthetic set) gets a RandomSampler that
  records its order.
- ``DiffAugment`` is wrapped to record the seeds: siamese seeds come from a scripted clock (the code
  uses ``int(time.time() * 1000) % 100000``); per-example calls (``seed=-1``, DSA's inner loop) get
  ``torch.manual_seed(s)`` with a recorded ``s`` right before the call (the code draws them from
  torch's global RNG).
- ``get_loops`` returns the tiny budget's (outer_loop, inner_loop) (the code defines them only for
  ipc in 1, 10, ..., 50 and exits otherwise).

Nothing of the reference code is copied into this repository; only the numbers it computes.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import random
import subprocess
import sys
import tempfile
import types
from pathlib import Path

import numpy as np
import torch

REF_COMMIT = "53f63a672eab9ade02aabe6432706ef56f317d64"
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"

# (file, old, new, expected count, why) -- compatibility only, never the math.
PATCHES = [
    ("utils.py", "from scipy.ndimage.interpolation import rotate as scipyrotate",
     "from scipy.ndimage import rotate as scipyrotate", 1,
     "scipy >= 1.10 dropped scipy.ndimage.interpolation (only DC's non-differentiable augment uses it; not run here)"),
    ("utils.py", "self.images = images.detach().float()", "self.images = images.detach().to(torch.get_default_dtype())", 1,
     "float64: TensorDataset keeps the default dtype (float32 unless the driver sets float64)"),
    ("utils.py", "img = datum[0].float().to(args.device)", "img = datum[0].to(torch.get_default_dtype()).to(args.device)", 1,
     "float64: epoch() keeps the default dtype"),
    ("utils.py", "return torch.tensor(0, dtype=torch.float, device=gwr.device)",
     "return torch.tensor(0, dtype=torch.get_default_dtype(), device=gwr.device)", 1,
     "float64: the zero distance of 1-d tensors"),
    ("utils.py", "theta = torch.tensor(theta, dtype=torch.float)", "theta = torch.tensor(theta, dtype=torch.get_default_dtype())", 2,
     "float64: the affine matrices of rand_scale / rand_rotate"),
    ("utils.py", "grid = F.affine_grid(theta, x.shape).to(x.device)",
     "grid = F.affine_grid(theta, x.shape, align_corners=_ALIGN_CORNERS).to(x.device)", 2,
     "torch version: the code pins torch 1.2.0, whose affine_grid/grid_sample behave as align_corners=True; "
     "torch >= 1.3 defaults to False. The driver sets _ALIGN_CORNERS (True for the fixtures; False recorded too)"),
    ("utils.py", "x = F.grid_sample(x, grid)", "x = F.grid_sample(x, grid, align_corners=_ALIGN_CORNERS)", 2,
     "as above"),
    ("networks.py", "out = out.view(out.size(0), -1)", "out = out.reshape(out.size(0), -1)", 6,
     "torch version: on torch >= 1.5 a 1-channel batch from DSA's crop (permute back from NHWC) makes the "
     "convolutions return channels-last tensors, which .view cannot flatten (torch 1.2 had no memory formats); "
     "reshape gives the same values"),
    ("main.py", "dtype=torch.float, requires_grad=True", "dtype=torch.get_default_dtype(), requires_grad=True", 1,
     "float64: the synthetic images"),
    ("main_DM.py", "dtype=torch.float, requires_grad=True", "dtype=torch.get_default_dtype(), requires_grad=True", 1,
     "float64: the synthetic images"),
]

# The tiny case.
NUM_CLASSES, PER_CLASS, SHAPE = 10, 20, (1, 28, 28)
MEAN, STD = 0.1307, 0.3081  # the code's MNIST normalisation
MODEL = "ConvNetW32"  # the code's ConvNet (depth 3, instance norm, avg pooling) at its narrowest named width
IPC = 2
ITERATIONS = 3
BATCH_REAL = 10  # half of each class, so get_images' [:n] matters
LOOPS = (3, 2)  # (outer_loop, inner_loop) for ipc 2 (get_loops defines none)


def load_reference(ref: Path, align_corners: bool = True) -> dict[str, types.ModuleType]:
    """networks, utils, main, main_DM as modules, with PATCHES applied to their source in memory."""
    sources = {name: (ref / name).read_text() for name in ("networks.py", "utils.py", "main.py", "main_DM.py")}
    for file, old, new, count, _why in PATCHES:
        found = sources[file].count(old)
        if found != count:
            raise SystemExit(f"patch for {file} expects {count} x {old!r}, found {found}: not commit {REF_COMMIT}?")
        sources[file] = sources[file].replace(old, new)
    modules = {}
    for name in ("networks", "utils", "main", "main_DM"):
        module = types.ModuleType(name)
        module.__file__ = str(ref / f"{name}.py")
        if name == "utils":
            module._ALIGN_CORNERS = align_corners
        sys.modules[name] = module  # main.py does `from utils import ...`, utils `from networks import ...`
        exec(compile(sources[f"{name}.py"], module.__file__, "exec"), module.__dict__)
        modules[name] = module
    return modules


class ScriptedClock:
    """Stands in for the ``time`` module: ``time()`` returns values whose
    ``int(t * 1000) % 100000`` are the given seeds; everything else is the real module."""

    def __init__(self, seeds):
        self.seeds, self.used = iter(seeds), []

    def time(self):
        s = next(self.seeds)
        self.used.append(s)
        return (s + 0.5) / 1000.0

    def __getattr__(self, name):
        import time

        return getattr(time, name)


class Stop(Exception):
    pass


def tiny_data():
    """20 uint8 28x28 images per class (a per-class blob pattern plus noise), labels shuffled."""
    g = torch.Generator().manual_seed(0)
    patterns = torch.nn.functional.interpolate(torch.rand(NUM_CLASSES, 1, 7, 7, generator=g), size=(28, 28),
                                               mode="bilinear", align_corners=False)
    labels = torch.arange(NUM_CLASSES).repeat(PER_CLASS)[torch.randperm(NUM_CLASSES * PER_CLASS, generator=g)]
    noise = torch.randn(len(labels), *SHAPE, generator=g)
    pixels = (patterns[labels] * 200 + 30 * noise).round().clamp(0, 255).to(torch.uint8)
    return pixels, labels


def normalise(pixels: torch.Tensor) -> torch.Tensor:
    """The code's ToTensor + Normalize, in float64 (the golden test repeats exactly these ops)."""
    return (pixels.to(torch.float64) / 255.0 - MEAN) / STD


BN_MODEL, BN_WIDTH = "ConvNetBN", 32  # the code's ConvNetBN (depth 3, batch norm), built 32 wide, not 128


def run_loop(mods, method: str, model: str = MODEL) -> dict:
    """Run main.py (method DC/DSA) or main_DM.py (DM) for ITERATIONS iterations; return what happened.

    ``model=BN_MODEL``: the code's ``get_network("ConvNetBN")`` with its ``ConvNet`` constructor
    given ``net_width=32`` instead of the default 128 (everything else as the code builds it), so the
    weights fit a fixture; main.py's and main_DM.py's batch-norm branches run because of the name."""
    main = mods["main_DM" if method == "DM" else "main"]
    utils = mods["utils"]
    if model == BN_MODEL:
        wide = utils.ConvNet

        def narrow(**kwargs):
            return wide(**{**kwargs, "net_width": BN_WIDTH})

        utils.ConvNet = narrow
    pixels, labels = tiny_data()
    images = normalise(pixels)

    def get_dataset(dataset, data_path):
        dst = utils.TensorDataset(images, labels)
        return 1, (28, 28), NUM_CLASSES, [str(c) for c in range(NUM_CLASSES)], [MEAN], [STD], dst, dst, None

    rec = {"perms": [], "orders": [], "siamese_seeds": [], "each_seeds": [], "net_init": [], "net_final": [],
           "syn": [], "loss": []}
    each_seeds = iter(random.Random(1).sample(range(100000), 1000))
    original_diffaugment = utils.DiffAugment

    def diff_augment(x, strategy="", seed=-1, param=None):
        if seed == -1:
            s = next(each_seeds)
            rec["each_seeds"].append(s)
            torch.manual_seed(s)
        else:
            rec["siamese_seeds"].append(seed)
        return original_diffaugment(x, strategy, seed=seed, param=param)

    original_get_network = utils.get_network

    def get_network(model, channel, num_classes, im_size=(32, 32)):
        frame = sys._getframe(1).f_locals
        if not rec["syn"]:
            rec["syn"].append(frame["image_syn"].detach().clone())  # the initial synthetic set
            args = frame["args"]  # the code's own hyperparameters, as parsed (defaults unless argv set them)
            rec["args"] = {k: v for k, v in vars(args).items()
                           if isinstance(v, (bool, int, float, str)) and k not in ("data_path", "save_path")}
            rec["dsa_param"] = {k: v for k, v in vars(args.dsa_param).items() if k not in ("Siamese", "latestseed")}
        else:
            rec["syn"].append(frame["image_syn"].detach().clone())
            rec["loss"].append(float(frame["loss_avg"]))
            rec["net_final"].append([p.detach().clone() for p in frame["net"].parameters()])
        if len(rec["net_init"]) == ITERATIONS:
            raise Stop
        dtype = torch.get_default_dtype()
        torch.set_default_dtype(torch.float32)  # built as the code builds it, then float64
        try:
            net = original_get_network(model, channel, num_classes, im_size)
        finally:
            torch.set_default_dtype(dtype)
        init = [p.detach().clone() for p in net.parameters()]
        net = net.to(dtype)
        rec["net_init"].append(init)
        return net

    real_permutation = np.random.permutation

    def permutation(x):
        out = real_permutation(x)
        rec["perms"].append(torch.as_tensor(np.asarray(out), dtype=torch.int64))
        return out

    class RecordingSampler(torch.utils.data.RandomSampler):
        def __iter__(self):
            order = list(super().__iter__())
            rec["orders"].append(torch.tensor(order, dtype=torch.int64))
            return iter(order)

    real_loader = torch.utils.data.DataLoader

    class RecordingLoader(real_loader):
        def __init__(self, dataset, batch_size=1, shuffle=False, num_workers=0):
            super().__init__(dataset, batch_size=batch_size, num_workers=num_workers,
                             sampler=RecordingSampler(dataset) if shuffle else None)

    main.get_dataset = get_dataset
    main.get_network = get_network
    main.get_loops = lambda ipc: LOOPS
    main.DiffAugment = diff_augment
    utils.DiffAugment = diff_augment  # epoch() looks it up in utils
    main.time = ScriptedClock(random.Random(2).sample(range(100000), 1000))  # DSA siamese seeds
    utils.time = ScriptedClock(random.Random(3).sample(range(100000), 1000))  # get_network's torch seed
    np.random.seed(0)
    torch.manual_seed(0)
    argv = ["x", "--dataset", "TINY", "--model", model, "--ipc", str(IPC), "--eval_mode", "none", "--num_exp", "1",
            "--num_eval", "0", "--Iteration", "1000", "--batch_real", str(BATCH_REAL)]
    if method != "DM":
        argv += ["--method", method]
        if method == "DSA":
            argv += ["--dsa_strategy", "color_crop_cutout_flip_scale_rotate"]
    with tempfile.TemporaryDirectory() as tmp:
        argv += ["--data_path", f"{tmp}/data", "--save_path", f"{tmp}/result"]
        log = io.StringIO()
        np.random.permutation, torch.utils.data.DataLoader, sys.argv = permutation, RecordingLoader, argv
        try:
            with contextlib.redirect_stdout(log):
                main.main()
        except Stop:
            pass
        finally:
            np.random.permutation, torch.utils.data.DataLoader = real_permutation, real_loader
    rec["settings"] = {"method": method, "argv": argv[1:-4], "iterations": ITERATIONS, "model": model, "ipc": IPC,
                       "width": BN_WIDTH if model == BN_MODEL else 32,
                       "norm": "batchnorm" if model == BN_MODEL else "instancenorm",
                       "outer_loop": LOOPS[0], "inner_loop": LOOPS[1], "batch_real": BATCH_REAL, "dtype": "float64",
                       "real_data": f"{NUM_CLASSES} classes x {PER_CLASS} uint8 {SHAPE} images, "
                                    f"x = (pixels / 255 - {MEAN}) / {STD} in float64",
                       "align_corners": True, "args": rec["args"], "dsa_param": rec["dsa_param"]}
    rec["pixels"], rec["labels"] = pixels, labels
    return rec


def save_loop(rec: dict, name: str, functions: list[str]) -> list[Path]:
    tensors = {"pixels": rec["pixels"], "labels": rec["labels"], "syn_init": rec["syn"][0],
               "loss": torch.tensor(rec["loss"], dtype=torch.float64)}
    for it in (1, ITERATIONS):
        tensors[f"syn_after_{it}"] = rec["syn"][it]
    for it, params in enumerate(rec["net_init"]):
        for i, p in enumerate(params):
            tensors[f"net_init.{it}.{i}"] = p  # float32: the code builds its networks in float32
    perm_lengths = [len(p) for p in rec["perms"]]
    tensors["perms"] = torch.cat(rec["perms"])
    tensors["perm_lengths"] = torch.tensor(perm_lengths, dtype=torch.int64)
    if rec["orders"]:
        tensors["orders"] = torch.stack(rec["orders"])
    if rec["siamese_seeds"]:
        tensors["siamese_seeds"] = torch.tensor(rec["siamese_seeds"], dtype=torch.int64)
    if rec["each_seeds"]:
        tensors["each_seeds"] = torch.tensor(rec["each_seeds"], dtype=torch.int64)
    meta = {"commit": REF_COMMIT, "repository": "github.com/VICO-UoE/DatasetCondensation",
            "functions": json.dumps(functions), "settings": json.dumps(rec["settings"]),
            "patches": json.dumps([(f, why) for f, _o, _n, _c, why in PATCHES]),
            "torch": torch.__version__, "driver": "tests/golden/drivers/condense_reference.py"}
    paths = [FIXTURES / f"{name}.safetensors"]
    _save(tensors, paths[0], meta)
    if any(rec["net_final"]) and not name.startswith("dm"):
        nets = {f"net_after_{it}.{i}": p for it in (1, ITERATIONS) for i, p in enumerate(rec["net_final"][it - 1])}
        paths.append(FIXTURES / f"{name}_nets.safetensors")
        _save(nets, paths[1], meta)
    return paths


def _save(tensors, path: Path, meta: dict) -> None:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=meta)
    size = path.stat().st_size
    assert size < 1_000_000, f"{path} is {size} bytes (keep fixtures < 1 MB)"
    print(f"wrote {path.relative_to(FIXTURES.parents[2])} ({size // 1024} KiB)")


# -- every DSA transform on its own -----------------------------------------------------------------
FAMILIES = ("color", "crop", "cutout", "flip", "scale", "rotate")
STRATEGY = "_".join(FAMILIES)
TRANSFORM_SEEDS = (7, 1234, 99999)
ALL_SEEDS = tuple(range(8))  # the family pick (aug_mode S) covers all six over these seeds


def transforms_fixture(ref: Path) -> Path:
    """DiffAugment on a fixed float32 batch [4, 3, 9, 12] (odd, non-square, so crop/cutout sizes
    differ per axis), per family and for the full strategy: siamese (seed=s) and per example
    (seed=-1 after torch.manual_seed(s)); scale/rotate also with align_corners=False (torch >= 1.3)."""
    torch.set_default_dtype(torch.float32)
    x = torch.randn(4, 3, 9, 12, generator=torch.Generator().manual_seed(5))
    tensors = {"x": x}
    cases = [(True, family, "S", TRANSFORM_SEEDS) for family in FAMILIES]
    cases += [(True, STRATEGY, "S", ALL_SEEDS), (True, STRATEGY, "M", ALL_SEEDS[:2])]
    cases += [(False, family, "S", TRANSFORM_SEEDS) for family in ("scale", "rotate")]
    for align in (True, False):
        utils = load_reference(ref, align_corners=align)["utils"]
        for case_align, family, mode, seeds in cases:
            if case_align != align:
                continue
            key = "all" if family == STRATEGY else family
            if True:
                for s in seeds:
                    param = utils.ParamDiffAug()
                    param.aug_mode = mode
                    tag = f"{key}.{mode}.{s}" + ("" if align else ".align_false")
                    tensors[f"siamese.{tag}"] = utils.DiffAugment(x.clone(), family, seed=s, param=param)
                    torch.manual_seed(s)
                    tensors[f"each.{tag}"] = utils.DiffAugment(x.clone(), family, seed=-1, param=param)
    meta = {"commit": REF_COMMIT, "repository": "github.com/VICO-UoE/DatasetCondensation",
            "functions": json.dumps(["utils.DiffAugment", "utils.ParamDiffAug", *[f"utils.rand_{f}" for f in (
                "brightness", "saturation", "contrast", "crop", "cutout", "flip", "scale", "rotate")]]),
            "settings": json.dumps({"dtype": "float32", "x": "randn(4, 3, 9, 12), Generator seed 5",
                                    "seeds": list(TRANSFORM_SEEDS), "all_seeds": list(ALL_SEEDS),
                                    "key": "{siamese|each}.{family|all}.{S|M}.{seed}[.align_false]",
                                    "each": "seed=-1 right after torch.manual_seed(seed)"}),
            "patches": json.dumps([(f, why) for f, _o, _n, _c, why in PATCHES]),
            "torch": torch.__version__, "driver": "tests/golden/drivers/condense_reference.py"}
    path = FIXTURES / "dsa_transforms.safetensors"
    _save(tensors, path, meta)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ref", type=Path, help="an export of the reference code (git archive of commit %s)" % REF_COMMIT)
    parser.add_argument("--only", choices=["dc", "dsa", "dm", "dc_bn", "dm_bn", "transforms"], action="append")
    args = parser.parse_args()
    torch.set_num_threads(1)
    try:
        head = subprocess.run(["git", "-C", str(args.ref), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:
        head = ""
    if head and head != REF_COMMIT:
        print(f"warning: {args.ref} is at {head}, fixtures are documented for {REF_COMMIT}", file=sys.stderr)
    FIXTURES.mkdir(parents=True, exist_ok=True)
    only = set(args.only or ["dc", "dsa", "dm", "dc_bn", "dm_bn", "transforms"])
    if "transforms" in only:
        transforms_fixture(args.ref)
    bn = ["networks.ConvNet (net_norm batchnorm, net_width 32)"]
    for name, method, model, functions in [
        ("dc", "DC", MODEL, ["main.main (method DC)", "utils.get_network", "utils.match_loss", "utils.distance_wb", "utils.epoch",
                      "utils.TensorDataset", "networks.ConvNet"]),
        ("dsa", "DSA", MODEL, ["main.main (method DSA)", "utils.get_network", "utils.match_loss", "utils.distance_wb", "utils.epoch",
                        "utils.DiffAugment", "utils.ParamDiffAug", "utils.TensorDataset", "networks.ConvNet"]),
        ("dm", "DM", MODEL, ["main_DM.main", "utils.get_network", "utils.DiffAugment", "utils.ParamDiffAug",
                             "networks.ConvNet.embed"]),
        ("dc_bn", "DC", BN_MODEL, ["main.main (method DC, the BatchNorm branch: running statistics frozen on 16 "
                                   "real images per class)", "utils.get_network", "utils.match_loss", "utils.epoch",
                                   *bn]),
        ("dm_bn", "DM", BN_MODEL, ["main_DM.main (the ConvNetBN branch: all classes embedded in one batch)",
                                   "utils.get_network", "networks.ConvNet.embed", *bn]),
    ]:
        if name not in only:
            continue
        torch.set_default_dtype(torch.float64)
        try:
            rec = run_loop(load_reference(args.ref, align_corners=True), method, model)
        finally:
            torch.set_default_dtype(torch.float32)
        save_loop(rec, name, functions)
        print(f"  {name}: loss per iteration {rec['loss']}")


if __name__ == "__main__":
    main()
