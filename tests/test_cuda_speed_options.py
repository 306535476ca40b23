"""The CUDA speed options (grid keys ``autocast`` and ``compile``): parsed, keyed only when on,
refused before compute on a CPU run, and wired into distillation and evaluation. The CUDA runs
themselves cannot happen here (no GPU): the wiring is checked on CPU, where torch's autocast
exists too, by calling past the grid's CUDA-only check."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from torch import nn

from harness.errors import ConfigError
from harness.evaluate import evaluate
from harness.grid import build_grid
from harness.specs import DistilledSet
from harness.trial import Recipe

DOC = {"name": "speed", "device": "cpu",
       "grid": [{"distiller": "random", "dataset": "tiny", "arch": "tiny-mlp", "ipc": 1}],
       "eval": {"models": 2, "epochs": 2}}


def trial_of(plugins, **top):
    return build_grid({**copy.deepcopy(DOC), **top}, plugins).trials[0]


def test_keyed_and_recorded_only_when_on(tiny_plugins):
    plain = trial_of(tiny_plugins)
    assert trial_of(tiny_plugins, autocast="none", compile=False).key == plain.key  # old runs keep their keys
    bf16, compiled = trial_of(tiny_plugins, autocast="bf16"), trial_of(tiny_plugins, compile=True)
    assert len({plain.key, bf16.key, compiled.key}) == 3
    assert "autocast" not in plain.params()
    assert (bf16.params()["autocast"], bf16.params()["compile"]) == ("bf16", False)


@pytest.mark.parametrize("top,message", [
    ({"autocast": "bf61"}, r"^grid: autocast: .*'bf61'.*did you mean 'bf16'"),
    ({"compile": "yes"}, r"^grid: compile: expected "),
])
def test_bad_values_are_one_line(tiny_plugins, top, message):
    with pytest.raises(ConfigError, match=message):
        trial_of(tiny_plugins, **top)


def test_a_cpu_run_refuses_them_before_compute(tiny_plugins, tmp_path):
    from harness.plan import prepare

    grid = build_grid({**copy.deepcopy(DOC), "autocast": "bf16", "compile": True}, tiny_plugins)
    with pytest.raises(ConfigError, match=r"^autocast and compile speed up CUDA runs; this grid runs on cpu"):
        prepare(grid, tiny_plugins, tmp_path, "cpu")


class DtypeProbe(nn.Module):
    """Records the dtype its input arrives in (bf16 after a Linear under autocast)."""

    def __init__(self):
        super().__init__()
        self.seen: set = set()

    def forward(self, x):
        self.seen.add(x.dtype)
        return x.float()


def test_evaluation_trains_and_tests_under_autocast():
    probes = []

    def build():
        probes.append(DtypeProbe())
        return nn.Sequential(nn.Flatten(), nn.Linear(16, 3), probes[-1])

    g = torch.Generator().manual_seed(0)
    dset = DistilledSet(torch.randn(6, 1, 4, 4, generator=g), torch.eye(3).repeat(2, 1))
    test = (torch.randn(5, 1, 4, 4, generator=g), torch.arange(5) % 3)
    ev = evaluate(dset, Recipe(arch="t", epochs=2, models=2), build, test, 0, torch.device("cpu"), autocast="bf16")
    assert len(ev.accs) == 2 and all(p.seen == {torch.bfloat16} for p in probes)
    plain = evaluate(dset, Recipe(arch="t", epochs=2, models=2), build, test, 0, torch.device("cpu"))
    assert len(plain.accs) == 2 and probes[-1].seen == {torch.float32}


def test_compile_wraps_each_evaluation_model(monkeypatch):
    from harness.testing import _build_tiny

    compiled = []
    monkeypatch.setattr(torch, "compile", lambda model: compiled.append(model) or model)
    dset = DistilledSet(torch.randn(6, 1, 4, 4), torch.eye(3).repeat(2, 1))
    test = (torch.randn(5, 1, 4, 4), torch.arange(5) % 3)
    ev = evaluate(dset, Recipe(arch="t", epochs=1, models=3), lambda: _build_tiny((1, 4, 4), 3), test, 0,
                  torch.device("cpu"), mode="vectorised", compile=True)
    assert len(compiled) == 3 and ev.mode == "sequential: compile"


def test_distillation_runs_under_the_trials_autocast(tiny_plugins, tmp_path, monkeypatch):
    import harness.runner as runner
    from harness.plan import prepare

    plan = prepare(build_grid(copy.deepcopy(DOC), tiny_plugins), tiny_plugins, tmp_path, "cpu")
    bound = plan.trials[0]
    bound = dataclasses.replace(bound, trial=dataclasses.replace(bound.trial, autocast="bf16",
                                                                 settings=bound.trial.settings))
    seen = []
    distill = bound.distiller.distill

    def recording(self, task):
        seen.append(torch.is_autocast_enabled("cpu"))
        return distill(self, task)

    monkeypatch.setattr(bound.distiller, "distill", recording)
    result = runner.run_trial(bound, runner.TrialContext(plan.data, plan.device))
    assert result.passed, result.error
    assert seen == [True]


def test_the_report_keeps_and_labels_their_rows(tracking_uri):
    from harness.report import leaderboard, runs_frame
    from harness.tracking import Tracker

    tracker = Tracker(tracking_uri)
    exp = tracker.experiment_id("speed")
    for key, speed in (("k1", {}), ("k2", {"autocast": "bf16", "compile": "True"})):
        run = tracker.client.create_run(exp, tags={"run_kind": "trial", "grid_key": key, "trial_key": key})
        rid = run.info.run_id
        for k, v in {"distiller": "dm", "dataset": "d", "base_dataset": "d", "arch": "a", "budget": "ipc=1",
                     "seed": 0, "eval.recipes": "a/sgd", "eval.epochs": 300, "eval.models": 5, **speed}.items():
            tracker.client.log_param(rid, k, v)
        tracker.client.log_metric(rid, "acc_mean/a/sgd", 0.5)
        tracker.client.set_terminated(rid, "FINISHED")
    board = leaderboard(runs_frame(tracker, "speed"))
    assert len(board) == 2 and sorted(board["protocol"]) == ["300 ep x 5, init default",
                                                              "300 ep x 5, init default, bf16 compiled"]


def test_k_models_batched_layer_by_layer_stay_batched_under_autocast():
    """The batched forward is checked against each model's own in the precision training runs in:
    bf16 rounds the two differently, and that alone must not send the models back to sequential."""
    from harness_vision.archs import build_convnet, build_mlp

    g = torch.Generator().manual_seed(0)
    dset = DistilledSet(torch.randn(6, 1, 8, 8, generator=g), torch.eye(3).repeat(2, 1))
    test = (torch.randn(5, 1, 8, 8, generator=g), torch.arange(5) % 3)
    for build in (lambda: build_mlp((1, 8, 8), 3, width=8), lambda: build_convnet((1, 8, 8), 3, width=4, depth=2)):
        ev = evaluate(dset, Recipe(arch="t", epochs=2, models=3), build, test, 0, torch.device("cpu"),
                      mode="vectorised", autocast="bf16")
        assert ev.mode == "vectorised" and len(ev.accs) == 3
