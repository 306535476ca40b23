"""Golden tests: dc, dsa and dm compute what the authors' code (DatasetCondensation) computes.

The fixtures were written by ``tests/golden/drivers/condense_reference.py`` running the reference
``main.py`` / ``main_DM.py`` loops on a tiny case (see ``tests/golden/README-condense.md``). Here
the same state goes into OUR code through the functions ``distill()`` itself calls (one outer
iteration: :meth:`DC.iteration`, :meth:`DM.iteration`), with the reference run's random choices
replayed (which real images, the order of the inner-loop batches, the DSA seeds), and the same
numbers must come out: float64, atol 1e-5.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from harness.augment import DSA, FAMILIES, STRATEGY, DSAParams
from harness_distillers.condense import initial_images
from harness_distillers.dc import DC, DCWithDSA
from harness_distillers.dm import DM

FIXTURES = Path(__file__).parent / "fixtures"
ATOL = 1e-5


def load(name: str) -> tuple[dict[str, torch.Tensor], dict]:
    from safetensors import safe_open

    with safe_open(str(FIXTURES / f"{name}.safetensors"), "pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    assert meta["commit"] == "53f63a672eab9ade02aabe6432706ef56f317d64"
    return tensors, {**meta, "settings": json.loads(meta["settings"])}


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float((a.to(torch.float64) - b.to(torch.float64)).abs().max())


# -- every DSA transform ---------------------------------------------------------------------------
def transform_cases():
    tensors, _ = load("dsa_transforms")
    for key in tensors:
        if key != "x":
            yield pytest.param(key, id=key)


@pytest.mark.parametrize("key", list(transform_cases()))
def test_dsa_transforms_match_the_codes_diffaugment(key):
    """Each transform family (and the full strategy, modes S and M) with the code's seeds: siamese
    (``seed=s``) and per example (``seed=-1`` after ``torch.manual_seed(s)``); align_corners True
    (the code's torch 1.2) and, for scale and rotate, False (the code on torch >= 1.3)."""
    tensors, _ = load("dsa_transforms")
    mode, family, aug_mode, seed, *rest = key.split(".")
    params = DSAParams(strategy=STRATEGY if family == "all" else family, single=aug_mode == "S",
                       align_corners=not rest)
    out = DSA(params).draw_from(int(seed), siamese=mode == "siamese")(tensors["x"])
    assert max_diff(out, tensors[key]) <= ATOL


def test_siamese_transform_fixture_covers_every_family():
    tensors, _ = load("dsa_transforms")
    assert {k.split(".")[1] for k in tensors if k != "x"} == {*FAMILIES, "all"}


# -- whole iterations of DC, DSA and DM ------------------------------------------------------------
def normalise(pixels: torch.Tensor, settings: dict) -> torch.Tensor:
    """The driver's real images: the code's ToTensor + Normalize, in float64 (same ops, same bits)."""
    assert "(pixels / 255 - 0.1307) / 0.3081" in settings["real_data"]
    return (pixels.to(torch.float64) / 255.0 - 0.1307) / 0.3081


class Replay:
    """:class:`harness_distillers.condense.Randomness` with the reference run's choices: the
    permutations its ``get_images`` drew (first n taken, as there), the inner-loop orders, the DSA
    seeds (siamese: one per class, recorded for the real and the synthetic call; per example: one
    per batch)."""

    def __init__(self, t: dict[str, torch.Tensor], settings: dict):
        self.x, self.labels = normalise(t["pixels"], settings), t["labels"]
        self.perms = list(torch.split(t["perms"], t["perm_lengths"].tolist()))
        self.orders = list(t["orders"]) if "orders" in t else []
        seeds = t.get("siamese_seeds", torch.zeros(0, dtype=torch.int64)).tolist()
        assert seeds[0::2] == seeds[1::2]  # real and synthetic batch: the same seed
        self.siamese, self.each = seeds[0::2], t.get("each_seeds", torch.zeros(0, dtype=torch.int64)).tolist()
        self.noise_init = t["syn_init"]

    def real(self, c: int, n: int) -> torch.Tensor:
        perm = self.perms.pop(0)
        assert bool((self.labels[perm] == c).all()), "replayed a permutation of another class"
        return self.x[perm[:n]]

    def noise(self, shape) -> torch.Tensor:
        assert tuple(shape) == tuple(self.noise_init.shape)
        return self.noise_init.clone()

    def order(self, n: int) -> torch.Tensor:
        order = self.orders.pop(0)
        assert len(order) == n
        return order

    def dsa_seed(self, siamese: bool) -> int:
        return (self.siamese if siamese else self.each).pop(0)

    def exhausted(self) -> bool:
        return not (self.perms or self.orders or self.siamese or self.each)


def fixture_task(cls, t: dict, settings: dict, iterations: int, nets: list):
    """A DistillTask whose make_model() returns the reference run's networks (the code's ConvNet at
    width 32, instance norm or batch norm: our convnet with that width and norm has the same
    parameters in the same order) in float64."""
    from harness import DistillTask
    from harness_vision.archs import build_convnet

    def make_model():
        it = len(nets)
        net = build_convnet((1, 28, 28), 10, width=settings.get("width", 32),
                            norm=settings.get("norm", "instancenorm")).double()
        params = list(net.parameters())
        assert len(params) == len([k for k in t if k.startswith(f"net_init.{it}.")])
        with torch.no_grad():
            for i, p in enumerate(params):
                p.copy_(t[f"net_init.{it}.{i}"])
        nets.append(net)
        return net

    overrides = dict(iterations=iterations, batch_real=settings["batch_real"])
    if cls is not DM:
        overrides.update(outer_loop=settings["outer_loop"], inner_loop=settings["inner_loop"])
    cfg = cls.Config(**overrides)
    logged: list[float] = []
    task = DistillTask(x=normalise(t["pixels"], settings), y=t["labels"], num_classes=10, ipc=settings["ipc"],
                       n=10 * settings["ipc"], make_model=make_model, config=cfg, device=torch.device("cpu"),
                       generator=torch.Generator().manual_seed(0))
    task._log = lambda step, **m: logged.append(m["loss"])
    return task, logged


def run_distill(monkeypatch, cls, name: str, iterations: int):
    """Our ``distill()`` itself, from the fixture's state, with the reference run's random choices."""
    import harness_distillers.dc as dc_module
    import harness_distillers.dm as dm_module

    t, meta = load(name)
    settings = meta["settings"]
    replay = Replay(t, settings)
    monkeypatch.setattr(dm_module if cls is DM else dc_module, "Randomness", lambda task: replay)
    nets: list = []
    task, logged = fixture_task(cls, t, settings, iterations, nets)
    out = cls().distill(task)
    return out, nets, logged, replay, t, settings


CASES = [pytest.param(DC, "dc", id="dc"), pytest.param(DCWithDSA, "dsa", id="dsa"), pytest.param(DM, "dm", id="dm")]
# the code's batch-norm branches (ConvNetBN, built 32 wide): DC freezes the running statistics on 16
# real images per class before each outer loop; DM embeds all classes in one batch
BN_CASES = [pytest.param(DC, "dc_bn", id="dc-batchnorm"), pytest.param(DM, "dm_bn", id="dm-batchnorm")]


@pytest.mark.parametrize("cls,name", CASES)
def test_defaults_are_the_reference_codes(cls, name):
    """The fixture recorded the code's parsed arguments (its defaults, except the tiny budget's
    --ipc 2 --batch_real 10 --Iteration and get_loops) and its ParamDiffAug: ours are the same."""
    _, meta = load(name)
    args, dsa_param, cfg = meta["settings"]["args"], meta["settings"]["dsa_param"], cls.Config()
    assert (cfg.lr_img, cfg.init, cfg.batch_real) == (args["lr_img"], args["init"], 256)
    assert cfg.momentum == 0.5  # hard-coded in both main.py and main_DM.py
    assert cfg.dsa == args["dsa"] and args["dis_metric"] == "ours"
    if cfg.dsa:
        assert cfg.dsa_strategy == args["dsa_strategy"] == STRATEGY
    params = DSAParams()
    assert dsa_param == {"aug_mode": "S" if params.single else "M", "prob_flip": params.prob_flip,
                         "ratio_scale": params.ratio_scale, "ratio_rotate": params.ratio_rotate,
                         "ratio_crop_pad": params.ratio_crop_pad, "ratio_cutout": params.ratio_cutout,
                         "brightness": params.brightness, "saturation": params.saturation,
                         "contrast": params.contrast}
    assert cfg.model_init == "default"  # get_network leaves PyTorch's init
    if cls is DM:
        assert cfg.iterations == 20000  # main_DM.py's --Iteration default (the fixture ran 3)
    else:
        assert (cfg.lr_net, cfg.batch_train) == (args["lr_net"], args["batch_train"])
        assert cfg.iterations == 1000  # main.py's --Iteration default (the fixture ran 3)


@pytest.mark.slow
@pytest.mark.parametrize("cls,name", CASES + BN_CASES)
def test_iterations_match_the_reference_code(monkeypatch, cls, name):
    """3 outer iterations from the reference's state: losses, synthetic images after iterations 1 and
    3, and (DC, DSA) the networks after their inner-loop training, all within 1e-5 in float64."""
    out1, _, logged1, replay1, t, s = run_distill(monkeypatch, cls, name, iterations=1)
    assert max_diff(out1.x, t["syn_after_1"]) <= ATOL
    out, nets, logged, replay, t, s = run_distill(monkeypatch, cls, name, iterations=s["iterations"])
    assert replay.exhausted(), "our iterations drew fewer random choices than the reference's"
    assert max_diff(torch.tensor(logged, dtype=torch.float64), t["loss"]) <= ATOL
    assert max_diff(out.x, t[f"syn_after_{s['iterations']}"]) <= ATOL
    assert out.x.dtype == torch.float64
    if cls is not DM:
        after, _ = load(f"{name}_nets")
        for it in (1, s["iterations"]):
            for i, p in enumerate(nets[it - 1].parameters()):
                assert max_diff(p.detach(), after[f"net_after_{it}.{i}"]) <= ATOL, (it, i)


def test_dm_real_init_takes_the_codes_first_images_of_each_class():
    """DM's init="real" is the code's get_images(c, ipc) per class: with the replayed permutations
    (the first C of the run), our ``initial_images`` gives the fixture's initial images exactly."""
    t, meta = load("dm")
    settings = meta["settings"]
    task, _ = fixture_task(DM, t, settings, 1, [])
    syn = initial_images(task, settings["ipc"], DM.Config().init, Replay(t, settings))
    assert syn.requires_grad and torch.equal(syn.detach(), t["syn_init"])
