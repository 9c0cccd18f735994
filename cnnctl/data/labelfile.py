"""Label files: images listed in a CSV, TSV, JSONL or Parquet file (or a Hugging Face dataset saved
with `save_to_disk`), with one or several labels per image. Torch-free (`cnnctl check` reads them).

Kaggle's convention is the default: a header row, a path column and a label column, several labels
in one cell separated by spaces. Columns are found by name (`PATH_COLUMNS`, `LABEL_COLUMNS`) unless
named; paths are relative to the label file's folder unless `image_root` says otherwise; a path
without a suffix (Kaggle's `id`) is looked up with the image suffixes found beside it.

Splits come from a `split` column (train / val / test), or from sibling files (`train.csv` with
`val.csv` and `test.csv` beside it), or training's `--val-split`. Bad rows (empty paths, duplicate
paths, files that are not there, unknown labels at evaluation time, rows without a label in a
single-label file) are counted and refused in one line naming the first few and `--skip-bad-rows`,
which leaves them out and says how many (never silently). See docs/labels.md.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cnnctl.data.layout import cache_root
from cnnctl.errors import DataError, UsageError
from cnnctl.io import write_bytes
from cnnctl.runtime.preprocess import IMAGE_SUFFIXES

SUFFIXES = (".csv", ".tsv", ".jsonl", ".parquet")
PATH_COLUMNS = ("path", "file", "filename", "file_name", "image", "image_name", "image_path", "id")
LABEL_COLUMNS = ("labels", "label", "tags", "target", "class")
SPLIT_COLUMNS = ("split",)
SPLIT_VALUES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "dev": "val",
    "test": "test",
    "testing": "test",
}
SIBLINGS = {"val": ("val", "valid", "validation"), "test": ("test",)}
BAD_KINDS = {
    "empty": "with an empty path",
    "duplicate": "listing a file again",
    "conflicting": "listing a file again with other labels",
    "cross-split": "listing a file again in another split",
    "missing": "naming missing files",
    "no-label": "without a label",
    "unknown": "with labels the model does not know",
    "undecodable": "naming files that do not decode",
}


def is_label_file(data: str) -> bool:
    """Whether `--data` names a label file (by suffix) or a saved Hugging Face dataset (a folder)."""
    if data.lower().endswith(SUFFIXES):
        return True
    return os.path.isdir(data) and os.path.isfile(os.path.join(data, "dataset_info.json"))


@dataclass(frozen=True)
class LabelSpec:
    """How to read a label file (the `--data FILE` options of train, eval, check, ...)."""

    file: str
    image_root: str = ""  # default: the label file's folder
    path_column: str = ""  # default: found by name
    label_column: str = ""
    label_delim: str = ""  # "" = any whitespace (Kaggle's convention)
    skip_bad_rows: bool = False
    cache_dir: str = ""  # where images stored inside the file (Parquet / Hugging Face bytes) are written out

    def reading(self) -> dict[str, str]:
        """The options that say how the file is read (recorded in a model's Metadata for eval)."""
        return {
            "image_root": self.root,
            "path_column": self.path_column,
            "label_column": self.label_column,
            "label_delim": self.label_delim,
        }

    @property
    def root(self) -> str:
        if self.image_root:
            return os.path.abspath(self.image_root)
        return os.path.dirname(os.path.abspath(self.file))


@dataclass
class LabelTable:
    """The rows of a label file, validated: absolute paths, label names, split per row ("" when the
    file does not say), the class list (sorted names), and what `--skip-bad-rows` left out."""

    source: str
    root: str
    lines: list[int]  # each row's line in its file (for messages)
    paths: list[str]
    labels: list[tuple[str, ...]]
    splits: list[str]
    classes: list[str]
    dropped: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    bad: dict[str, list[tuple[int, str]]] = field(default_factory=dict)  # kind -> (line, what), for `check`
    named: set[str] = field(default_factory=set)  # every label any row names, bad rows' included

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def multilabel(self) -> bool:
        """True when any row holds other than exactly one label."""
        return any(len(labs) != 1 for labs in self.labels)

    def rows_of(self, split: str) -> list[int]:
        return [i for i, s in enumerate(self.splits) if s == split]

    def label_index(self, classes: list[str]) -> list[list[int]]:
        """Each row's labels as indices into `classes`."""
        pos = {c: i for i, c in enumerate(classes)}
        return [[pos[c] for c in labs] for labs in self.labels]


@dataclass
class _Raw:
    """Rows as read, before validation: (line number, path, labels, split)."""

    lines: list[int]
    paths: list[str]
    labels: list[tuple[str, ...]]
    splits: list[str]


def read_labels(spec: LabelSpec, classes: list[str] | None = None, task: str = "auto") -> LabelTable:
    """Read and validate `spec.file` (with its sibling split files). `classes`, when given (at
    evaluation time: the model's), makes every other label a bad row. A row without a label is bad
    in a single-label file; with `task` multilabel (or any row holding several) it means "none"."""
    if not os.path.exists(spec.file):
        raise DataError(f"label file {spec.file} not found")
    siblings = _siblings(spec.file)
    files = [(spec.file, "train" if siblings else ""), *siblings]
    raws = [_read_any(path, spec, split) for path, split in files]
    raw = _Raw([], [], [], [])
    for r in raws:
        raw.lines += r.lines
        raw.paths += r.paths
        raw.labels += r.labels
        raw.splits += r.splits
    several = next((i for i, labs in enumerate(raw.labels) if len(labs) > 1), None)
    if task == "single" and several is not None:
        raise UsageError(
            f"{spec.file} row {raw.lines[several]} has {len(raw.labels[several])} labels; --task single needs exactly one "
            f"per row (--task multilabel learns label sets)"
        )
    table = _validate(raw, spec, classes, task)
    if siblings:
        table.notes.append(
            f"splits from the sibling files {', '.join(os.path.basename(p) for p, _ in siblings)} of {os.path.basename(spec.file)}"
        )
    return table


def _siblings(path: str) -> list[tuple[str, str]]:
    """train.csv's val.csv / valid.csv / test.csv (same suffix), as (path, split)."""
    p = Path(path)
    if p.is_dir() or p.stem.lower() not in ("train", "training"):
        return []
    found = []
    for split, stems in SIBLINGS.items():
        for stem in stems:
            candidate = p.with_name(stem + p.suffix)
            if candidate.is_file():
                found.append((str(candidate), split))
                break
    return found


def _read_any(path: str, spec: LabelSpec, split: str) -> _Raw:
    lower = path.lower()
    try:
        if lower.endswith((".csv", ".tsv")):
            return _read_csv(path, spec, split, "\t" if lower.endswith(".tsv") else ",")
        if lower.endswith(".jsonl"):
            return _read_jsonl(path, spec, split)
        if lower.endswith(".parquet"):
            return _read_columns(path, _parquet_columns(path), spec, split)
        return _read_columns(path, _hf_columns(path), spec, split)
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8") from None
    except OSError as exc:
        raise DataError(f"cannot read label file {path}: {exc.strerror or exc}") from None


def _pick(names: list[str], given: str, candidates: tuple[str, ...], what: str, flag: str, where: str) -> str | None:
    """The column for `what`: the one named (`given`), else the first of `candidates` present."""
    lowered = {n.strip().lower(): n for n in names}
    if given:
        if given in names:
            return given
        if given.lower() in lowered:
            return lowered[given.lower()]
        raise UsageError(f"{where} has no column {given!r} ({flag}); its columns: {', '.join(names[:12])}")
    for c in candidates:
        if c in lowered:
            return lowered[c]
    return None


def columns(names: list[str], spec: LabelSpec, where: str) -> tuple[str, str, str | None]:
    """(path column, label column, split column or None) among a file's `names`, found by name
    unless `spec` names them; UsageError naming the flag when one is absent."""
    path_col = _pick(names, spec.path_column, PATH_COLUMNS, "path", "--path-column", where)
    label_col = _pick(names, spec.label_column, LABEL_COLUMNS, "labels", "--label-column", where)
    if path_col is None or label_col is None:
        missing = "path" if path_col is None else "label"
        flag = "--path-column" if path_col is None else "--label-column"
        known = PATH_COLUMNS if path_col is None else LABEL_COLUMNS
        raise UsageError(
            f"{where}: no {missing} column among {', '.join(names[:12]) or '(none)'} (looked for {', '.join(known)}); "
            f"name it with {flag}"
        )
    split_col = _pick(names, "", SPLIT_COLUMNS, "split", "", where)
    return path_col, label_col, split_col


def _split_cell(cell: str, delim: str) -> tuple[str, ...]:
    parts = cell.split(delim) if delim else cell.split()
    return tuple(p.strip() for p in parts if p.strip())


def _read_csv(path: str, spec: LabelSpec, split: str, delimiter: str) -> _Raw:
    # utf-8-sig drops a byte-order mark; newline="" lets the csv module read quoted newlines and CRLF.
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh, delimiter=delimiter)
        header = next(reader, None)
        if not header:
            raise DataError(f"{path} is empty; a label file starts with a header row, e.g. path,label")
        names = [h.strip() for h in header]
        path_col, label_col, split_col = columns(names, spec, path)
        ip, il = names.index(path_col), names.index(label_col)
        isplit = names.index(split_col) if split_col is not None and not split else -1
        return _collect(path, ((r, ip, il, isplit) for r in reader), spec, split, start_line=2)


