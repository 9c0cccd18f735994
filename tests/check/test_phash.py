"""The perceptual hash against the imagehash library, and the blockwise pair search against brute force."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from cnnctl.check.phash import close_pairs, phash, popcount
from tests.conftest import CIFAR_MINI, PETS_MINI


def test_phash_equals_imagehash_bit_for_bit():
    imagehash = pytest.importorskip(
        "imagehash", reason="pip install imagehash to compare with the reference implementation"
    )
    paths = sorted(PETS_MINI.rglob("*.jpg")) + sorted(CIFAR_MINI.rglob("*.jpg"))[:40]
    for path in paths:
        img = Image.open(path)
        assert phash(img) == int(str(imagehash.phash(img)), 16), path


def test_close_pairs_match_brute_force_across_blocks():
    rng = np.random.default_rng(0)
    base = rng.integers(0, 2**63, 50, dtype=np.uint64)
    flips = np.uint64(1) << rng.integers(0, 64, 50).astype(np.uint64)
    hashes = np.concatenate([base, base ^ flips, rng.integers(0, 2**63, 100, dtype=np.uint64)])
    got = set()
    for i, j, d in close_pairs(hashes, 3, rows=7):
        got |= {(a, b, c) for a, b, c in zip(i.tolist(), j.tolist(), d.tolist())}
    want = {
        (a, b, bin(int(hashes[a]) ^ int(hashes[b])).count("1"))
        for a in range(len(hashes))
        for b in range(a + 1, len(hashes))
        if bin(int(hashes[a]) ^ int(hashes[b])).count("1") <= 3
    }
    assert got == want and len(want) >= 50
    assert popcount(np.array([0, 1, 2**64 - 1], dtype=np.uint64)).tolist() == [0, 1, 64]
