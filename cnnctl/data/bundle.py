"""From a source to what training needs: train/val/test splits, statistics, fingerprint."""

from __future__ import annotations

import dataclasses
import hashlib
import sys
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from cnnctl.config import TrainConfig, parse_floats
from cnnctl.data.sources import DIGIT_SETS, Source, Split, default_cache_dir, load_source, redecode
from cnnctl.errors import DataError, UsageError
from cnnctl.preprocess import Preprocess
from cnnctl.specs import parse_image_size

# The validation split is drawn with this fixed seed, whatever --seed is, so runs with different
# seeds are selected on the same images.
VAL_SEED = 20240611


@dataclass
class DataBundle:
    """Everything a run needs from its data; tensors are uint8 (N, C, H, W)."""

    name: str
    classes: list[str]
    train: Split
    val: Split | None
    test: Split | None
    prep: Preprocess
    fingerprint: str
    notes: list[str] = field(default_factory=list)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.prep.channels, *self.prep.size)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "classes": len(self.classes),
            "train": len(self.train),
            "val": len(self.val) if self.val else 0,
            "test": len(self.test) if self.test else 0,
            "fingerprint": self.fingerprint,
        }


def channel_stats(split: Split) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of a split's uint8 images in [0, 1] units.

    From exact per-channel histograms of 256 bins, built over chunks of 4 MB of pixels: memory
    stays bounded however large the split, and the result does not depend on the chunking.
    """
    c = split.store.shape[1]
    hist = torch.zeros(c, 256, dtype=torch.int64)
    for chunk in split.chunks(4 << 20):
        for ch in range(c):
            hist[ch] += torch.bincount(chunk[:, ch].reshape(-1), minlength=256)
    values = torch.arange(256, dtype=torch.float64)
    n = hist.sum(1).double().clamp_min(1)
    mean = (hist.double() @ values) / n / 255.0
    std = ((hist.double() @ values.pow(2)) / n / 255.0**2 - mean.pow(2)).clamp_min(1e-12).sqrt()
    return [round(float(v), 6) for v in mean], [round(max(float(v), 1e-3), 6) for v in std]


def fingerprint(*splits: Split | None) -> str:
    """A short hash of the images and labels a run trained on.

    Images from the decode cache are named by the cache key (the files' identity and decode
    settings) and the rows taken from it; images in memory are hashed chunk by chunk.
    """
    h = hashlib.sha256()
    for s in splits:
        if s is None:
            continue
        if s.identity is not None:
            h.update(s.identity.encode())
            h.update((s.rows if s.rows is not None else torch.arange(len(s))).numpy().tobytes())
        else:
            for chunk in s.chunks():
                h.update(memoryview(chunk.contiguous().numpy()))
        h.update(s.y.numpy().tobytes())
    return h.hexdigest()[:16]


def split_off(split: Split, fraction: float) -> tuple[Split, Split | None]:
    """(train, val) with a fixed-seed random `fraction` held out."""
    if fraction <= 0:
        return split, None
    n_val = max(1, int(round(len(split) * fraction)))
    if n_val >= len(split):
        raise UsageError(f"--val-split {fraction} leaves no training images out of {len(split)}")
    perm = torch.randperm(len(split), generator=torch.Generator().manual_seed(VAL_SEED))
    return split.take(perm[n_val:].sort().values), split.take(perm[:n_val].sort().values)


def build(cfg: TrainConfig, log: Callable[[str], None] = lambda m: print(m, file=sys.stderr)) -> DataBundle:
    """Load `cfg.data` and split it; mean/std come from the training split only."""
    size = parse_image_size(cfg.image_size) if cfg.image_size else None
    resize = "stretch" if cfg.resize == "auto" else cfg.resize
    interpolation = "bilinear" if cfg.interpolation == "auto" else cfg.interpolation
    src: Source = load_source(cfg.data, cfg.data_dir, cfg.download, size, cfg.grayscale, cfg.cache_dir, log, resize, cfg.crop_pct,
                              interpolation)  # fmt: skip
    train, val = src.train, src.val
    if val is None:
        train, val = split_off(train, cfg.val_split)
        if val is not None and src.prep is not None and src.train_prep is not None and src.train_prep != src.prep:
            # The held-out images are judged as eval and predict will see them, not as stored for training.
            val = redecode(val, src.prep, default_cache_dir(cfg.cache_dir), log)
    if cfg.subset:
        perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(VAL_SEED + 1))
        train = train.take(perm[: cfg.subset].sort().values)
    if len(train) == 0:
        raise DataError(f"{cfg.data}: the training split is empty")
    mean, std = parse_floats(cfg.mean, "mean"), parse_floats(cfg.std, "std")
    if not mean or not std:
        stat_mean, stat_std = channel_stats(train)
        mean, std = mean or stat_mean, std or stat_std
    if len(mean) != src.channels or len(std) != src.channels:
        raise UsageError(f"--mean/--std need {src.channels} value(s) for {src.channels}-channel images")
    base = src.prep or Preprocess(channels=src.channels, size=src.size)
    prep = dataclasses.replace(base, mean=mean, std=std)
    digits = src.name in DIGIT_SETS
    if cfg.flip and digits and not cfg.allow_flip:
        raise UsageError(
            f"--augment {cfg.augment} flips images horizontally, which turns digits into other shapes; "
            f"use --augment shift for {src.name}, or add --allow-flip if you really mean it"
        )
    return DataBundle(src.name, src.classes, train, val, src.test, prep, fingerprint(train, val), src.notes)
