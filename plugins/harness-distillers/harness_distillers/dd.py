"""DD: Dataset Distillation with hard labels (Wang, Zhu, Torralba, Efros 2018).

"Dataset Distillation", arXiv:1811.10959; code github.com/SsnL/dataset-distillation. The algorithm
is SLDD's (see :mod:`harness_distillers.sldd`, whose inner loop, outer loop and schedule this
class reuses by subclassing) with the labels frozen one-hot::

    init  : x~ ~ N(0, I); y = one-hot(i mod C) (fixed); eta~_i = softplus^-1(0.02)
    for t = 0 .. outer_steps - 1:
        theta_0 <- fresh random init (unknown init) or the fixed init (known init)
        theta_{i+1} = theta_i - softplus(eta~_i) * grad_theta CE(f(x~_{i mod steps}; theta_i), y_{i mod steps})
        L = CE(f(x_r; theta_T), y_r) on a real minibatch
        (x~, eta~) <- Adam(grad L), lr halved every decay_every outer steps

Defaults are the DD code's (``base_options.py``): ``distill_steps 10``, ``distill_epochs 3``,
``distill_lr 0.02`` (MNIST), Adam ``lr 0.01`` with betas (0.5, 0.999), ``decay_factor 0.5`` every
``decay_epochs 40``, ``epochs 400``, ``batch_size 1024``, ``train_nets_type unknown_init``; with one
image per class per step that is 100 images for MNIST (the paper's 10 steps x 10 classes). Epochs
are converted to outer steps as in SLDD (59 iterations per MNIST epoch: 23,600 steps, decay every
2,360). The deviations documented in :mod:`harness_distillers.sldd` apply (outer-step schedules,
the architecture's own init instead of ``--init xavier``, n from the trial cut into ``steps``
batches). Hard labels cannot describe fewer examples than classes, so n >= num_classes.
"""

from __future__ import annotations

from dataclasses import dataclass

from harness import Capabilities

from .sldd import SLDD, FixedLabels, UnrolledGDConfig, initial_labels


class DD(SLDD):
    """Dataset Distillation (hard labels): synthetic inputs and step sizes through unrolled GD."""

    name = "dd"
    capabilities = Capabilities(learns_inputs=True, learns_lr=True, known_init=True)

    @dataclass
    class Config(UnrolledGDConfig):
        """DD hyperparameters: the Dataset Distillation code's defaults; see
        :class:`harness_distillers.sldd.UnrolledGDConfig` for each field and its source."""

    def make_labels(self, task, cfg) -> FixedLabels:
        # example i is class i mod C: with batches of a multiple of C images, one image per class
        # per step, as in the DD code
        return FixedLabels(initial_labels(task.n, task.num_classes, "onehot", task.generator), task.device)

    def check_task(self, task, cfg) -> None:
        if task.n < task.num_classes:
            raise ValueError(
                f"dd: n={task.n} is fewer than the {task.num_classes} classes; hard labels need at least "
                f"one example per class (sldd's soft labels can go below)"
            )
        super().check_task(task, cfg)

    def meta(self, cfg) -> dict:
        return {"labels": "one-hot (frozen)"}

