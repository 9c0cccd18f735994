"""Validation memory bounded by a budget, not by the data: peak RssAnon of `cnnctl train`.

The same training command on a folder of 2,001 photos and on one of 12,006 (the 2,001 PetImages
photos from ../shared/data, and each of them re-encoded at six sizes and aspect ratios; made in
a temporary directory, nothing committed), side by side in one run, with the old fixed
`--eval-batch-size 1024` (the baseline) and the new default `--eval-batch-size auto`:

    python -m benchmarks.eval_memory [--iters 20] [--size 256]

Peak anonymous resident memory (RssAnon: what activations and tensors take; the memory-mapped
pixel cache is file-backed and not in it) is sampled every 20 ms. Needs ~2 GB of disk and
about 10 minutes on 2 cores (the baseline's 600-photo validation batch is most of it).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tarfile
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from benchmarks._common import SHARED
from benchmarks.data_scale import SHAPES, _main_pid, run_measured


def _encode(job: tuple[str, str, int]) -> None:
    from PIL import Image

    src, out_dir, k = job
    w, h = SHAPES[k]
    with Image.open(src) as img:
        img.convert("RGB").resize((w, h), Image.Resampling.BILINEAR).save(
            Path(out_dir) / f"{Path(src).stem}-{k}.jpg", quality=90
        )


def make_folders(work: Path) -> tuple[Path, Path]:
    """(2,001 photos, 12,006 photos): the PetImages originals, and six re-encodings of each."""
    with tarfile.open(SHARED / "petimages-2k.tar.gz") as tar:
        tar.extractall(work / "small", filter="data")
    small = next((work / "small").rglob("PetImages"))
    large = work / "large"
    jobs = []
    for cls in ("Cat", "Dog"):
        (large / cls).mkdir(parents=True)
        jobs += [(str(p), str(large / cls), k) for p in sorted((small / cls).glob("*.jpg")) for k in range(len(SHAPES))]
    with ProcessPoolExecutor(os.cpu_count()) as pool:
        list(pool.map(_encode, jobs, chunksize=128))
    return small, large


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--size", type=int, default=256)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="cnnctl-evalmem-"))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    try:
        small, large = make_folders(work)
        counts = {f: sum(1 for _ in f.rglob("*.jpg")) for f in (small, large)}
        from cnnctl.machine import cpu_info

        print(f"machine: {cpu_info().describe()}")
        print(
            f"folders: {counts[small]:,} and {counts[large]:,} photos; --image-size {args.size}, --iters {args.iters}, --val-split 0.05"
        )
        print(
            f"{'model (batch)':34s} {'--eval-batch-size':>17s} {'photos':>7s} {'val':>5s} {'eval batch':>10s} "
            f"{'peak RssAnon':>13s} {'seconds':>8s}"
        )
        for model, batch in (("tiny", 32), ("tv:mobilenet_v3_small", 16)):
            peaks: dict[str, list[int]] = {}
            for setting in ("1024", "auto"):
                for folder in (small, large):
                    out = work / f"run-{model.replace(':', '_')}-{setting}-{folder.name}"
                    cmd = [
                        sys.executable,
                        "-m",
                        "cnnctl",
                        "train",
                        model,
                        "--data",
                        str(folder),
                        "--image-size",
                        str(args.size),
                        "--iters",
                        str(args.iters),
                        "--batch-size",
                        str(batch),
                        "--val-split",
                        "0.05",
                        "--eval-batch-size",
                        setting,
                        "--cache-dir",
                        str(work / f"cache-{folder.name}"),
                        "--out",
                        str(out),
                    ]
                    start = time.perf_counter()
                    proc, sampled = run_measured(cmd, env)
                    seconds = time.perf_counter() - start
                    if proc.returncode != 0:
                        sys.exit(proc.stderr)
                    peak = sampled[_main_pid(sampled)][1]
                    peaks.setdefault(setting, []).append(peak)
                    hw = __import__("json").loads((out / "config.json").read_text())["hardware"]
                    val = round(counts[folder] * 0.05)
                    print(
                        f"{model + f' ({batch})':34s} {setting:>17s} {counts[folder]:>7,} {val:>5,} {hw['eval_batch_size']:>10} "
                        f"{peak / 2**20:>9,.0f} MiB {seconds:>8.1f}"
                    )
            for setting, (p_small, p_large) in peaks.items():
                print(
                    f"  {model} --eval-batch-size {setting}: large - small folder = {(p_large - p_small) / 2**20:+,.0f} MiB"
                )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
