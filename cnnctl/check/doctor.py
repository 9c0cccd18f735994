"""`cnnctl check`: the data doctor's report over one or more image folders (or torchvision sets).

It reads every file once (scan.py), never writes to the data, and reports findings with a level:
- error: what a script should stop for (`--strict` exits 1): files training cannot read
  (zero-byte, undecodable, truncated, over the pixel limit), duplicates that leak between roots
  (train vs test vs holdout), duplicates that carry different labels;
- warning: what changes results quietly: non-image files in class folders, duplicates within a
  root, EXIF rotations (training reads stored pixels), CMYK/palette/alpha/16-bit files (converted),
  class imbalance, empty classes, huge files, suspected label errors (`--labels`);
- info: the statistics (class counts, sizes and aspect ratios, modes, formats).

A root is one folder of class subfolders: DATA itself, or each of its train/val/test splits, and
each `--against` folder (or its splits): duplicates across them are leakage.
"""

from __future__ import annotations

import dataclasses
import os
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from cnnctl.check.duplicates import EMBED_COSINE, Group, Item, find_groups
from cnnctl.check.scan import GRAY_MODES, HIGH_DEPTH_MODES, HUGE_BYTES, ORIENTATIONS, FileRecord, scan
from cnnctl.errors import DataError

FORMAT = 1
NEAR_DEFAULT = 6  # bits of 64: re-encoded/resized copies measure 0-2, distinct photos >= 12 (docs/check.md)
IMBALANCE_WARN = 3.0
EXAMPLES = 5
Log = Callable[[str], None]


@dataclass
class Root:
    """One folder of class subfolders (or one split of a named set) and what was found in it."""

    name: str
    path: str  # the folder, or the name of a data set (mnist, cifar10, ...)
    classes: list[str]
    records: list[FileRecord]
    labels: list[str]  # per record: its class folder (a label file's root: its label set, joined by " + ")
    label_sets: list[tuple[str, ...]] | None = None  # a label file's root: each record's labels
    files: bool = True  # False: a named set's arrays (records name rows, not files)


@dataclass(frozen=True)
class RootSpec:
    """Where a root comes from: a folder of class subfolders, or one split of a named data set."""

    name: str
    path: str
    split: str = ""  # "train" or "test" of the named set `path` (or of the label file); "" for a folder
    table: Any = None  # a label file's rows (check/listing.py)


def resolve_roots(target: str, reading: Any = None) -> list[RootSpec]:
    """The roots `target` stands for: a plain folder, each split of one, a named set's splits, or a
    label file's splits (`reading`: how to read it)."""
    from cnnctl.data.labelfile import LabelSpec, is_label_file
    from cnnctl.data.layout import NAMED_SETS, folder_layout

    if is_label_file(target):
        from cnnctl.check import listing

        spec = dataclasses.replace(reading, file=target) if reading is not None else LabelSpec(target)
        table = listing.read(spec)
        return [RootSpec(f"{target}:{split}", target, split, table) for split in listing.splits_of(table)]
    if target in NAMED_SETS and not os.path.isdir(target):
        return [RootSpec(f"{target}/{split}", target, split) for split in ("train", "test")]
    layout = folder_layout(target)
    if layout.splits:
        return [RootSpec(os.path.join(target, name), str(path)) for name, path in layout.splits.items()]
    return [RootSpec(target, str(layout.root))]


def _scan_folder(name: str, path: str, workers: int, log: Log) -> Root:
    from cnnctl.check.scan import list_files

    found = list(list_files(path))
    if not found:
        raise DataError(f"{path}: no class subfolders with files; put images in {path}/<class name>/")
    classes = sorted({label for label, _ in found})
    records = scan([p for _, p in found], workers=workers, log=lambda m: log(f"{name}: {m}"))
    return Root(name, path, classes, records, [label for label, _ in found])


def _scan_label_split(spec: RootSpec, workers: int, log: Log) -> Root:
    """One split of a label file: its good rows' files, labelled by their label sets."""
    from cnnctl.check import listing

    table = spec.table
    rows = listing.rows_of(table, spec.split)
    records = scan([table.paths[i] for i in rows], workers=workers, log=lambda m: log(f"{spec.name}: {m}"))
    sets = [table.labels[i] for i in rows]
    return Root(spec.name, spec.path, list(table.classes), records, [" + ".join(s) for s in sets], sets)


