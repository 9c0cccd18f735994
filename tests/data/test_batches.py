"""Batches: the alternating flip (airbench's) against the random one."""

from __future__ import annotations

import pytest
import torch

from cnnctl.data.batches import Augmentation, Batches, Order
from cnnctl.data.sources import Split
from cnnctl.runtime.preprocess import Preprocess
from tests.conftest import assert_user_error, run_cli

pytestmark = pytest.mark.quick


def _flipped(batches: Batches, split: Split, epoch: int) -> torch.Tensor:
    """Which images (by index) an epoch shows mirrored."""
    state = torch.zeros(len(split), dtype=torch.bool)
    seen = 0
    for x, y in batches.epoch(epoch):
        originals = split.images(y).float() / 255
        mirrored = x.eq(originals.flip(3)).flatten(1).all(1)
        assert (mirrored | x.eq(originals).flatten(1).all(1)).all()  # every image is itself or its mirror
        state[y] = mirrored
        seen += len(y)
    assert seen == len(split)
    return state


def test_alternating_flip_mirrors_each_image_every_other_epoch():
    n = 400
    split = Split(
        torch.randint(0, 256, (n, 1, 3, 4), generator=torch.Generator().manual_seed(0), dtype=torch.uint8),
        torch.arange(n),
    )
    prep = Preprocess(channels=1, size=(3, 4), mean=[0.0], std=[1.0])
    alternating = Batches(
        split,
        prep,
        64,
        channels_last=False,
        order=Order(shuffle=True, seed=5),
        augmentation=Augmentation(augment="flip", alternate_flip=True),
    )
    epochs = [_flipped(alternating, split, e) for e in range(4)]
    assert 150 < int(epochs[0].sum()) < 250  # a fair coin per image in epoch 0
    assert (
        torch.equal(epochs[1], ~epochs[0]) and torch.equal(epochs[2], epochs[0]) and torch.equal(epochs[3], ~epochs[0])
    )
    # The same seed gives the same coins (resume and torchrun ranks); another seed other ones.
    again = Batches(
        split,
        prep,
        64,
        channels_last=False,
        order=Order(shuffle=True, seed=5),
        augmentation=Augmentation(augment="flip", alternate_flip=True),
    )
    assert torch.equal(_flipped(again, split, 3), epochs[3])
    other = Batches(
        split,
        prep,
        64,
        channels_last=False,
        order=Order(shuffle=True, seed=6),
        augmentation=Augmentation(augment="flip", alternate_flip=True),
    )
    assert not torch.equal(_flipped(other, split, 0), epochs[0])
    # Random flips, for contrast: an image's side in epoch 1 does not follow from epoch 0.
    random = Batches(
        split,
        prep,
        64,
        channels_last=False,
        order=Order(shuffle=True, seed=5),
        augmentation=Augmentation(augment="flip"),
    )
    agree = (_flipped(random, split, 0) == _flipped(random, split, 1)).float().mean()
    assert 0.35 < float(agree) < 0.65


def test_alternating_flip_needs_flips():
    assert_user_error(run_cli("train", "tiny", "--alternate-flip"), "--alternate-flip needs an --augment with flips")
