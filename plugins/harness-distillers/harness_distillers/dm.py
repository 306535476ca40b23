"""DM: Dataset Condensation with Distribution Matching (Zhao & Bilen, WACV 2023).

arXiv:2110.04181; code github.com/VICO-UoE/DatasetCondensation (``main_DM.py``). The algorithm::

    input : real training data by class; ipc synthetic images per class, hard labels
    init  : S_c <- ipc random real images of class c        (init="real", the code's default)
    for it = 0 .. iterations - 1:
        psi <- a freshly initialised network, frozen           (no training at all)
        L = 0
        for each class c:
            R = batch_real random real images of class c
            A = one DSA draw (siamese: the same transform for R and S_c)
            L += || mean psi(A(R)) - mean psi(A(S_c)) ||^2     psi = features before the classifier
        S <- SGD(S; grad L), lr_img 1.0, momentum 0.5
    return S with one-hot labels

Defaults are the code's (``main_DM.py``): ``--Iteration 20000``, ``--lr_img 1.0`` (SGD momentum
0.5), ``--batch_real 256``, ``--init real``, ``--dsa_strategy color_crop_cutout_flip_scale_rotate``
(:mod:`harness.augment` with the code's ``ParamDiffAug``). The embedding psi is the input of the
architecture's classifier (:class:`harness.Features`; the architecture must declare
``features=True``): for ConvNet that is the code's ``net.embed``, the flattened feature map. The network is in train mode, as in the code
(instance norm is unaffected; batch norm normalises with the statistics of the batch, which holds
every class at once as in the code's ConvNetBN branch).

DSA is an image augmentation: on other inputs (text embeddings [L, D]) set ``dsa = false``; with
``dsa = true`` such a trial is refused before any compute (``Distiller.check_trial``).

Every iteration is :meth:`DM.iteration`, the unit the golden test checks: from the same state
(images, network weights, real batches, DSA seeds) it gives the reference code's images and
``loss_avg`` to float64 round-off (tests/golden/test_condense.py; fixtures from the code's own
``main_DM.py`` loop, see tests/golden/README-condense.md). With batch norm in the network, all
classes pass it together, as in the code's ConvNetBN branch (not golden-tested: the code's BN
ConvNet is 128 wide, too large for a fixture; a unit test checks the joint batch). The networks are the architecture's
with ``model_init`` ("default": PyTorch's init, which the code's ``get_network`` keeps).

Deviations (see :class:`DM.Config`): random draws come from the trial's generator (the code uses
numpy's global RNG for real batches and seeds networks and DSA draws with the wall clock), so runs
are reproducible; the loss is logged divided by the class count (the code's ``loss_avg``). The
paper's evaluation trains 1,000 epochs with DSA augmentation: use ``[eval] augment = "dsa"``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from harness import DSA, Capabilities, Distiller, Features, TrialError

from .condense import (CondensationConfig, Randomness, condensed_set, dsa_for, has_batchnorm, image_optimizer,
                       images_per_class, initial_images, offer_checkpoint, resume_images)


class DM(Distiller):
    """Distribution matching: synthetic images whose mean embeddings match the real ones per class."""

    name = "dm"
    capabilities = Capabilities(learns_inputs=True, needs_features=True)

    @dataclass(frozen=True)
    class Config(CondensationConfig):
        """DM hyperparameters (defaults: ``main_DM.py`` of the DatasetCondensation code). The fields
        are :class:`~harness_distillers.condense.CondensationConfig`'s, with DM's defaults.

        Attributes:
            iterations: ``--Iteration`` (20,000). Image updates; one fresh random network each.
            lr_img: ``--lr_img`` (1.0), SGD with momentum 0.5.
            init: ``--init`` ("real"): start from random real images of each class; "noise": N(0, I).
            dsa: differentiable siamese augmentation of real and synthetic batches (True in DM:
                ``--dsa_strategy`` not "none"); set it false for data that are not images.

        Deviations, and why:
            - Random draws (real batches, init, DSA seeds) come from the trial's generator, on
              CPU; the code uses numpy's and torch's global RNGs and seeds each DSA draw and each
              network with the wall clock. Runs are reproducible, and the golden tests replay the
              code's draws to show the arithmetic is the same.
            - With batch norm, real images are embedded per class group of whatever size the class
              has (the code reshapes to ``batch_real`` per class and fails on smaller classes).
            None in the arithmetic: one iteration matches the code's to float64 round-off
            (tests/golden/test_condense.py).
        """

        iterations: int = 20000
        lr_img: float = 1.0
        init: str = "real"
        dsa: bool = True

    @classmethod
    def check_trial(cls, config, spec) -> None:
        super().check_trial(config, spec)
        images_per_class(spec.n, spec.dataset.num_classes, cls.name)

    def distill(self, task):
        cfg = task.config
        ipc = images_per_class(task.n, task.num_classes, self.name)
        dsa = dsa_for(cfg)
        rand = Randomness(task)
        syn = initial_images(task, ipc, cfg.init, rand)  # S: ipc images per class
        opt = image_optimizer(syn, cfg.lr_img, cfg.momentum)

        task.expect_steps(cfg.iterations)
        done = resume_images(task, syn, opt)  # 0, or where a mid-trial checkpoint stopped
        for it in range(done, cfg.iterations):
            if task.time_left() <= 0:
                break
            net = task.make_model().to(task.device)  # psi <- a fresh network, never trained
            loss = self.iteration(net, syn, opt, ipc=ipc, batch_real=cfg.batch_real, rand=rand, dsa=dsa)
            done = it + 1
            task.log(it, loss=loss)
            offer_checkpoint(task, done, syn, opt)

        return condensed_set(syn, ipc, task.num_classes, iterations_done=done, init=cfg.init, dsa=cfg.dsa)

    @staticmethod
    def iteration(net, syn, opt, *, ipc: int, batch_real: int, rand: Randomness, dsa: DSA | None) -> float:
        """One iteration of ``main_DM.py``: freeze ``net`` (train mode), embed a real batch and the
        synthetic images of every class (one siamese DSA draw per class), step the images on the
        summed squared distance of the mean embeddings. Returns the code's ``loss_avg`` (the loss
        divided by the class count). With batch norm, all classes pass the network together (the
        code's ConvNetBN branch), so the batch statistics mix classes as there."""
        num_classes = len(syn) // ipc
        net.train()
        for p in net.parameters():
            p.requires_grad_(False)
        embed = Features(net)
        reals, fakes = [], []
        for c in range(num_classes):
            real = rand.real(c, batch_real).to(device=syn.device, dtype=syn.dtype)
            fake = syn[c * ipc : (c + 1) * ipc]
            if dsa is not None:
                draw = dsa.draw_from(rand.dsa_seed(siamese=True), siamese=True)
                real, fake = draw(real), draw(fake)
            reals.append(real)
            fakes.append(fake)
        if has_batchnorm(net):
            with torch.no_grad():
                e_real = embed(torch.cat(reals)).split([len(r) for r in reals])
            e_fake = embed(torch.cat(fakes)).split([len(f) for f in fakes])
            loss = sum((r.mean(0) - f.mean(0)).square().sum() for r, f in zip(e_real, e_fake))
        else:
            loss = syn.new_zeros(())
            for real, fake in zip(reals, fakes):
                with torch.no_grad():
                    mean_real = embed(real).mean(0)
                loss = loss + (mean_real - embed(fake).mean(0)).square().sum()
        if not torch.isfinite(loss):
            raise TrialError(f"dm: matching loss became {loss.item()}; lower lr_img")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.item() / num_classes
