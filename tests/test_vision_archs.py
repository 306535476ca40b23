"""harness-vision architectures: every registered arch builds, matches its documented parameter count,
has the right norm layers, rejects inputs it cannot take, and trains through functional_call and SGD."""

from __future__ import annotations

import inspect
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from harness_vision import archs

SHAPES = [(1, 28, 28), (3, 32, 32)]
TABLE_SHAPES = [(1, 8, 8), (1, 28, 28), (3, 32, 32)]
NORM = {  # expected normalisation layers per registered arch
    "mlp": "none", "lenet": "none", "alexnet": "none", "convnet-nn": "none",
    "convnet": "instance", "convnet-d1": "instance", "convnet-d2": "instance", "convnet-d4": "instance",
    "resnet18": "instance", "vgg11": "instance",
    "convnet-bn": "bn", "resnet18-bn": "bn", "vgg11-bn": "bn",
}


def documented_counts() -> dict[str, list[int | None]]:
    """The parameter-count table of the archs module docstring: name -> counts on TABLE_SHAPES."""
    lines = archs.__doc__.split("Parameter counts")[1].splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:1] == ["arch"])
    table = {}
    for line in lines[start + 1:]:
        if not line.strip():
            break
        name, *cells = line.split()
        table[name] = [None if c == "-" else int(c.replace(",", "")) for c in cells]
    return table


@pytest.fixture(scope="module")
def vision_archs():
    """name -> ArchitectureSpec for every architecture the harness-vision plugin registers."""
    from harness.plugins import load_plugins

    plugins = load_plugins()
    return {name: spec for name, spec, source in plugins.architectures.items() if source == "harness-vision"}


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def tiny(spec, shape, num_classes=10):
    """The arch at width 8 (and small fc layers for alexnet) where the builder takes a width."""
    params = inspect.signature(spec.build).parameters
    kwargs = {"width": 8} if "width" in params else {}
    if "hidden" in params:
        kwargs["hidden"] = (16, 8)
    return spec.build(shape, num_classes, **kwargs)


def test_plugin_registers_every_documented_arch(vision_archs):
    assert set(vision_archs) == set(documented_counts()) == set(NORM)
    for name, spec in vision_archs.items():
        assert "image" in spec.modalities and spec.description


