"""torchvision.transforms.v2's batch-level training augmentations, made reproducible.

- `PolicyAugment`: RandAugment / TrivialAugmentWide on uint8 (N, C, H, W) batches. A v2 policy
  called on a batch draws one op and magnitude for all of it, so the batch is cut into groups of
  `group` images and each group gets its own draw (group 1 = per image, as the reference trainers'
  per-sample transforms; larger groups cost fewer calls, docs/train.md has the measured cost).
- `BatchMix`: v2.MixUp / v2.CutMix (one of them per mixed batch when both are on) on a whole
  float batch, turning integer labels into soft (N, classes) targets.

v2 draws from torch's global generator, so `Batches` runs both under `seeded(...)`: a fork of
the global RNG seeded from (seed, epoch, batch). Every draw is then a function of those three
numbers, not of the history of the process, which is what makes a resumed run repeat the
uninterrupted one exactly (and keeps the caller's RNG stream untouched).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


class PolicyAugment:
    def __init__(self, policy: str, *, magnitude: int = 9, group: int = 8) -> None:
        from torchvision.transforms import v2

        if policy == "randaugment":
            self.transform = v2.RandAugment(num_ops=2, magnitude=magnitude)
        elif policy == "trivialaugment":
            self.transform = v2.TrivialAugmentWide()
        else:
            raise ValueError(policy)
        self.name, self.magnitude, self.group = policy, magnitude, group

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 (N, C, H, W) -> uint8 (N, C, H, W), contiguous."""
        if x.dtype != torch.uint8:
            raise TypeError("PolicyAugment works on uint8 batches")
        x = x.contiguous()
        if self.group >= x.shape[0]:
            return self.transform(x)
        return torch.cat([self.transform(part) for part in x.split(self.group)])


class BatchMix:
    def __init__(
        self, num_classes: int, *, mixup: float = 0.0, cutmix: float = 0.0, prob: float = 1.0, multilabel: bool = False
    ) -> None:
        from torchvision.transforms import v2

        self.multilabel, self.alphas = multilabel, [(k, a) for k, a in (("mixup", mixup), ("cutmix", cutmix)) if a > 0]
        mixes = []
        if mixup > 0:
            mixes.append(v2.MixUp(alpha=mixup, num_classes=num_classes))
        if cutmix > 0:
            mixes.append(v2.CutMix(alpha=cutmix, num_classes=num_classes))
        if not mixes:
            raise ValueError("BatchMix needs mixup or cutmix")
        self.num_classes = num_classes
        self.mix = mixes[0] if len(mixes) == 1 else v2.RandomChoice(mixes)
        self.prob = prob

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """float (N, C, H, W), int64 (N,) -> mixed float batch, float (N, classes) targets.
        Multi-label targets, float (N, classes), are mixed as vectors the same way."""
        if self.multilabel:
            return self._mix_vectors(x, y)
        if torch.rand(()) >= self.prob:
            return x, torch.nn.functional.one_hot(y, self.num_classes).to(torch.float32)
        return self.mix(x, y)

    def _mix_vectors(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """MixUp / CutMix as v2 does them (each image with the one before it in the batch, one
        Beta(alpha, alpha) draw per batch), on multi-hot label vectors: lam * y + (1 - lam) * y_prev,
        lam the kept area's share for CutMix."""
        y = y.to(torch.float32)
        if torch.rand(()) >= self.prob:
            return x, y
        kind, alpha = self.alphas[int(torch.randint(len(self.alphas), ()))]
        lam = float(torch.distributions.Beta(alpha, alpha).sample())
        x_prev, y_prev = x.roll(1, 0), y.roll(1, 0)
        if kind == "mixup":
            return x.mul(lam).add_(x_prev, alpha=1 - lam), y.mul(lam).add_(y_prev, alpha=1 - lam)
        h, w = x.shape[-2:]
        cy, cx = int(torch.randint(h, ())), int(torch.randint(w, ()))
        rh, rw = int(h * (1 - lam) ** 0.5 / 2), int(w * (1 - lam) ** 0.5 / 2)
        y0, y1, x0, x1 = max(cy - rh, 0), min(cy + rh, h), max(cx - rw, 0), min(cx + rw, w)
        out = x.clone()
        out[..., y0:y1, x0:x1] = x_prev[..., y0:y1, x0:x1]
        lam = 1 - (y1 - y0) * (x1 - x0) / (h * w)
        return out, y.mul(lam).add_(y_prev, alpha=1 - lam)
