"""Fixed views: each training image shown in one of N views that never change, so the teacher
answers for every view once and its answers are kept (the feature cache's `Views`: view 0 as
evaluation sees the image, views 1..N-1 augmented; `--feature-views N`).

A view is a set of drawn parameters per image (a mirror, a translation, a random-resized crop's
box), so any batch of views is made again exactly; each epoch gives every image one of its views
at random (seeded by the epoch, as FeatureBatches does).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cnnctl.data.batches import PAD, centre_crop, crop_boxes, flip_where, random_boxes, translate
from cnnctl.data.sources import Split

FIXABLE = ("none", "flip", "shift", "flip-shift", "flip-crop", "rrc-flip")
FLIPS = ("flip", "flip-shift", "flip-crop", "rrc-flip")


@dataclass(frozen=True)
class ViewTable:
    """The parameters of `count` views of `n` images stored at `stored` (H, W), shown at `size`."""

    count: int
    augment: str
    seed: int
    size: tuple[int, int]
    stored: tuple[int, int]
    flips: torch.Tensor  # (count, n) bool
    shifts: torch.Tensor  # (count, n, 2) int64 offsets in [0, 2 pad]; pad, pad: none
    boxes: torch.Tensor | None  # (count, n, 4) random-resized crops (rrc-flip on larger stored images)

    @classmethod
    def draw(
        cls, count: int, augment: str, seed: int, n: int, size: tuple[int, int], stored: tuple[int, int]
    ) -> ViewTable:
        pad = PAD.get(augment, 0)
        gen = torch.Generator().manual_seed(seed * 1_000_003 + 7_919)
        flips = torch.zeros(count, n, dtype=torch.bool)
        shifts = torch.full((count, n, 2), pad, dtype=torch.int64)
        rrc = augment == "rrc-flip" and tuple(stored) != tuple(size)
        boxes = torch.zeros(count, n, 4) if rrc else None
        for v in range(1, count):
            if boxes is not None:
                boxes[v] = random_boxes(n, stored, gen)
            if pad:
                shifts[v] = torch.randint(0, 2 * pad + 1, (n, 2), generator=gen)
            if augment in FLIPS:
                flips[v] = torch.rand(n, generator=gen) < 0.5
        return cls(count, augment, seed, tuple(size), tuple(stored), flips, shifts, boxes)  # type: ignore[arg-type]

    def images(self, split: Split, rows: torch.Tensor, view: torch.Tensor) -> torch.Tensor:
        """The views `view` (per row) of the images `rows` of `split`: uint8, or float 0-255 after a
        random-resized crop, at `size`."""
        x = split.images(rows)
        if tuple(x.shape[-2:]) != self.size:
            plain = centre_crop(x, self.size)
            if self.boxes is not None and bool((view > 0).any()):
                cropped = view > 0
                out = plain.float()
                out[cropped] = crop_boxes(x[cropped], self.boxes[view[cropped], rows[cropped]], self.size)
                x = out
            else:
                x = plain
        pad = PAD.get(self.augment, 0)
        if pad:
            shift = self.shifts[view, rows]
            x = translate(x, pad, shift[:, 0], shift[:, 1])
        if self.augment in FLIPS:
            x = flip_where(x, self.flips[view, rows])
        return x
