"""harness-text architectures (textcnn, bilstm, rnn): registered, documented parameter counts, the
nn.Sequential-ending-in-nn.Linear contract, second-order gradients through functional_call; and a tiny
text grid end to end (rotten-tomatoes, real data) through run_bench with the decode artifact."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from harness_text import archs

TINY = {"textcnn": {"filters": 4}, "bilstm": {"hidden": 6}, "rnn": {"hidden": 6}}


@pytest.fixture(scope="module")
def text_archs():
    from harness.plugins import load_plugins

    plugins = load_plugins()
    return {name: spec for name, spec, source in plugins.architectures.items() if source == "harness-text"}


def documented_counts() -> dict[str, list[int]]:
    """The parameter-count table of the archs module docstring: name -> [D=50, D=300] counts (2 classes)."""
    lines = archs.__doc__.split("Trainable parameters")[1].splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:1] == ["arch"])
    table = {}
    for line in lines[start + 1:]:
        if not line.strip():
            break
        name, *cells = line.split()
        table[name] = [int(c.replace(",", "")) for c in cells]
    return table


def test_registered_text_archs(text_archs):
    assert set(text_archs) == {"textcnn", "bilstm", "rnn"}
    assert all(spec.modalities == ("text",) for spec in text_archs.values())


@pytest.mark.parametrize("name", ["textcnn", "bilstm", "rnn"])
def test_parameter_counts_as_documented(name, text_archs):
    counts = [sum(p.numel() for p in text_archs[name].build((50, dim), 2).parameters()) for dim in (50, 300)]
    assert counts == documented_counts()[name]
    assert sum(p.numel() for p in text_archs[name].build((7, 50), 2).parameters()) == counts[0]  # independent of L


@pytest.mark.parametrize("name", ["textcnn", "bilstm", "rnn"])
def test_sequential_ending_in_the_linear_classifier(name, text_archs):
    model = text_archs[name].build((50, 50), 5)
    assert isinstance(model, nn.Sequential) and isinstance(model[-1], nn.Linear) and model[-1].out_features == 5
    x = torch.randn(3, 50, 50)
    model.eval()
    assert model(x).shape == (3, 5)
    assert model[:-1](x).shape == (3, model[-1].in_features)  # ld-rr's feature extractor


def test_textcnn_is_kims(text_archs):
    model = text_archs["textcnn"].build((50, 50), 2)
    assert [c.kernel_size[0] for c in model[0].convs] == [3, 4, 5] and {c.out_channels for c in model[0].convs} == {100}
    assert isinstance(model[1], nn.Dropout) and model[1].p == 0.5 and model[-1].in_features == 300
    lstm = text_archs["bilstm"].build((50, 50), 2)[0].rnn
    gru = text_archs["rnn"].build((50, 50), 2)[0].rnn
    assert isinstance(lstm, nn.LSTM) and lstm.bidirectional and lstm.hidden_size == 128
    assert isinstance(gru, nn.GRU) and not gru.bidirectional and gru.hidden_size == 128


@pytest.mark.parametrize("shape, message", [((1, 28, 28), "takes text inputs"), ((4, 50), "at least 5")])
def test_rejects_inputs_it_cannot_take(shape, message):
    with pytest.raises(ValueError, match=message):
        archs.build_textcnn(shape, 2)
    with pytest.raises(ValueError, match="takes text inputs"):
        archs.build_bilstm((3, 8, 8), 2)


@pytest.mark.parametrize("name", ["textcnn", "bilstm", "rnn"])
def test_second_order_gradients_through_functional_call(name):
    """One unrolled SGD step with create_graph, then a loss of the updated model: its gradient with
    respect to the synthetic inputs (double backward, as in SLDD/DD) is finite and nonzero."""
    torch.manual_seed(0)
    build = getattr(archs, f"build_{name}")
    model = build((12, 50), 3, **TINY[name])
    params = {k: v.detach().clone().requires_grad_() for k, v in model.named_parameters()}
    syn = torch.randn(4, 12, 50, requires_grad=True)
    loss = F.cross_entropy(functional_call(model, params, (syn,)), torch.tensor([0, 1, 2, 0]))
    grads = torch.autograd.grad(loss, list(params.values()), create_graph=True)
    updated = {k: p - 0.1 * g for (k, p), g in zip(params.items(), grads)}
    model.eval()  # no dropout noise in the outer loss
    outer = F.cross_entropy(functional_call(model, updated, (torch.randn(8, 12, 50),)), torch.arange(8) % 3)
    (g_syn,) = torch.autograd.grad(outer, [syn])
    assert torch.isfinite(g_syn).all() and g_syn.abs().sum() > 0


def test_rnn_reads_the_last_state_after_left_padding():
    """The GRU's features are its final hidden state: prepending PAD (zero) positions changes them
    only through the recurrence, and the output equals nn.GRU's last step."""
    model = archs.build_rnn((5, 50), 2, hidden=6)
    x = torch.randn(2, 5, 50)
    out, h = model[0].rnn(x)
    assert torch.allclose(model[0](x), out[:, -1]) and torch.allclose(model[0](x), h[-1])


# -- end to end ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_text_grid_end_to_end(tmp_path, tracking_uri):
    from harness.bench import run_bench
    from harness.grid import build_grid
    from harness.plugins import load_plugins
    from harness.tracking import Tracker

    doc = {
        "name": "text-tiny", "device": "cpu",
        "grid": [{"distiller": ["random", "full", "sldd", "dd", "ld", "ld-rr", "dm"],
                  "dataset": ["rotten-tomatoes"], "arch": ["textcnn"], "ipc": [2]}],
        "eval": {"models": 1, "epochs": 1, "test_size": 200},
        "distillers": {"sldd": {"outer_steps": 2, "steps": 1, "epochs": 1, "batch_size": 64},
                       "dd": {"outer_steps": 2, "steps": 1, "epochs": 1, "batch_size": 64},
                       "ld": {"outer_steps": 2, "target_batch": 64},
                       "ld-rr": {"outer_steps": 2, "target_batch": 64},
                       "dm": {"iterations": 1, "batch_real": 16, "dsa": False}},  # DSA is for images
    }
    plugins = load_plugins()
    grid = build_grid(doc, plugins, source="text-tiny.toml")
    outcome = run_bench(grid, plugins, tracking_uri=tracking_uri, data_dir=tmp_path)
    assert (outcome.passed, outcome.failed) == (7, 0), outcome  # every distiller runs on text (DM without DSA)
    tracker = Tracker(tracking_uri)
    runs = tracker.trial_runs(tracker.experiment_id("text-tiny", create=False))
    by_distiller = {r.data.params["distiller"]: r for r in runs}
    assert set(by_distiller) == {"random", "full", "sldd", "dd", "ld", "ld-rr", "dm"}
    for r in runs:
        assert 0.0 <= r.data.metrics["acc_mean"] <= 100.0
    sldd = by_distiller["sldd"].info.run_id
    assert "examples.txt" in [a.path for a in tracker.client.list_artifacts(sldd)]
    (tmp_path / "dl").mkdir()
    path = tracker.client.download_artifacts(sldd, "examples.txt", str(tmp_path / "dl"))
    text = open(path, encoding="utf-8").read().splitlines()
    print("\n".join(text))
    assert len(text) == 4 and text[0].startswith("[0] (rotten")  # 2 per class, labelled, decoded into words
    assert len(text[0].split(") ", 1)[1].split()) > 3
