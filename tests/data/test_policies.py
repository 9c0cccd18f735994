"""RandAugment/TrivialAugment and MixUp/CutMix on whole batches: torchvision's v2 ops, reproducible."""

from __future__ import annotations

import pytest
import torch
from torchvision.transforms import v2

from cnnctl.data.batches import Augmentation, Batches, Order
from cnnctl.data.policies import BatchMix, PolicyAugment, seeded
from cnnctl.data.sources import load_source
from cnnctl.runtime.preprocess import Preprocess
from tests.conftest import CIFAR_MINI


@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    src = load_source(
        str(CIFAR_MINI),
        "",
        False,
        None,
        False,
        str(tmp_path_factory.mktemp("cache")),
        lambda m: None,
        "stretch",
        0.875,
        "bilinear",
    )
    prep = Preprocess(channels=3, size=(32, 32), mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25])
    return src.train, prep


def _batches(cifar, policy=None, mix=None, rank=0, world=1):
    split, prep = cifar
    return Batches(
        split,
        prep,
        64,
        channels_last=True,
        order=Order(shuffle=True, seed=5, rank=rank, world=world),
        augmentation=Augmentation(augment="flip-crop", policy=policy, mix=mix),
    )


def test_policy_is_v2_per_group_and_a_function_of_seed_epoch_batch(cifar):
    split, _ = cifar
    policy = PolicyAugment("randaugment", magnitude=9, group=8)
    x = split.images(torch.arange(32))
    with seeded(11):
        got = policy(x)
    with seeded(11):  # the same v2 RandAugment drawn once per group of 8
        want = torch.cat([v2.RandAugment(num_ops=2, magnitude=9)(part) for part in x.split(8)])
    assert got.dtype == torch.uint8 and torch.equal(got, want)
    assert not torch.equal(got, x)

    a = [xb for xb, _ in _batches(cifar, policy=PolicyAugment("trivialaugment", group=4)).epoch(3)]
    state = torch.get_rng_state()
    b = [xb for xb, _ in _batches(cifar, policy=PolicyAugment("trivialaugment", group=4)).epoch(3)]
    assert torch.equal(torch.get_rng_state(), state)  # the caller's RNG stream is left alone
    assert all(torch.equal(p, q) for p, q in zip(a, b))
    c = [xb for xb, _ in _batches(cifar, policy=PolicyAugment("trivialaugment", group=4)).epoch(4)]
    assert not torch.equal(a[0], c[0])
    plain = [xb for xb, _ in _batches(cifar).epoch(3)]
    assert not torch.equal(a[0], plain[0])  # the policy ran on top of the same flips and crops


def test_mixup_and_cutmix_give_soft_targets_of_the_batch_pairs(cifar):
    split, prep = cifar
    mix = BatchMix(10, mixup=0.4)
    x = torch.randn(16, 3, 32, 32)
    y = torch.arange(16) % 10
    with seeded(3):
        mixed, soft = mix(x, y)
    assert soft.shape == (16, 10) and torch.allclose(soft.sum(1), torch.ones(16))
    lam = float(soft[0, y[0]]) if y[0] != y[-1] else None
    assert lam is not None
    torch.testing.assert_close(
        mixed, lam * x + (1 - lam) * x.roll(1, 0)
    )  # v2.MixUp pairs each image with the previous one
    with seeded(3):
        cut, soft_cut = BatchMix(10, cutmix=1.0)(x, y)
    changed = (cut != x).any(1)  # (N, H, W): the pasted box
    area = float(changed[0].float().mean())
    assert float(soft_cut[0, y[-1]]) == pytest.approx(area, abs=1e-6)
    # mix_prob 0: every batch plain, as one-hot targets.
    same, hard = BatchMix(10, mixup=0.4, cutmix=1.0, prob=0.0)(x, y)
    assert torch.equal(same, x) and torch.equal(hard.argmax(1), y)


def test_mixed_batches_replay_and_split_over_ranks_like_one_process(cifar):
    mix = BatchMix(10, mixup=0.2, cutmix=1.0, prob=0.7)
    one = list(_batches(cifar, mix=mix).epoch(2))
    again = list(_batches(cifar, mix=mix).epoch(2))
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(one, again))
    assert one[0][1].dtype == torch.float32 and one[0][1].shape[1] == 10
    shards = [list(_batches(cifar, mix=mix, rank=r, world=2).epoch(2)) for r in range(2)]
    for b, (x, y) in enumerate(one):
        assert torch.equal(torch.cat([s[b][0] for s in shards]), x)
        assert torch.equal(torch.cat([s[b][1] for s in shards]), y)