def _collect(
    where: str, rows: Iterable[tuple[list[Any], int, int, int]], spec: LabelSpec, split: str, start_line: int
) -> _Raw:
    """Rows of cells -> _Raw; label cells are strings (split by the delimiter) or lists."""
    raw = _Raw([], [], [], [])
    intern: dict[tuple[str, ...], tuple[str, ...]] = {}
    delim = spec.label_delim
    for line, (cells, ip, il, isplit) in enumerate(rows, start_line):
        if not cells or (len(cells) == 1 and not str(cells[0]).strip()):
            continue  # a blank line
        width = max(ip, il, isplit) + 1
        if len(cells) < width:
            raise DataError(
                f"{where}: row {line} has {len(cells)} field(s), the header {width} or more; is a quote missing?"
            )
        cell = cells[il]
        if isinstance(cell, (list, tuple)):
            labs = tuple(str(c).strip() for c in cell if str(c).strip())
        elif cell is None:
            labs = ()
        else:
            labs = _split_cell(str(cell), delim)
        labs = intern.setdefault(labs, labs)
        raw.lines.append(line)
        raw.paths.append("" if cells[ip] is None else str(cells[ip]).strip())
        raw.labels.append(labs)
        raw.splits.append(split or (_split_value(cells[isplit], where, line) if isplit >= 0 else ""))
    return raw


