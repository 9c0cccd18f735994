"""Image folders larger than memory: decode speed, training from the mapped cache, peak memory.

Builds a folder of real photos in a temporary directory (the PetImages and CIFAR-10 photos from
../shared/data, re-encoded as JPEG at several sizes and aspect ratios; nothing is committed),
then measures, side by side in one run:

1. decode throughput: cnnctl's cache (parallel decode into a memory-mapped file) against
   torchvision `ImageFolder` + `DataLoader(num_workers=cores)` doing the same resize;
2. training throughput from the memory-mapped cache against the same pixels held in memory;
3. the peak anonymous resident memory (RssAnon) of a real `cnnctl train` process that decodes
   the folder and trains on it, and of each process of `torchrun --nproc-per-node 2`.

    python -m benchmarks.data_scale [--images 22000] [--size 256] [--iters 20]

The defaults give a 4.3 GB decoded cache (22,000 images at 256x256x3). Needs ~10 GB of free disk
in $TMPDIR and ~5 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

from benchmarks._common import ROOT, SHARED
from cnnctl.machine import rss_anon_bytes

SHAPES = [(256, 256), (320, 240), (240, 320), (300, 300), (400, 300), (200, 180)]


def _photo_sources(work: Path) -> list[tuple[Path, str]]:
    """(file, class) for every PetImages photo and the CIFAR-10 train JPEGs, extracted to `work`."""
    for tarball in ("petimages-2k.tar.gz", "cifar10-jpg.tar.gz"):
        with tarfile.open(SHARED / tarball) as tar:
            members = [m for m in tar if m.isfile() and "/test/" not in m.name]
            tar.extractall(work, members=members, filter="data")
    found = [(p, p.parent.name) for p in sorted(work.rglob("*.jpg"))]
    random.Random(0).shuffle(found)  # any prefix mixes photos and CIFAR images of every class
    return found


def _encode(job: tuple[int, str, str, str]) -> None:
    from PIL import Image

    i, src, cls, out = job
    w, h = SHAPES[i % len(SHAPES)]
    with Image.open(src) as img:
        img.convert("RGB").resize((w, h), Image.Resampling.BILINEAR).save(Path(out) / cls / f"{i:06d}.jpg", quality=90)


def make_folder(n: int, work: Path) -> Path:
    sources = _photo_sources(work / "src")
    folder = work / "photos"
    for cls in {sources[i % len(sources)][1] for i in range(n)}:
        (folder / cls).mkdir(parents=True, exist_ok=True)
    jobs = [(i, str(sources[i % len(sources)][0]), sources[i % len(sources)][1], str(folder)) for i in range(n)]
    with ProcessPoolExecutor(os.cpu_count()) as pool:
        list(pool.map(_encode, jobs, chunksize=256))
    shutil.rmtree(work / "src")
    return folder


def dataloader_decode(folder: Path, size: int) -> float:
    """Images/s of torchvision's ImageFolder + DataLoader doing open + RGB + resize + to uint8 tensor."""
    import torchvision
    import torchvision.transforms.v2 as T

    # The same work as cnnctl's decode: PIL open + RGB + PIL bilinear resize, then a uint8 tensor.
    ds = torchvision.datasets.ImageFolder(str(folder), transform=T.Compose([T.Resize((size, size)), T.PILToTensor()]))
    loader = torch.utils.data.DataLoader(ds, batch_size=256, num_workers=os.cpu_count() or 1)
    start = time.perf_counter()
    seen = sum(x.shape[0] for x, _ in loader)
    return seen / (time.perf_counter() - start)


def _children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    if int(fh.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(int(entry))
            except (OSError, ValueError, IndexError):
                pass
    return out


def run_measured(cmd: list[str], env: dict[str, str]) -> tuple[subprocess.CompletedProcess, dict[int, tuple[int, int]]]:
    """Run `cmd`; sample RssAnon of it and its descendants every 20 ms -> (result, {pid: (parent, peak)})."""
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peaks: dict[int, tuple[int, int]] = {}

    def watch() -> None:
        while proc.poll() is None:
            todo = [(proc.pid, 0)]
            while todo:
                pid, parent = todo.pop()
                peaks[pid] = (parent, max(peaks.get(pid, (0, 0))[1], rss_anon_bytes(pid)))
                todo.extend((child, pid) for child in _children(pid))
            time.sleep(0.02)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    out, err = proc.communicate()
    watcher.join()
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err), peaks


def _main_pid(peaks: dict[int, tuple[int, int]]) -> int:
    return next(pid for pid, (parent, _) in peaks.items() if parent == 0)


def _mib(values: list[int]) -> str:
    return ", ".join(f"{v / 2**20:.0f} MiB" for v in values) or "-"


