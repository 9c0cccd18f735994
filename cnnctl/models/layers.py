"""Building blocks shared by the architectures."""

from __future__ import annotations

import torch
from torch import nn


def flat_features(features: nn.Module, in_shape: tuple[int, int, int]) -> int:
    """Number of values per image that `features` produces for `in_shape`.

    This is the dummy forward pass that sizes every classifier head, so no flatten size is
    ever computed by hand. It runs on whatever device the parameters live on (including the
    meta device, where it costs nothing).
    """
    param = next(features.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    was_training = features.training
    features.eval()
    try:
        with torch.no_grad():
            out = features(torch.zeros(1, *in_shape, device=device))
    except RuntimeError:
        from cnnctl.models.shapes import trace

        # Say which layer could not take the input, the way `cnnctl shapes` would.
        diagnosis = trace(features, in_shape).diagnosis
        if diagnosis:
            raise RuntimeError(diagnosis.split(". Fix:")[0]) from None
        raise
    features.train(was_training)
    if out.numel() == 0:
        raise RuntimeError("the feature extractor produces an empty output")
    return int(out.flatten(1).shape[1])


class Classifier(nn.Module):
    """`features` -> Flatten -> `head`: the shape of every tutorial CNN.

    `head_fn(n)` builds the head for `n` flattened features, measured by a dummy forward pass.
    Flatten (a reshape) works on channels_last tensors, where `.view` would fail.
    """

    def __init__(self, features: nn.Module, head_fn, in_shape: tuple[int, int, int]) -> None:
        super().__init__()
        self.features = features
        self.flatten = nn.Flatten()
        self.classifier = head_fn(flat_features(features, in_shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.flatten(self.features(x)))


@torch.no_grad()
def init_from_data(model: nn.Module, x: torch.Tensor) -> list[str]:
    """Data-dependent initialisation: every module with an `init_from_data` method (so far the
    patch-whitening stem of fastnet-w, which sits at the model's input) gets `x`, a sample of
    normalised training images. Returns the names of the modules initialised."""
    done = []
    for name, module in model.named_modules():
        if module is not model and hasattr(module, "init_from_data"):
            module.init_from_data(x)
            done.append(name)
    return done
