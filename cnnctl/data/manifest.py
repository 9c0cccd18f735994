"""The split manifest: which images each split of a run held, recorded once. Torch-free.

`cnnctl train` writes `splits.json.gz` into the run directory when the run starts: for an image
folder, every file of the train, val (and test) splits as a path relative to the data root, with
its class index, size and mtime (ns); for a named data set (mnist, cifar10, ...), the row numbers
of its official training split that went to train and to val. Later commands read the recorded
split, never a re-split of a folder that may have changed since:

- `cnnctl eval RUN --split val|train` (and calibrate, export's calibration images) evaluate the
  recorded files that are still there and unchanged, and say in one line how many are missing or
  changed and how many new files in the folder were ignored;
- `cnnctl train --resume RUN` refuses a data folder whose files changed (`--accept-data-change`
  keeps every recorded file in its split, drops the missing ones and deals new files to train and
  val by a hash of their path, so no image ever moves between train and val; the manifest is then
  rewritten and the change logged).

Gzipped JSON with one list per field keeps it compact: about 10 bytes per file for a folder of
class subfolders (a million files: ~10 MB). docs/formats.md has the layout.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from cnnctl.errors import CheckpointError
from cnnctl.io import write_bytes

FILE = "splits.json.gz"
FORMAT = 1
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class SplitRecord:
    """One split as recorded: files (relative paths, labels, sizes, mtimes) or rows of a named set."""

    paths: tuple[str, ...] = ()
    labels: tuple[int, ...] = ()
    sizes: tuple[int, ...] = ()
    mtimes: tuple[int, ...] = ()
    rows: tuple[int, ...] | None = None  # named sets: rows of the official training split

    def __len__(self) -> int:
        return len(self.rows) if self.rows is not None else len(self.paths)

    def to_dict(self) -> dict[str, list[int] | list[str]]:
        if self.rows is not None:
            return {"rows": list(self.rows)}
        return {
            "paths": list(self.paths),
            "labels": list(self.labels),
            "sizes": list(self.sizes),
            "mtime_ns": list(self.mtimes),
        }

    @classmethod
    def from_dict(cls, d: dict[str, list[int] | list[str]]) -> SplitRecord:
        if "rows" in d:
            return cls(rows=tuple(int(r) for r in d["rows"]))
        paths = tuple(str(p) for p in d["paths"])
        rec = cls(
            paths,
            tuple(int(v) for v in d["labels"]),
            tuple(int(v) for v in d["sizes"]),
            tuple(int(v) for v in d["mtime_ns"]),
        )
        if not len(rec.labels) == len(rec.sizes) == len(rec.mtimes) == len(paths):
            raise ValueError("lists of different lengths")
        return rec


@dataclass(frozen=True)
class FileState:
    """Recorded files of one split, sorted by what they are now."""

    present: list[tuple[str, int]]  # (absolute path, label) still there with the recorded size and mtime
    missing: list[str] = field(default_factory=list)  # relative paths gone since the run recorded them
    changed: list[str] = field(default_factory=list)  # relative paths whose size or mtime differ


@dataclass(frozen=True)
class Manifest:
    """Which images a run's splits held (`splits.json.gz` in the run directory)."""

    data: str  # the absolute data root (folders) or the named set
    splits: dict[str, SplitRecord]
    fingerprint: str = ""
    changes: tuple[dict[str, int | str], ...] = ()  # accepted data changes (--accept-data-change), oldest first
    root: str = ""  # a label file's image root (paths are relative to it); "" = `data` itself

    @property
    def images(self) -> str:
        """The folder the recorded paths are relative to."""
        return self.root or self.data

    @property
    def label_file(self) -> bool:
        return bool(self.root)

    @property
    def is_folder(self) -> bool:
        return all(r.rows is None for r in self.splits.values())

    def record(self, split: str) -> SplitRecord | None:
        return self.splits.get(split)

    def all_paths(self) -> set[str]:
        return {p for r in self.splits.values() for p in r.paths}

    def write(self, run_dir: str | os.PathLike[str]) -> None:
        doc = {
            "format": FORMAT,
            "data": self.data,
            "fingerprint": self.fingerprint,
            "changes": list(self.changes),
            "splits": {name: rec.to_dict() for name, rec in self.splits.items()},
        }
        if self.root:
            doc["root"] = self.root
        raw = json.dumps(doc, separators=(",", ":")).encode()
        write_bytes(Path(run_dir) / FILE, gzip.compress(raw, compresslevel=6, mtime=0))

    @classmethod
    def read(cls, run_dir: str | os.PathLike[str]) -> Manifest | None:
        """The run's manifest, or None for a run written before manifests existed."""
        path = Path(run_dir) / FILE
        if not path.is_file():
            return None
        try:
            doc = json.loads(gzip.decompress(path.read_bytes()))
            if doc.get("format") != FORMAT:
                raise CheckpointError(
                    f"{path}: split manifest format {doc.get('format')!r} is not supported (this cnnctl reads {FORMAT}); upgrade cnnctl"
                )
            splits = {str(k): SplitRecord.from_dict(v) for k, v in doc["splits"].items()}
            return cls(
                str(doc["data"]),
                splits,
                str(doc.get("fingerprint", "")),
                tuple(doc.get("changes") or ()),
                str(doc.get("root", "")),
            )
        except (OSError, EOFError, ValueError, KeyError, TypeError, AttributeError, gzip.BadGzipFile):
            raise CheckpointError(
                f"{path} is damaged; restore it, or evaluate with --data FOLDER --split all on images the model never saw"
            ) from None

    @classmethod
    def beside(cls, target: str | os.PathLike[str]) -> Manifest | None:
        """The manifest of the run a model file belongs to (a run directory, or a file inside one)."""
        p = Path(target)
        return cls.read(p if p.is_dir() else p.parent)

    def files(self, split: str) -> FileState:
        """Where the recorded files of `split` stand now (absolute paths; one stat each)."""
        rec = self.splits[split]
        present: list[tuple[str, int]] = []
        missing: list[str] = []
        changed: list[str] = []
        for rel, label, size, mtime in zip(rec.paths, rec.labels, rec.sizes, rec.mtimes):
            full = os.path.join(self.images, rel)
            try:
                st = os.stat(full)
            except OSError:
                missing.append(rel)
                continue
            if st.st_size != size or st.st_mtime_ns != mtime:
                changed.append(rel)
            else:
                present.append((full, label))
        return FileState(present, missing, changed)