def _scan_named(spec: RootSpec, data_dir: str, download: bool, log: Log) -> Root:
    """A torchvision set's split, hashed from its pixel arrays (no files to check)."""
    import hashlib

    from PIL import Image

    from cnnctl.check.phash import phash, thumbnail
    from cnnctl.data.sources import load_source

    name = spec.name
    src = load_source(spec.path, data_dir or "data", download)
    part = src.train if spec.split == "train" else src.test
    if part is None:
        raise DataError(f"{spec.path} has no {spec.split} split")
    x = part.x.numpy()
    records = []
    for i in range(len(x)):
        arr = x[i, 0] if x.shape[1] == 1 else x[i].transpose(1, 2, 0)
        h, w = arr.shape[:2]
        records.append(
            FileRecord(
                f"{name}#{i}",
                "ok",
                arr.nbytes,
                hashlib.blake2b(arr.tobytes(), digest_size=16).hexdigest(),
                mode="L" if x.shape[1] == 1 else "RGB",
                width=w,
                height=h,
                phash=phash(im := Image.fromarray(arr)),
                thumb=thumbnail(im),
            )
        )
    labels = [src.classes[int(v)] for v in part.y.tolist()]
    log(f"{name}: hashed {len(records)} images")
    return Root(name, spec.path, list(src.classes), records, labels, files=False)


def check(
    target: str,
    against: Sequence[str] = (),
    *,
    near: int = NEAR_DEFAULT,
    workers: int = 0,
    data_dir: str = "",
    download: bool = False,
    log: Log = lambda m: None,
    reading: Any = None,
    backbone: tuple[str, str, str] | None = None,
) -> tuple[dict[str, Any], list[Root], list[Item]]:
    """Scan every root of `target` and `against`; return the report, the roots and the decodable items."""
    if not 0 <= near <= 32 and near != -1:
        raise DataError(
            f"--near {near}: give a Hamming distance between 0 and 32 bits (of 64), or -1 to skip near-duplicates"
        )
    specs: list[RootSpec] = []
    for t in (target, *against):
        for spec in resolve_roots(t, reading):
            if any(os.path.realpath(spec.path) == os.path.realpath(s.path) and spec.split == s.split for s in specs):
                raise DataError(f"{spec.path} is named twice (as {spec.name}); give each folder once")
            specs.append(spec)
    roots = [
        _scan_label_split(s, workers, log)
        if s.table is not None
        else (_scan_named(s, data_dir, download, log) if s.split else _scan_folder(s.name, s.path, workers, log))
        for s in specs
    ]
    items = [
        Item(r, root.labels[k], rec.path, rec.digest, rec.phash, rec.thumb)
        for r, root in enumerate(roots)
        for k, rec in enumerate(root.records)
        if rec.decodes and rec.phash is not None
    ]
    embed = _embeddings(items, roots, near, backbone, log)
    groups = find_groups(items, near, embed)
    listed, sections = _label_files(specs)
    out = report(roots, items, groups, near, listed)
    if sections:
        out["label_files"] = sections
    if embed is not None and backbone is not None:
        out["near_confirmed_by"] = f"thumbnails or {backbone[0]} embeddings (cosine >= {EMBED_COSINE})"
    return out, roots, items


def _embeddings(
    items: list[Item], roots: list[Root], near: int, backbone: tuple[str, str, str] | None, log: Log
) -> np.ndarray | None:
    """The backbone's embeddings of every item (`backbone`: model, weights, init), when one is
    named and every root is files (a named set's arrays keep the thumbnail check)."""
    if backbone is None or near < 0 or not items:
        return None
    if not all(r.files for r in roots):
        log("duplicates: a named data set's images are arrays; near pairs are confirmed by thumbnails only")
        return None
    from cnnctl.check.embed import embeddings
    from cnnctl.data.layout import cache_root

    return embeddings([it.path for it in items], *backbone, cache_root(), log)


