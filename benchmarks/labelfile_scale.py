"""A label file of N rows (default 1,000,000) read and validated: the time and the peak memory.

Lays out N empty image files in 1,000 folders (timed apart: that is the disk, not cnnctl), writes a
Kaggle-style CSV (`path,labels,split`, 1-3 of 20 labels per row, a split column) and, with
`--jsonl`, the same rows as JSONL, then times `read_labels` (parse, look every file up, validate,
build the table) in a fresh process each, so the peak RSS is the reader's own. "Beyond the file
list" subtracts the peak of a process that only holds the N absolute paths as Python strings.
Prints one table; nothing is asserted (docs/benchmarks.md has figures, with the machine).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r"""
import json, resource, sys, time
sys.path.insert(0, sys.argv[3])
kind, path = sys.argv[1], sys.argv[2]
if kind == "paths":
    t = time.perf_counter()
    paths = [line.rstrip("\n") for line in open(path)]
    seconds, rows = time.perf_counter() - t, len(paths)
else:
    from cnnctl.data.labelfile import LabelSpec, read_labels
    t = time.perf_counter()
    table = read_labels(LabelSpec(path))
    seconds, rows = time.perf_counter() - t, len(table)
print(json.dumps({"seconds": seconds, "rows": rows, "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def lay_out(root: Path, n: int) -> list[str]:
    rels = [f"d{i % 1000:03d}/{i:07d}.jpg" for i in range(n)]
    for d in range(min(n, 1000)):
        (root / f"d{d:03d}").mkdir()
    for rel in rels:
        os.close(os.open(root / rel, os.O_CREAT | os.O_WRONLY, 0o644))
    return rels


def child(kind: str, path: Path) -> dict:
    repo = str(Path(__file__).resolve().parents[1])
    out = subprocess.run(
        [sys.executable, "-c", CHILD, kind, str(path), repo], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--jsonl", action="store_true", help="also time the same rows as JSONL")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t = time.perf_counter()
        rels = lay_out(root, args.rows)
        layout_s = time.perf_counter() - t
        labels = [f"tag{k:02d}" for k in range(20)]
        with open(root / "labels.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["path", "labels", "split"])
            for i, rel in enumerate(rels):
                tags = " ".join(labels[(i * m) % 20] for m in range(1, 2 + i % 3))
                w.writerow([rel, tags, "test" if i % 10 == 0 else "train"])
        if args.jsonl:
            with open(root / "labels.jsonl", "w") as fh:
                for i, rel in enumerate(rels):
                    tags = sorted({labels[(i * m) % 20] for m in range(1, 2 + i % 3)})
                    fh.write(json.dumps({"path": rel, "labels": tags}) + "\n")
        (root / "paths.txt").write_text("".join(str(root / r) + "\n" for r in rels))
        del rels
        base = child("paths", root / "paths.txt")
        results = [("csv", child("labels", root / "labels.csv"))]
        if args.jsonl:
            results.append(("jsonl", child("labels", root / "labels.jsonl")))
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    )
    print(f"{args.rows:,} empty files laid out in {layout_s:.1f} s (the disk's part, not timed below)")
    print(f"{'file':<6} {'rows':>10} {'read+validate s':>16} {'peak MiB':>9} {'beyond the file list MiB':>25}")
    print(f"{'paths':<6} {base['rows']:>10,} {base['seconds']:>16.2f} {base['peak_mib']:>9.0f} {'-':>25}")
    for name, r in results:
        print(
            f"{name:<6} {r['rows']:>10,} {r['seconds']:>16.2f} {r['peak_mib']:>9.0f} {r['peak_mib'] - base['peak_mib']:>25.0f}"
        )


if __name__ == "__main__":
    main()
