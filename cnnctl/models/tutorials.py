"""The classic tutorial CNNs, faithful to their sources (see each `source=`)."""

from __future__ import annotations

from torch import nn

from cnnctl.models.layers import Classifier
from cnnctl.models.registry import register

MNIST_TUTORIAL = "deeplearningwizard.com PyTorch CNN tutorial (MNIST, models A/B/C)"


def _mnist_tutorial(in_shape, num_classes, *, pool: str, padding: int) -> nn.Module:
    pool_layer = nn.MaxPool2d if pool == "max" else nn.AvgPool2d
    features = nn.Sequential(
        nn.Conv2d(in_shape[0], 16, kernel_size=5, padding=padding),
        nn.ReLU(),
        pool_layer(2),
        nn.Conv2d(16, 32, kernel_size=5, padding=padding),
        nn.ReLU(),
        pool_layer(2),
    )
    return Classifier(features, lambda n: nn.Linear(n, num_classes), in_shape)


@register(
    "model-a",
    description="2x [Conv5 same, ReLU, MaxPool2] + Linear (MNIST tutorial model A)",
    default_input=(1, 28, 28),
    source=MNIST_TUTORIAL,
)
def model_a(in_shape, num_classes):
    return _mnist_tutorial(in_shape, num_classes, pool="max", padding=2)


@register(
    "model-b",
    description="model-a with average pooling (MNIST tutorial model B)",
    default_input=(1, 28, 28),
    source=MNIST_TUTORIAL,
)
def model_b(in_shape, num_classes):
    return _mnist_tutorial(in_shape, num_classes, pool="avg", padding=2)


@register(
    "model-c",
    description="model-a with valid padding, Linear 32*4*4 at 28x28 (MNIST tutorial model C)",
    default_input=(1, 28, 28),
    source=MNIST_TUTORIAL,
)
def model_c(in_shape, num_classes):
    return _mnist_tutorial(in_shape, num_classes, pool="max", padding=0)


def _conv_relu(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, kernel_size=3, padding=1), nn.ReLU()]


def _tiny(in_shape, num_classes, widths: tuple[int, ...]) -> nn.Module:
    layers: list[nn.Module] = []
    cin = in_shape[0]
    for width in widths:
        layers += _conv_relu(cin, width) + _conv_relu(width, width) + [nn.MaxPool2d(2)]
        cin = width

    def head(n: int) -> nn.Module:
        return nn.Sequential(nn.Linear(n, 256), nn.ReLU(), nn.Dropout(0.5), nn.Linear(256, num_classes))

    return Classifier(nn.Sequential(*layers), head, in_shape)


@register(
    "tiny",
    description="lesson-6 TinyCNN: 2 blocks of 2x Conv3 (32, 64 ch) + pool, Linear 256, dropout",
    default_input=(3, 32, 32),
    source="PyTorch CNN course, lesson 6 (TinyCNN on CIFAR-10)",
)
def tiny(in_shape, num_classes):
    return _tiny(in_shape, num_classes, (32, 64))


@register(
    "tiny3",
    description="TinyCNN with a third block of two 128-channel convs and a pool",
    default_input=(3, 32, 32),
    source="PyTorch CNN course, lesson 6 (the deeper exercise variant)",
)
def tiny3(in_shape, num_classes):
    return _tiny(in_shape, num_classes, (32, 64, 128))


@register(
    "catdog",
    description="3x [Conv5, ReLU, MaxPool2] (32, 64, 128 ch), Linear 512, Linear 2; 50x50 gray",
    default_input=(1, 50, 50),
    num_classes=2,
    source="pythonprogramming.net 'Deep learning with PyTorch' cats-vs-dogs convnet",
)
def catdog(in_shape, num_classes):
    layers: list[nn.Module] = []
    cin = in_shape[0]
    for width in (32, 64, 128):
        layers += [nn.Conv2d(cin, width, kernel_size=5), nn.ReLU(), nn.MaxPool2d(2)]
        cin = width

    def head(n: int) -> nn.Module:
        return nn.Sequential(nn.Linear(n, 512), nn.ReLU(), nn.Linear(512, num_classes))

    return Classifier(nn.Sequential(*layers), head, in_shape)


@register(
    "fashion",
    description="Conv5 6ch, Conv5 12ch (each ReLU + MaxPool2), Linear 120, 60, 10",
    default_input=(1, 28, 28),
    source="deeplizard 'Neural Network Programming - Deep Learning with PyTorch' (Fashion-MNIST)",
)
def fashion(in_shape, num_classes):
    features = nn.Sequential(
        nn.Conv2d(in_shape[0], 6, kernel_size=5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 12, kernel_size=5), nn.ReLU(), nn.MaxPool2d(2),
    )  # fmt: skip

    def head(n: int) -> nn.Module:
        return nn.Sequential(
            nn.Linear(n, 120), nn.ReLU(), nn.Linear(120, 60), nn.ReLU(), nn.Linear(60, num_classes)
        )

    return Classifier(features, head, in_shape)


@register(
    "lenet5",
    description="LeNet-5: Conv5 6ch (pad 2), Conv5 16ch, Linear 120, 84 (ReLU, max pooling)",
    default_input=(1, 28, 28),
    source="LeCun et al. 1998, as in most PyTorch tutorials (ReLU + max pooling, padded C1)",
)
def lenet5(in_shape, num_classes):
    features = nn.Sequential(
        nn.Conv2d(in_shape[0], 6, kernel_size=5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, kernel_size=5), nn.ReLU(), nn.MaxPool2d(2),
    )  # fmt: skip

    def head(n: int) -> nn.Module:
        return nn.Sequential(
            nn.Linear(n, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, num_classes)
        )

    return Classifier(features, head, in_shape)
