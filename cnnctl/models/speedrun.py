"""Small BatchNorm nets in the style of the CIFAR-10 speed runs (Page's ResNet-9, Jordan's airbench).

Each block is conv3 -> max-pool 2 -> BN -> ReLU -> conv3 -> BN -> ReLU: the pooling comes
straight after the first conv, so two thirds of the convolutions run at the reduced
resolution. The head is a global max-pool and a bias-free linear layer whose logits are
scaled down (airbench's 1/9), which trains well with label smoothing. ReLU, not airbench's
GELU: on a 2-core CPU GELU made a training step 15-20% slower (measured), for no gain we
could see in the 10-minute budget. `fastnet-wd` adds airbench's identity ("dirac")
initialisation: each 3x3 convolution starts by passing its first input channels through, so
the fresh net is close to a stack of identities that training bends away from.
"""

from __future__ import annotations

import torch
from torch import nn

from cnnctl.models.layers import Classifier
from cnnctl.models.registry import register


class ScaledLinear(nn.Linear):
    """A bias-free linear layer whose outputs are multiplied by a constant."""

    def __init__(self, in_features: int, out_features: int, scale: float) -> None:
        super().__init__(in_features, out_features, bias=False)
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * self.scale


class PatchWhitening(nn.Conv2d):
    """airbench's first layer: a k x k convolution whose filters are the principal components of
    the training images' k x k patches, each scaled to unit variance, with both signs (so ReLU
    keeps all of it). The filters are a buffer (never trained, saved and exported like weights);
    the bias trains. Until `init_from_data` runs they are the usual random init.
    """

    def __init__(self, cin: int, kernel: int = 2) -> None:
        super().__init__(cin, 2 * cin * kernel * kernel, kernel, padding=0, bias=True)
        weight = self.weight.detach().clone()
        del self.weight
        self.register_buffer("weight", weight)

    @torch.no_grad()
    def init_from_data(self, x: torch.Tensor, eps: float = 5e-4) -> None:
        """`x`: normalised training images (N, C, H, W), as the model sees them."""
        c, k = self.in_channels, self.kernel_size[0]
        patches = x.float().unfold(2, k, 1).unfold(3, k, 1)  # N, C, H', W', k, k
        patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, c * k * k).double()
        eigenvalues, eigenvectors = torch.linalg.eigh(patches.T @ patches / len(patches))
        order = eigenvalues.argsort(descending=True)
        filters = eigenvectors.T[order] / torch.sqrt(eigenvalues[order] + eps)[:, None]
        filters = filters.reshape(c * k * k, c, k, k).float()
        self.weight.copy_(torch.cat([filters, -filters]))


def _conv_bn(cin: int, cout: int, *, pool: bool, dirac: bool = False) -> list[nn.Module]:
    conv = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
    if dirac:  # airbench's identity init: the first min(cin, cout) filters pass their input channel through
        with torch.no_grad():
            nn.init.dirac_(conv.weight[:cin])
    layers: list[nn.Module] = [conv]
    if pool:
        layers.append(nn.MaxPool2d(2))
    layers += [nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
    return layers


def speedrun_net(
    in_shape, num_classes, *, widths: tuple[int, ...], stem: int, whiten: bool = False, dirac: bool = False
) -> nn.Module:
    if whiten:
        first = PatchWhitening(in_shape[0])
        layers: list[nn.Module] = [first, nn.ReLU(inplace=True)]
        cin = first.out_channels
    else:
        layers = [nn.Conv2d(in_shape[0], stem, 3, padding=1, bias=False), nn.BatchNorm2d(stem), nn.ReLU(inplace=True)]
        cin = stem
    for width in widths:
        layers += _conv_bn(cin, width, pool=True, dirac=dirac) + _conv_bn(width, width, pool=False, dirac=dirac)
        cin = width
    layers += [nn.AdaptiveMaxPool2d(1)]
    return Classifier(nn.Sequential(*layers), lambda f: ScaledLinear(f, num_classes, 1 / 9), in_shape)


for _name, _widths, _stem, _whiten, _dirac in (
    ("fastnet", (64, 128, 128), 32, False, False),
    ("fastnet-s", (32, 64, 128), 24, False, False),
    ("fastnet-l", (64, 256, 256), 32, False, False),
    ("fastnet-w", (64, 128, 128), 0, True, False),
    ("fastnet-wd", (64, 128, 128), 0, True, True),
):
    register(
        _name,
        description=(
            f"CIFAR speed-run net: "
            f"{'2x2 patch-whitening stem (from the training data)' if _whiten else f'stem {_stem} ch'}, "
            f"3 blocks of [Conv3, MaxPool2, BN, ReLU, Conv3, "
            f"BN, ReLU] ({'/'.join(map(str, _widths))} ch), global max-pool, scaled "
            f"linear{'; identity-initialised convolutions' if _dirac else ''}"
        ),
        default_input=(3, 32, 32),
        source="after Keller Jordan's airbench (2024) and David Page's ResNet-9 (2018) CIFAR-10 speed runs",
        widths=_widths,
        stem=_stem,
        whiten=_whiten,
        dirac=_dirac,
    )(speedrun_net)
