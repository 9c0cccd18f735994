"""`cnnctl check FILE.csv`: what a label file says against what is on disk. Torch-free.

A label file is split into roots by its rows' splits (train, val, test: duplicates across them are
leakage, as for folders), and checked as a listing: rows that name missing files, empty paths or no
label; files listed twice (again with other labels, or in another split); image files under the
image root that no row lists; labels whose every row is bad; and how many labels the images carry
(the label cardinality: zero-label images, the most per image).
"""

from __future__ import annotations

import os
from collections import Counter
from typing import Any

from cnnctl.data.labelfile import BAD_KINDS, LabelSpec, LabelTable, read_labels
from cnnctl.runtime.preprocess import IMAGE_SUFFIXES

EXAMPLES = 5
LEVELS = {"missing": "error", "conflicting": "error", "cross-split": "error", "empty": "error", "no-label": "error"}


def read(spec: LabelSpec) -> LabelTable:
    """Every good row, with the bad ones kept aside in `table.bad` (a check reports, never refuses)."""
    import dataclasses

    return read_labels(dataclasses.replace(spec, skip_bad_rows=True), task="auto")


def splits_of(table: LabelTable) -> list[str]:
    """The roots of a label file: its splits in train, val, test order ("" rows count as train)."""
    present = {s or "train" for s in table.splits}
    return [s for s in ("train", "val", "test") if s in present]


def rows_of(table: LabelTable, split: str) -> list[int]:
    return [i for i, s in enumerate(table.splits) if (s or "train") == split]


def unlisted(table: LabelTable, limit: int = 200_000) -> list[str]:
    """Image files under the image root that no row lists (the walk stops after `limit` images)."""
    listed = set(table.paths)
    out: list[str] = []
    seen = 0
    for dirpath, dirnames, names in os.walk(table.root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for n in sorted(names):
            if n.lower().endswith(IMAGE_SUFFIXES) and not n.startswith("."):
                seen += 1
                full = os.path.join(dirpath, n)
                if full not in listed:
                    out.append(full)
        if seen >= limit:
            break
    return out


def findings(table: LabelTable, all_labels: set[str]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(findings, the label-file section of the report). `all_labels`: every label named by any
    row, bad ones included (a label left with no good row has no images)."""
    out: list[dict[str, Any]] = []
    for kind, rows in table.bad.items():
        shown = [f"row {line}: {what}" for line, what in rows]
        out.append(
            {
                "kind": f"rows-{kind}",
                "level": LEVELS.get(kind, "warning"),
                "count": len(rows),
                "message": f"{len(rows)} row(s) of {os.path.basename(table.source)} {BAD_KINDS[kind]}",
                "examples": shown[:EXAMPLES],
            }
        )
    extra = unlisted(table)
    if extra:
        out.append(
            {
                "kind": "unlisted-files",
                "level": "warning",
                "count": len(extra),
                "message": f"{len(extra)} image file(s) under {table.root} that no row lists (training never sees them)",
                "examples": extra[:EXAMPLES],
            }
        )
    unused = sorted(all_labels - set(table.classes))
    if unused:
        out.append(
            {
                "kind": "labels-without-images",
                "level": "warning",
                "count": len(unused),
                "message": f"{len(unused)} label(s) whose every row is bad: {', '.join(unused[:5])}",
                "examples": unused[:EXAMPLES],
            }
        )
    sizes = Counter(len(labs) for labs in table.labels)
    per_label = Counter(lab for labs in table.labels for lab in labs)
    section = {
        "file": table.source,
        "image_root": table.root,
        "rows": len(table) + sum(len(v) for v in table.bad.values()),
        "good_rows": len(table),
        "multilabel": table.multilabel,
        "labels_per_image": {
            "mean": round(sum(k * v for k, v in sizes.items()) / max(1, len(table)), 4),
            "max": max(sizes) if sizes else 0,
            "histogram": {str(k): v for k, v in sorted(sizes.items())},
            "zero": sizes.get(0, 0),
        },
        "images_per_label": dict(per_label.most_common()),
    }
    return out, section
