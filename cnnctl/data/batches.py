"""Shuffled batches gathered from uint8 images (in memory or memory-mapped), augmented and normalised as whole batches.

This replaces the tutorial's Dataset + per-sample transforms + DataLoader: no PIL and no Python
work per image inside an epoch. Shuffling and augmentation draw from generators seeded by
(seed, epoch), so an epoch is reproducible on its own, which is what makes resume exact.

Under torchrun (`world > 1`) every rank draws the same global batch, shuffle and augmentation
included, and keeps its own contiguous slice of it: N ranks see exactly the images one process
would, split N ways.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass

import torch

from cnnctl.data.policies import BatchMix, PolicyAugment, seeded
from cnnctl.data.sources import Split
from cnnctl.runtime.preprocess import Preprocess

PAD = {"flip-crop": 4, "flip-shift": 2, "shift": 2}


def normalize(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 (N, C, H, W) -> float32 (x / 255 - mean) / std: the same ops as preprocess.normalize.

    In place on one float copy (in `x`'s memory format), so a batch costs one float tensor.
    """
    return x.to(torch.float32).div_(255.0).sub_(mean).div_(std)


def random_translate(x: torch.Tensor, pad: int, gen: torch.Generator) -> torch.Tensor:
    """Zero-pad by `pad`, then crop back to size at a random offset per image (one gather)."""
    n = x.shape[0]
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    return translate(x, pad, dy, dx)


def translate(x: torch.Tensor, pad: int, dy: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
    """Zero-pad by `pad`, then crop back to size at offsets (`dy`, `dx`) in [0, 2 pad] per image."""
    n, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    batch = torch.arange(n)[:, None, None]
    rows = (dy[:, None] + torch.arange(h))[:, :, None]
    cols = (dx[:, None] + torch.arange(w))[:, None, :]
    # Advanced indexing over (N, H, W) with channels kept: result (N, H, W, C) -> (N, C, H, W).
    return padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)


