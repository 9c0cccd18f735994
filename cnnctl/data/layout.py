"""How an image folder is laid out, and the named data sets: torch-free, for `check` and the CLI."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from cnnctl.errors import DataError

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


SPLIT_DIRS = ("train", "val", "test")


def cache_root(cache_dir: str = "") -> Path:
    """cnnctl's cache folder: `cache_dir`, else $CNNCTL_CACHE, else ~/.cache/cnnctl."""
    return Path(cache_dir or os.environ.get("CNNCTL_CACHE", Path.home() / ".cache" / "cnnctl")).expanduser()


def class_dirs(root: Path) -> list[Path]:
    try:
        return sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name)
    except PermissionError as exc:
        raise DataError(f"{root}: permission denied") from exc


def short(names: list[str]) -> str:
    return f"{names[:5]}{'...' if len(names) > 5 else ''}"


@dataclass
class FolderLayout:
    """An image folder as found on disk: ROOT/<class>/... (plain) or ROOT/{train,val,test}/<class>/..."""

    root: Path
    splits: dict[str, Path]  # empty for a plain folder of class subfolders

    def classes_of(self, directory: Path) -> list[str]:
        return [p.name for p in class_dirs(directory)]


def folder_layout(path: str) -> FolderLayout:
    """Look at a folder and say how it is laid out; refuse layouts whose classes would be guessed.

    A subfolder named train, val or test counts as a split when it holds class subfolders itself;
    a folder that mixes such splits with other subfolders is refused rather than read one way
    (the other subfolders as classes, the splits as classes too) that mislabels every image.
    """
    root = Path(path)
    if not root.is_dir():
        raise DataError(
            f"data {path!r} is neither a known data set ({', '.join(NAMED_SETS)}) nor a folder; "
            f"give an image folder with one subfolder per class"
        )
    dirs = class_dirs(root)
    splits = {p.name: p for p in dirs if p.name in SPLIT_DIRS and class_dirs(p)}
    others = [p.name for p in dirs if p.name not in splits]
    if splits and others:
        raise DataError(
            f"{root} mixes split folders ({', '.join(splits)}) with other folders ({', '.join(others[:5])}); "
            f"put the class folders under {root}/train/ (and val/, test/), or point --data at one folder of class subfolders"
        )
    return FolderLayout(root, splits)
