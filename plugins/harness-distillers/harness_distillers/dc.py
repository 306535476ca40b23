"""DC: Dataset Condensation with Gradient Matching (Zhao, Mopuri, Bilen, ICLR 2021), and with
``dsa = true`` its Differentiable Siamese Augmentation variant (DSA; Zhao & Bilen, ICML 2021).

arXiv:2006.05929 and arXiv:2102.08259; code github.com/VICO-UoE/DatasetCondensation (``main.py``,
``utils.py``: ``get_loops``, ``match_loss``). The algorithm::

    input : real training data by class; ipc synthetic images per class S_c, hard labels
    init  : S ~ N(0, I)                                          (init="noise", the code's default)
    for it = 0 .. iterations - 1:
        theta <- a freshly initialised network
        for ol = 0 .. outer_loop - 1:
            (batch norm only: fix its statistics on 16 real images per class)
            L = 0
            for each class c:
                R = batch_real random real images of class c
                (DSA: one siamese draw A applied to R and to S_c)
                L += D( grad_theta CE(f(R), c), grad_theta CE(f(S_c), c) )     (create_graph on S)
            S <- SGD(S; grad L), lr_img 0.1, momentum 0.5
            if ol < outer_loop - 1:
                inner_loop epochs of SGD (lr_net 0.01) on theta with S, batch_train 256 (DSA: augmented)
    return S with one-hot labels

D is the code's layer-wise distance ("ours"): for each weight tensor, reshaped to
[out, everything else], the sum over output units of 1 - cosine similarity of the two gradients;
1-d tensors (biases, norm scales) contribute nothing.

Defaults are the code's: ``--Iteration 1000``, ``--lr_img 0.1`` (SGD momentum 0.5), ``--lr_net
0.01`` (plain SGD), ``--batch_real 256``, ``--batch_train 256``, ``--init noise``; ``outer_loop`` /
``inner_loop`` from ``get_loops(ipc)``: 1 -> (1, 1), 10 -> (10, 50), 20 -> (20, 25), 30 -> (30, 20),
40 -> (40, 15), 50 -> (50, 10); other budgets need both set explicitly (the code raises too). DSA is
the same code with ``--method DSA --dsa_strategy color_crop_cutout_flip_scale_rotate``
(:mod:`harness.augment`). Evaluation in the code: DC trains 300 epochs without augmentation,
except on MNIST (1,000 epochs with a non-differentiable crop/scale/rotate augmentation, ``get_daparam``,
that the harness does not implement); DSA trains 1,000 epochs with DSA (``[eval] augment = "dsa"``).

Every iteration is :meth:`DC.iteration`, the unit the golden test checks: from the same state
(images, network weights, real batches, batch orders, DSA seeds) it gives the reference code's
images, networks and ``loss_avg`` to float64 round-off (tests/golden/test_condense.py; fixtures
from the code's own ``main.py`` loop, see tests/golden/README-condense.md). The networks are the
architecture's with ``model_init`` ("default": PyTorch's init, which the code's ``get_network``
keeps).

Deviations (see :class:`DC.Config`): random draws come from the trial's generator (the code uses
numpy's global RNG for real batches and seeds networks and DSA draws with the wall clock), so runs
are reproducible; ``outer_loop`` / ``inner_loop`` can be set for any ipc. The logged loss is the
code's ``loss_avg`` (summed over classes, averaged over classes and outer loops).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from harness import DSA, Capabilities, Distiller, TrialError

from .checks import check_int, check_positive
from .condense import (CondensationConfig, Randomness, class_labels, condensed_set, dsa_for, freeze_batchnorm,
                       has_batchnorm, image_optimizer, images_per_class, initial_images, offer_checkpoint,
                       resume_images)

LOOPS = {1: (1, 1), 10: (10, 50), 20: (20, 25), 30: (30, 20), 40: (40, 15), 50: (50, 10)}  # get_loops
BN_IMAGES_PER_CLASS = 16  # the code's BNSizePC


def gradient_distance(gs: list[torch.Tensor], gr: list[torch.Tensor]) -> torch.Tensor:
    """The DC code's ``match_loss`` with ``dis_metric='ours'`` (``distance_wb`` per tensor)."""
    total = gs[0].new_zeros(())
    for s, r in zip(gs, gr):
        if s.dim() == 1:  # biases and norm parameters are not matched
            continue
        s, r = s.reshape(s.shape[0], -1), r.reshape(r.shape[0], -1)
        cos = (s * r).sum(-1) / (s.norm(dim=-1) * r.norm(dim=-1) + 1e-6)
        total = total + (1 - cos).sum()
    return total


