"""Which weights train, and at what rate: `--freeze`, `--unfreeze-at`, per-group learning rates.

- `Freezer` freezes everything but the head (a linear probe): no gradients, and BatchNorm layers
  in eval mode so their running statistics stay as they were; `unfreeze_at` epoch N releases
  them (probe, then fine-tune). Frozen tensors come out bit-identical.
- `param_groups` gives the head the base learning rate and the rest `backbone_lr_scale` times it
  (and, with `bn_bias_lr_scale`, BatchNorm biases their own multiple, their weights fixed), as
  typed `ParamGroup`s; the epoch loop (engine.Stepping) multiplies each group's `lr_scale` into
  the scheduled rate.
"""

from __future__ import annotations

import types
from dataclasses import dataclass

from torch import nn

from cnnctl.errors import UsageError

HEAD_NAMES = ("classifier", "fc", "head", "heads")


def head_of(model: nn.Module) -> tuple[str, nn.Module]:
    """The classifier head: the first of `classifier`, `fc`, `head`, `heads` the model has."""
    for name in HEAD_NAMES:
        module = getattr(model, name, None)
        if isinstance(module, nn.Module):
            return name, module
    last = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not last:
        raise UsageError("--freeze backbone: this model has no classifier head (no Linear layer) to keep training")
    return last[-1]


def _stay_eval(self: nn.Module, mode: bool = True) -> nn.Module:
    return nn.Module.train(self, False)


class Freezer:
    """Freeze all but the head until epoch `unfreeze_at` (0: for the whole run)."""

    def __init__(self, model: nn.Module, mode: str, unfreeze_at: int = 0, keep_bn_stats: bool = False) -> None:
        self.model, self.mode, self.unfreeze_at, self.keep_bn_stats = model, mode, unfreeze_at, keep_bn_stats
        self.head_name, head = head_of(model) if mode != "none" else ("", None)
        self.head_params = {id(p) for p in head.parameters()} if head is not None else set()
        self.frozen = False

    def frozen_at(self, epoch: int) -> bool:
        return self.mode == "backbone" and (self.unfreeze_at <= 0 or epoch < self.unfreeze_at)

    def apply(self, epoch: int) -> bool:
        """Set the state for `epoch`; returns True when it changed."""
        want = self.frozen_at(epoch)
        if want == self.frozen:
            return False
        head_modules = (
            {id(m) for m in dict(self.model.named_modules())[self.head_name].modules()} if self.head_name else set()
        )
        for p in self.model.parameters():
            if id(p) not in self.head_params:
                p.requires_grad_(not want)
        for m in self.model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and id(m) not in head_modules:
                if want or self.keep_bn_stats:
                    m.train = types.MethodType(_stay_eval, m)  # type: ignore[method-assign]  # model.train() leaves it in eval mode
                    m.eval()
                else:
                    m.__dict__.pop("train", None)
        self.frozen = want
        return True


def batchnorms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def batchnorm_params(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(weights, biases) of the model's BatchNorm layers."""
    norms = [m for m in batchnorms(model) if m.affine]
    return [m.weight for m in norms], [m.bias for m in norms]


def set_batchnorm_momentum(model: nn.Module, momentum: float) -> int:
    """Give every BatchNorm layer this running-statistics momentum; returns how many there are."""
    norms = batchnorms(model)
    for m in norms:
        m.momentum = momentum
    return len(norms)


@dataclass
class ParamGroup:
    """One optimizer parameter group and its share of the scheduled learning rate and weight decay."""

    name: str
    params: list[nn.Parameter]
    lr_scale: float = 1.0
    wd_scale: float = 1.0


def param_groups(
    model: nn.Module, freezer: Freezer | None, backbone_lr_scale: float, bn_bias_lr_scale: float = 0.0
) -> list[ParamGroup]:
    """Optimizer groups: the head at the base rate, the backbone at `backbone_lr_scale` times it.

    Frozen parameters are in the backbone group too (they get no gradients while frozen, so the
    optimizer leaves them untouched), so unfreezing needs no new optimizer.

    `bn_bias_lr_scale` > 0 is airbench's "scalebias": BatchNorm weights stay as they are (1 in a
    fresh net; left out of the optimizer, no gradients) and BatchNorm biases train at that many
    times their group's rate, with `wd_scale` 1 / that, so that weight decay takes the same share
    of them per step as of every other parameter.
    """
    bn_weights, bn_biases = batchnorm_params(model) if bn_bias_lr_scale else ([], [])
    for w in bn_weights:
        w.requires_grad_(False)
    skip = {id(p) for p in bn_weights + bn_biases}
    if freezer is None and backbone_lr_scale == 1.0:
        groups = [ParamGroup("all", [p for p in model.parameters() if id(p) not in skip])]
    else:
        head = freezer.head_params if freezer is not None else {id(p) for p in head_of(model)[1].parameters()}
        groups = [ParamGroup("head", [p for p in model.parameters() if id(p) in head and id(p) not in skip])]
        rest = [p for p in model.parameters() if id(p) not in head and id(p) not in skip]
        if rest:
            groups.append(ParamGroup("backbone", rest, lr_scale=backbone_lr_scale))
    if bn_biases:
        groups.append(
            ParamGroup(
                "bn_bias", bn_biases, lr_scale=bn_bias_lr_scale * backbone_lr_scale, wd_scale=1.0 / bn_bias_lr_scale
            )
        )
    return groups
