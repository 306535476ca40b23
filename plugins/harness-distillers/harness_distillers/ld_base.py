"""LD-base: the LD paper's comparison, LD's base examples with their true labels (see ``ld.py``).

Line numbers cite ``label_distillation_or2.py`` of github.com/ondrejbohdal/label-distillation at
commit 7ebc088 ("the code").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from harness import Capabilities, Distiller, DistilledSet

if TYPE_CHECKING:  # pragma: no cover
    import torch

from .ld_common import (
    PAPER_VAL_FRACTION,
    check_int,
    check_positive,
    classification_error,
    minibatch,
    paper_base_batch,
    select_base,
    soft_cross_entropy,
    split_validation,
    validation_generator,
)


# -- LD-base --------------------------------------------------------------------------------------------
def paper_baseline_checkpoints(n: int) -> tuple[int, list[int]]:
    """The code's ``find_best_num_steps`` schedule (lines 819-861): (max steps, the 1-based step
    counts after which it validates). n <= 100: 1,000 steps, at 10, 25, 75 and every 50;
    n > 100: 1,701 steps, at 10, 25, 75, 101, 201, 301, 501, 701, 1001, 1201, 1501, 1701."""
    if n > 100:
        return 1701, [10, 25, 75, 101, 201, 301, 501, 701, 1001, 1201, 1501, 1701]
    return 1000, sorted({10, 25, 75} | set(range(50, 1001, 50)))


def best_num_steps(task: Any, base_x: "torch.Tensor", labels: "torch.Tensor", base_batch: int, model_lr: float,
                   val_x: "torch.Tensor", val_y: "torch.Tensor", generator: "torch.Generator") -> tuple[int, list]:
    """The code's ``find_best_num_steps`` (lines 812-889): ONE fresh model trained with Adam on
    random base minibatches of the (true) labels; validated at the checkpoints; the step count with
    the strictly lowest validation error. Returns (steps, [(steps, error), ...])."""
    import torch

    total, checkpoints = paper_baseline_checkpoints(len(base_x))
    model = task.make_model().to(task.device).train()
    opt = torch.optim.Adam(model.parameters(), lr=model_lr)
    best, lowest, history = 0, float("inf"), []
    for it in range(1, total + 1):
        model.train()
        bi = minibatch(len(base_x), base_batch, generator, task.device)
        loss = soft_cross_entropy(model(base_x[bi]), labels[bi])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if it in checkpoints:
            model.eval()
            err = classification_error(model, val_x, val_y)
            history.append((it, err))
            if err < lowest:
                best, lowest = it, err
    return best, history


class LDBase(Distiller):
    """LD's comparison: the same real base examples as LD (same seed) with their true one-hot labels.

    With ``select_steps`` (the code's baseline, default) it also runs the code's
    ``find_best_num_steps`` on LD's validation split (the same held-out rows as LD for the seed) and
    records the number of Adam steps its test protocol trains baseline models for in
    ``meta["test_steps"]`` (the labels themselves do not depend on it). Deviation: none in the labels;
    ``select_steps=False`` skips the validation run (then no ``test_steps``).
    """

    name = "ld-base"
    capabilities = Capabilities()  # true labels exist only when the base examples are target examples

    @dataclass(frozen=True)
    class Config:
        label_smoothing: float = 0.0
        """Label smoothing of the true labels, y <- (1 - s) * onehot + s / C (the code's
        ``--label_smoothing``: 0 for its plain baseline, used in its "_ls" baseline runs)."""
        select_steps: bool = True
        """Find the code's number of test training steps on the validation split (meta only)."""
        val_fraction: float = PAPER_VAL_FRACTION
        """Held-out fraction of the training set for that (the same split as LD's for the seed)."""
        base_batch: int = 0
        """Minibatch size of that validation run; 0 = the code's rule (as LD)."""
        model_lr: float = 1e-3
        """Adam learning rate of that validation run (the code: Adam's default)."""
        model_init: str = "default"
        """Init of the validation model (the code: PyTorch's default)."""

        def __post_init__(self) -> None:
            from harness import check_init_scheme

            s = self.label_smoothing
            if isinstance(s, bool) or not isinstance(s, (int, float)) or not 0.0 <= s < 1.0:
                raise ValueError(f"ld-base.label_smoothing must be in [0, 1), got {s!r}")
            if not isinstance(self.select_steps, bool):
                raise ValueError(f"ld-base.select_steps must be a bool, got {self.select_steps!r}")
            v = self.val_fraction
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 < v < 1.0:
                raise ValueError(f"ld-base.val_fraction must be a number in (0, 1), got {v!r}")
            check_int("ld-base", "base_batch", self.base_batch, 0, " (0 = the paper's rule)")
            check_positive("ld-base", model_lr=self.model_lr)
            check_init_scheme(self.model_init, "ld-base.model_init")

    def distill(self, task: Any) -> DistilledSet:
        import torch.nn.functional as F

        if task.base is not None:
            raise ValueError(
                "ld-base gives LD's base examples their TRUE labels, which exist only when the base "
                "examples come from the target dataset; with base examples from another dataset "
                "(cross-dataset) use base_dataset = 'same' for ld-base, or compare with 'random'"
            )
        cfg = task.config
        task.expect_steps(1)
        base = select_base(task)  # identical draw to LD's for the same task seed
        y = F.one_hot(base.labels, task.num_classes).to(task.x.dtype).to(task.device)
        s = cfg.label_smoothing
        if s:
            y = y * (1.0 - s) + s / task.num_classes
        meta = {"method": "ld-base", **base.meta(task), "label_smoothing": s}
        if cfg.select_steps:
            split = split_validation(task, base, cfg.val_fraction, True)  # LD's split for this seed
            val = split.val.to(task.device)
            base_batch = cfg.base_batch or paper_base_batch(task.n)
            steps, history = best_num_steps(task, base.x, y, base_batch, cfg.model_lr, task.x[val], task.y[val],
                                            validation_generator(task))
            meta.update({"test_steps": steps, "val_history": [{"train_steps": k, "val_err": e} for k, e in history],
                         "val_rows": len(split.val), "base_batch": base_batch})
        task.log(0, examples=len(base.index))
        return DistilledSet(x=base.x, y=y, meta=meta)
