"""A from-scratch search with the median pruner against the same search without it (issue #34).

The same `cnnctl tune resnet8` study on 3,000 real CIFAR-10 photos (../shared/data, extracted to
a temporary folder; 10% of them validate), the same space, seed and number of trials, run one
after the other from the same warm decode cache: once with `--pruner median` and once with
`--pruner none` (the baseline). A wide learning-rate range makes some configurations clearly worse,
which is where a pruner earns its keep:

    python -m benchmarks.tune_pruning [--trials 16] [--epochs 6]

Prints, for both: the wall time of the command, the epochs trained over all trials, the trials
pruned, and the best validation accuracy found; then the ratio of the wall times (target <= 60%).
About 6 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks._common import ROOT, cifar_folder
from cnnctl.machine import cpu_info

SPACE = """\
lr = { low = 1e-4, high = 1.0, log = true }
optimizer = ["sgd", "adamw"]
weight_decay = { low = 0.0, high = 5e-4 }
"""


def study(data: Path, out: Path, space: Path, trials: int, epochs: int, pruner: str) -> dict:
    cmd = [
        sys.executable, "-m", "cnnctl", "tune", "resnet8", "--data", str(data), "--epochs", str(epochs),
        "--batch-size", "128", "--scheduler", "cosine", "--space", str(space), "--trials", str(trials),
        "--pruner", pruner, "--seed", "0", "--out", str(out), "--json",
    ]  # fmt: skip
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(proc.stderr[-2000:])
    info = json.loads(proc.stdout)
    return {
        "pruner": pruner,
        "seconds": round(seconds, 1),
        "epochs_trained": sum(t["epochs"] for t in info["trials"]),
        "pruned": sum(t["state"] == "pruned" for t in info["trials"]),
        "best_val_acc": info["best"]["value"],
        "best_params": info["best"]["params"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=6)
    args = parser.parse_args()
    data = cifar_folder(per_class=300)
    work = Path(tempfile.mkdtemp(prefix="cnnctl-tune-bench-"))
    space = work / "space.toml"
    space.write_text(SPACE)
    # Warm the decode cache once, so that neither study pays for decoding the photos.
    subprocess.run(
        [
            sys.executable,
            "-m",
            "cnnctl",
            "train",
            "resnet8",
            "--data",
            str(data),
            "--epochs",
            "1",
            "--out",
            str(work / "warm"),
        ],
        cwd=ROOT,
        capture_output=True,
        check=True,
    )
    results = [study(data, work / p, space, args.trials, args.epochs, p) for p in ("median", "none")]
    for r in results:
        print(json.dumps(r))
    pruned, baseline = results
    print(
        f"machine: {cpu_info().describe()}; "
        f"wall time with the median pruner: {pruned['seconds'] / baseline['seconds']:.0%} of the unpruned study's "
        f"({pruned['seconds']:.0f} s vs {baseline['seconds']:.0f} s; {pruned['epochs_trained']} vs "
        f"{baseline['epochs_trained']} epochs); best val_acc {pruned['best_val_acc']:.4f} vs {baseline['best_val_acc']:.4f}"
    )


if __name__ == "__main__":
    main()
