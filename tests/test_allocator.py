"""harness.allocator: trial processes keep freed C-heap blocks (speed), never changing a result."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# a short LD distillation and a ConvNet trained on its set: bytes of the labels and weights
TRIAL = """
import hashlib, sys, torch
torch.set_num_threads(1)
from harness.allocator import keep_freed_memory
kept = keep_freed_memory()
from harness.evaluate import train_model
from harness.specs import DistillTask
from harness.trial import Recipe
from harness_distillers.ld import LD
from harness_vision.archs import build_convnet, build_lenet
g = torch.Generator().manual_seed(0)
x, y = torch.randn(400, 1, 28, 28, generator=g), torch.arange(400) % 10
seeds = iter(range(100))
def make_model():
    torch.manual_seed(next(seeds))
    return build_lenet((1, 28, 28), 10)
task = DistillTask(x=x, y=y, num_classes=10, ipc=2, n=20, make_model=make_model, device=torch.device("cpu"),
                   config=LD.Config(outer_steps=3, select_best=False, target_batch=256), generator=g)
dset = LD().distill(task)
torch.manual_seed(1)
model = build_convnet((1, 28, 28), 10, width=16)
train_model(model, dset, Recipe(arch="convnet", epochs=2, batch_size=8), torch.Generator().manual_seed(0),
            torch.device("cpu"))
digest = hashlib.sha256(dset.y.detach().numpy().tobytes())
for p in model.parameters():
    digest.update(p.detach().numpy().tobytes())
print(kept, digest.hexdigest())
"""


def start(env_value: str | None) -> subprocess.Popen:
    import os

    env = {k: v for k, v in os.environ.items() if k != "HARNESS_MALLOC"}
    if env_value is not None:
        env["HARNESS_MALLOC"] = env_value
    return subprocess.Popen([sys.executable, "-c", TRIAL], env=env, stdout=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen) -> tuple[str, str]:
    out, _ = proc.communicate()
    assert proc.returncode == 0
    kept, digest = out.split()
    return kept, digest


@pytest.mark.slow
@pytest.mark.skipif(not GLIBC, reason="the setting is glibc's (mallopt); elsewhere the allocator is left alone")
def test_freed_blocks_are_kept_unless_switched_off_and_results_are_bit_identical():
    both = start(None), start("default")  # at once: each is a fresh process
    (kept, digest), (default, same) = map(finish, both)
    assert (kept, default) == ("True", "False")
    assert digest == same  # same arithmetic on the same values: the bytes of labels and weights agree


def test_a_trial_records_the_setting(tiny_plugins, tmp_path):
    import torch

    from harness.allocator import keep_freed_memory
    from harness.data import DataCache
    from harness.grid import build_grid
    from harness.plan import bind
    from harness.runner import TrialContext, run_trial

    grid = build_grid({"device": "cpu", "grid": [{"distiller": "random", "dataset": "tiny", "arch": "tiny-mlp",
                                                  "ipc": 1}], "eval": {"models": 1, "epochs": 1}}, tiny_plugins)
    ctx = TrialContext(DataCache(tiny_plugins, tmp_path, torch.device("cpu")), torch.device("cpu"), None)
    result = run_trial(bind(grid.trials[0], tiny_plugins), ctx)
    assert result.passed, result.error
    assert result.tags.get("malloc") == ("freed blocks kept" if keep_freed_memory() else None)


@pytest.mark.skipif(not GLIBC, reason="the setting is glibc's (mallopt, malloc_trim); elsewhere nothing is kept")
def test_what_a_trial_freed_is_kept_until_released():
    import torch

    from harness.allocator import keep_freed_memory, release_freed_memory
    from harness.measure import current_rss_bytes

    if not keep_freed_memory():
        pytest.skip("HARNESS_MALLOC=default is set for this run")
    release_freed_memory()
    before = current_rss_bytes()
    block = torch.ones(64 << 20, dtype=torch.uint8)  # 64 MiB: glibc's default would mmap it, and unmap it on free
    del block
    kept = current_rss_bytes()
    release_freed_memory()
    released = current_rss_bytes()
    assert kept - before > 48 << 20, (before, kept)  # still resident: the next step reuses it
    assert kept - released > 48 << 20, (kept, released)  # given back before the next trial
