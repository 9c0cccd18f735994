"""The split manifest at scale: write, read and compare a record of N files (default 1,000,000).

Measures what a run pays to record its splits and what eval/resume pay to read them back: the
gzipped file's size, the time to write and read it, and the time to compare a listing of the
folder against it (set arithmetic over relative paths; the per-file stat is measured on
`--stat-files` real files). Prints one table; nothing is asserted (timings belong here, not in
tests). Machine: name it next to the figures (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path

from cnnctl.data.manifest import Manifest, SplitRecord, compare


def synthetic(n: int, classes: int = 1000) -> tuple[SplitRecord, SplitRecord]:
    """An ImageNet-like folder: `classes` class folders, n files, 10% held out."""
    paths = [f"n{(i % classes):08d}/n{(i % classes):08d}_{i:07d}.JPEG" for i in range(n)]
    labels = [i % classes for i in range(n)]
    sizes = [100_000 + (i * 7919) % 50_000 for i in range(n)]
    mtimes = [1_733_000_000_000_000_000 + i * 1_000_003 for i in range(n)]
    val = [i for i in range(n) if i % 10 == 0]
    train = [i for i in range(n) if i % 10]

    def rec(idx: list[int]) -> SplitRecord:
        return SplitRecord(
            tuple(paths[i] for i in idx),
            tuple(labels[i] for i in idx),
            tuple(sizes[i] for i in idx),
            tuple(mtimes[i] for i in idx),
        )

    return rec(train), rec(val)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--files", type=int, default=1_000_000)
    parser.add_argument("--stat-files", type=int, default=20_000)
    args = parser.parse_args()
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    train, val = synthetic(args.files)
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        run.mkdir()
        manifest = Manifest("/data/imagenet/train", {"train": train, "val": val}, "0" * 16)
        t = time.perf_counter()
        manifest.write(run)
        write_s = time.perf_counter() - t
        size = (run / "splits.json.gz").stat().st_size
        t = time.perf_counter()
        back = Manifest.read(run)
        read_s = time.perf_counter() - t
        assert back is not None and len(back.splits["train"]) == len(train)
        listing = [f"/data/imagenet/train/{p}" for p in train.paths + val.paths]
        t = time.perf_counter()
        # the files are not on disk here: each recorded file's stat fails fast (the real stat cost is below)
        change = compare(back, "/data/imagenet/train", listing, ("train", "val"))
        compare_s = time.perf_counter() - t
        # stat cost on real files
        folder = Path(tmp) / "folder" / "c"
        folder.mkdir(parents=True)
        for i in range(args.stat_files):
            (folder / f"{i}.jpg").write_bytes(b"x")
        t = time.perf_counter()
        for i in range(args.stat_files):
            os.stat(folder / f"{i}.jpg")
        stat_us = (time.perf_counter() - t) / args.stat_files * 1e6
    peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024
    print(f"files: {args.files:,} ({len(val.paths):,} val)")
    print(f"splits.json.gz: {size / 2**20:.1f} MiB ({size / args.files:.1f} bytes a file)")
    print(
        f"write {write_s:.2f} s, read {read_s:.2f} s, compare a listing {compare_s:.2f} s "
        f"({len(change.added)} added, {len(change.removed)} removed)"
    )
    print(f"stat per file: {stat_us:.1f} us -> {stat_us * args.files / 1e6:.1f} s for {args.files:,} files")
    print(f"peak memory added: {peak:.0f} MiB (the path lists themselves included)")


if __name__ == "__main__":
    main()
