"""Kill test: SIGKILL `cnnctl train` at random moments, resume, and check nothing is ever lost.

Each trial starts a training run in a subprocess, kills it with SIGKILL after a random delay
(during an epoch, during start-up, or while a checkpoint is being written), checks that the run
directory holds only complete files (history.json parses, last.safetensors loads and agrees with
it, no temporary files are taken for real ones), then resumes; after a few kills the run is let
finish, and its final weights must equal an uninterrupted run's bit for bit (CPU).

    python scripts/kill_test.py --trials 50          # the long version (docs/reliability.md)

The test suite runs a short version of the same function (tests/train/test_kill.py).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ARGS = [
    "train",
    "model-c",
    "--data",
    "mnist-mini",
    "--subset",
    "2000",
    "--epochs",
    "3",
    "--batch-size",
    "50",
    "--augment",
    "shift",
    "--seed",
    "11",
    "--threads",
    "1",
]


def _cli(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "cnnctl", *ARGS, "--out", str(out), *extra]


def _weights(run: Path) -> dict:
    from safetensors.torch import load_file

    return {k: v for k, v in load_file(str(run / "last.safetensors")).items() if k.startswith("model/")}


def check_consistent(run: Path) -> int:
    """Every visible file is whole; returns the number of finished epochs."""
    from safetensors import safe_open

    hist_path, last = run / "history.json", run / "last.safetensors"
    if not last.exists():
        assert not hist_path.exists() or json.loads(hist_path.read_text())["epochs"] == [], (
            "history without a checkpoint"
        )
        return 0
    with safe_open(str(last), framework="pt") as f:
        state = json.loads(f.metadata()["state"])
        for key in f.keys():
            f.get_tensor(key)
    epochs = state["loop"]["epoch"]
    hist = json.loads(hist_path.read_text())["epochs"]
    # history.json is written right after last.safetensors: it may lag by one epoch, never lead.
    assert epochs - 1 <= len(hist) <= epochs, (epochs, len(hist))
    return epochs


def _started(proc: subprocess.Popen, run: Path, timeout: float = 120) -> float:
    """Wait until the run holds its lock (start-up done, training begins); returns the seconds waited."""
    start = time.perf_counter()
    while not (run / ".lock").exists() and proc.poll() is None:
        if time.perf_counter() - start > timeout:
            raise TimeoutError(f"{run}: training did not start within {timeout} s")
        time.sleep(0.005)
    return time.perf_counter() - start


def run_trials(trials: int, work: Path, *, kills_per_trial: int = 2, seed: int = 0, log=print) -> list[dict]:
    """Kill each trial `kills_per_trial` times at random moments of its training, then let it finish.

    The moment is drawn from the training time still left (measured on an uninterrupted run), so
    a kill lands while the process trains or writes a checkpoint, not after it has exited; each
    kill records whether it did (`killed_while_running`) and how many epochs were done then.
    """
    rng = random.Random(seed)
    reference = work / "reference"
    proc = subprocess.Popen(_cli(reference), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    startup = _started(proc, reference)
    start = time.perf_counter()
    assert proc.wait() == 0, "the reference run failed"
    training = time.perf_counter() - start
    epochs = int(ARGS[ARGS.index("--epochs") + 1])
    ref = _weights(reference)
    results = []
    for t in range(trials):
        out = work / f"trial{t}"
        kills = []
        for k in range(kills_per_trial):
            cmd = (
                _cli(out)
                if not (out / "config.json").exists()
                else [sys.executable, "-m", "cnnctl", "train", "--resume", str(out)]
            )
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            if k == 0 and rng.random() < 0.15:
                delay = rng.uniform(0.2, 0.9) * startup  # now and then during start-up (imports, data)
            else:
                _started(proc, out)
                left = (
                    training * (1 - check_consistent(out) / epochs) if (out / "last.safetensors").exists() else training
                )
                delay = rng.uniform(0.05, 0.8) * left
            time.sleep(delay)
            alive = proc.poll() is None
            if alive:
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            kills.append(
                {"after_s": round(delay, 2), "killed_while_running": alive, "epochs_done": check_consistent(out)}
            )
        cmd = (
            _cli(out)
            if not (out / "config.json").exists()
            else [sys.executable, "-m", "cnnctl", "train", "--resume", str(out)]
        )
        done = subprocess.run(cmd, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        got = _weights(out)
        identical = got.keys() == ref.keys() and all(got[k].equal(ref[k]) for k in ref)
        results.append({"trial": t, "kills": kills, "identical": identical})
        log(json.dumps(results[-1]))
        assert identical, f"trial {t}: resumed weights differ from the uninterrupted run"
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--kills", type=int, default=2, help="SIGKILLs per trial before it may finish")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cnnctl-kill-") as tmp:
        results = run_trials(args.trials, Path(tmp), kills_per_trial=args.kills, seed=args.seed)
    kills = [k for r in results for k in r["kills"] if k["killed_while_running"]]
    print(
        f"{len(results)} trials, {len(kills)} SIGKILLs of a running process "
        f"({sum(k['epochs_done'] < 3 for k in kills)} before training finished), all consistent, "
        f"{sum(r['identical'] for r in results)}/{len(results)} resumed runs bit-identical to the uninterrupted run"
    )


if __name__ == "__main__":
    main()