def _label_files(specs: list[RootSpec]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(findings, sections) of the label files among the roots (check/listing.py), once per file."""
    from cnnctl.check import listing

    found: list[dict[str, Any]] = []
    sections: list[dict[str, Any]] = []
    for table in {id(s.table): s.table for s in specs if s.table is not None}.values():
        more, section = listing.findings(table, table.named)
        found += more
        sections.append(section)
    return found, sections


def _stats(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    a = np.asarray(values, dtype=np.float64)
    return {
        "min": float(a.min()),
        "p5": float(np.percentile(a, 5)),
        "median": float(np.median(a)),
        "p95": float(np.percentile(a, 95)),
        "max": float(a.max()),
    }


def _finding(kind: str, level: str, message: str, paths: list[str]) -> dict[str, Any]:
    return {"kind": kind, "level": level, "count": len(paths), "message": message, "examples": paths[:EXAMPLES]}


PROBLEMS = {
    "zero-byte": ("error", "empty (zero-byte) files: training skips them"),
    "undecodable": ("error", "files that do not decode as images: training skips them"),
    "truncated": ("error", "truncated images (the file ends early): training skips them"),
    "too-large": ("error", "images over cnnctl's pixel limit: training refuses them"),
    "not-image": ("warning", "files in class folders that training ignores (not an image suffix)"),
}


def report(
    roots: list[Root], items: list[Item], groups: list[Group], near: int, listed: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """The doctor's report: per-root counts, image statistics, and the findings (`listed`: those of
    the label files among the roots), errors first."""
    names = [r.name for r in roots]
    records = [rec for root in roots for rec in root.records]
    ok = [rec for rec in records if rec.decodes]
    findings: list[dict[str, Any]] = []
    for status, (level, text) in PROBLEMS.items():
        bad = [rec.path for rec in records if rec.status == status]
        if bad:
            findings.append(_finding(status, level, f"{len(bad)} {text}", bad))
    per_root = [_root_summary(root, findings) for root in roots]
    findings += _duplicate_findings(items, groups, names)
    findings += _file_findings(records, ok)
    findings += listed or []
    sizes = Counter((r.width, r.height) for r in ok)
    order = {"error": 0, "warning": 1, "info": 2}
    findings.sort(key=lambda f: order[f["level"]])
    return {
        "format": FORMAT,
        "roots": per_root,
        "files": len(records),
        "images": len(ok),
        "sizes": {
            "width": _stats([r.width for r in ok]),
            "height": _stats([r.height for r in ok]),
            "aspect": _stats([r.width / r.height for r in ok if r.height]),
            "distinct": len(sizes),
            "most_common": [[w, h, n] for (w, h), n in sizes.most_common(5)],
        },
        "modes": dict(Counter(rec.mode for rec in ok).most_common()),
        "formats": dict(Counter(r.format for r in ok).most_common()),
        "near_distance": near,
        "findings": findings,
        "problems": [
            {"path": r.path, "status": r.status, "error": r.error, "bytes": r.bytes} for r in records if not r.decodes
        ],
        "duplicates": [g.to_dict(items, names) for g in groups],
        "errors": sum(1 for f in findings if f["level"] == "error"),
        "warnings": sum(1 for f in findings if f["level"] == "warning"),
    }


def _root_summary(root: Root, findings: list[dict[str, Any]]) -> dict[str, Any]:
    """One root's counts per class; empty classes and imbalance go to `findings`."""
    if root.label_sets is not None:  # a label file: every label of a set counts
        counts = Counter(lab for labs, rec in zip(root.label_sets, root.records) if rec.decodes for lab in labs)
    else:
        counts = Counter(label for label, rec in zip(root.labels, root.records) if rec.decodes)
    classes = {c: counts.get(c, 0) for c in root.classes}
    nonzero = [v for v in classes.values() if v]
    ratio = max(nonzero) / min(nonzero) if nonzero else 0.0
    empty = [c for c, v in classes.items() if v == 0]
    if empty:
        findings.append(
            _finding(
                "empty-class",
                "warning",
                f"{root.name}: {len(empty)} class folder(s) with no readable image: {', '.join(empty[:5])}",
                [os.path.join(root.path, c) for c in empty],
            )
        )
    if ratio >= IMBALANCE_WARN:
        big = max(classes, key=lambda c: classes[c])
        small = min((c for c in classes if classes[c]), key=lambda c: classes[c])
        findings.append(
            _finding(
                "imbalance",
                "warning",
                f"{root.name}: classes are imbalanced {ratio:.1f}:1 ({big} {classes[big]}, {small} {classes[small]}); "
                f"consider --class-weights auto or --sampler balanced, and macro recall over accuracy",
                [],
            )
        )
    return {
        "name": root.name,
        "path": root.path,
        "files": len(root.records),
        "images": sum(rec.decodes for rec in root.records) if root.label_sets is not None else sum(classes.values()),
        "classes": classes,
        "imbalance_ratio": round(ratio, 3),
    }


