"""DD: Dataset Distillation with hard labels (Wang, Zhu, Torralba, Efros 2018).

"Dataset Distillation", arXiv:1811.10959; code github.com/SsnL/dataset-distillation. The algorithm
is SLDD's (see :mod:`harness_distillers.sldd`, whose inner loop, outer step and schedule this
class reuses by subclassing) with the labels frozen one-hot::

    init  : x~ ~ N(0, I); y = one-hot(i mod C) (fixed); eta~_i = softplus^-1(lr_init)
    for t = 0 .. outer_steps - 1:
        theta_0 <- fresh init of `model_init` (unknown init) or the fixed init (known init)
        theta_{i+1} = theta_i - softplus(eta~_i) * grad_theta CE(f(x~_{i mod steps}; theta_i), y_{i mod steps})
        L = CE(f(x_r; theta_T), y_r) on a real minibatch
        (x~, eta~) <- Adam(grad L), lr = outer_lr * decay_factor^(t // decay_every)

Checked against the DD code itself (``tests/golden/test_sldd_dd.py``, commit 24e6958): from the
same state, :meth:`SLDD.outer_step` with frozen one-hot labels reproduces the code's
``Trainer.forward``/``backward``/``accumulate_grad``/Adam step (inputs, step sizes, outer loss) to
1e-5 after 1 and 3 outer steps. Hard-label cross-entropy ``F.cross_entropy(logits, c)`` (the DD
code's ``task_loss``) equals the soft cross-entropy against one-hot rows used here.

Defaults are the DD code's (``base_options.py``): ``distill_steps 10``, ``distill_epochs 3``,
``distill_lr 0.02`` (MNIST), Adam ``lr 0.01`` with betas (0.5, 0.999), ``decay_factor 0.5`` every
``decay_epochs 40`` of ``epochs 400`` (here: every tenth of ``outer_steps``), ``batch_size 1024``,
``train_nets_type unknown_init``, ``init xavier`` (``model_init``); with one image per class per
step that is 100 images for MNIST (the paper's 10 steps x 10 classes). Epochs are converted to
outer steps as in SLDD (59 iterations per MNIST epoch: 23,600 steps). The deviations documented in
:mod:`harness_distillers.sldd` apply (outer-step schedules whose decay points are fractions of the
run, n from the trial cut into ``steps`` batches, the harness's data pipeline). The code orders a
step's labels by class (``[0, 0, 1, 1, ...]`` with two images per class per step), here example i
is class ``i mod C``; a step's batch holds the same classes either way, and the inner loss is a
mean over the batch, so the order changes nothing. Hard labels cannot describe fewer examples than
classes, so n >= num_classes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from harness import Capabilities

from .sldd import SLDD, FixedLabels, UnrolledGDConfig, initial_labels


class DD(SLDD):
    """Dataset Distillation (hard labels): synthetic inputs and step sizes through unrolled GD."""

    name = "dd"
    capabilities = Capabilities(learns_inputs=True, learns_lr=True, known_init=True)

    @dataclass(frozen=True)
    class Config(UnrolledGDConfig):
        """DD hyperparameters: the Dataset Distillation code's defaults; see
        :class:`harness_distillers.sldd.UnrolledGDConfig` for each field and its source."""

    def make_labels(self, values: torch.Tensor, cfg, device: torch.device) -> FixedLabels:
        return FixedLabels(values, device)

    def label_values(self, task, cfg) -> torch.Tensor:
        # example i is class i mod C: with batches of a multiple of C images, the same number of
        # images of every class in every step, as in the DD code
        return initial_labels(task.n, task.num_classes, "onehot", task.generator)

    def check_task(self, task, cfg) -> None:
        if task.n < task.num_classes:
            raise ValueError(
                f"dd: n={task.n} is fewer than the {task.num_classes} classes; hard labels need at least "
                f"one example per class (sldd's soft labels can go below)"
            )
        super().check_task(task, cfg)

    def meta(self, cfg) -> dict:
        return {"labels": "one-hot (frozen)"}
