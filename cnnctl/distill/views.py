"""One decoded image, one augmented view, two preprocessings: what the student and its teacher see.

A distillation is consistent when the teacher answers for exactly the view the student learns
from (Beyer et al. 2022). The training images are decoded once, in the larger of the two
preprocessings (`source_prep`); each batch is drawn and augmented once there, then converted to
each model's own size, colour and normalisation (`convert`). Where the views are fixed (no
augmentation, or `--feature-views N` fixed crops and flips: viewtable.py), the teacher's answers
are computed once and kept in the cache (`teacher_outputs`), keyed as the feature cache keys its
entries.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from cnnctl.data.batches import Batches, normalize
from cnnctl.data.sources import Split
from cnnctl.distill.viewtable import ViewTable
from cnnctl.runtime.preprocess import Preprocess

FORMAT = 1
# PIL's "L" conversion: L = R * 299/1000 + G * 587/1000 + B * 114/1000 (ITU-R 601-2 luma).
LUMA = (0.299, 0.587, 0.114)
_MODES = {"bilinear": "bilinear", "bicubic": "bicubic", "nearest": "nearest"}


def _stats(prep: Preprocess, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    c = prep.channels
    mean = torch.tensor(prep.mean or [0.0] * c, dtype=torch.float32, device=device).reshape(1, c, 1, 1)
    std = torch.tensor(prep.std or [1.0] * c, dtype=torch.float32, device=device).reshape(1, c, 1, 1)
    return mean, std


def convert(x: torch.Tensor, src: Preprocess, dst: Preprocess) -> torch.Tensor:
    """A batch normalised for `src` (N, C, H, W float32) as `dst` would have it: back to pixel
    values (x * std + mean), colour converted (RGB -> luma as PIL's "L"; grey -> RGB repeats it),
    resized to `dst.size` with `dst.interpolation` (antialiased when shrinking), normalised with
    `dst`'s mean and std. Same size and colour: only the normalisation changes, exactly."""
    if same_input(src, dst):
        if list(src.mean) == list(dst.mean) and list(src.std) == list(dst.std):
            return x
    mean_s, std_s = _stats(src, x.device)
    pixels = x.float() * std_s + mean_s  # p / 255, as the normalisation saw it
    if src.channels == 3 and dst.channels == 1:
        w = torch.tensor(LUMA, dtype=torch.float32, device=x.device).reshape(1, 3, 1, 1)
        pixels = (pixels * w).sum(1, keepdim=True)
    elif src.channels == 1 and dst.channels == 3:
        pixels = pixels.expand(-1, 3, -1, -1)
    if tuple(pixels.shape[-2:]) != tuple(dst.size):
        mode = _MODES.get(dst.interpolation, "bilinear")
        smooth = mode != "nearest"
        pixels = F.interpolate(
            pixels,
            size=tuple(dst.size),
            mode=mode,
            antialias=smooth,
            **({"align_corners": False} if smooth else {}),
        ).clamp_(0.0, 1.0)
    mean_d, std_d = _stats(dst, x.device)
    out = (pixels - mean_d) / std_d
    return (
        out.contiguous(memory_format=torch.channels_last) if x.is_contiguous(memory_format=torch.channels_last) else out
    )


def same_input(a: Preprocess, b: Preprocess) -> bool:
    """Whether two preprocessings give inputs of one shape (channels and size)."""
    return a.channels == b.channels and tuple(a.size) == tuple(b.size)


def source_prep(student: Preprocess, teacher: Preprocess) -> Preprocess:
    """The preprocessing the training views are drawn in: the larger of the two models' inputs
    (a view is shrunk for the smaller model, never enlarged), in colour if either model is."""
    big = teacher if teacher.size[0] * teacher.size[1] > student.size[0] * student.size[1] else student
    channels = max(student.channels, teacher.channels)
    if big.channels == channels:
        return big
    c = channels
    return Preprocess(
        channels=c,
        size=big.size,
        mean=(big.mean * c)[:c] if big.mean else [],
        std=(big.std * c)[:c] if big.std else [],
        interpolation=big.interpolation,
        resize=big.resize,
        resize_size=big.resize_size,
    )


def stored_prep(prep: Preprocess) -> Preprocess:
    """How training images are stored for `prep`: photos cropped for evaluation are stored at the
    shorter side's size (square), so random-resized crops can reach outside the centre crop."""
    if prep.resize != "crop":
        return prep
    s = prep.resize_size
    return Preprocess(
        channels=prep.channels,
        size=(s, s),
        mean=list(prep.mean),
        std=list(prep.std),
        interpolation=prep.interpolation,
        resize="crop",
        resize_size=s,
    )


def fixed_views(batches: Batches, count: int) -> str | None:
    """Why the views of `batches` cannot be fixed (None: they can): `count` 1 without augmentation,
    or `count` > 1 views of crops and flips (`--feature-views`). RandAugment, MixUp/CutMix and the
    alternating flip change every epoch."""
    from cnnctl.distill.viewtable import FIXABLE

    changing = batches.policy is not None or batches.mix is not None or batches.coins is not None
    if count <= 1:
        return None if batches.augment == "none" and not changing else "augmented views change every epoch"
    if batches.augment not in FIXABLE or changing:
        return (
            f"--feature-views {count} fixes crops and flips ({', '.join(FIXABLE[1:])}); RandAugment, "
            f"mixing and --alternate-flip change every epoch"
        )
    return None


def outputs_key(teacher_sha: str, teacher_prep: Preprocess, source: Batches, table: ViewTable, amp: str) -> str:
    """The teacher-outputs cache key: the teacher file's bytes, the views (the images, how they are
    stored and drawn, the preprocessing each model sees) and the precision the teacher ran in."""
    from cnnctl.train.features import Views, images_identity

    spec = {
        "format": FORMAT,
        "teacher": teacher_sha,
        "teacher_preprocess": teacher_prep.to_dict(),
        "source_preprocess": source.prep.to_dict(),
        "images": images_identity(source.split),
        "views": Views(table.count, table.augment, table.seed).key(),
        "amp": amp,
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:32]


Answer = Callable[[torch.Tensor], torch.Tensor]  # teacher-preprocessed batch -> logits (float32)


@dataclass(frozen=True)
class Fixed:
    """Fixed views and the teacher's answers for each: (views, images, classes)."""

    table: ViewTable
    answers: torch.Tensor


@dataclass(frozen=True)
class Store:
    """Where the teacher's answers are kept (one entry per machine) and where progress is said."""

    cache_dir: Path
    log: Callable[[str], None]


def view_batch(source: Batches, table: ViewTable, rows: torch.Tensor, view: torch.Tensor) -> torch.Tensor:
    """The views of `rows`, on the device and normalised as `source` normalises its batches."""
    x = table.images(source.split, rows, view).to(source.device, non_blocking=True)
    if source.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return normalize(x, source.mean, source.std)


def teacher_outputs(
    answer: Answer, teacher_prep: Preprocess, source: Batches, table: ViewTable, key: str, store: Store
) -> Fixed:
    """The teacher's logits for every view of every image of `source.split`, from the cache entry
    `key` when complete, else computed once (one process per machine) and stored."""
    from cnnctl.data.cache import cached_array

    split, log = source.split, store.log
    n = len(split)

    def chunks(v: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for lo in range(0, n, source.batch_size):
            rows = torch.arange(lo, min(n, lo + source.batch_size))
            x = view_batch(source, table, rows, torch.full_like(rows, v))
            yield rows, answer(convert(x, source.prep, teacher_prep))

    classes = next(chunks(0))[1].shape[1]
    shape = (table.count, n, classes)
    data = store.cache_dir / f"teacher-{key}.float32"
    computed: list[bool] = []

    def fill(out: torch.Tensor, where: str) -> None:
        from cnnctl.progress import Meter

        computed.append(True)
        log(f"teacher: answering once for {n} training image(s) x {table.count} fixed view(s) -> {where}")
        meter = Meter(table.count * n, "through the teacher", verb="answering", done="answered", unit="image views")
        for v in range(table.count):
            for rows, logits in chunks(v):
                out[v, rows] = logits.float().cpu()
                meter.update(v * n + int(rows[-1]) + 1)
        log(meter.summary())

    def compute(tmp: Path) -> dict:
        size = int(torch.Size(shape).numel())
        fill(torch.from_file(str(tmp), shared=True, size=size, dtype=torch.float32).view(shape), str(data))
        return {"images": n, "views": table.count, "what": "teacher outputs"}

    try:
        entry = cached_array(
            data, key, shape, torch.float32, compute, log, "computing the teacher's outputs", format=FORMAT
        )
    except OSError as exc:
        log(
            f"teacher: cannot use the cache folder {store.cache_dir} ({exc.strerror or exc}); keeping its answers in memory"
        )
        out = torch.empty(shape, dtype=torch.float32)
        fill(out, "memory")
        return Fixed(table, out)
    if not computed:
        log(f"teacher: answers for {n} training image(s) x {table.count} fixed view(s) from the cache ({data.name})")
    return Fixed(table, entry.array)


class DistillBatches:
    """Training batches of (student input, labels, teacher logits) of the same views: drawn from
    `source` (the images in the source preprocessing, augmented and mixed there) and converted to
    the student's preprocessing and the teacher's; with `fixed`, each image shown in one of its
    fixed views and the teacher's answers read from the cache. `answer` None (alpha 1: the labels
    alone) yields (input, labels) exactly as training does."""

    def __init__(
        self,
        source: Batches,
        student_prep: Preprocess,
        teacher_prep: Preprocess,
        answer: Answer | None,
        fixed: Fixed | None = None,
    ) -> None:
        self.source, self.student_prep, self.teacher_prep = source, student_prep, teacher_prep
        self.answer, self.fixed = answer, fixed
        self.split, self.batch_size, self.prep = source.split, source.batch_size, student_prep
        self.device, self.channels_last = source.device, source.channels_last
        self.augment, self.policy, self.mix = source.augment, source.policy, source.mix

    def __len__(self) -> int:
        return len(self.source)

    def sizes(self) -> list[int]:
        return self.source.sizes()

    def epoch(self, epoch: int = 0) -> Iterator[tuple[torch.Tensor, ...]]:
        if self.fixed is not None:
            yield from self._fixed(epoch, self.fixed)
            return
        for x, y in self.source.epoch(epoch):
            student = convert(x, self.source.prep, self.student_prep)
            if self.answer is None:
                yield student, y
                continue
            yield student, y, self.answer(convert(x, self.source.prep, self.teacher_prep))

    def _fixed(self, epoch: int, fixed: Fixed) -> Iterator[tuple[torch.Tensor, ...]]:
        gen, _ = self.source.order(epoch)  # the views are drawn after the order, from the same generator
        n, count = len(self.split), fixed.table.count
        view = torch.randint(count, (n,), generator=gen) if count > 1 else torch.zeros(n, dtype=torch.int64)
        for rows in self.source.batch_rows(epoch):
            x = view_batch(self.source, fixed.table, rows, view[rows])
            y = self.split.y[rows].to(self.device, non_blocking=True)
            teacher = fixed.answers[view[rows], rows].to(self.device, non_blocking=True)
            yield convert(x, self.source.prep, self.student_prep), y, teacher

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        return self.epoch(0)


def with_unlabeled(split: Split, extra: Split) -> Split:
    """`split` followed by images only the teacher labels (their labels -1: no task loss, no
    accuracy), in one store (both decoded in the same preprocessing)."""
    if tuple(split.store.shape[1:]) != tuple(extra.store.shape[1:]):
        raise ValueError("unlabeled images decoded at another size")
    y_extra = torch.full((len(extra), *split.y.shape[1:]), -1, dtype=split.y.dtype)
    paths = (split.paths or []) + (extra.paths or []) if split.paths is not None and extra.paths is not None else None
    return Split(torch.cat([split.images(), extra.images()]), torch.cat([split.y, y_extra]), paths)
