"""A plugin used by the tests: the tiny dataset/arch of harness.testing and deliberately faulty distillers."""

from __future__ import annotations

import os
from dataclasses import dataclass

import harness
from harness import Capabilities, DistilledSet, hookimpl
from harness.testing import tiny_arch, tiny_dataset


class Crashes:
    """Raises inside distill (to test that a failing trial does not stop the grid)."""

    name = "crashes"

    @dataclass
    class Config:
        pass

    def distill(self, task):
        raise RuntimeError("deliberate failure for tests")


class ProducesNaN:
    """Returns a set containing NaN (must be recorded FAILED)."""

    name = "nan"

    @dataclass
    class Config:
        pass

    def distill(self, task):
        import torch

        x = torch.full((task.n, *task.input_shape), float("nan"))
        y = torch.full((task.n, task.num_classes), 1.0 / task.num_classes)
        return DistilledSet(x, y)


class ClassMeans:
    """Class means with a configurable label smoothing; learns step sizes (tests the 'distilled' recipe)."""

    name = "means"
    capabilities = Capabilities(learns_inputs=True, learns_lr=True, known_init=True)

    @dataclass
    class Config:
        smoothing: float = 0.0  # label smoothing of the one-hot labels
        steps: int = 3  # number of learned step sizes
        lr: float = 0.1  # their value
        model_init: str = "default"  # init scheme of task.make_model() (harness.init)

        def __post_init__(self):
            if not 0.0 <= self.smoothing < 1.0:
                raise ValueError(f"smoothing must be in [0, 1), got {self.smoothing}")

    def distill(self, task):
        import torch

        cfg = task.config
        xs, ys = [], []
        for c in range(task.num_classes):
            xs.append(task.x[task.y == c].mean(0, keepdim=True).repeat(task.ipc or 1, *[1] * (task.x.dim() - 1)))
            ys += [c] * (task.ipc or 1)
        y = torch.nn.functional.one_hot(torch.tensor(ys), task.num_classes).float()
        y = y * (1 - cfg.smoothing) + cfg.smoothing / task.num_classes
        for step in range(cfg.steps):
            task.log(step, loss=1.0 / (step + 1))
        init = task.make_model().state_dict()
        return DistilledSet(torch.cat(xs), y, lrs=torch.full((cfg.steps,), cfg.lr), init_state=init)


class Sleeper:
    """Logs one step every ``seconds`` for ``steps`` steps, then returns class means: a trial that
    takes as long as a test needs (run lifecycle, time limits, concurrent drivers). ``until``: a
    file path; the trial then keeps logging past ``steps`` (up to 100x) until that file exists, so a
    test can hold a trial running until the driver has seen what it waits for. ``$SLEEPER_SECONDS``
    overrides ``seconds`` without changing the trial (its key): a test's rerun of a trial that had
    to be slow the first time (to be interrupted) finishes at once. ``$SLEEPER_PIDS``: a directory
    where each trial leaves a file named after the pid of the process running it."""

    name = "sleeper"

    @dataclass
    class Config:
        steps: int = 20
        seconds: float = 0.05
        until: str = ""

    def distill(self, task):
        import time

        import torch

        cfg = task.config
        task.expect_steps(cfg.steps)
        saved = task.restore()  # it checkpoints too: a resumed trial continues from the saved step
        step = saved[0] if saved else 0
        seconds = float(os.environ.get("SLEEPER_SECONDS", cfg.seconds))
        if os.environ.get("SLEEPER_PIDS"):
            open(os.path.join(os.environ["SLEEPER_PIDS"], str(os.getpid())), "w").close()
        while step < cfg.steps or (cfg.until and not os.path.exists(cfg.until) and step < 100 * cfg.steps):
            time.sleep(seconds)
            task.log(step, loss=1.0 / (step + 1))
            step += 1
            task.checkpoint(step, lambda: {})
        xs = [task.x[task.y == c].mean(0, keepdim=True).repeat(task.ipc, *[1] * (task.x.dim() - 1))
              for c in range(task.num_classes)]
        y = torch.nn.functional.one_hot(torch.arange(task.num_classes).repeat_interleave(task.ipc), task.num_classes)
        return DistilledSet(torch.cat(xs), y.float())


class Dies:
    """Kills its own process inside distill (a segfault or the OOM killer, as a worker sees it).
    Only for the process executor: inline, it would kill the test run."""

    name = "dies"

    @dataclass
    class Config:
        pass

    def distill(self, task):
        import os
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


class Hangs:
    """Sleeps inside distill without ever logging a step, so the harness's own time checks never
    run: only an executor that kills its worker ends it. Only for the process executor."""

    name = "hangs"

    @dataclass
    class Config:
        pass

    def distill(self, task):
        import time

        time.sleep(3600)


@hookimpl
def register_datasets(register):
    register(tiny_dataset())
    register(harness.DatasetSpec("tiny-letters", 4, (1, 4, 4), modality="image", load=_tiny_letters,
                                 description="4 other blobs in tiny's input space (a cross-dataset base)"))
    register(harness.DatasetSpec("tiny-text", 3, (4, 4), modality="text",
                                 load=_tiny_text, decode=_decode_tiny_text, description="tiny, labelled as text"))


def _tiny_letters(split, data_dir):
    import torch

    g = torch.Generator().manual_seed(7 if split == "train" else 8)
    y = torch.arange(4).repeat_interleave(10)
    return torch.randn(4, 1, 4, 4, generator=torch.Generator().manual_seed(3))[y] + 0.3 * torch.randn(40, 1, 4, 4, generator=g), y


def _tiny_text(split, data_dir):
    x, y = tiny_dataset().load(split, data_dir)
    return x.reshape(len(x), 4, 4), y


def _decode_tiny_text(x, ctx):
    """A stand-in for nearest-word decoding: each position's first coordinate, as a 'word'."""
    return [" ".join(f"w{v:+.0f}" for v in row[:, 0].tolist()) for row in x]


@hookimpl
def register_architectures(register):
    register(tiny_arch())
    register(harness.ArchitectureSpec("image-only", ("image",), tiny_arch().build, "tiny, images only"))


@hookimpl
def register_distillers(register):
    register(Crashes)
    register(ProducesNaN)
    register(ClassMeans)
    register(Sleeper)
    register(Dies)
    register(Hangs)