def _duplicate_findings(items: list[Item], groups: list[Group], names: list[str]) -> list[dict[str, Any]]:
    """Copies across roots (leakage), copies with different labels, and copies within one class."""
    leaks = [g for g in groups if g.across_roots]
    conflicts = [g for g in groups if g.conflicting]
    inside = [g for g in groups if not g.across_roots and not g.conflicting]

    def member_paths(gs: list[Group]) -> list[str]:
        return [items[i].path for g in gs for i in g.members]

    out = []
    if leaks:
        pairs = Counter(" & ".join(names[r] for r in g.roots) for g in leaks)
        shown = "; ".join(f"{k}: {v}" for k, v in pairs.most_common(3))
        out.append(
            _finding(
                "leak",
                "error",
                f"{len(leaks)} duplicate group(s) span roots ({shown}): held-out scores are inflated; "
                f"remove the copies from one side",
                member_paths(leaks),
            )
        )
    if conflicts:
        out.append(
            _finding(
                "conflicting-labels",
                "error",
                f"{len(conflicts)} duplicate group(s) carry different labels: "
                f"the same picture cannot be both; keep one copy in the right class",
                member_paths(conflicts),
            )
        )
    if inside:
        extra = sum(len(g.members) - 1 for g in inside)
        out.append(
            _finding(
                "duplicate",
                "warning",
                f"{len(inside)} duplicate group(s) within one root and class ({extra} extra copies): "
                f"they weigh those pictures more",
                member_paths(inside),
            )
        )
    return out


def _file_findings(records: list[FileRecord], ok: list[FileRecord]) -> list[dict[str, Any]]:
    """What the files themselves carry: EXIF rotation, odd colour modes, mixed grayscale and colour, huge files."""
    out = []
    rotated = [rec.path for rec in ok if rec.orientation in ORIENTATIONS]
    if rotated:
        kinds = Counter(ORIENTATIONS[rec.orientation] for rec in ok if rec.orientation in ORIENTATIONS)
        out.append(
            _finding(
                "exif-rotated",
                "warning",
                f"{len(rotated)} image(s) carry an EXIF rotation ({', '.join(f'{k} {v}' for k, v in kinds.most_common())}): "
                f"viewers turn them, training reads the stored pixels; rotate them on disk if the turned view is right",
                rotated,
            )
        )
    odd = {
        "cmyk": ([r.path for r in ok if r.mode == "CMYK"], "CMYK image(s), converted to RGB (colours may shift)"),
        "palette": ([r.path for r in ok if r.mode == "P"], "palette image(s), converted"),
        "alpha": ([r.path for r in ok if r.alpha], "image(s) with transparency, composited on black"),
        "high-bit-depth": (
            [r.path for r in ok if r.mode in HIGH_DEPTH_MODES],
            "16-/32-bit image(s), reduced to 8 bits",
        ),
    }
    for kind, (paths, text) in odd.items():
        if paths:
            out.append(_finding(kind, "warning", f"{len(paths)} {text}", paths))
    looks = Counter("grayscale" if r.mode in GRAY_MODES else "colour" for r in ok)
    if len(looks) > 1:
        minority = min(looks, key=lambda k: looks[k])
        out.append(
            _finding(
                "mixed-modes",
                "warning",
                f"grayscale and colour files are mixed ({dict(looks)}): the {minority} ones are converted",
                [r.path for r in ok if ("grayscale" if r.mode in GRAY_MODES else "colour") == minority],
            )
        )
    huge = [r.path for r in records if r.bytes > HUGE_BYTES]
    if huge:
        out.append(_finding("huge-file", "warning", f"{len(huge)} file(s) over {HUGE_BYTES >> 20} MB", huge))
    return out


def add_label_issues(report: dict[str, Any], root: Root, opts: Any, log: Log) -> None:
    """Run the label-issue search on `root` (the first root: DATA or its train split) and add
    its suspects to the report, as `labels` and as a warning finding."""
    from cnnctl.check.labels import label_issues

    gray = sum(1 for rec in root.records if rec.decodes and rec.mode in GRAY_MODES) > 0.9 * max(
        1, sum(r.decodes for r in root.records)
    )
    result = label_issues(root.path, opts, gray, log)  # a named set's root: its training split
    report["labels"] = result
    if result["issues"]:
        report["findings"].append(
            _finding(
                "label-issues",
                "warning",
                f"{result['issues']} image(s) in {root.name} look mislabelled "
                f"({result['method']}); review them (cnnctl review) before training",
                [s["path"] for s in result["suspects"]],
            )
        )
        report["warnings"] += 1