@pytest.mark.parametrize("shape", TABLE_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_documented_parameter_counts_and_output_shapes(vision_archs, shape):
    """Full-size builds for 10 and 100 classes: the docstring's counts (10 classes), [B, classes] out."""
    col = TABLE_SHAPES.index(shape)
    for name, counts in documented_counts().items():
        build = vision_archs[name].build
        if counts[col] is None:
            with pytest.raises(ValueError):
                build(shape, 10)
            continue
        for num_classes in (10, 100):
            model = build(shape, num_classes).eval()
            if num_classes == 10:
                assert n_params(model) == counts[col], name
            with torch.no_grad():
                assert model(torch.zeros(2, *shape)).shape == (2, num_classes), name


def test_readme_architecture_table_matches_the_docstring():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    for name, counts in documented_counts().items():
        cells = ["-" if c is None else f"{c:,}" for c in counts]
        assert f"| `{name}` |" in readme and " | ".join(cells) in readme, name


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_tiny_variants_take_both_image_sizes(vision_archs, shape):
    for name, spec in vision_archs.items():
        for num_classes in (10, 100):
            out = tiny(spec, shape, num_classes).eval()(torch.randn(2, *shape))
            assert out.shape == (2, num_classes), name


def test_norm_layers_per_variant(vision_archs):
    for name, spec in vision_archs.items():
        mods = list(tiny(spec, (3, 32, 32)).modules())
        groupnorms = [m for m in mods if isinstance(m, nn.GroupNorm)]
        batchnorms = [m for m in mods if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        others = [m for m in mods if isinstance(m, (nn.LayerNorm, nn.InstanceNorm2d))]
        assert not others, name
        if NORM[name] == "instance":
            assert groupnorms and not batchnorms, name
            assert all(m.num_groups == m.num_channels and m.affine for m in groupnorms), name
        elif NORM[name] == "bn":
            assert batchnorms and not groupnorms, name
            assert all(isinstance(m, nn.BatchNorm2d) for m in batchnorms), name
        else:
            assert not groupnorms and not batchnorms, name


def test_resnet18_and_vgg11_structure():
    resnet = archs.build_resnet18((3, 32, 32), 10)
    convs = [m for m in resnet.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 1 + 16 + 3  # stem, 8 blocks x 2, 3 projection shortcuts
    assert convs[0].stride == (1, 1) and convs[0].kernel_size == (3, 3)
    assert not any(isinstance(m, nn.MaxPool2d) for m in resnet.modules())
    assert resnet.classifier.in_features == 512
    vgg = archs.build_vgg11((1, 28, 28), 10)
    convs = [m for m in vgg if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 128, 256, 256, 512, 512, 512, 512]
    assert convs[0].padding == (3, 3) and all(c.padding == (1, 1) for c in convs[1:])
    assert archs.build_vgg11((3, 32, 32), 10)[0].padding == (1, 1)
    alex = archs.build_alexnet((3, 32, 32), 10)
    assert [m.in_features for m in alex if isinstance(m, nn.Linear)] == [4096, 384, 192]
    assert sum(isinstance(m, nn.LocalResponseNorm) for m in alex) == 2
    assert [m.in_features for m in archs.build_alexnet((1, 28, 28), 10) if isinstance(m, nn.Linear)][0] == 64 * 7 * 7


@pytest.mark.parametrize("name,convs", [("convnet-d1", 1), ("convnet-d2", 2), ("convnet", 3), ("convnet-d4", 4),
                                        ("convnet-nn", 3), ("convnet-bn", 3)])
def test_convnet_variants_depth(vision_archs, name, convs):
    model = tiny(vision_archs[name], (3, 32, 32))
    assert sum(isinstance(m, nn.Conv2d) for m in model.modules()) == convs
    assert sum(isinstance(m, nn.AvgPool2d) for m in model.modules()) == convs


@pytest.mark.parametrize("name,shape,message", [
    ("vgg11", (1, 8, 8), "vgg11 takes 28x28 or 32x32 inputs, not 8x8"),
    ("vgg11-bn", (3, 64, 64), "vgg11 takes 28x28 or 32x32 inputs, not 64x64"),
    ("resnet18", (1, 4, 4), "resnet18 takes inputs of at least 8x8 px, not 4x4"),
    ("alexnet", (3, 6, 6), "alexnet takes inputs of at least 8x8 px, not 6x6"),
    ("resnet18-bn", (16, 50), r"resnet18 takes image inputs \(C, H, W\), not shape \(16, 50\)"),
    ("lenet", (1, 8, 8), "lenet takes 28x28 or 32x32 inputs, not 8x8"),
])
def test_unsupported_inputs_raise_a_clear_value_error(vision_archs, name, shape, message):
    with pytest.raises(ValueError, match=f"^{message}$"):
        vision_archs[name].build(shape, 10)


def test_bench_turns_an_unsupported_input_into_a_config_error(vision_archs):
    from harness.plan import check_architectures
    from harness.errors import ConfigError
    from harness.plugins import load_plugins

    trial = SimpleNamespace(arch="vgg11", dataset="digits", recipes=[])
    with pytest.raises(ConfigError, match="vgg11 takes 28x28 or 32x32 inputs, not 8x8"):
        check_architectures([trial], load_plugins())


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_functional_call_unrolled_step_gives_finite_gradients(vision_archs, shape):
    """As the distillers use them: one differentiable inner SGD step through functional_call, then a
    loss on real data; every parameter gets a finite gradient and the synthetic inputs a meta-gradient."""
    for name, spec in vision_archs.items():
        torch.manual_seed(0)
        model = tiny(spec, shape).train()
        params = dict(model.named_parameters())
        buffers = dict(model.named_buffers())
        xs = torch.randn(2, *shape, requires_grad=True)
        inner = F.cross_entropy(functional_call(model, (params, buffers), (xs,)), torch.tensor([0, 1]))
        grads = torch.autograd.grad(inner, list(params.values()), create_graph=True)
        assert all(g is not None and torch.isfinite(g).all() for g in grads), name
        fast = {k: p - 0.01 * g for (k, p), g in zip(params.items(), grads)}
        outer = F.cross_entropy(functional_call(model, (fast, buffers), (torch.randn(2, *shape),)),
                                torch.tensor([1, 0]))
        (gx,) = torch.autograd.grad(outer, [xs])
        assert torch.isfinite(gx).all() and gx.abs().sum() > 0, name


def test_plain_sgd_training_then_eval(vision_archs):
    for name, spec in vision_archs.items():
        torch.manual_seed(0)
        model = tiny(spec, (3, 32, 32)).train()
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
        for _ in range(2):
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
        assert all(torch.isfinite(p).all() for p in model.parameters()), name
        with torch.no_grad():
            assert torch.isfinite(model.eval()(x[:1])).all(), name


def test_plugin_module_does_not_import_torch():
    code = "import sys, harness_vision.plugin; sys.exit(3 if 'torch' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0


@pytest.mark.parametrize("shape", [(256, 128, 32, 32), (4, 64, 64, 64), (128, 64, 16, 16)])
def test_convnet_pooling_is_the_kernels_average_pool_bit_for_bit(shape):
    """AvgPool2x2 (ConvNet's pooling) takes its strided-view path on these maps and gives exactly
    F.avg_pool2d's values, gradients and second-order gradients."""
    from harness_vision.pooling import MIN_VALUES, _AvgPool2x2, avg_pool_2x2

    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0), requires_grad=True)
    assert x.numel() >= MIN_VALUES
    ours, kernel = avg_pool_2x2(x), F.avg_pool2d(x, 2)
    assert ours.grad_fn.name().startswith(_AvgPool2x2.__name__) and torch.equal(ours, kernel)
    g = torch.randn_like(kernel)
    assert torch.equal(torch.autograd.grad(ours, x, g)[0], torch.autograd.grad(kernel, x, g)[0])
    w = torch.randn(shape[1], 1, 1, requires_grad=True)  # second order, as gradient matching takes it

    def second(pool):
        (gx,) = torch.autograd.grad(pool(x * w).pow(2).sum(), x, create_graph=True)
        return torch.autograd.grad(gx.pow(2).sum(), w)[0]

    assert torch.equal(second(avg_pool_2x2), second(lambda t: F.avg_pool2d(t, 2)))


def test_convnet_pooling_under_vmap_and_its_fallbacks():
    from torch.func import grad, vmap

    from harness_vision.pooling import AvgPool2x2, _AvgPool2x2, avg_pool_2x2

    xs = torch.randn(3, 64, 16, 32, 32)  # 3 stacked batches, each past the strided-view threshold
    assert torch.equal(vmap(avg_pool_2x2)(xs), vmap(lambda t: F.avg_pool2d(t, 2))(xs))
    assert torch.equal(vmap(grad(lambda t: avg_pool_2x2(t).pow(2).sum()))(xs),
                       vmap(grad(lambda t: F.avg_pool2d(t, 2).pow(2).sum()))(xs))
    for small_or_odd in (torch.randn(2, 3, 8, 8), torch.randn(64, 128, 33, 33)):  # PyTorch's kernel
        pooled = avg_pool_2x2(small_or_odd.requires_grad_())
        assert pooled.grad_fn.name() == "AvgPool2DBackward0" and torch.equal(pooled, F.avg_pool2d(small_or_odd, 2))
    x64 = torch.randn(2, 3, 8, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(_AvgPool2x2.apply, (x64,))
    pool = AvgPool2x2()
    assert isinstance(pool, nn.AvgPool2d) and (pool.kernel_size, pool.stride) == (2, 2) and not pool.state_dict()