def _split_value(value: Any, where: str, line: int) -> str:
    text = "" if value is None else str(value).strip().lower()
    if text in SPLIT_VALUES:
        return SPLIT_VALUES[text]
    raise DataError(
        f"{where}: row {line}: split {value!r} is not train, val or test (also read: training, valid, validation, dev, testing)"
    )


def _read_jsonl(path: str, spec: LabelSpec, split: str) -> _Raw:
    def rows() -> Iterator[tuple[list[Any], int, int, int]]:
        cols: tuple[str, str, str | None] | None = None
        with open(path, encoding="utf-8-sig") as fh:
            for line_no, line in enumerate(fh, 1):
                if not line.strip():
                    yield [], 0, 0, -1
                    continue
                try:
                    obj = json.loads(line)
                except ValueError as exc:
                    raise DataError(f"{path}: line {line_no} is not JSON ({exc})") from None
                if not isinstance(obj, dict):
                    raise DataError(f"{path}: line {line_no} is not a JSON object")
                if cols is None:
                    cols = columns(list(obj), spec, path)
                p, lab, sp = cols
                if p not in obj or lab not in obj:
                    raise DataError(f"{path}: line {line_no} lacks {p!r} or {lab!r}")
                cells = [obj[p], obj[lab], obj.get(sp) if sp and not split else None]
                yield cells, 0, 1, 2 if sp and not split else -1

    return _collect(path, rows(), spec, split, start_line=1)


