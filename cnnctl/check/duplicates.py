"""Exact and near-duplicate groups among scanned images, and what each group means.

Exact: the same bytes (blake2b). Near: perceptual hashes within `near` bits (re-encoded, resized
or lightly edited copies; see phash.py for the calibration). Pairs are joined into groups
(union-find), so a chain of copies is one group. A group whose members sit in different roots
(train vs test vs a holdout) is leakage; one whose members carry different labels is a
contradiction the model cannot satisfy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cnnctl.check.phash import THUMB, close_pairs

# Near pairs must also agree on their 16x16 thumbnails (mean absolute difference, of 255): phash.py.
THUMB_MAD = 3.5
# ... or, with a backbone (`check --model tv:NAME --pretrained`), on what they show: the cosine of
# their ImageNet embeddings. On PetImages, 20 copies cropped by 2 px, resized and re-encoded at
# quality 60 measure 0.906-0.973 with mobilenet_v2 (their thumbnails differ by up to 5.1, so 11 of
# them failed THUMB_MAD); distinct photos that are also perceptual-hash neighbours do not occur there
# (the closest distinct pair anywhere in the set: 0.903, and not a hash neighbour). docs/check.md.
EMBED_COSINE = 0.88
# With embeddings, pairs up to this many bits beyond `near` are candidates too (confirmed by the
# embeddings alone): one of 20 such copies of the committed photos measures 8 bits.
EMBED_EXTRA_BITS = 4


@dataclass
class Item:
    """One decodable image: where it is (root index, class label, path) and its hashes."""

    root: int
    label: str
    path: str
    digest: str
    phash: int
    thumb: bytes = b""


@dataclass
class Group:
    members: list[int]  # indices into the items
    kind: str  # "exact": every member has the same bytes; "near": perceptual hashes close
    distance: int  # largest Hamming distance between joined members (0 for exact)
    roots: list[int] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)

    @property
    def across_roots(self) -> bool:
        return len(self.roots) > 1

    @property
    def conflicting(self) -> bool:
        return len(self.labels) > 1

    def to_dict(self, items: Sequence[Item], root_names: Sequence[str]) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "distance": self.distance,
            "roots": [root_names[r] for r in self.roots],
            "labels": self.labels,
            "members": [
                {"path": items[i].path, "root": root_names[items[i].root], "label": items[i].label}
                for i in self.members
            ],
        }


class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def find_groups(items: Sequence[Item], near: int, embed: np.ndarray | None = None) -> list[Group]:
    """Groups of two or more items that are copies of each other; `near` < 0 turns off near matching.
    Near pairs (perceptual hashes within `near` bits) are confirmed by their thumbnails, or by the
    cosine of their embeddings (`embed`, L2-normalised rows aligned with `items`) when given."""
    n = len(items)
    uf = _UnionFind(n)
    by_digest: dict[str, int] = {}
    for i, item in enumerate(items):
        first = by_digest.setdefault(item.digest, i)
        if first != i:
            uf.union(first, i)
    distance = np.zeros(n, dtype=np.int64)  # per item: the largest near distance it was joined by
    if near >= 0 and n > 1:
        hashes = np.array([item.phash for item in items], dtype=np.uint64)
        thumbs = np.frombuffer(
            b"".join(item.thumb.ljust(THUMB * THUMB, b"\0") for item in items), dtype=np.uint8
        ).reshape(n, -1)
        reach = near + EMBED_EXTRA_BITS if embed is not None else near
        for left, right, dists in close_pairs(hashes, reach):
            same = (np.abs(thumbs[left].astype(np.int16) - thumbs[right]).mean(1) <= THUMB_MAD) & (dists <= near)
            if embed is not None:
                same |= (embed[left] * embed[right]).sum(1) >= EMBED_COSINE
            for a, b, dist in zip(left[same].tolist(), right[same].tolist(), dists[same].tolist()):
                uf.union(a, b)
                distance[a] = max(distance[a], dist)
                distance[b] = max(distance[b], dist)
    members: dict[int, list[int]] = {}
    for i in range(n):
        members.setdefault(uf.find(i), []).append(i)
    groups = []
    for idx in members.values():
        if len(idx) < 2:
            continue
        exact = len({items[i].digest for i in idx}) == 1
        groups.append(
            Group(
                idx,
                "exact" if exact else "near",
                0 if exact else int(distance[idx].max()),
                sorted({items[i].root for i in idx}),
                sorted({items[i].label for i in idx}),
            )
        )
    groups.sort(key=lambda g: (not g.across_roots, not g.conflicting, g.members[0]))
    return groups
