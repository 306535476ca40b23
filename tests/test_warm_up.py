"""One-time costs of a process (torch's lazy imports when the first optimizer is built, matplotlib)
are paid before the first trial is timed: the first trial of a process is timed like the others."""

from __future__ import annotations

import subprocess
import sys

import torch

from harness import runner

FIRST_TRIAL_WORK = """
import sys, torch
from harness.runner import warm_up
warm_up(torch.device("cpu"))
before = set(sys.modules)
w = torch.zeros(3, requires_grad=True)
for make in (torch.optim.SGD, torch.optim.Adam):
    opt = make([w], lr=0.1, momentum=0.9) if make is torch.optim.SGD else make([w], lr=0.1)
    (w * 2).sum().backward()
    opt.step()
import matplotlib.pyplot
print(sorted(set(sys.modules) - before))
"""


def test_after_the_warm_up_what_a_trial_does_first_imports_nothing_more():
    """In a fresh process: the optimizers and figures every trial uses load nothing after warm_up
    (without it, the first SGD imports torch._dynamo: 1.2 s inside the first trial's distill time)."""
    proc = subprocess.run([sys.executable, "-c", FIRST_TRIAL_WORK], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]", proc.stdout


def test_a_trial_is_warmed_up_before_its_clocks_start(tiny_plugins, tmp_path, monkeypatch):
    from harness.data import DataCache
    from harness.grid import build_grid
    from harness.plan import bind

    calls = []
    monkeypatch.setattr(runner, "warm_up", lambda device: calls.append(("warm_up", str(device))))
    distill = runner._distill
    monkeypatch.setattr(runner, "_distill", lambda *args: (calls.append(("distill", "")), distill(*args))[1])
    grid = build_grid({"device": "cpu", "grid": [{"distiller": "random", "dataset": "tiny", "arch": "tiny-mlp",
                                                  "ipc": 1}], "eval": {"models": 1, "epochs": 1}}, tiny_plugins)
    ctx = runner.TrialContext(DataCache(tiny_plugins, tmp_path, torch.device("cpu")), torch.device("cpu"), None,
                              timeout=600)
    result = runner.run_trial(bind(grid.trials[0], tiny_plugins), ctx)
    assert result.passed, result.error
    assert calls == [("warm_up", "cpu"), ("distill", "")]


def test_a_warm_up_that_fails_never_fails_a_trial(monkeypatch):
    monkeypatch.setattr(runner, "_WARMED", set())
    monkeypatch.setattr(torch.optim, "SGD", None)  # building an optimizer raises TypeError
    runner.warm_up(torch.device("cpu"))  # no exception: the trial meets (and reports) whatever is wrong
    assert "cpu" in runner._WARMED