def train_throughput(folder: Path, size: int, cache: Path, iters: int) -> tuple[float, float]:
    """(mapped img/s, in-memory img/s) for mobilenet_v3_small, batch 16, on the same pixels."""
    from cnnctl.data.batches import Augmentation, Batches, Order
    from cnnctl.data.sources import folder_split
    from cnnctl.models import create
    from cnnctl.runtime.preprocess import Preprocess
    from cnnctl.train.engine import Loop, make_loss, train_one_epoch

    classes = sorted(p.name for p in folder.iterdir())
    prep = Preprocess(channels=3, size=(size, size), mean=[0.5] * 3, std=[0.25] * 3)
    mapped = folder_split(folder, classes, prep, cache, lambda m: None)
    loaded = type(mapped)(mapped.store.clone(), mapped.y, mapped.paths, mapped.rows, mapped.identity)
    results: dict[str, list[float]] = {"mapped": [], "memory": []}
    for _ in range(2):
        for name, split in (("mapped", mapped), ("memory", loaded)):
            torch.manual_seed(0)
            model = create("tv:mobilenet_v3_small", (3, size, size), len(classes)).to(memory_format=torch.channels_last)
            opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
            batches = Batches(
                split, prep, 16, order=Order(shuffle=True, seed=1), augmentation=Augmentation(augment="flip-crop")
            )
            it = batches.epoch(1)
            loop = Loop(model, opt, make_loss("ce", len(classes)), batches)
            train_one_epoch(loop, (next(it) for _ in range(2)), lambda s: 1e-3, 0)
            stats, _ = train_one_epoch(loop, (next(it) for _ in range(iters)), lambda s: 1e-3, 0)
            results[name].append(stats.images / stats.seconds)
    return max(results["mapped"]), max(results["memory"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=22000)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--iters", type=int, default=20)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="cnnctl-scale-"))
    try:
        t0 = time.perf_counter()
        folder = make_folder(args.images, work)
        cache_gb = args.images * 3 * args.size**2 / 1e9
        print(
            f"folder: {args.images} JPEGs ({sum(f.stat().st_size for f in folder.rglob('*.jpg')) / 1e6:.0f} MB, "
            f"{len(SHAPES)} sizes), decoded cache {cache_gb:.2f} GB at {args.size}x{args.size}; made in {time.perf_counter() - t0:.0f} s"
        )

        base = dataloader_decode(folder, args.size)
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        train = [
            "train",
            "tv:mobilenet_v3_small",
            "--data",
            str(folder),
            "--image-size",
            str(args.size),
            "--iters",
            str(args.iters),
            "--batch-size",
            "16",
            "--val-split",
            "0.01",
            "--eval-batch-size",
            "16",
            "--augment",
            "flip-crop",
        ]
        single, peaks = run_measured(
            [sys.executable, "-m", "cnnctl", *train, "--cache-dir", str(work / "cache1"), "--out", str(work / "run1")],
            env,
        )
        if single.returncode != 0:
            sys.exit(single.stderr)
        decoded = next(line for line in single.stderr.splitlines() if line.startswith("decoded "))
        rate = float(decoded.split("(")[1].split()[0])
        print(
            f"decode: torchvision ImageFolder + DataLoader({os.cpu_count()} workers) {base:.0f} img/s | cnnctl "
            f"cache {rate:.0f} img/s | ratio {rate / base:.2f}x"
        )
        workers = [peak for pid, (_, peak) in peaks.items() if pid != _main_pid(peaks)]
        print(
            f"cnnctl train (decode + {args.iters} iterations, mobilenet_v3_small, batch 16): peak RssAnon "
            f"{_mib([peaks[_main_pid(peaks)][1]])} "
            f"for a {cache_gb:.2f} GB cache (forked decode workers, sharing the parent's pages: {_mib(sorted(workers)[-1:])})"
        )

        mapped, memory = train_throughput(folder, args.size, work / "cache1", args.iters)
        print(
            f"training from the mapped cache {mapped:.1f} img/s | from memory {memory:.1f} img/s | mapped/memory {mapped / memory:.2f}"
        )

        torchrun = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "2",
            "-m",
            "cnnctl",
            *train,
            "--cache-dir",
            str(work / "cache2"),
            "--out",
            str(work / "run2"),
        ]
        ddp, peaks = run_measured(torchrun, {**env, "OMP_NUM_THREADS": "1"})
        if ddp.returncode != 0:
            sys.exit(ddp.stderr)
        launcher = _main_pid(peaks)
        ranks = [peak for pid, (parent, peak) in peaks.items() if parent == launcher and peak > 0]
        caches = list((work / "cache2").glob("pixels-*.u8"))
        print(
            f"torchrun 2 processes: peak RssAnon {_mib(ranks)} per rank (launcher {_mib([peaks[launcher][1]])}); "
            f"{len(caches)} cache file(s) of {sum(c.stat().st_size for c in caches) / 1e9:.2f} GB, decoded once"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