def loops_for(config, ipc: int) -> tuple[int, int]:
    if config.outer_loop is not None and config.inner_loop is not None:
        return config.outer_loop, config.inner_loop
    if ipc not in LOOPS:
        raise ValueError(f"the DC code defines outer_loop/inner_loop only for ipc in {sorted(LOOPS)}, not "
                         f"{ipc}; set both in [distillers.dc] (e.g. outer_loop = {ipc}, inner_loop = 10)")
    outer, inner = LOOPS[ipc]
    return config.outer_loop or outer, config.inner_loop or inner


class DC(Distiller):
    """Gradient matching per class (DC); with dsa = true, differentiable siamese augmentation (DSA)."""

    name = "dc"
    capabilities = Capabilities(learns_inputs=True)

    @dataclass(frozen=True)
    class Config(CondensationConfig):
        """DC/DSA hyperparameters (defaults: ``main.py`` of the DatasetCondensation code). The shared
        fields are :class:`~harness_distillers.condense.CondensationConfig`'s, with DC's defaults.

        Attributes:
            iterations: ``--Iteration`` (1,000). Each starts from a fresh random network.
            lr_img: ``--lr_img`` (0.1), SGD with momentum 0.5.
            init: ``--init`` ("noise": N(0, I)); "real": random real images of each class.
            dsa: False = DC; True = DSA (``--method DSA``): the siamese augmentation in matching
                and in the inner training.
            outer_loop: image updates per iteration; None = the code's ``get_loops(ipc)``.
            inner_loop: epochs of network training on the synthetic set between image updates;
                None = ``get_loops(ipc)``.
            lr_net: ``--lr_net`` (0.01). Plain SGD for the network's inner training.
            batch_train: ``--batch_train`` (256). Batch size of the network's inner training.

        Deviations, and why:
            - Random draws (real batches, noise init, batch order, DSA seeds) come from the trial's
              generator, on CPU; the code uses numpy's and torch's global RNGs and seeds each DSA
              draw and each network with the wall clock. Runs are reproducible, and the golden
              tests replay the code's draws to show the arithmetic is the same.
            - ``outer_loop`` / ``inner_loop`` may be set for any ipc (the code exits for ipc
              outside 1, 10, 20, 30, 40, 50).
            None in the arithmetic: one iteration matches the code's to float64 round-off
            (tests/golden/test_condense.py).
        """

        iterations: int = 1000
        lr_img: float = 0.1
        init: str = "noise"
        dsa: bool = False
        outer_loop: int | None = None
        inner_loop: int | None = None
        lr_net: float = 0.01
        batch_train: int = 256

        def __post_init__(self) -> None:
            super().__post_init__()
            for name in ("outer_loop", "inner_loop"):
                if getattr(self, name) is not None:
                    check_int(name, getattr(self, name), 1)
            check_positive("lr_net", self.lr_net)
            check_int("batch_train", self.batch_train, 1)

    @classmethod
    def check_trial(cls, config, spec) -> None:
        super().check_trial(config, spec)
        loops_for(config, images_per_class(spec.n, spec.dataset.num_classes, cls.name))

    def distill(self, task):
        cfg = task.config
        ipc = images_per_class(task.n, task.num_classes, self.name)
        outer_loop, inner_loop = loops_for(cfg, ipc)
        dsa = dsa_for(cfg)
        rand = Randomness(task)
        syn = initial_images(task, ipc, cfg.init, rand)  # S: ipc images per class
        opt_img = image_optimizer(syn, cfg.lr_img, cfg.momentum)

        task.expect_steps(cfg.iterations)
        done = resume_images(task, syn, opt_img)  # 0, or where a mid-trial checkpoint stopped
        for it in range(done, cfg.iterations):
            if task.time_left() <= 0:
                break
            net = task.make_model().to(task.device)  # theta <- a fresh network
            loss = self.iteration(net, syn, opt_img, ipc=ipc, outer_loop=outer_loop, inner_loop=inner_loop,
                                  config=cfg, rand=rand, dsa=dsa)
            done = it + 1
            task.log(it, loss=loss)
            offer_checkpoint(task, done, syn, opt_img)

        return condensed_set(syn, ipc, task.num_classes, iterations_done=done, init=cfg.init, dsa=cfg.dsa,
                             outer_loop=outer_loop, inner_loop=inner_loop)

    @classmethod
    def iteration(cls, net, syn, opt_img, *, ipc: int, outer_loop: int, inner_loop: int, config,
                  rand: Randomness, dsa: DSA | None) -> float:
        """One iteration of the code's loop (``for it``) with network ``net``: ``outer_loop`` times
        match gradients per class and step the images, training the network on the synthetic set
        for ``inner_loop`` epochs in between. Updates ``syn`` (through ``opt_img``) and ``net`` in
        place; returns the code's ``loss_avg`` (summed over classes, averaged over classes and
        outer loops)."""
        num_classes = len(syn) // ipc
        labels = class_labels(num_classes, ipc, syn.device)
        net.train()
        params = [p for p in net.parameters() if p.requires_grad]
        opt_net = torch.optim.SGD(params, lr=config.lr_net)
        loss_sum = 0.0
        for ol in range(outer_loop):
            if has_batchnorm(net):  # statistics from 16 real images per class, then frozen
                real = torch.cat([rand.real(c, BN_IMAGES_PER_CLASS) for c in range(num_classes)])
                freeze_batchnorm(net, real.to(syn.device))
            loss = cls.matching_loss(net, params, syn, ipc, rand, config.batch_real, dsa)
            if not torch.isfinite(loss):
                raise TrialError(f"{cls.name}: matching loss became {loss.item()} (outer loop {ol}); lower lr_img")
            opt_img.zero_grad(set_to_none=True)
            loss.backward()
            opt_img.step()
            loss_sum += loss.item()
            if ol == outer_loop - 1:
                break
            cls.train_network(net, opt_net, syn.detach(), labels, inner_loop, config.batch_train, rand, dsa)
        return loss_sum / (num_classes * outer_loop)

    @staticmethod
    def matching_loss(net, params, syn, ipc, rand: Randomness, batch_real, dsa: DSA | None) -> torch.Tensor:
        """Sum over classes of the distance between real and synthetic gradients."""
        loss = syn.new_zeros(())
        for c in range(len(syn) // ipc):
            real = rand.real(c, batch_real).to(device=syn.device, dtype=syn.dtype)
            fake = syn[c * ipc : (c + 1) * ipc]
            if dsa is not None:  # one siamese draw for both
                draw = dsa.draw_from(rand.dsa_seed(siamese=True), siamese=True)
                real, fake = draw(real), draw(fake)
            target_real = torch.full((len(real),), c, device=syn.device)
            g_real = torch.autograd.grad(F.cross_entropy(net(real), target_real), params)
            g_real = [g.detach() for g in g_real]
            target_fake = torch.full((len(fake),), c, device=syn.device)
            g_fake = torch.autograd.grad(F.cross_entropy(net(fake), target_fake), params, create_graph=True)
            loss = loss + gradient_distance(g_fake, g_real)
        return loss

    @staticmethod
    def train_network(net, opt, x, y, epochs, batch_size, rand: Randomness, dsa: DSA | None) -> None:
        """The code's ``epoch('train', ...)`` on the synthetic set, ``epochs`` times: a fresh
        shuffle per epoch; with DSA, parameters drawn per example for every batch (train mode:
        batch norm uses batch statistics here, as in the code)."""
        net.train()
        for _ in range(epochs):
            order = rand.order(len(x)).to(x.device)
            for i in range(0, len(x), batch_size):
                idx = order[i : i + batch_size]
                xb = x[idx]
                if dsa is not None:
                    xb = dsa.draw_from(rand.dsa_seed(siamese=False), siamese=False)(xb)
                loss = F.cross_entropy(net(xb), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()


class DCWithDSA(DC):
    """DSA: gradient matching with differentiable siamese augmentation (DC with dsa = true)."""

    name = "dsa"

    @dataclass(frozen=True)
    class Config(DC.Config):
        """DC's hyperparameters (see :class:`DC.Config`, defaults, deviations) with ``dsa = True``:
        the code's ``--method DSA --dsa_strategy color_crop_cutout_flip_scale_rotate``. Registered
        under its own name so DC and DSA are separate rows in a grid's report."""

        dsa: bool = True
