"""harness.specs: spec validation, validate_distiller_class's static checks, DistilledSet checks and safetensors I/O."""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from harness import ArchitectureSpec, Capabilities, DatasetSpec, DistilledSet
from harness.errors import SpecError, TrialError
from harness.specs import capabilities_of, validate_distiller_class, describe


def _load(split, data_dir):  # never called: specs only store it
    raise AssertionError("not called")


def _build(input_shape, num_classes):
    raise AssertionError("not called")


# -- DatasetSpec ---------------------------------------------------------------------------------
def test_dataset_spec_valid_normalises():
    spec = DatasetSpec("my-data_1.v2", 3, [1, 4, 4], modality="text", load=_load, classes=["a", "b", 3])
    assert spec.input_shape == (1, 4, 4)
    assert spec.classes == ("a", "b", "3")
    assert spec.encoder is None and spec.description == ""


@pytest.mark.parametrize("name", ["Digits", "", "my data", "-x", ".x", "dïgits", "a/b", 3, None])
def test_dataset_spec_bad_name(name):
    with pytest.raises(SpecError, match=r"dataset name .* is invalid"):
        DatasetSpec(name, 10, (1, 8, 8), load=_load)


@pytest.mark.parametrize("num_classes", [1, 0, -3, 2.0, "10", None, True])
def test_dataset_spec_bad_num_classes(num_classes):
    with pytest.raises(SpecError, match=r"dataset 'd': num_classes must be an int >= 2"):
        DatasetSpec("d", num_classes, (1, 8, 8), load=_load)


@pytest.mark.parametrize("shape", [(), [], (0, 8, 8), (1, -8, 8), (1, 8.0, 8), "1x8x8", 64, None])
def test_dataset_spec_bad_input_shape(shape):
    with pytest.raises(SpecError, match=r"dataset 'd': input_shape must be a tuple of positive ints"):
        DatasetSpec("d", 10, shape, load=_load)


@pytest.mark.parametrize("modality", ["audio", "Image", "", None])
def test_dataset_spec_bad_modality(modality):
    with pytest.raises(SpecError, match=r"dataset 'd': modality must be one of \('image', 'text'\)"):
        DatasetSpec("d", 10, (1, 8, 8), modality=modality, load=_load)


@pytest.mark.parametrize("load", [None, "load_digits", 42])
def test_dataset_spec_load_must_be_callable(load):
    with pytest.raises(SpecError, match=r"dataset 'd': load must be a callable"):
        DatasetSpec("d", 10, (1, 8, 8), load=load)


def test_dataset_spec_encoder_must_be_callable():
    with pytest.raises(SpecError, match="encoder must be a callable"):
        DatasetSpec("d", 10, (1, 8, 8), load=_load, encoder="glove")


@pytest.mark.parametrize("classes", [["a", "b"], ["a", "b", "c", "d"], []])
def test_dataset_spec_classes_length(classes):
    with pytest.raises(SpecError, match=rf"dataset 'd': {len(classes)} class names given for 3 classes"):
        DatasetSpec("d", 3, (4,), load=_load, classes=classes)


def test_dataset_spec_is_frozen():
    spec = DatasetSpec("d", 3, (4,), load=_load)
    with pytest.raises(AttributeError):
        spec.num_classes = 5  # type: ignore[misc]


# -- ArchitectureSpec ----------------------------------------------------------------------------
def test_architecture_spec_valid_normalises():
    assert ArchitectureSpec("mlp", "image", _build).modalities == ("image",)
    assert ArchitectureSpec("mlp", ["image", "text"], _build).modalities == ("image", "text")


@pytest.mark.parametrize("modalities", [(), ("audio",), ("image", "video"), "Image"])
def test_architecture_spec_bad_modalities(modalities):
    with pytest.raises(SpecError, match=r"architecture 'a': modalities must be drawn from"):
        ArchitectureSpec("a", modalities, _build)