def centre_crop(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The centre (H, W) of each image, with torchvision's rounding."""
    h, w = size
    top, left = int(round((x.shape[2] - h) / 2.0)), int(round((x.shape[3] - w) / 2.0))
    return x[:, :, top : top + h, left : left + w]


def random_resized_crop(
    x: torch.Tensor,
    size: tuple[int, int],
    gen: torch.Generator,
    scale: tuple[float, float] = (0.25, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> torch.Tensor:
    """A random crop of each image (area share in `scale`, aspect in `ratio`), resized to `size`.

    One call for the whole batch: torchvision's `roi_align` samples every image's own box
    bilinearly, so there is no per-image Python. Returns float32 in the 0-255 range.
    """
    return crop_boxes(x, random_boxes(x.shape[0], (x.shape[2], x.shape[3]), gen, scale, ratio), size)


def random_boxes(
    n: int,
    stored: tuple[int, int],
    gen: torch.Generator,
    scale: tuple[float, float] = (0.25, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> torch.Tensor:
    """`n` random crop boxes (x0, y0, x1, y1) of images `stored` (H, W) large: area share in `scale`,
    aspect in `ratio` (what `random_resized_crop` draws)."""
    hi, wi = stored
    area = torch.empty(n).uniform_(scale[0], scale[1], generator=gen) * hi * wi
    log_r = torch.empty(n).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=gen)
    r = torch.exp(log_r)
    bw = torch.sqrt(area * r).clamp(1, wi)
    bh = torch.sqrt(area / r).clamp(1, hi)
    x0 = torch.rand(n, generator=gen) * (wi - bw)
    y0 = torch.rand(n, generator=gen) * (hi - bh)
    return torch.stack([x0, y0, x0 + bw, y0 + bh], dim=1)


def crop_boxes(x: torch.Tensor, boxes: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Each image's box (x0, y0, x1, y1) resized to `size`: one call for the whole batch,
    torchvision's `roi_align` sampling every box bilinearly. Returns float32 in the 0-255 range."""
    from torchvision.ops import roi_align

    index = torch.arange(len(boxes), dtype=torch.float32)[:, None]
    rois = torch.cat([index, boxes.float()], dim=1)
    return roi_align(x.float(), rois, output_size=size, spatial_scale=1.0, sampling_ratio=2, aligned=True)


def flip_where(x: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """Mirror the images of the batch `x` where the bool mask `flip` (N,) is set."""
    return torch.where(flip[:, None, None, None], x.flip(3), x)


def random_flip(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    return flip_where(x, torch.rand(x.shape[0], generator=gen) < 0.5)


@dataclass(frozen=True)
class Order:
    """Which images an epoch visits, in which order, on this rank: shuffled or not (`seed`), each
    once or drawn with replacement by weight (`draw`, --sampler balanced), and this rank's slice
    of every global batch (`rank` of `world`)."""

    shuffle: bool = False
    seed: int = 0
    draw: torch.Tensor | None = None  # per-image weights: each epoch draws len(split) images with replacement
    rank: int = 0
    world: int = 1
    drop_last: bool = False


@dataclass(frozen=True)
class Augmentation:
    """What changes the training images, batch by batch: --augment's crops and flips (airbench's
    alternating flip), a policy (RandAugment/TrivialAugment) and MixUp/CutMix."""

    augment: str = "none"
    policy: PolicyAugment | None = None
    mix: BatchMix | None = None
    alternate_flip: bool = False


class Batches:
    """Iterate (inputs, labels) batches of a Split; `epoch(e)` is deterministic given (seed, e)."""

    def __init__(
        self,
        split: Split,
        prep: Preprocess,
        batch_size: int,
        *,
        order: Order | None = None,
        augmentation: Augmentation | None = None,
        device: torch.device | str = "cpu",
        channels_last: bool = True,
    ) -> None:
        order, aug = order or Order(), augmentation or Augmentation()
        self.split = split
        self.batch_size = batch_size
        self.shuffle, self.seed, self.draw = order.shuffle, order.seed, order.draw
        self.rank, self.world = order.rank, order.world
        self.drop_last = order.drop_last and len(split) > batch_size
        self.augment, self.policy, self.mix = aug.augment, aug.policy, aug.mix
        self.device = torch.device(device)
        self.channels_last = channels_last
        # airbench's alternating flip: one coin per image for epoch 0, the other side every odd epoch.
        self.coins = (
            torch.rand(len(split), generator=torch.Generator().manual_seed(self.seed * 1_000_003 - 1)) < 0.5
            if aug.alternate_flip
            else None
        )
        self.prep = prep
        self.size: tuple[int, int] = (prep.size[0], prep.size[1])  # the model's input; stored images may be larger
        shape = (1, -1, 1, 1)
        self.mean = torch.tensor(prep.mean or [0.0] * prep.channels, dtype=torch.float32, device=self.device).reshape(
            shape
        )
        self.std = torch.tensor(prep.std or [1.0] * prep.channels, dtype=torch.float32, device=self.device).reshape(
            shape
        )

    def __len__(self) -> int:
        full, rest = divmod(len(self.split), self.batch_size)
        # A last batch smaller than the number of ranks cannot give every rank an image: dropped.
        return full if self.drop_last or rest < self.world else full + 1

    def sizes(self) -> list[int]:
        """The (global) number of images in each batch of an epoch."""
        n = len(self.split)
        return [min(n, (b + 1) * self.batch_size) - b * self.batch_size for b in range(len(self))]

    def order(self, epoch: int) -> tuple[torch.Generator, torch.Tensor | None]:
        """Epoch `epoch`'s generator and the order it draws (None: the split's own order); the
        augmentation draws from the same generator after it (features.FeatureBatches shares this)."""
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        n = len(self.split)
        if self.draw is not None:
            return gen, torch.multinomial(self.draw, n, replacement=True, generator=gen)
        return gen, torch.randperm(n, generator=gen) if self.shuffle else None

    def batch_rows(self, epoch: int) -> Iterator[torch.Tensor]:
        """The split rows each of epoch `epoch`'s batches takes on this rank, in order: what `epoch`
        gathers, for batches of things stored per image (features, a teacher's answers)."""
        _, order = self.order(epoch)
        n = len(self.split)
        for b in range(len(self)):
            rows = torch.arange(b * self.batch_size, min(n, (b + 1) * self.batch_size))
            if order is not None:
                rows = order[rows]
            yield rows.tensor_split(self.world)[self.rank] if self.world > 1 else rows

    def epoch(self, epoch: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches of float inputs and labels: int64 (N,), or float (N, classes) soft targets with a `mix`."""
        gen, order = self.order(epoch)
        n = len(self.split)
        for b in range(len(self)):
            sl = slice(b * self.batch_size, min(n, (b + 1) * self.batch_size))
            idx = sl if order is None else order[sl]
            x, y = self.split.images(idx), self.split.y[idx]
            if tuple(x.shape[-2:]) != self.size:
                x = random_resized_crop(x, self.size, gen) if self.augment == "rrc-flip" else centre_crop(x, self.size)
            if self.augment in PAD:
                x = random_translate(x, PAD[self.augment], gen)
            if self.augment in ("flip-crop", "flip-shift", "flip", "rrc-flip"):
                x = random_flip(x, gen) if self.coins is None else flip_where(x, self.coins[idx] ^ bool(epoch % 2))
            with seeded((self.seed * 1_000_003 + epoch) * 65_537 + b) if (self.policy or self.mix) else nullcontext():
                if self.policy is not None:
                    x = self.policy(
                        x if x.dtype == torch.uint8 else x.round_().to(torch.uint8)
                    )  # rrc-flip gives float 0-255
                if self.mix is not None:
                    # Mixed on the whole global batch (pairs cross rank slices), then sliced: N ranks
                    # train on exactly what one process would.
                    x, y = self.mix(normalize(self._to_device(x), self.mean, self.std), y.to(self.device))
            if self.world > 1:
                x, y = x.tensor_split(self.world)[self.rank], y.tensor_split(self.world)[self.rank]
            if self.mix is None:
                x = normalize(self._to_device(x), self.mean, self.std)
            yield x, y.to(self.device, non_blocking=True)

    def _to_device(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)  # on uint8: a quarter of the bytes
        return x

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.epoch(0)


def shard(split: Split, rank: int, world: int) -> Split:
    """Rank `rank`'s contiguous share of `split` (for validation and test passes)."""
    if world <= 1:
        return split
    return split.take(torch.arange(*shard_range(len(split), rank, world)))


def shard_range(n: int, rank: int, world: int) -> tuple[int, int]:
    """Rows [lo, hi) of `n` that are rank `rank`'s contiguous share."""
    return n * rank // world, n * (rank + 1) // world
