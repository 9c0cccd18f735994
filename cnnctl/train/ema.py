"""An exponential moving average of a model's weights (`--ema DECAY`), on torch's AveragedModel.

Parameters and floating-point buffers (BatchNorm's running statistics) are averaged after every
optimizer step; integer buffers are copied. The decay warms up as min(decay, (1 + n) / (10 + n))
after n updates (TensorFlow's ExponentialMovingAverage with num_updates, as timm and the
torchvision references' short runs rely on): in a 10-epoch run with 0.999 a plain average would
still remember the random start weights at the end of the first epochs.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel


def _warm_ema(decay: float):
    @torch.no_grad()
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], n_averaged: torch.Tensor) -> None:
        if torch.is_floating_point(averaged[0]):
            n = float(n_averaged)
            torch._foreach_lerp_(averaged, current, 1.0 - min(decay, (1.0 + n) / (10.0 + n)))
        else:
            torch._foreach_copy_(averaged, current)

    return update


class EMA:
    """The averaged copy of `source` (the plain module, not a DDP or compiled wrapper)."""

    def __init__(self, source: nn.Module, decay: float) -> None:
        self.source, self.decay = source, decay
        self.averaged = AveragedModel(source, multi_avg_fn=_warm_ema(decay), use_buffers=True)
        self.averaged.eval()

    @property
    def module(self) -> nn.Module:
        return self.averaged.module

    def update(self) -> None:
        self.averaged.update_parameters(self.source)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach() for k, v in self.averaged.state_dict().items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.averaged.load_state_dict(state)


class Lookahead:
    """airbench's lookahead (from hlb-cifar10): every `every` optimizer steps the slow weights move
    towards the model's, slow += (1 - rho) * (model - slow), and the model takes them, with
    rho = base**every * progress**power ramping from 0 to base**every over the run (move fast
    first, average hard at the end). Parameters and floating-point buffers (BatchNorm statistics)
    take part. At the end of every epoch the model takes the slow weights once more, so between
    epochs the two are the same: a checkpoint holds the whole state, and resume is exact.
    """

    def __init__(self, model: nn.Module, every: int, base: float = 0.95, power: float = 3.0) -> None:
        self.model, self.every, self.base, self.power = model, every, base, power
        self.slow: list[torch.Tensor] = []
        self.total = 0  # the planned number of optimizer steps, given to start_epoch by fit()

    def _live(self) -> list[torch.Tensor]:
        return [t for t in self.model.state_dict().values() if torch.is_floating_point(t)]

    @torch.no_grad()
    def start_epoch(self, total_steps: int) -> None:
        self.total = max(1, total_steps)
        self.slow = [t.detach().clone() for t in self._live()]

    @torch.no_grad()
    def after_step(self, step: int) -> None:
        if step % self.every:
            return
        rho = self.base**self.every * min(1.0, step / self.total) ** self.power
        live = self._live()
        torch._foreach_lerp_(self.slow, live, 1.0 - rho)
        torch._foreach_copy_(live, self.slow)

    @torch.no_grad()
    def end_epoch(self) -> None:
        torch._foreach_copy_(self._live(), self.slow)
