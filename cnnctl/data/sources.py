"""Where images come from: torchvision sets, the built-in mnist-mini, and image folders.

Every source returns uint8 tensors (N, C, H, W) and int64 labels: images are decoded once, so
no per-sample PIL work happens inside an epoch.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from cnnctl.errors import DataError
from cnnctl.preprocess import IMAGE_SUFFIXES, Preprocess, decode, load_image

BUILTIN = Path(__file__).parent / "builtin"
TORCHVISION_SETS = {
    "mnist": ("MNIST", 1, 28),
    "fashion-mnist": ("FashionMNIST", 1, 28),
    "kmnist": ("KMNIST", 1, 28),
    "cifar10": ("CIFAR10", 3, 32),
    "cifar100": ("CIFAR100", 3, 32),
}
# Data sets of handwritten characters, where a horizontal flip makes a different (or no) symbol.
DIGIT_SETS = {"mnist", "kmnist", "mnist-mini"}
NAMED_SETS = ("mnist-mini", *TORCHVISION_SETS)


@dataclass
class Split:
    """uint8 images (N, C, H, W), int64 labels, and file paths where the images came from files."""

    x: torch.Tensor
    y: torch.Tensor
    paths: list[str] | None = None

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def take(self, idx: torch.Tensor) -> Split:
        paths = [self.paths[i] for i in idx.tolist()] if self.paths is not None else None
        return Split(self.x[idx], self.y[idx], paths)


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


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        data = fh.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
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
                raise DataError(f"could not download {name} into {root} ({str(exc).splitlines()[0]}); check the network or copy the files there") from exc
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


def _class_dirs(root: Path) -> list[Path]:
    try:
        return sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name)
    except PermissionError as exc:
        raise DataError(f"{root}: permission denied") from exc


def _list_files(root: Path, classes: list[str]) -> tuple[list[str], list[int]]:
    # Plain strings and os.walk: pathlib costs seconds on 60,000 files.
    files: list[str] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
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


def _decode_files(files: list[str], prep: Preprocess, log: Callable[[str], None]) -> tuple[np.ndarray, list[int]]:
    """Decode files in parallel threads -> (uint8 array, indices that decoded)."""

    def one(path: str) -> np.ndarray | str:
        try:
            return load_image(path, prep)
        except DataError as exc:
            return exc.message

    out = np.empty((len(files), prep.channels, *prep.size), dtype=np.uint8)
    ok: list[int] = []
    bad: list[str] = []
    with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 1) * 2)) as pool:
        for i, result in enumerate(pool.map(one, files, chunksize=64)):
            if isinstance(result, str):
                bad.append(result)
            else:
                out[i] = result
                ok.append(i)
    if bad:
        shown = "; ".join(bad[:3])
        log(f"skipped {len(bad)} unreadable image(s) of {len(files)}: {shown}" + (" ..." if len(bad) > 3 else ""))
    return out, ok


def _cache_key(files: list[str], prep: Preprocess) -> str:
    h = hashlib.sha256(json.dumps(prep.to_dict(), sort_keys=True).encode())
    for f in files:
        st = os.stat(f)
        h.update(f"{f}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:32]


def _load_folder_split(root: Path, classes: list[str], prep: Preprocess, cache_dir: Path | None, log: Callable[[str], None]) -> Split:
    from safetensors import SafetensorError
    from safetensors.torch import load_file, save_file

    files, labels = _list_files(root, classes)
    if not files:
        raise DataError(f"{root}: no image files ({', '.join(IMAGE_SUFFIXES[:4])}, ...) in its class folders")
    cache = cache_dir / f"folder-{_cache_key(files, prep)}.safetensors" if cache_dir else None
    if cache is not None and cache.exists():
        try:
            tensors = load_file(str(cache))
            paths = json.loads(cache.with_suffix(".json").read_text())
            return Split(tensors["x"], tensors["y"], paths)
        except (OSError, SafetensorError, ValueError, KeyError):
            log(f"ignoring a damaged cache file {cache}")
    x, ok = _decode_files(files, prep, log)
    if not ok:
        raise DataError(f"{root}: none of the {len(files)} image files could be read")
    idx = np.asarray(ok)
    split = Split(torch.from_numpy(x[idx]), torch.as_tensor(np.asarray(labels)[idx], dtype=torch.int64), [files[i] for i in ok])
    if cache is not None:
        from cnnctl.io import atomic_path, write_json

        try:
            write_json(cache.with_suffix(".json"), split.paths)
            with atomic_path(cache) as tmp:
                save_file({"x": split.x.contiguous(), "y": split.y}, str(tmp))
        except Exception as exc:  # noqa: BLE001 - a cache that cannot be written is not fatal
            log(f"could not write the decode cache ({exc}); continuing without it")
    return split


def _first_image_size(files: list[str]) -> tuple[int, int]:
    from PIL import Image

    for f in files[:50]:
        try:
            with Image.open(f) as img:
                return img.height, img.width
        except (OSError, ValueError):
            continue
    raise DataError(f"could not read any of the first images near {files[0]}; check the folder")


def image_folder(
    path: str,
    image_size: tuple[int, int] | None,
    grayscale: bool,
    cache_dir: Path | None,
    log: Callable[[str], None],
) -> Source:
    """An ImageFolder: PATH/<class>/*.jpg, or PATH/train/<class> with PATH/val or PATH/test."""
    root = Path(path)
    if not root.is_dir():
        raise DataError(
            f"data {path!r} is neither a known data set ({', '.join(NAMED_SETS)}) nor a folder; "
            f"give an image folder with one subfolder per class"
        )
    parts = {p.name: p for p in _class_dirs(root) if p.name in ("train", "val", "test")}
    train_root = parts.get("train", root)
    classes = [p.name for p in _class_dirs(train_root)]
    if not classes:
        raise DataError(f"{train_root}: no class subfolders; put images in {train_root}/<class name>/")
    files, _ = _list_files(train_root, classes)
    if not files:
        raise DataError(f"{train_root}: no image files in its class folders")
    notes = []
    if image_size is None:
        image_size = _first_image_size(files)
        notes.append(f"images resized to {image_size[0]}x{image_size[1]} (the first image's size; set --image-size to choose)")
    prep = Preprocess(channels=1 if grayscale else 3, size=image_size)
    train = _load_folder_split(train_root, classes, prep, cache_dir, log)
    splits: dict[str, Split | None] = {"val": None, "test": None}
    for name in ("val", "test"):
        if name in parts:
            other = [p.name for p in _class_dirs(parts[name])]
            if not set(other) <= set(classes):
                raise DataError(f"{parts[name]} has classes {sorted(set(other) - set(classes))} that {train_root} lacks")
            splits[name] = _load_folder_split(parts[name], classes, prep, cache_dir, log)
    return Source(str(root), classes, train, splits["test"], splits["val"], prep.channels, image_size, notes)


def load_source(
    data: str,
    data_dir: str = "./data",
    download: bool = False,
    image_size: tuple[int, int] | None = None,
    grayscale: bool = False,
    cache_dir: str = "",
    log: Callable[[str], None] = lambda m: print(m, file=sys.stderr),
) -> Source:
    """Load any source by name or path, resized/converted when asked."""
    if data == "mnist-mini":
        src = mnist_mini()
    elif data in TORCHVISION_SETS:
        src = torchvision_set(data, data_dir, download)
    else:
        cache = Path(cache_dir or os.environ.get("CNNCTL_CACHE", Path.home() / ".cache" / "cnnctl")).expanduser()
        return image_folder(data, image_size, grayscale, cache, log)
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

    return Source(src.name, src.classes, conv(src.train), conv(src.test), conv(src.val), prep.channels, prep.size, src.notes)