def _parquet_columns(path: str) -> dict[str, list[Any]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise UsageError("reading .parquet label files needs pyarrow: pip install 'cnnctl[labels]'") from None
    table = pq.read_table(path)
    return {name: table.column(name).to_pylist() for name in table.column_names}


def _hf_columns(path: str) -> dict[str, list[Any]]:
    """A Hugging Face dataset saved with `save_to_disk` (one split): its columns, ClassLabel and
    Sequence(ClassLabel) values turned into their names."""
    try:
        import datasets
    except ImportError:
        raise UsageError(
            f"{path} is a Hugging Face dataset folder; reading it needs the datasets library: pip install 'cnnctl[hf]'"
        ) from None
    ds = datasets.load_from_disk(path)
    if isinstance(ds, datasets.DatasetDict):
        raise UsageError(f"{path} holds the splits {', '.join(ds)}; give one split's folder ({path}/train)")
    out: dict[str, list[Any]] = {}
    for name, feature in ds.features.items():
        values = ds.data.column(name).to_pylist()
        inner = getattr(feature, "feature", None)
        names = getattr(feature, "names", None) or getattr(inner, "names", None)
        if names:
            values = [
                [names[i] for i in v] if isinstance(v, list) else (None if v is None else names[v]) for v in values
            ]
        out[name] = values
    return out


def _read_columns(path: str, data: dict[str, list[Any]], spec: LabelSpec, split: str) -> _Raw:
    """Columnar files (Parquet, Arrow): images given as paths, or as bytes stored in the file (Hugging
    Face's Image feature, {"bytes", "path"}), which are written once into the cache as files."""
    path_col, label_col, split_col = columns(list(data), spec, path)
    paths = [_image_path(v, spec, path) for v in data[path_col]]
    labels = data[label_col]
    labels = [v if isinstance(v, list) else (None if v is None else str(v)) for v in labels]
    splits = data[split_col] if split_col is not None and not split else None
    rows = (
        ([p, lab, splits[i] if splits else None], 0, 1, 2 if splits else -1)
        for i, (p, lab) in enumerate(zip(paths, labels))
    )
    return _collect(path, rows, spec, split, start_line=1)


def _image_path(value: Any, spec: LabelSpec, where: str) -> str:
    if isinstance(value, dict):
        data = value.get("bytes")
        if data:
            return _stored_image(data, spec)
        value = value.get("path")
    return "" if value is None else str(value)


def _stored_image(data: bytes, spec: LabelSpec) -> str:
    """An image stored inside a label file, written out once under the cache, named by its content."""
    digest = hashlib.sha256(data).hexdigest()[:32]
    out = cache_root(spec.cache_dir) / "label-images" / digest[:2] / f"{digest}{_suffix_of(data)}"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        write_bytes(out, data)
    return str(out)


def _suffix_of(data: bytes) -> str:
    if data[:3] == b"\xff\xd8\xff":
        return ".jpg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return ".png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ".webp"
    return ".bmp" if data[:2] == b"BM" else ".png"


class Listing:
    """Which files exist under an image root, one directory listing at a time (a stat per row
    costs minutes on a million rows over a network file system; a listing per folder costs one
    call). `file_of` is how a row's path names its image, for reading and for `review` rewriting."""

    def __init__(self, root: str) -> None:
        self.prefix = root.rstrip(os.sep) + os.sep
        self.dirs: dict[str, set[str] | None] = {}
        self.stems: dict[str, dict[str, str]] = {}

    def file_of(self, path: str) -> str | None:
        """The absolute image file a row's `path` names (relative to the root, or absolute), or None."""
        return self.find(os.path.normpath(path if os.path.isabs(path) else self.prefix + path))

    def names(self, folder: str) -> set[str] | None:
        if folder not in self.dirs:
            try:
                self.dirs[folder] = set(os.listdir(folder))
            except OSError:
                self.dirs[folder] = None
        return self.dirs[folder]

    def find(self, full: str) -> str | None:
        """`full` if it exists; for a path without an image suffix, the image with that stem."""
        folder, name = os.path.split(full)
        names = self.names(folder)
        if names is None:
            return None
        if name in names:
            return full
        if not name.lower().endswith(IMAGE_SUFFIXES):
            if folder not in self.stems:
                self.stems[folder] = {
                    os.path.splitext(n)[0]: n for n in sorted(names, reverse=True) if n.lower().endswith(IMAGE_SUFFIXES)
                }
            hit = self.stems[folder].get(name)
            return os.path.join(folder, hit) if hit else None
        return None


def _validate(raw: _Raw, spec: LabelSpec, classes: list[str] | None, task: str) -> LabelTable:
    root = spec.root
    listing = Listing(root)
    bad: dict[str, list[tuple[int, str]]] = {k: [] for k in BAD_KINDS}
    known = set(classes) if classes is not None else None
    single = task == "single" or (task == "auto" and not any(len(labs) > 1 for labs in raw.labels))
    seen: dict[str, int] = {}  # file -> its first row
    keep: list[int] = []
    paths: list[str] = []
    for i, (line, path, labs) in enumerate(zip(raw.lines, raw.paths, raw.labels)):
        if not path:
            bad["empty"].append((line, "(empty)"))
            continue
        found = listing.file_of(path)
        if found is None:
            bad["missing"].append((line, path))
            continue
        if found in seen:
            first = seen[found]
            kind = "duplicate"
            if raw.splits[first] != raw.splits[i]:
                kind = "cross-split"
            elif set(raw.labels[first]) != set(labs):
                kind = "conflicting"
            bad[kind].append((line, f"{path} (first on row {raw.lines[first]})"))
            continue
        if single and not labs:
            bad["no-label"].append((line, path))
            continue
        if known is not None and any(lab not in known for lab in labs):
            bad["unknown"].append((line, f"{path} ({', '.join(lab for lab in labs if lab not in known)})"))
            continue
        seen[found] = i
        keep.append(i)
        paths.append(found)
    dropped = {k: len(v) for k, v in bad.items() if v}
    if dropped and not spec.skip_bad_rows:
        raise DataError(refusal(spec.file, bad, len(raw.paths)))
    table = LabelTable(
        spec.file,
        root,
        [raw.lines[i] for i in keep],
        paths,
        [raw.labels[i] for i in keep],
        [raw.splits[i] for i in keep],
        classes if classes is not None else sorted({lab for i in keep for lab in raw.labels[i]}),
        dropped,
        bad={k: v for k, v in bad.items() if v},
        named={lab for labs in raw.labels for lab in labs},
    )
    if dropped:
        table.notes.append(f"left out {describe_dropped(dropped)} (--skip-bad-rows)")
    if not table.paths:
        raise DataError(f"{spec.file}: no usable rows (of {len(raw.paths)})")
    return table


def describe_dropped(dropped: dict[str, int]) -> str:
    return ", ".join(f"{n} row(s) {BAD_KINDS[k]}" for k, n in dropped.items())


def refusal(where: str, bad: dict[str, list[tuple[int, str]]], total: int) -> str:
    """One line: how many rows of each bad kind, the first few by row, and the flag that accepts them."""
    parts = []
    for kind, rows in bad.items():
        if rows:
            shown = ", ".join(f"row {line}: {what}" for line, what in rows[:3])
            parts.append(f"{len(rows)} {BAD_KINDS[kind]} ({shown}{', ...' if len(rows) > 3 else ''})")
    n = sum(len(r) for r in bad.values())
    hint = ""
    if bad.get("no-label"):
        hint = " (images with no label are allowed in multi-label files: --task multilabel)"
    return (
        f"{where}: {n} bad row(s) of {total}: {'; '.join(parts)}; fix the label file, or add --skip-bad-rows "
        f"to leave them out (counted in the log){hint}"
    )
