"""Entry point of harness-example-plugin (``[project.entry-points.harness] example = ...``).

Hook implementations only. Keep this module import-light: the ``harness`` CLI imports every
plugin to build ``--help`` and ``harness plugins``, so importing torch here would slow every
command down. The modules imported below import torch only inside their functions.
"""

from harness import ArchitectureSpec, DatasetSpec, hookimpl

from . import archs, datasets
from .herding import ExampleHerding


@hookimpl
def register_datasets(register):
    register(DatasetSpec(
        "example-blobs", datasets.NUM_CLASSES, datasets.INPUT_SHAPE, modality="image",
        load=datasets.load_blobs, classes=datasets.CLASSES,
        description="SYNTHETIC: 4 Gaussian blobs on a 1x8x8 'image' grid, fixed seed (256 train / 128 test)",
    ))


@hookimpl
def register_architectures(register):
    register(ArchitectureSpec("example-linear", ("image", "text"), archs.build_linear,
                              "flatten -> linear classifier (a softmax-regression baseline)",
                              features=True))  # its classifier sees the flattened input


@hookimpl
def register_distillers(register):
    register(ExampleHerding)