def test_architecture_spec_bad_name_and_build():
    with pytest.raises(SpecError, match=r"architecture name 'ConvNet' is invalid"):
        ArchitectureSpec("ConvNet", ("image",), _build)
    with pytest.raises(SpecError, match=r"architecture 'a': build must be a callable"):
        ArchitectureSpec("a", ("image",), None)


# -- validate_distiller_class -----------------------------------------------------------------------------
class Good:
    """A good distiller.

    More text."""

    name = "good"
    capabilities = Capabilities(learns_lr=True)

    @dataclass
    class Config:
        steps: int = 10  # steps
        lr: float = 0.01

    def distill(self, task):
        raise NotImplementedError


def test_validate_distiller_class_accepts_a_good_class():
    assert validate_distiller_class(Good) is Good
    assert capabilities_of(Good).learns_lr
    assert describe(Good) == "A good distiller."


def test_capabilities_default_to_all_false():
    class NoCaps:
        name = "nocaps"

        @dataclass
        class Config:
            pass

        def distill(self, task): ...

    validate_distiller_class(NoCaps)
    assert capabilities_of(NoCaps) == Capabilities()
    assert not any(vars(capabilities_of(NoCaps)).values())


def _variant(**attrs):
    """A copy of Good with some attributes replaced (None removes the attribute)."""
    body = {k: v for k, v in vars(Good).items() if not k.startswith("__")}
    body.update(attrs)
    body = {k: v for k, v in body.items() if v is not None}
    return type("Variant", (), body)


class _NotADataclass:
    steps = 10


@dataclass
class _NoDefault:
    steps: int  # missing the paper's default
    lr: float = 0.01


@pytest.mark.parametrize(
    "cls, message",
    [
        (_variant(Config=None), r"distiller 'good': needs a nested dataclass `Config`"),
        (_variant(Config=_NotADataclass), r"distiller 'good': needs a nested dataclass `Config`"),
        (_variant(Config=_NoDefault), r"distiller 'good': Config fields \['steps'\] need defaults"),
        (_variant(distill=None), r"distiller 'good': needs a method distill"),
        (_variant(distill="not callable"), r"distiller 'good': needs a method distill"),
        (_variant(capabilities={"learns_lr": True}), r"capabilities must be a harness.Capabilities"),
        (_variant(capabilities=Capabilities), r"capabilities must be a harness.Capabilities"),
        (_variant(name="Good Method"), r"distiller name 'Good Method' is invalid"),
        (_variant(name=None), r"distiller name None is invalid"),
        (Good(), r"distiller 'good': register the class, not an instance"),
    ],
    ids=["no-config", "config-not-dataclass", "field-without-default", "no-distill", "distill-not-callable",
         "caps-dict", "caps-class", "bad-name", "no-name", "instance"],
)
def test_validate_distiller_class_rejects(cls, message):
    with pytest.raises(SpecError, match=message):
        validate_distiller_class(cls)


def test_validate_distiller_class_accepts_default_factory():
    from dataclasses import field

    @dataclass
    class Config:
        sizes: list = field(default_factory=lambda: [1, 2])

    validate_distiller_class(_variant(Config=Config))


# -- DistilledSet.check --------------------------------------------------------------------------
def _set(n=6, shape=(1, 4, 4), classes=3, **kw):
    x = torch.randn(n, *shape)
    y = torch.nn.functional.one_hot(torch.arange(n) % classes, classes).float()
    return DistilledSet(x, y, **kw)


def test_check_accepts_a_good_set():
    s = _set(lrs=torch.full((3,), 0.02))
    s.check((1, 4, 4), 3)
    assert s.n == 6


