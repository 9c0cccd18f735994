"""What a distillation epoch costs with the teacher answering every view as it is drawn, against
fixed views it answered once (issue #35): the catdog-distill recipe's student (96 px MobileNetV2)
and a teacher given on the command line, side by side on the same split and decode cache.

    python -m benchmarks.distill_views TEACHER DATA [--epochs 2] [--views 8]

TEACHER: a run directory or MODEL.onnx (recipes/catdog-distill.sh leaves OUT/teacher); DATA: its
split (OUT/data). Runs `cnnctl distill --recipe catdog-distill` twice for --epochs: once with
--feature-views 0 (the teacher answers each view as it is drawn), once with --feature-views N in
an empty cache folder (the teacher pass is timed on its own). Prints each epoch's seconds, the
teacher pass, and the ratio of the epoch times. About 3 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from cnnctl.machine import cpu_info


def distill(teacher: str, data: str, out: Path, epochs: int, views: int, cache: Path) -> tuple[list[float], str]:
    cmd = [
        sys.executable, "-m", "cnnctl", "distill", "--recipe", "catdog-distill", "--teacher", teacher, "--data", data,
        "--epochs", str(epochs), "--feature-views", str(views), "--cache-dir", str(cache), "--no-report",
        "--out", str(out), "--overwrite",
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(proc.stderr[-2000:])
    epochs_s = [r["seconds"] for r in json.loads((out / "history.json").read_text())["epochs"]]
    passed = re.search(r"answered (\d+) image views in ([\d.]+)s", proc.stderr)
    return epochs_s, (f"{passed.group(1)} views in {passed.group(2)} s" if passed else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("teacher")
    parser.add_argument("data")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--views", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cnnctl-bench-") as tmp:
        root = Path(tmp)
        live, _ = distill(args.teacher, args.data, root / "live", args.epochs, 0, root / "cache")
        fixed, teacher_pass = distill(args.teacher, args.data, root / "fixed", args.epochs, args.views, root / "cache")
    print(f"machine: {cpu_info().describe()}")
    print(f"teacher answering each view as drawn: {', '.join(f'{s:.1f}' for s in live)} s per epoch")
    print(
        f"{args.views} fixed views: {', '.join(f'{s:.1f}' for s in fixed)} s per epoch, after a teacher pass of {teacher_pass}"
    )
    ratio = (sum(fixed) / len(fixed)) / (sum(live) / len(live))
    print(f"fixed-view epoch time: {ratio:.0%} of the live teacher's")


if __name__ == "__main__":
    main()
