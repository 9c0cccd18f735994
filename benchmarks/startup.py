"""Start-up time of the commands people run most, against a bare interpreter in the same run.

Each command is a fresh process (as in a shell script); the median of `--repeat` runs is
printed, beside the median of `python -c pass` measured interleaved with them, so machine load
affects both alike. Sets up its own model: a 30-iteration model-a run on mnist-mini, exported.

    python -m benchmarks.startup [--repeat 7]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks._common import ROOT

TARGETS = {"cnnctl --help": 0.30, "cnnctl predict model.onnx one.png": 0.45}


def _time(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="cnnctl-startup-"))
    cli = [sys.executable, "-m", "cnnctl"]
    subprocess.run(
        [*cli, "train", "model-a", "--iters", "30", "--out", str(work / "run")],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    subprocess.run([*cli, "export", str(work / "run")], cwd=ROOT, check=True, capture_output=True)
    from PIL import Image

    Image.new("L", (28, 28), 128).save(work / "one.png")
    commands = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "cnnctl --help": [*cli, "--help"],
        "cnnctl predict model.onnx one.png": [*cli, "predict", str(work / "run" / "model.onnx"), str(work / "one.png")],
    }
    times: dict[str, list[float]] = {name: [] for name in commands}
    for cmd in commands.values():  # warm the file cache once
        _time(cmd)
    for _ in range(args.repeat):
        for name, cmd in commands.items():
            times[name].append(_time(cmd))
    base = statistics.median(times["python -c pass"])
    print(f"median of {args.repeat} fresh processes each, interleaved (python {sys.version.split()[0]})")
    for name, values in times.items():
        median = statistics.median(values)
        target = TARGETS.get(name)
        verdict = f"  target <= {target:.2f} s: {'met' if median <= target else 'MISSED'}" if target else ""
        print(f"{name:36s} {median:6.3f} s  (+{median - base:.3f} s over python){verdict}")


if __name__ == "__main__":
    main()