@pytest.mark.parametrize(
    "dset, message",
    [
        (DistilledSet(torch.zeros(6, 1, 4, 5), torch.zeros(6, 3)), r"distilled x has shape \(6, 1, 4, 5\)"),
        (DistilledSet(torch.zeros(6, 16), torch.zeros(6, 3)), r"distilled x has shape \(6, 16\)"),
        (DistilledSet(torch.zeros(6, 1, 4, 4), torch.zeros(6)), r"distilled y has shape \(6,\), expected \[6, 3\]"),
        (DistilledSet(torch.zeros(6, 1, 4, 4), torch.zeros(6, 4)), r"distilled y has shape \(6, 4\), expected \[6, 3\]"),
        (DistilledSet(torch.zeros(6, 1, 4, 4), torch.zeros(5, 3)), r"distilled y has shape \(5, 3\)"),
    ],
)
def test_check_shape_errors(dset, message):
    with pytest.raises(TrialError, match=message):
        dset.check((1, 4, 4), 3)


@pytest.mark.parametrize("which", ["x", "y", "lrs"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_check_non_finite(which, bad):
    s = _set(lrs=torch.full((3,), 0.02))
    getattr(s, which).view(-1)[1] = bad
    with pytest.raises(TrialError, match=rf"distilled {which} contains NaN or inf"):
        s.check((1, 4, 4), 3)


# -- save / load (safetensors, no pickle) --------------------------------------------------------
def _full_set():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    x = torch.randn(6, 1, 4, 4, requires_grad=True) * 2  # has autograd history: save detaches
    y = torch.softmax(torch.randn(6, 3), 1)
    lrs = torch.tensor([0.02, 0.01, 0.005])
    meta = {"method": "sldd", "steps": 10, "nested": {"a": [1, 2]}, "path": Path("/tmp/x")}
    return DistilledSet(x, y, lrs=lrs, meta=meta, init_state=model.state_dict())


def test_save_load_round_trip(tmp_path):
    s = _full_set()
    path = s.save(tmp_path / "set.safetensors")
    assert path == tmp_path / "set.safetensors" and path.is_file()
    back = DistilledSet.load(path)
    assert torch.equal(back.x, s.x.detach()) and torch.equal(back.y, s.y)
    assert not back.x.requires_grad
    assert torch.equal(back.lrs, s.lrs)
    assert back.init_state is not None and set(back.init_state) == {"1.weight", "1.bias"}
    for k, v in s.init_state.items():
        assert torch.equal(back.init_state[k], v)
    # meta is JSON: non-JSON values are stored as strings
    assert back.meta == {"method": "sldd", "steps": 10, "nested": {"a": [1, 2]}, "path": "/tmp/x"}
    back.check((1, 4, 4), 3)


def test_save_load_minimal_set(tmp_path):
    s = DistilledSet(torch.randn(3, 4), torch.eye(3))
    back = DistilledSet.load(s.save(tmp_path / "min.safetensors"))
    assert torch.equal(back.x, s.x) and torch.equal(back.y, s.y)
    assert back.lrs is None and back.init_state is None and back.meta == {}


def test_saved_file_is_real_safetensors_not_pickle(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file

    s = _full_set()
    path = s.save(tmp_path / "set.safetensors")
    raw = path.read_bytes()
    # safetensors layout: u64 little-endian header size, then a JSON header
    (header_len,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + header_len])
    assert header["x"]["shape"] == [6, 1, 4, 4] and header["x"]["dtype"] == "F32"
    assert json.loads(header["__metadata__"]["meta"])["method"] == "sldd"
    # not a pickle (protocol 2+ starts with 0x80) nor a torch.save zip archive
    assert raw[:1] != b"\x80" and not raw.startswith(b"PK")
    tensors = load_file(str(path))
    assert set(tensors) == {"x", "y", "lrs", "init.1.weight", "init.1.bias"}
    assert torch.equal(tensors["y"], s.y)
    with safe_open(str(path), framework="pt") as f:
        assert json.loads(f.metadata()["meta"])["steps"] == 10


def test_detached_copies_to_float_cpu():
    s = DistilledSet(torch.randn(2, 3, dtype=torch.float64, requires_grad=True), torch.eye(2, dtype=torch.float64))
    d = s.detached()
    assert d.x.dtype == torch.float32 and d.y.dtype == torch.float32 and not d.x.requires_grad
    d.meta["k"] = 1
    assert "k" not in s.meta  # meta copied, not shared
