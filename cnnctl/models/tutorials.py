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


_MNIST_VARIANTS = {
    "model-a": ("max", 2, "2x [Conv5 same, ReLU, MaxPool2] + Linear (MNIST tutorial model A)"),
    "model-b": ("avg", 2, "model-a with average pooling (MNIST tutorial model B)"),
    "model-c": ("max", 0, "model-a with valid padding, Linear 32*4*4 at 28x28 (MNIST tutorial model C)"),
}
for _name, (_pool, _padding, _description) in _MNIST_VARIANTS.items():
    register(
        _name, description=_description, default_input=(1, 28, 28), source=MNIST_TUTORIAL, pool=_pool, padding=_padding
    )(_mnist_tutorial)


def _conv_relu(cin: int, cout: int, bn: bool = False) -> list[nn.Module]:
    if bn:  # the conv bias is redundant before BatchNorm's shift
        return [nn.Conv2d(cin, cout, kernel_size=3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]
    return [nn.Conv2d(cin, cout, kernel_size=3, padding=1), nn.ReLU()]


def _tiny(in_shape, num_classes, *, widths: tuple[int, ...], bn: bool = False) -> nn.Module:
    layers: list[nn.Module] = []
    cin = in_shape[0]
    for width in widths:
        layers += _conv_relu(cin, width, bn) + _conv_relu(width, width, bn) + [nn.MaxPool2d(2)]
        cin = width

    def head(n: int) -> nn.Module:
        return nn.Sequential(nn.Linear(n, 256), nn.ReLU(), nn.Dropout(0.5), nn.Linear(256, num_classes))

    return Classifier(nn.Sequential(*layers), head, in_shape)


LESSON_6 = "PyTorch CNN course, lesson 6"
_TINY_VARIANTS = {
    "tiny": (
        (32, 64),
        False,
        "lesson-6 TinyCNN: 2 blocks of 2x Conv3 (32, 64 ch) + pool, Linear 256, dropout",
        f"{LESSON_6} (TinyCNN on CIFAR-10)",
    ),
    "tiny3": (
        (32, 64, 128),
        False,
        "TinyCNN with a third block of two 128-channel convs and a pool",
        f"{LESSON_6} (the deeper exercise variant)",
    ),
    "tiny-bn": (
        (32, 64),
        True,
        "tiny with BatchNorm after every conv (the control for tiny's underfitting)",
        f"{LESSON_6} TinyCNN + BatchNorm (cnnctl's variant)",
    ),
}
for _name, (_widths, _bn, _description, _source) in _TINY_VARIANTS.items():
    register(_name, description=_description, default_input=(3, 32, 32), source=_source, widths=_widths, bn=_bn)(_tiny)


def _conv_pool_mlp(in_shape, num_classes, *, convs: tuple[tuple[int, int], ...], hidden: tuple[int, ...]) -> nn.Module:
    """[Conv(k, pad) ReLU MaxPool2] per (channels, padding) in `convs`, then an MLP of `hidden` widths."""
    layers: list[nn.Module] = []
    cin = in_shape[0]
    for width, padding in convs:
        layers += [nn.Conv2d(cin, width, kernel_size=5, padding=padding), nn.ReLU(), nn.MaxPool2d(2)]
        cin = width

    def head(n: int) -> nn.Module:
        mlp: list[nn.Module] = []
        for h in hidden:
            mlp += [nn.Linear(n, h), nn.ReLU()]
            n = h
        return nn.Sequential(*mlp, nn.Linear(n, num_classes))

    return Classifier(nn.Sequential(*layers), head, in_shape)


register(
    "fashion",
    description="Conv5 6ch, Conv5 12ch (each ReLU + MaxPool2), Linear 120, 60, 10",
    default_input=(1, 28, 28),
    source="deeplizard 'Neural Network Programming - Deep Learning with PyTorch' (Fashion-MNIST)",
    convs=((6, 0), (12, 0)),
    hidden=(120, 60),
)(_conv_pool_mlp)
register(
    "lenet5",
    description="LeNet-5: Conv5 6ch (pad 2), Conv5 16ch, Linear 120, 84 (ReLU, max pooling)",
    default_input=(1, 28, 28),
    source="LeCun et al. 1998, as in most PyTorch tutorials (ReLU + max pooling, padded C1)",
    convs=((6, 2), (16, 0)),
    hidden=(120, 84),
)(_conv_pool_mlp)
register(
    "catdog",
    description="3x [Conv5, ReLU, MaxPool2] (32, 64, 128 ch), Linear 512, Linear 2; 50x50 gray",
    default_input=(1, 50, 50),
    num_classes=2,
    source="pythonprogramming.net 'Deep learning with PyTorch' cats-vs-dogs convnet",
    convs=((32, 0), (64, 0), (128, 0)),
    hidden=(512,),
)(_conv_pool_mlp)
