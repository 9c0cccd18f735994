"""Perceptual hashes: 64-bit DCT hashes (pHash) and their pairwise Hamming distances. Torch-free.

`phash` is the classic DCT hash (Zauner 2010; what the `imagehash` library's `phash` computes):
the image as 32x32 grayscale (Lanczos), its 2-D DCT-II, the 8x8 lowest frequencies, each bit set
where the coefficient is above their median. Re-encoding, resizing and mild colour changes move
few bits; different photos differ in about half of them. Written here (12 lines of numpy) rather
than depending on `imagehash`, which brings SciPy and PyWavelets (~40 MB) for this one function;
tests/check/test_phash.py checks it bit for bit against `imagehash` where that is installed.

On small images (digits, 32x32 photos) 64 bits of low frequencies say too little: distinct MNIST
digits come within 2 bits of each other. So a pair within the hash distance is a duplicate only
when the 16x16 grayscale thumbnails also agree (mean absolute difference <= 3.5 of 255). Measured
here: JPEG re-encodings (quality 50) of PetImages/CIFAR-10/MNIST differ by at most 0.5/3.4/5.1,
distinct photos within 6 bits by >= 8.5 (CIFAR-10) and distinct digits by 2.7-13 (median 13):
near-duplicates among tiny line drawings stay uncertain; exact copies are always found.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from PIL import Image

SIDE = 32
LOW = 8


def _dct_matrix(n: int) -> np.ndarray:
    """The (unnormalised) DCT-II as a matrix: X = D @ x, D[k, i] = 2 cos(pi k (2i + 1) / 2n)."""
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    return 2.0 * np.cos(np.pi * k * (2 * i + 1) / (2 * n))


_D = _dct_matrix(SIDE)


def phash(img: Image.Image) -> int:
    """The 64-bit DCT hash of a PIL image of any mode and size, as an unsigned int."""
    small = img.convert("L").resize((SIDE, SIDE), Image.Resampling.LANCZOS)
    pixels = np.asarray(small, dtype=np.float64)
    low = (_D @ pixels @ _D.T)[:LOW, :LOW]
    bits = (low > np.median(low)).ravel()
    return int(np.packbits(bits).view(">u8")[0])


THUMB = 16


def thumbnail(img: Image.Image) -> bytes:
    """16x16 grayscale (box filter) as 256 bytes: the second opinion on a near-duplicate pair."""
    return img.convert("L").resize((THUMB, THUMB), Image.Resampling.BOX).tobytes()


def popcount(x: np.ndarray) -> np.ndarray:
    """Set bits per element of a uint64 array."""
    if hasattr(np, "bitwise_count"):  # numpy >= 2.0
        return np.bitwise_count(x)
    x = x - ((x >> np.uint64(1)) & np.uint64(0x5555555555555555))
    x = (x & np.uint64(0x3333333333333333)) + ((x >> np.uint64(2)) & np.uint64(0x3333333333333333))
    x = (x + (x >> np.uint64(4))) & np.uint64(0x0F0F0F0F0F0F0F0F)
    return (x * np.uint64(0x0101010101010101)) >> np.uint64(56)


# Elements of one block of XORed hashes (uint64): 32 MiB, whatever the number of images.
BLOCK = 1 << 22


def close_pairs(
    hashes: np.ndarray, max_distance: int, rows: int = 0
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Every pair i < j with Hamming(hashes[i], hashes[j]) <= max_distance, as (i, j, distance)
    arrays, `rows` rows at a time (0: as many as keep a block at BLOCK elements)."""
    h = np.ascontiguousarray(hashes, dtype=np.uint64)
    n = len(h)
    rows = rows or max(1, BLOCK // max(1, n))
    for start in range(0, n, rows):
        block = h[start : start + rows]
        d = popcount(block[:, None] ^ h[None, start:])  # against itself and everything after it
        i, j = np.nonzero(d <= max_distance)
        keep = j > i  # upper triangle: j is offset by `start` like i
        i, j = i[keep], j[keep]
        yield i + start, j + start, d[i, j].astype(np.int64)
