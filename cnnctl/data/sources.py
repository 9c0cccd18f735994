"""Where images come from: torchvision sets, the built-in mnist-mini, and image folders.

Every source returns uint8 tensors (N, C, H, W) and int64 labels: images are decoded once, so
no per-sample PIL work happens inside an epoch.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from cnnctl.config import DataConfig
from cnnctl.data.labelfile import LabelSpec, LabelTable, is_label_file, read_labels, refusal
from cnnctl.data.layout import (
    NAMED_SETS,
    TORCHVISION_SETS,
    cache_root,
    class_dirs,
    folder_layout,
    short,
)
from cnnctl.errors import DataError, UsageError
from cnnctl.runtime.preprocess import IMAGE_SUFFIXES, Preprocess, decode

BUILTIN = Path(__file__).parent / "builtin"


@dataclass
class Split:
    """Images (uint8, N x C x H x W) with int64 labels, and the files they came from, if any.

    `store` holds the pixels, in memory or memory-mapped from the decode cache; `rows`, when set,
    picks this split's images out of it, so splitting, sub-setting and sharding copy no pixels.
    Read images with `images(idx)`, which gathers only what is asked for. `identity` names the
    store's content (the cache key) so a fingerprint need not hash every pixel.
    """

    store: torch.Tensor
    y: torch.Tensor
    paths: list[str] | None = None
    rows: torch.Tensor | None = None
    identity: str | None = None
    skipped: tuple[str, ...] = ()  # files of the listing that did not decode (not in `paths`)

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def images(self, idx: torch.Tensor | slice | None = None) -> torch.Tensor:
        """The uint8 images at `idx` (all of them for None): a copy of just those."""
        if self.rows is None:
            return self.store if idx is None else self.store[idx]
        return self.store[self.rows if idx is None else self.rows[idx]]

    @property
    def x(self) -> torch.Tensor:
        """Every image of the split as one tensor (materialised: for small splits and tests)."""
        return self.images()

    def take(self, idx: torch.Tensor) -> Split:
        """The images at `idx`, sharing this split's store."""
        idx = torch.as_tensor(idx, dtype=torch.int64)
        paths = [self.paths[i] for i in idx.tolist()] if self.paths is not None else None
        rows = idx if self.rows is None else self.rows[idx]
        return Split(self.store, self.y[idx], paths, rows, self.identity)

    def chunks(self, max_bytes: int = 64 << 20) -> Iterator[torch.Tensor]:
        """The images in consecutive uint8 chunks of at most ~`max_bytes`: bounded memory."""
        per_image = max(1, int(np.prod(self.store.shape[1:])))
        step = max(1, max_bytes // per_image)
        for start in range(0, len(self), step):
            yield self.images(slice(start, min(len(self), start + step)))


@dataclass
class Source:
    """What a source provides before validation splitting and normalisation statistics."""

    name: str
    classes: list[str]
    train: Split
    test: Split | None
    val: Split | None
    channels: int
    size: tuple[int, int]
    notes: list[str] = field(default_factory=list)
    # How the model's input is made from a file (without mean/std). For --resize crop folders the
    # training split is stored larger (`train_prep`, the shorter side at resize_size, centre square)
    # for random-resized crops; validation and test are decoded with `prep` itself.
    prep: Preprocess | None = None
    train_prep: Preprocess | None = None
    task: str = "single"  # or "multilabel": `y` rows are multi-hot float vectors (label files)
    root: str = ""  # a label file's image root (paths in the split manifest are relative to it)


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        data = fh.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def mnist_mini() -> Source:
    """The real MNIST test split shipped in the package: 8,000 train / 2,000 test digits.

    The split is by index (every 5th digit is a test digit), so it is fixed forever and mixes
    both halves of the original test set (written by students and by Census employees).
    """
    x = torch.from_numpy(_read_idx(BUILTIN / "t10k-images-idx3-ubyte.gz").copy()).unsqueeze(1)
    y = torch.from_numpy(_read_idx(BUILTIN / "t10k-labels-idx1-ubyte.gz").astype(np.int64))
    idx = torch.arange(len(y))
    test = idx % 5 == 4
    return Source(
        "mnist-mini", [str(i) for i in range(10)], Split(x[~test], y[~test]), Split(x[test], y[test]), None, 1, (28, 28)
    )


def torchvision_set(name: str, data_dir: str, download: bool) -> Source:
    import torchvision.datasets as tvd

    cls_name, channels, side = TORCHVISION_SETS[name]
    cls = getattr(tvd, cls_name)
    root = Path(data_dir)
    splits = []
    for train in (True, False):
        try:
            ds = cls(root=str(root), train=train, download=download)
        except RuntimeError as exc:
            if download:
                raise DataError(
                    f"could not download {name} into {root} ({str(exc).splitlines()[0]}); check the network or copy the files there"
                ) from exc
            where = root / cls_name / "raw" if cls_name != "CIFAR10" and cls_name != "CIFAR100" else root
            raise DataError(
                f"{name} not found under {where} (torchvision layout); add --download, "
                f"or point --data-dir at a folder that holds it"
            ) from exc
        except OSError as exc:
            raise DataError(f"could not get {name} under {root}: {exc}") from exc
        data = ds.data if isinstance(ds.data, torch.Tensor) else torch.from_numpy(np.asarray(ds.data))
        x = data.unsqueeze(1) if data.dim() == 3 else data.permute(0, 3, 1, 2)
        y = torch.as_tensor(ds.targets, dtype=torch.int64)
        splits.append(Split(x.contiguous(), y))
        classes = [str(c) for c in ds.classes]
    return Source(name, classes, splits[0], splits[1], None, channels, (side, side))


def _list_files(root: Path, classes: list[str], labels_of: list[int]) -> tuple[list[str], list[int]]:
    """Image files under root/<class>/ (recursively, sorted), labelled `labels_of[i]` for classes[i]."""
    # Plain strings and os.walk: pathlib costs seconds on 60,000 files.
    files: list[str] = []
    labels: list[int] = []
    for label, name in zip(labels_of, classes):
        class_dir = os.path.join(root, name)
        if not os.path.isdir(class_dir):
            continue
        for dirpath, dirnames, names in os.walk(class_dir):
            dirnames.sort()
            for n in sorted(names):
                if n.lower().endswith(IMAGE_SUFFIXES):
                    files.append(os.path.join(dirpath, n))
                    labels.append(label)
    return files, labels


def training_files(path: str, spec: LabelSpec | None = None) -> list[str]:
    """The image files training reads from a folder, without decoding them: every image under
    <class>/ (recursively) of the folder, or of its train/ and val/ when it has split folders; for
    a label file (`spec`), the files of its rows that are not test rows."""
    if spec is not None:
        table = read_labels(dataclasses.replace(spec, skip_bad_rows=True))
        return [p for p, s in zip(table.paths, table.splits) if s != "test"]
    layout = folder_layout(path)
    roots = [layout.splits[s] for s in ("train", "val") if s in layout.splits] if layout.splits else [layout.root]
    files: list[str] = []
    for root in roots:
        classes = [p.name for p in class_dirs(root)]
        files += _list_files(root, classes, list(range(len(classes))))[0]
    return files


def folder_split(
    directory: Path,
    classes: list[str],
    prep: Preprocess,
    cache_dir: Path | None,
    log: Callable[[str], None],
    owner: str = "",
) -> Split:
    """Every image under directory/<class>/, labelled by the position of <class> in `classes`.

    Labels come from this listing, now: the decode cache holds pixels only. Class folders that
    `classes` lacks are refused (`owner` names whose class list it is, for the message).
    """
    present = [p.name for p in class_dirs(directory)]
    if not present:
        raise DataError(f"{directory}: no class subfolders; put images in {directory}/<class name>/")
    unknown = [c for c in present if c not in classes]
    if unknown:
        raise DataError(
            f"{directory} has classes {short(unknown)} that {owner or 'the class list'} lacks (it has {short(classes)})"
        )
    files, labels = _list_files(directory, present, [classes.index(c) for c in present])
    if not files:
        raise DataError(f"{directory}: no image files ({', '.join(IMAGE_SUFFIXES[:4])}, ...) in its class folders")
    return files_split(files, labels, prep, cache_dir, log, str(directory))


def files_split(
    files: list[str],
    labels: list[int] | np.ndarray,
    prep: Preprocess,
    cache_dir: Path | None,
    log: Callable[[str], None],
    where: str,
) -> Split:
    """These image files with these labels (class indices, or multi-hot rows), decoded through the
    decode cache; unreadable files are left out and counted in one log line (`where` names the data
    in messages)."""
    from cnnctl.data.cache import load_pixels

    pixels = load_pixels(files, prep, cache_dir, log)
    if pixels.failed:
        shown = "; ".join(list(pixels.failed.values())[:3])
        log(
            f"skipped {len(pixels.failed)} unreadable image(s) of {len(files)}: {shown}"
            + (" ..." if len(pixels.failed) > 3 else "")
        )
    ok = pixels.ok_rows
    if not ok:
        raise DataError(f"{where}: none of the {len(files)} image files could be read")
    rows = torch.as_tensor(ok, dtype=torch.int64) if pixels.failed else None
    skipped = tuple(files[i] for i in sorted(pixels.failed))
    targets = np.asarray(labels)
    y = torch.as_tensor(targets.astype(np.float32 if targets.ndim == 2 else np.int64)[ok])
    return Split(pixels.array, y, [files[i] for i in ok], rows, pixels.key, skipped)


def _first_image_size(files: list[str]) -> tuple[int, int]:
    from PIL import Image

    for f in files[:50]:
        try:
            with Image.open(f) as img:
                return img.height, img.width
        except (OSError, ValueError):
            continue
    raise DataError(f"could not read any of the first images near {files[0]}; check the folder")


def default_cache_dir(cache_dir: str = "") -> Path:
    return cache_root(cache_dir)


def _preprocessing(
    files: list[str],
    image_size: tuple[int, int] | None,
    grayscale: bool,
    resize: str,
    crop_pct: float,
    interpolation: str,
) -> tuple[Preprocess, Preprocess, list[str]]:
    """(how evaluation and predict decode a file, how training images are stored, notes) for
    photos from files: --resize crop stores training images larger, for random-resized crops."""
    notes = []
    channels = 1 if grayscale else 3
    if image_size is None:
        if resize == "crop":
            raise UsageError("--resize crop needs --image-size (the size of the centre crop the model sees)")
        image_size = _first_image_size(files)
        notes.append(
            f"images resized to {image_size[0]}x{image_size[1]} (the first image's size; set --image-size to choose)"
        )
    if resize != "crop":
        prep = Preprocess(channels=channels, size=image_size, interpolation=interpolation)
        return prep, prep, notes
    shorter = max(max(image_size), round(max(image_size) / crop_pct))
    prep = Preprocess(
        channels=channels, size=image_size, interpolation=interpolation, resize="crop", resize_size=shorter
    )
    stored = Preprocess(
        channels=channels, size=(shorter, shorter), interpolation=interpolation, resize="crop", resize_size=shorter
    )
    notes.append(
        f"photos: shorter side to {shorter}, centre {image_size[0]}x{image_size[1]} for evaluation; "
        f"training images stored at {shorter}x{shorter} for random-resized crops"
    )
    return prep, stored, notes


def image_folder(
    path: str,
    image_size: tuple[int, int] | None,
    grayscale: bool,
    cache_dir: Path | None,
    log: Callable[[str], None],
    resize: str = "stretch",
    crop_pct: float = 0.875,
    interpolation: str = "bilinear",
) -> Source:
    """An ImageFolder for training: PATH/<class>/*.jpg, or PATH/train/<class> with PATH/val, PATH/test."""
    layout = folder_layout(path)
    root = layout.root
    if layout.splits and "train" not in layout.splits:
        raise DataError(
            f"{root} has {'/'.join(layout.splits)}/ but no train/ folder; training needs {root}/train/<class>/ "
            f"(or a folder of class subfolders)"
        )
    train_root = layout.splits.get("train", root)
    classes = layout.classes_of(train_root)
    if not classes:
        raise DataError(f"{train_root}: no class subfolders; put images in {train_root}/<class name>/")
    first: list[str] = []
    if image_size is None and resize != "crop":
        first, _ = _list_files(train_root, classes, list(range(len(classes))))
        if not first:
            raise DataError(f"{train_root}: no image files in its class folders")
    prep, stored, notes = _preprocessing(first, image_size, grayscale, resize, crop_pct, interpolation)
    train = folder_split(train_root, classes, stored, cache_dir, log, str(train_root))
    splits: dict[str, Split | None] = {"val": None, "test": None}
    for name in ("val", "test"):
        if name in layout.splits:
            splits[name] = folder_split(layout.splits[name], classes, prep, cache_dir, log, str(train_root))
    channels = prep.channels
    return Source(str(root), classes, train, splits["test"], splits["val"], channels, prep.size, notes, prep, stored)


def label_targets(table: LabelTable, classes: list[str], multilabel: bool) -> np.ndarray:
    """The rows' labels as int64 class indices (N,), or float32 multi-hot vectors (N, classes)."""
    index = table.label_index(classes)
    if not multilabel:
        return np.asarray([labs[0] for labs in index], dtype=np.int64)
    y = np.zeros((len(index), len(classes)), dtype=np.float32)
    rows = np.repeat(np.arange(len(index)), [len(labs) for labs in index])
    y[rows, np.fromiter((c for labs in index for c in labs), dtype=np.int64, count=len(rows))] = 1.0
    return y


def rows_split(
    table: LabelTable,
    rows: list[int],
    y: np.ndarray,
    prep: Preprocess,
    cache_dir: Path | None,
    log: Callable[[str], None],
    skip_bad_rows: bool,
) -> Split:
    """The label file's `rows`, labelled `y` (aligned with them), decoded through the decode cache;
    rows whose file does not decode are bad rows: refused in one line unless `skip_bad_rows`."""
    out = files_split([table.paths[i] for i in rows], y, prep, cache_dir, log, table.source)
    if out.skipped and not skip_bad_rows:
        line_of = {table.paths[i]: table.lines[i] for i in rows}
        bad = {"undecodable": [(line_of[f], os.path.relpath(f, table.root)) for f in out.skipped]}
        raise DataError(refusal(table.source, bad, len(table)))
    return out


def label_file(spec: LabelSpec, cfg: DataConfig, log: Callable[[str], None]) -> Source:
    """A label file for training (cnnctl/data/labelfile.py), decoded as `cfg` says: its train rows
    (rows without a split too), and its val and test rows when it names them. The classes are the
    sorted label names."""
    from cnnctl.specs import parse_image_size

    task, cache_dir = cfg.task, default_cache_dir(cfg.cache_dir)
    table = read_labels(spec, task=task)
    multilabel = task == "multilabel" or table.multilabel
    notes = list(table.notes)
    if multilabel and task != "multilabel":
        notes.append(
            f"multi-label: some rows of {os.path.basename(spec.file)} hold several labels (or none); sigmoid outputs, one per class"
        )
    y = label_targets(table, table.classes, multilabel)
    rows = {
        name: [i for i, s in enumerate(table.splits) if s == name or (name == "train" and not s)] for name in SPLITS
    }
    if not rows["train"]:
        raise DataError(f"{spec.file}: no training rows (every row's split is val or test)")
    train_files = [table.paths[i] for i in rows["train"]]
    size = parse_image_size(cfg.image_size) if cfg.image_size else None
    prep, stored, size_notes = _preprocessing(
        train_files, size, cfg.grayscale, cfg.resize, cfg.crop_pct, cfg.interpolation
    )

    def split(name: str, decode: Preprocess) -> Split | None:
        if not rows[name]:
            return None
        return rows_split(table, rows[name], y[rows[name]], decode, cache_dir, log, spec.skip_bad_rows)

    train = split("train", stored)
    assert train is not None
    src = Source(
        os.path.abspath(spec.file),
        table.classes,
        train,
        split("test", prep),
        split("val", prep),
        prep.channels,
        prep.size,
        notes + size_notes,
        prep,
        stored,
    )
    src.task, src.root = ("multilabel" if multilabel else "single"), table.root
    return src


SPLITS = ("train", "val", "test")


def redecode(split: Split, prep: Preprocess, cache_dir: Path | None, log: Callable[[str], None]) -> Split:
    """The same files (same labels), decoded with another preprocessing (e.g. a held-out part of a
    training split stored for random crops, decoded the way evaluation and predict see it)."""
    from cnnctl.data.cache import load_pixels

    assert split.paths is not None
    pixels = load_pixels(split.paths, prep, cache_dir, log)
    if pixels.failed:  # they decoded once already; a file changed since
        raise DataError(
            f"{len(pixels.failed)} image(s) became unreadable during this run: {next(iter(pixels.failed.values()))}"
        )
    return Split(pixels.array, split.y, split.paths, None, pixels.key)


def label_spec(cfg: DataConfig) -> LabelSpec | None:
    """How to read `cfg.data` when it is a label file; None for a folder or a named set."""
    if not is_label_file(cfg.data):
        for name in ("image_root", "path_column", "label_column", "label_delim"):
            if getattr(cfg, name):
                raise UsageError(f"--{name.replace('_', '-')} is for label files (--data FILE.csv, .jsonl, .parquet)")
        return None
    return LabelSpec(
        cfg.data, cfg.image_root, cfg.path_column, cfg.label_column, cfg.label_delim, cfg.skip_bad_rows, cfg.cache_dir
    )


def load_data(cfg: DataConfig, log: Callable[[str], None]) -> Source:
    """The source `cfg` names: a label file, an image folder or a named set, decoded as it says."""
    from cnnctl.specs import parse_image_size

    spec = label_spec(cfg)
    if spec is not None:
        return label_file(spec, cfg, log)
    size = parse_image_size(cfg.image_size) if cfg.image_size else None
    if cfg.task == "multilabel":
        raise UsageError(
            f"--task multilabel learns label sets from a label file (--data FILE.csv); {cfg.data} gives one class per image"
        )
    return load_source(
        cfg.data,
        cfg.data_dir,
        cfg.download,
        size,
        cfg.grayscale,
        cfg.cache_dir,
        log,
        cfg.resize,
        cfg.crop_pct,
        cfg.interpolation,
    )


def load_source(
    data: str,
    data_dir: str = "./data",
    download: bool = False,
    image_size: tuple[int, int] | None = None,
    grayscale: bool = False,
    cache_dir: str = "",
    log: Callable[[str], None] = lambda m: print(m, file=sys.stderr),
    resize: str = "stretch",
    crop_pct: float = 0.875,
    interpolation: str = "bilinear",
) -> Source:
    """Load any source by name or path, resized/converted when asked."""
    if resize == "crop" and data in NAMED_SETS:
        raise UsageError(f"--resize crop is for image folders of photos; {data}'s images all have one size already")
    if data == "mnist-mini":
        src = mnist_mini()
    elif data in TORCHVISION_SETS:
        src = torchvision_set(data, data_dir, download)
    else:
        return image_folder(
            data, image_size, grayscale, default_cache_dir(cache_dir), log, resize, crop_pct, interpolation
        )
    channels = 1 if grayscale else src.channels
    size = image_size or src.size
    if (channels, size) != (src.channels, src.size):
        src = _convert(src, Preprocess(channels=channels, size=size))
    return src


def _convert(src: Source, prep: Preprocess) -> Source:
    """Resize / re-colour a tensor data set through the same PIL path that predict uses."""
    from PIL import Image

    def conv(split: Split | None) -> Split | None:
        if split is None:
            return None
        arrays = split.x.permute(0, 2, 3, 1).numpy()
        out = np.stack([decode(Image.fromarray(a[:, :, 0] if a.shape[2] == 1 else a), prep) for a in arrays])
        return Split(torch.from_numpy(out), split.y, split.paths)

    train = conv(src.train)
    assert train is not None
    return Source(src.name, src.classes, train, conv(src.test), conv(src.val), prep.channels, prep.size, src.notes)
