"""Applying a review change log to a label file, and undoing that. Torch-free.

A label file's log names the file (`data`), how it is read (`reading`: image root and columns) and
one decision per image, by its path relative to the image root:
    {"action": "labels", "labels": ["cat", "dog"]}   the image's new label set
    {"action": "remove"}                               its row leaves the file (the image stays on disk)
    {"action": "fine"}                                 nothing changes

`apply_to_file` rewrites CSV, TSV and JSONL files row by row (other columns, quoting style aside,
and the order of rows are kept; several labels are written joined by the file's delimiter, a
space by default), through a temporary file renamed into place. Before that it copies the file as
it was to LOG.undo<suffix>, and writes the undo record: `undo_file` puts the copy back, refusing
when the label file changed since the apply (its SHA-256 is recorded). Parquet files and Hugging
Face datasets are refused with one line: export the labels to CSV and review that.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from pathlib import Path
from typing import Any

from cnnctl.data.labelfile import LabelSpec, Listing, columns
from cnnctl.errors import DataError, UsageError
from cnnctl.io import write_bytes, write_json


def _sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _decision_for(listing: Listing, root: str, path: Any, decisions: dict[str, Any]) -> dict[str, Any] | None:
    """The decision a row's path falls under: the image it names (found as reading found it, ids
    without a suffix included), relative to the image root as the log names it."""
    found = listing.file_of(str(path)) if path else None
    return decisions.get(os.path.relpath(found, root)) if found else None


def rewrite(spec: LabelSpec, decisions: dict[str, Any]) -> tuple[bytes, dict[str, int]]:
    """The label file's new bytes with the decisions applied, and how many rows each action touched."""
    lower = spec.file.lower()
    if not lower.endswith((".csv", ".tsv", ".jsonl")):
        raise UsageError(
            f"{spec.file}: review writes CSV, TSV and JSONL label files; export the labels to CSV and review that"
        )
    delim = spec.label_delim or " "
    counts = {"labels": 0, "remove": 0}
    listing, root = Listing(spec.root), spec.root
    text = Path(spec.file).read_text(encoding="utf-8-sig")
    if lower.endswith(".jsonl"):
        out_lines = []
        for line in text.splitlines(keepends=True):
            if not line.strip():
                out_lines.append(line)
                continue
            obj = json.loads(line)
            p, lab, _ = columns(list(obj), spec, spec.file)
            decision = _decision_for(listing, root, obj[p], decisions)
            if decision and decision["action"] == "remove":
                counts["remove"] += 1
                continue
            if decision and decision["action"] == "labels":
                obj[lab] = list(decision["labels"]) if isinstance(obj[lab], list) else delim.join(decision["labels"])
                counts["labels"] += 1
                line = json.dumps(obj, ensure_ascii=False) + "\n"
            out_lines.append(line)
        return "".join(out_lines).encode(), counts
    dialect_delim = "\t" if lower.endswith(".tsv") else ","
    rows = list(csv.reader(io.StringIO(text, newline=""), delimiter=dialect_delim))
    if not rows:
        raise DataError(f"{spec.file} is empty now; nothing was changed")
    header, body = rows[0], rows[1:]
    path_col, label_col, _ = columns(header, spec, spec.file)
    ip, il = header.index(path_col), header.index(label_col)
    buf = io.StringIO()
    writer = csv.writer(buf, delimiter=dialect_delim, lineterminator="\r\n" if "\r\n" in text else "\n")
    writer.writerow(header)
    for row in body:
        decision = _decision_for(listing, root, row[ip], decisions) if len(row) > max(ip, il) else None
        if decision and decision["action"] == "remove":
            counts["remove"] += 1
            continue
        if decision and decision["action"] == "labels":
            row[il] = delim.join(decision["labels"])
            counts["labels"] += 1
        writer.writerow(row)
    return buf.getvalue().encode(), counts


def undo_paths(log_path: str, label_file: str) -> tuple[Path, Path]:
    """(the undo record, the copy of the label file as it was) beside the log."""
    p = Path(log_path)
    return p.with_name(p.stem + ".undo.json"), p.with_name(p.stem + ".undo" + Path(label_file).suffix)


def apply_to_file(log: dict[str, Any], log_path: str, undo_file: Path) -> dict[str, Any]:
    """Rewrite the label file the log names (see the module docstring); returns the report."""
    spec = LabelSpec(log["data"], **log.get("reading", {}))
    decisions = {rel: d for rel, d in log["decisions"].items() if d.get("action") != "fine"}
    new, counts = rewrite(spec, decisions)
    _, backup = undo_paths(log_path, spec.file)
    write_bytes(backup, Path(spec.file).read_bytes())
    record = {
        "format": 1,
        "log": os.path.abspath(log_path),
        "label_file": os.path.abspath(spec.file),
        "backup": str(backup.resolve()),
        "state": "pending",
    }
    write_json(undo_file, record)
    write_bytes(spec.file, new)
    record.update(state="applied", sha256=_sha256(spec.file))
    write_json(undo_file, record)
    fine = sum(1 for d in log["decisions"].values() if d.get("action") == "fine")
    return {
        "applied": counts["labels"] + counts["remove"],
        "decisions": {"labels": counts["labels"], "remove": counts["remove"], "fine": fine, "relabel": 0},
        "undo": str(undo_file),
        "label_file": spec.file,
    }


def undo_file_record(record: dict[str, Any], undo_file: str) -> dict[str, Any]:
    """Put the label file back as it was before the apply (refused when it changed since)."""
    target, backup = Path(record["label_file"]), Path(record["backup"])
    if not backup.is_file():
        raise DataError(f"{backup}, the copy of {target} before the apply, is gone; nothing was undone")
    if record.get("state") == "applied" and _sha256(target) != record.get("sha256"):
        raise DataError(f"{target} changed since the apply; nothing was undone (its earlier copy is {backup})")
    write_bytes(target, backup.read_bytes())
    record["state"] = "undone"
    write_json(undo_file, record)
    return {"undone": 1, "undo": undo_file, "label_file": str(target)}