def relative_to(root: str) -> Callable[[str], tuple[str, str]]:
    """A function from a path under `root` (absolute, or relative to the working directory) to
    (its absolute path, its path relative to `root`): a string cut for the millions of paths a
    listing holds, os.path.relpath only for the odd one outside the plain prefix."""
    base = os.path.abspath(root)
    prefix = base.rstrip(os.sep) + os.sep

    def rel(path: str) -> tuple[str, str]:
        full = path if os.path.isabs(path) else os.path.abspath(path)
        return full, full[len(prefix) :] if full.startswith(prefix) else os.path.relpath(full, base)

    return rel


def record_files(root: str, paths: Iterable[str], labels: Iterable[int]) -> SplitRecord:
    """A split of image files under `root`, with each file's size and mtime now."""
    relative = relative_to(root)
    rels: list[str] = []
    sizes: list[int] = []
    mtimes: list[int] = []
    labs: list[int] = []
    for path, label in zip(paths, labels):
        full, rel = relative(path)
        try:
            st = os.stat(full)
            size, mtime = st.st_size, st.st_mtime_ns
        except OSError:
            size, mtime = -1, -1
        rels.append(rel)
        labs.append(int(label))
        sizes.append(size)
        mtimes.append(mtime)
    return SplitRecord(tuple(rels), tuple(labs), tuple(sizes), tuple(mtimes))


@dataclass(frozen=True)
class Change:
    """How a data folder differs from a run's recorded train and val splits."""

    added: list[str]
    removed: list[str]
    changed: list[str]

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.changed)

    def summary(self) -> str:
        parts = [f"{len(self.added)} file(s) added", f"{len(self.removed)} removed", f"{len(self.changed)} changed"]
        first = (self.added + self.removed + self.changed)[:3]
        return ", ".join(parts) + (f" (e.g. {', '.join(first)})" if first else "")


def compare(
    manifest: Manifest, root: str, current: Iterable[str], splits: tuple[str, ...] = ("train", "val")
) -> Change:
    """Files now under `root` (absolute or root-relative paths) against the recorded `splits`."""
    relative = relative_to(root)
    now = {relative(p)[1] for p in current}
    recorded: set[str] = set()
    changed: list[str] = []
    for name in splits:
        rec = manifest.splits.get(name)
        if rec is None:
            continue
        recorded.update(rec.paths)
        for rel, size, mtime in zip(rec.paths, rec.sizes, rec.mtimes):
            if rel in now:
                try:
                    st = os.stat(os.path.join(root, rel))
                except OSError:
                    continue
                if st.st_size != size or st.st_mtime_ns != mtime:
                    changed.append(rel)
    return Change(sorted(now - recorded), sorted(recorded - now), changed)


def deal(rel_path: str, fraction: float) -> bool:
    """Whether a file new since the manifest goes to val: a hash of its relative path, so the same
    file lands in the same split on every resume and on every machine."""
    digest = hashlib.sha256(rel_path.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction
