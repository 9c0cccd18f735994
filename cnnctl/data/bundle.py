"""From a source to what training needs: train/val/test splits, statistics, fingerprint."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from cnnctl.config import DataConfig, parse_floats
from cnnctl.data.layout import NAMED_SETS
from cnnctl.data.manifest import Change, Manifest, SplitRecord, compare, deal, record_files, relative_to
from cnnctl.data.sources import Source, Split, default_cache_dir, label_spec, load_data, redecode, training_files
from cnnctl.errors import DataError, UsageError
from cnnctl.runtime.preprocess import Preprocess

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
    root: str = ""  # the absolute data folder ("" for a named set)
    excluded: Split | None = None  # training images left out by --subset
    skipped: tuple[str, ...] = ()  # files of the training folders that did not decode
    changes: tuple[dict[str, int | str], ...] = ()  # data changes accepted on resume (--accept-data-change)
    task: str = "single"  # or "multilabel": `y` rows are multi-hot float vectors
    label_file: str = ""  # the absolute label file the images were listed in ("" for folders and named sets)

    @property
    def multilabel(self) -> bool:
        return self.task == "multilabel"

    def manifest(self) -> Manifest:
        """Which images each split holds (written into the run directory as the split manifest)."""
        splits: dict[str, SplitRecord] = {}
        for name, split in (("train", self.train), ("val", self.val), ("test", self.test), ("unused", self.excluded)):
            if split is None:
                continue
            if self.root and split.paths is not None:
                splits[name] = record_files(self.root, split.paths, _first_labels(split.y))
            elif not self.root and name != "test":
                rows = split.rows if split.rows is not None else torch.arange(len(split))
                splits[name] = SplitRecord(rows=tuple(rows.tolist()))
        if self.root and self.skipped:  # unreadable files: known, so a later listing does not count them as new
            splits["skipped"] = record_files(self.root, self.skipped, [-1] * len(self.skipped))
        if self.label_file:
            return Manifest(self.label_file, splits, self.fingerprint, self.changes, root=self.root)
        return Manifest(self.root or self.name, splits, self.fingerprint, self.changes)

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


def _first_labels(y: torch.Tensor) -> list[int]:
    """A split's labels as the manifest records them: the class index; for multi-hot rows, the
    first label (-1: none). A label file's labels are read from the file again, never from here."""
    if y.dim() == 1:
        return y.tolist()
    has = y > 0.5
    return torch.where(has.any(1), has.float().argmax(1), torch.full((len(y),), -1)).tolist()


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
                h.update(chunk.contiguous().numpy().tobytes())
        h.update(s.y.numpy().tobytes())
    return h.hexdigest()[:16]


def select_splits(src: Source, val_split: float) -> tuple[Split, Split | None]:
    """(train, val) of a source as training draws them: its own validation split (a val/ folder),
    else a fixed-seed `val_split` of its training split. `cnnctl eval` of a run without a split
    manifest draws them with this function too."""
    if src.val is not None:
        return src.train, src.val
    return split_off(src.train, val_split)


def split_off(split: Split, fraction: float) -> tuple[Split, Split | None]:
    """(train, val) with a fixed-seed random `fraction` held out."""
    if fraction <= 0:
        return split, None
    train, val = held_out(len(split), fraction)
    return split.take(train), split.take(val)


def held_out(n: int, fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(train rows, val rows) of `n` images with a fixed-seed random `fraction` held out, sorted."""
    n_val = max(1, int(round(n * fraction)))
    if n_val >= n:
        raise UsageError(f"--val-split {fraction} leaves no training images out of {n}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(VAL_SEED))
    return perm[n_val:].sort().values, perm[:n_val].sort().values


def build(
    cfg: DataConfig,
    log: Callable[[str], None] = lambda m: print(m, file=sys.stderr),
    recorded: Manifest | None = None,
    accept_change: bool = False,
) -> DataBundle:
    """Load `cfg.data` and split it; mean/std come from the training split only.

    `recorded` is a resumed run's split manifest: the splits are then the recorded ones, and a data
    folder whose files changed since is refused unless `accept_change` (docs/train.md#resume).
    """
    change = _data_change(cfg, recorded, accept_change) if recorded is not None else None
    src: Source = load_data(cfg, log)
    root = src.root or ("" if cfg.data in NAMED_SETS else os.path.abspath(src.name))
    excluded: Split | None = None
    changes: tuple[dict[str, int | str], ...] = ()
    train, val = src.train, src.val
    if recorded is not None:
        train, val, excluded, changes = _recorded(src, root, recorded, cfg.val_split, change, log)
    else:
        train, val = select_splits(src, cfg.val_split)
    if (
        val is not None
        and src.val is None
        and src.prep is not None
        and src.train_prep is not None
        and src.train_prep != src.prep
    ):
        # The held-out images are judged as eval and predict will see them, not as stored for training.
        val = redecode(val, src.prep, default_cache_dir(cfg.cache_dir), log)
    if cfg.subset and recorded is None:
        perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(VAL_SEED + 1))
        excluded = train.take(perm[cfg.subset :].sort().values)
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
    skipped = src.train.skipped + (src.val.skipped if src.val is not None else ())
    return DataBundle(
        src.name,
        src.classes,
        train,
        val,
        src.test,
        prep,
        fingerprint(train, val),
        src.notes,
        root=root,
        excluded=excluded,
        changes=changes,
        skipped=skipped,
        task=src.task,
        label_file=src.name if src.root else "",
    )


# The recorded groups a data folder's training files fall in (test/ is not compared: it is read whole).
RECORDED = ("train", "val", "unused", "skipped")


def _data_change(cfg: DataConfig, recorded: Manifest, accept: bool) -> Change | None:
    """How the data folder (or the label file's listing) differs from what the run recorded, before
    anything is decoded (a grown folder is refused at once unless `accept`); None for a named set."""
    data = cfg.data
    where = data if data in NAMED_SETS else os.path.abspath(data)
    if recorded.data != where:
        raise DataError(
            f"this run was trained on {recorded.data}, not {where}; resume with the same --data, or start a new run"
        )
    if not recorded.is_folder:
        return None
    change = compare(recorded, recorded.images, training_files(data, label_spec(cfg)), RECORDED)
    if change and not accept:
        raise DataError(
            f"{recorded.data} changed since this run recorded its splits: {change.summary()}; start a new run "
            f"(--out NEW), or add --accept-data-change to go on (recorded files keep their split, new ones are "
            f"dealt to train/val)"
        )
    return change


def _recorded(
    src: Source, root: str, recorded: Manifest, val_split: float, change: Change | None, log: Callable[[str], None]
) -> tuple[Split, Split | None, Split | None, tuple[dict[str, int | str], ...]]:
    """(train, val, excluded, accepted changes): the splits a resumed run recorded, on the data as
    it is now (`change`: how its listing differs, already accepted)."""
    where = root or src.name
    if not root:  # a named set: rows of its training split, which cannot change

        def rows(name: str) -> Split | None:
            rec = recorded.record(name)
            if rec is None or rec.rows is None:
                return None
            if rec.rows and max(rec.rows) >= len(src.train):
                raise DataError(
                    f"{where} has {len(src.train)} training images but the run recorded row {max(rec.rows)}; is it the same data set?"
                )
            return src.train.take(torch.as_tensor(rec.rows, dtype=torch.int64))

        train = rows("train")
        assert train is not None
        return train, rows("val"), rows("unused"), recorded.changes
    changes = recorded.changes
    if change:
        log(
            f"data changed since the run recorded its splits: {change.summary()}; accepted (--accept-data-change): recorded files "
            f"keep their split, missing ones are dropped, new ones are dealt to train and val by a hash of their path"
        )
        changes = (
            *changes,
            {"added": len(change.added), "removed": len(change.removed), "changed": len(change.changed)},
        )
    if src.val is not None:  # a val/ folder: the folders are the splits
        return src.train, src.val, None, changes
    val_rec, unused_rec = recorded.record("val"), recorded.record("unused")
    in_val = set(val_rec.paths) if val_rec is not None else set()
    unused = set(unused_rec.paths) if unused_rec is not None else set()
    known = recorded.all_paths()
    relative = relative_to(root)
    groups: dict[str, list[int]] = {"train": [], "val": [], "unused": []}
    for i, path in enumerate(src.train.paths or []):
        rel = relative(path)[1]
        if rel in unused:
            groups["unused"].append(i)
        elif rel in in_val or (rel not in known and val_rec is not None and deal(rel, val_split)):
            groups["val"].append(i)
        else:
            groups["train"].append(i)

    def take(name: str) -> Split | None:
        return src.train.take(torch.as_tensor(groups[name], dtype=torch.int64)) if groups[name] else None

    train = take("train")
    if train is None:
        raise DataError(f"{where}: none of the run's recorded training images is left; start a new run")
    return train, take("val"), take("unused"), changes
