"""Entry point of harness-distillers: registers every distiller of this distribution.

Method modules import torch at module level, so they are registered by import path
(:class:`harness.LazyDistiller`): `harness --help`, `harness ls` and `harness plugins` import none
of them; a distiller's module is imported when a grid first uses it. The descriptions and
capabilities declared here are checked against the classes on import and by
tests/test_contract.py, so they cannot drift.
"""

from harness import Capabilities, LazyDistiller, hookimpl

P = "harness_distillers"
DISTILLERS = (
    LazyDistiller("random", f"{P}.baselines:RandomSubset",
                  "Class-balanced random subset of real training examples with hard labels.",
                  Capabilities(fewer_than_classes=True)),
    LazyDistiller("full", f"{P}.baselines:Full",
                  "The whole training set with hard labels: the upper reference (ignores ipc/n).",
                  Capabilities(ignores_budget=True)),
    LazyDistiller("sldd", f"{P}.sldd:SLDD",
                  "Soft-label dataset distillation: synthetic inputs, soft labels and step sizes through unrolled GD.",
                  Capabilities(learns_inputs=True, learns_labels=True, learns_lr=True, fewer_than_classes=True,
                               known_init=True)),
    LazyDistiller("dd", f"{P}.dd:DD",
                  "Dataset Distillation (hard labels): synthetic inputs and step sizes through unrolled GD.",
                  Capabilities(learns_inputs=True, learns_lr=True, known_init=True)),
    LazyDistiller("ld", f"{P}.ld:LD",
                  "Label distillation (second-order): learn soft labels for fixed real base images "
                  "(Bohdal et al. 2020).",
                  Capabilities(learns_labels=True, cross_dataset=True)),
    LazyDistiller("ld-base", f"{P}.ld_base:LDBase",
                  "LD's comparison: the same real base examples as LD (same seed) with their true one-hot labels.",
                  Capabilities()),
    LazyDistiller("ld-rr", f"{P}.ld_rr:LDRR",
                  "Label distillation, first-order through a closed-form ridge-regression head "
                  "(Bohdal et al. 2020).",
                  Capabilities(learns_labels=True, cross_dataset=True, needs_features=True)),
    LazyDistiller("dm", f"{P}.dm:DM",
                  "Distribution matching: synthetic images whose mean embeddings match the real ones per class.",
                  Capabilities(learns_inputs=True, needs_features=True)),
    LazyDistiller("dc", f"{P}.dc:DC",
                  "Gradient matching per class (DC); with dsa = true, differentiable siamese augmentation (DSA).",
                  Capabilities(learns_inputs=True)),
    LazyDistiller("dsa", f"{P}.dc:DCWithDSA",
                  "DSA: gradient matching with differentiable siamese augmentation (DC with dsa = true).",
                  Capabilities(learns_inputs=True)),
)


@hookimpl
def register_distillers(register):
    for distiller in DISTILLERS:
        register(distiller)
