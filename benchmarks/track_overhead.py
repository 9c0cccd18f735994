"""What `--track mlflow` costs a training run (issue #36): the quickstart recipe (model-a on
mnist-mini) trained side by side without tracking, tracked to a real `mlflow server` on loopback
(SQLite store, local artifacts; on the same 2 cores, so its own work is counted too), and tracked to
a server that is gone (a closed port), interleaved, each arm `--repeats` times.

    python -m benchmarks.track_overhead [--repeats 3] [--epochs 8]

Prints each arm's median epoch time (epoch 1, which pays for the first sends, apart from the
rest), its median wall time for the whole command (MLflow's import, the run's creation and the
last send of files and pictures included), the ratios against the untracked arm, and the CPU
time the tracker's thread spent sending while the run trained (RUN/mlflow.json's `send_cpu_s`) as
a share of the epochs' time; then one run's history sent again epoch by epoch in this process, each
send's CPU time measured (the first creates the MLflow run and sends the params): the tracker's
per-epoch cost without the noise of epoch times and of a server on the same cores. Needs the
mlflow extra. About 6 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cnnctl.machine import cpu_info
from cnnctl.track.client import mlflow_client
from cnnctl.track.record import TrackRecord
from cnnctl.track.sender import Sender
from tests.track.conftest import MlflowServer, free_port


def train(out: Path, epochs: int, track: list[str]) -> tuple[list[float], float, str, float]:
    cmd = [sys.executable, "-m", "cnnctl", "train", "--recipe", "quickstart", "--epochs", str(epochs), "--out", str(out),
           "--overwrite", *track]  # fmt: skip
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(proc.stderr[-2000:])
    epochs = [r["seconds"] for r in json.loads((out / "history.json").read_text())["epochs"]]
    said = [line for line in proc.stderr.splitlines() if line.startswith("tracking:")]
    record = out / "mlflow.json"
    cpu = json.loads(record.read_text())["send_cpu_s"] if record.is_file() else 0.0
    return epochs, wall, said[0] if said else "", cpu


def send_costs(run: Path, url: str) -> tuple[float, list[float]]:
    """CPU seconds of each send as a tracker makes them: `run`'s history.json given back one epoch
    at a time to a fresh MLflow run (the first send creates it and sends the params)."""
    history = json.loads((run / "history.json").read_text())
    client = mlflow_client(url, timeout_s=5, retries=0)
    sender = Sender(client, run, TrackRecord(tracking_uri=url, experiment="send-costs"))
    costs = []
    try:
        for n in range(1, len(history["epochs"]) + 1):
            (run / "history.json").write_text(
                json.dumps({"format": 1, "epochs": history["epochs"][:n]})
            )  # as while training
            start = time.thread_time()
            sender.send(final=False)
            costs.append(time.thread_time() - start)
    finally:
        (run / "history.json").write_text(json.dumps(history))
        (run / "mlflow.json").unlink(missing_ok=True)
    return costs[0], costs[1:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=8)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="cnnctl-bench-track-"))
    server = MlflowServer(work).start()
    arms = {
        "untracked": [],
        "tracked (server up)": ["--track", "mlflow", "--tracking-uri", server.url],
        "tracked (server gone)": ["--track", "mlflow", "--tracking-uri", f"http://127.0.0.1:{free_port()}"],
    }
    results: dict[str, list[tuple[list[float], float, str, float]]] = {name: [] for name in arms}
    train(work / "warm", 1, [])  # the decode cache and the page cache, for every arm alike
    try:
        for i in range(args.repeats):
            for k, (name, flags) in enumerate(arms.items()):
                results[name].append(train(work / f"{i}-{k}", args.epochs, flags))
        first, later = send_costs(work / "0-0", server.url)
    finally:
        server.kill()
    info = cpu_info()
    print(
        f"machine: {info.model}, {info.cores} cores; quickstart recipe for {args.epochs} epochs, {args.repeats} interleaved repeats"
    )
    base_rest = base_wall = 0.0
    for name, runs in results.items():
        first = statistics.median(r[0][0] for r in runs)
        rest = statistics.median(s for r in runs for s in r[0][1:])
        wall = statistics.median(r[1] for r in runs)
        base_rest, base_wall = (rest, wall) if name == "untracked" else (base_rest, base_wall)
        share = statistics.median(r[3] / sum(r[0]) for r in runs)
        print(
            f"{name:24s} epoch 1 {first:6.2f} s   epochs 2+ {rest:6.2f} s ({rest / base_rest:.3f}x)   "
            f"command {wall:6.2f} s ({wall / base_wall:.3f}x)   tracker CPU while training {share:.2%} of the epochs"
        )
        notes = {r[2] for r in runs if r[2]}
        for note in notes:
            print(f"  said: {note}")
    each = statistics.median(later)
    print(
        f"one send's CPU time (in this process): the first {first * 1000:.0f} ms (creates the MLflow run, params), "
        f"then per epoch {each * 1000:.1f} ms median = {each / base_rest:.2%} of an untracked epoch"
    )


if __name__ == "__main__":
    main()
