"""Data-parallel training under torchrun on CPU (Gloo): real 2-process runs of the CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cnnctl.data.batches import Augmentation, Batches, Order, shard
from cnnctl.data.sources import Split
from cnnctl.errors import UsageError
from cnnctl.runtime.preprocess import Preprocess
from cnnctl.train.distributed import Dist
from tests.conftest import ROOT, run_cli

# Small and real: 2,000 training digits of mnist-mini (800 held out for validation), one epoch.
ARGS = [
    "model-a",
    "--data",
    "mnist-mini",
    "--subset",
    "2000",
    "--epochs",
    "1",
    "--batch-size",
    "100",
    "--optimizer",
    "sgd",
    "--lr",
    "0.05",
    "--threads",
    "1",
]


def torchrun(*args: str, nproc: int = 2, timeout: float = 120, wait: bool = True):
    """`torchrun --standalone --nproc-per-node N -m cnnctl ARGS`, as docs/distributed.md shows."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        "-m",
        "cnnctl",
        *map(str, args),
    ]
    env = {**os.environ, "COLUMNS": "200", "OMP_NUM_THREADS": "1", "CNNCTL_DIST_TIMEOUT": "60"}
    if not wait:
        return subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
        )
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def _split(n: int) -> Split:
    return Split(torch.arange(n * 4, dtype=torch.uint8).reshape(n, 1, 2, 2), torch.arange(n))


def test_rank_shards_of_a_global_batch_are_the_single_process_batch():
    prep = Preprocess(channels=1, size=(2, 2), mean=[0.0], std=[1.0])
    split = _split(23)
    one = list(
        Batches(
            split,
            prep,
            8,
            channels_last=False,
            order=Order(shuffle=True, seed=3),
            augmentation=Augmentation(augment="flip"),
        ).epoch(2)
    )
    shards = [
        list(
            Batches(
                split,
                prep,
                8,
                channels_last=False,
                order=Order(shuffle=True, seed=3, rank=r, world=3),
                augmentation=Augmentation(augment="flip"),
            ).epoch(2)
        )
        for r in range(3)
    ]
    # 23 = 8 + 8 + 7: every global batch, last one included, splits over 3 ranks.
    assert len(one) == 3 and all(len(s) == 3 for s in shards)
    for b, (x, y) in enumerate(one):
        assert torch.equal(torch.cat([s[b][0] for s in shards]), x)
        assert torch.equal(torch.cat([s[b][1] for s in shards]), y)
    # A last batch smaller than the number of ranks is dropped on every rank alike.
    assert len(Batches(_split(17), prep, 8, order=Order(rank=0, world=2))) == 2
    assert len(Batches(_split(17), prep, 8)) == 3
    parts = [shard(split, r, 3) for r in range(3)]
    assert torch.equal(torch.cat([p.y for p in parts]), split.y)


def test_environment_detection(monkeypatch):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    assert not Dist.from_env().enabled
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    with pytest.raises(UsageError, match="MASTER_ADDR"):
        Dist.from_env()
    monkeypatch.setenv("MASTER_ADDR", "localhost")
    monkeypatch.setenv("MASTER_PORT", "29500")
    d = Dist.from_env()
    assert (d.rank, d.world_size, d.local_rank, d.enabled, d.is_main) == (2, 4, 0, True, False)
    from cnnctl.machine import threads, usable_cores

    assert threads(0, d.local_world_size)[0] == max(1, usable_cores() // 2) and threads(3, d.local_world_size)[0] == 3
    with pytest.raises(UsageError, match="multiple of 4"):
        d.check_batch(130)
    monkeypatch.setenv("RANK", "x")
    with pytest.raises(UsageError, match="RANK"):
        Dist.from_env()


# Every regulariser and accumulation at once: the plain path (a subset of what this one runs)
# is proven by the same comparison, and the mixing, policy draws, EMA and lookahead by it too.
REGULARISED = (
    "--ema",
    "0.9",
    "--mixup",
    "0.2",
    "--cutmix",
    "1.0",
    "--auto-augment",
    "randaugment",
    "--accumulate",
    "2",
    "--clip-grad",
    "1.0",
    "--lookahead",
    "3",
)


def test_two_processes_train_what_one_process_trains(tmp_path):
    extra = REGULARISED
    single = run_cli("train", *ARGS, *extra, "--out", tmp_path / "single", timeout=300)
    assert single.returncode == 0, single.stderr
    ddp = torchrun("train", *ARGS, *extra, "--out", tmp_path / "ddp")
    assert ddp.returncode == 0, ddp.stdout + ddp.stderr
    one = json.loads((tmp_path / "single" / "history.json").read_text())
    two = json.loads((tmp_path / "ddp" / "history.json").read_text())
    a, b = one["epochs"][0], two["epochs"][0]
    # Same global batches, same seed, gradients averaged over equal halves: the same training.
    assert a["steps"] == b["steps"] == 10  # 20 batches, accumulated in twos
    # Only the order of float additions differs (gradients summed in two halves), so the
    # runs drift apart a little over 20 SGD steps: 4e-4 relative on the loss when measured.
    assert b["train_loss"] == pytest.approx(a["train_loss"], rel=2e-3)
    assert b["val_loss"] == pytest.approx(a["val_loss"], rel=1e-2)
    assert abs(b["val_acc"] - a["val_acc"]) <= 0.01
    assert two["test"]["acc"] == pytest.approx(one["test"]["acc"], abs=0.01) and two["test"]["acc"] > 0.5
    # the average and the choice between it and the model agree as well
    assert abs(b["ema_val_acc"] - a["ema_val_acc"]) <= 0.01 and "weights" in two["test"]
    config = json.loads((tmp_path / "ddp" / "config.json").read_text())
    assert config["world_size"] == 2 and config["torch_threads"] == 1
    # Rank 0 alone reports: one summary on stdout, one line per epoch on stderr.
    assert ddp.stdout.count("run: ") == 1, ddp.stdout
    assert ddp.stderr.count("epoch 1  train_loss") == 1, ddp.stderr
    # The checkpoint loads and evaluates like any other.
    ev = run_cli("eval", tmp_path / "ddp", "--json", timeout=300)
    assert ev.returncode == 0, ev.stderr
    assert json.loads(ev.stdout)["top1"] == pytest.approx(two["test"]["acc"], abs=1e-6)


def test_global_batch_must_split_evenly(tmp_path):
    proc = torchrun("train", *ARGS, "--batch-size", "99", "--out", tmp_path / "odd")
    assert proc.returncode != 0
    # One line, from rank 0 only (rank 1 hits the same error and stays quiet).
    assert proc.stderr.count("cnnctl: error:") == 1, proc.stderr
    assert "multiple of 2" in proc.stderr
    assert not (tmp_path / "odd").exists()


def test_time_limit_stops_every_rank_at_the_same_step(tmp_path):
    # Each rank's clock runs out at a slightly different moment; the ranks agree after every
    # step, so they leave the epoch together (a disagreement would hang in the next all-reduce).
    proc = torchrun(
        "train",
        *ARGS,
        "--subset",
        "0",
        "--epochs",
        "50",
        "--time-limit",
        "3",
        "--patience",
        "3",
        "--out",
        tmp_path / "run",
        "--json",
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.splitlines()[-1])["summary"]
    assert summary["stopped"] in ("time-limit", "early-stopped") and summary["epochs"] < 50
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert history["stopped"] == summary["stopped"] and history["test"]["acc"] > 0.9


def _wait_for_first_epoch(proc: subprocess.Popen, out: Path) -> None:
    """Until rank 0 has written epoch 1's history (the job is mid-training)."""
    deadline = time.monotonic() + 90
    while not (out / "history.json").exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1]
        time.sleep(0.2)


def test_ctrl_c_stops_every_rank_and_torchrun_resumes(tmp_path):
    out = tmp_path / "run"
    proc = torchrun("train", *ARGS, "--subset", "4000", "--epochs", "3", "--out", out, wait=False)
    try:
        _wait_for_first_epoch(proc, out)
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in the terminal does
        _, stderr = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode != 0
    lines = [line for line in stderr.splitlines() if line.startswith("cnnctl: error:")]
    assert len(lines) == 1 and "interrupted" in lines[0] and "--resume" in lines[0], stderr
    done = [r["epoch"] for r in json.loads((out / "history.json").read_text())["epochs"]]
    assert done and done[-1] < 3 and not (out / ".lock").exists()
    resumed = torchrun("train", "--resume", out)
    assert resumed.returncode == 0, resumed.stderr
    history = json.loads((out / "history.json").read_text())
    assert [r["epoch"] for r in history["epochs"]] == [1, 2, 3] and history["test"]["acc"] > 0.9


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def _rank_of(pid: int) -> int | None:
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    for item in env:
        if item.startswith(b"RANK="):
            return int(item[5:])
    return None


def test_a_dead_rank_stops_the_job_with_a_clear_message(tmp_path):
    out = tmp_path / "run"
    proc = torchrun("train", *ARGS, "--subset", "0", "--epochs", "3", "--out", out, wait=False)
    try:
        _wait_for_first_epoch(proc, out)
        victims = [pid for pid in _children(proc.pid) if _rank_of(pid) == 1]
        assert victims, "no rank-1 worker found"
        os.kill(victims[0], signal.SIGKILL)
        start = time.monotonic()
        stdout, stderr = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode != 0
    assert time.monotonic() - start < 60
    # Rank 0's collective fails at once (Gloo: connection reset) and it says so in one line;
    # the traceback torchrun prints is its own launcher's ChildFailedError, not cnnctl's.
    assert "cnnctl: error: rank 0: lost contact with the other ranks" in stderr, stderr
    assert "--resume" in stderr and "/cnnctl/" not in stderr, stderr
    history = json.loads((out / "history.json").read_text())
    assert history["epochs"] and not (out / ".lock").exists()
    resumed = run_cli("train", "--resume", out, "--epochs", "2", timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert [r["epoch"] for r in json.loads((out / "history.json").read_text())["epochs"]] == [1, 2]


def _descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    stat = Path(f"/proc/{entry}/stat").read_text()
                except OSError:
                    continue
                if int(stat.rsplit(")", 1)[1].split()[1]) == parent:
                    found.append(int(entry))
                    todo.append(int(entry))
    return found


def test_ranks_on_one_machine_map_one_decode_cache(tmp_path):
    from tests.conftest import PETS_MINI

    cache = tmp_path / "cache"
    proc = torchrun(
        "train",
        "fastnet-s",
        "--data",
        PETS_MINI,
        "--image-size",
        "64",
        "--epochs",
        "6",
        "--batch-size",
        "8",
        "--threads",
        "1",
        "--cache-dir",
        cache,
        "--out",
        tmp_path / "run",
        wait=False,
    )
    mapped: dict[int, set[str]] = {}
    try:
        while proc.poll() is None and len(mapped) < 2:
            for pid in _descendants(proc.pid):
                try:
                    maps = Path(f"/proc/{pid}/maps").read_text()
                except OSError:
                    continue
                lines = {
                    line.split(maxsplit=5)[-1] for line in maps.splitlines() if "pixels-" in line and ".u8" in line
                }
                # The decoding rank maps its own .partial file while writing it; what counts is
                # the complete entry each rank trains from.
                lines = {f for f in lines if not f.endswith(".partial")}
                if lines:
                    mapped[pid] = lines
            time.sleep(0.05)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, err
    # Both ranks map the same file, and neither's mapping was replaced by a second decode.
    assert len(mapped) == 2, mapped
    files = set.union(*mapped.values())
    assert len(files) == 1 and not any("(deleted)" in f for f in files), mapped
    assert [p.name for p in cache.glob("pixels-*.u8")] == [Path(next(iter(files))).name]
    assert err.count("decoded 60 images") <= 1


def test_a_multi_label_file_trains_under_torchrun_as_in_one_process(tmp_path):
    """A CSV of 160 real CIFAR-10 mosaics (several labels a row): two ranks train what one does,
    and the validation mAP (gathered from both ranks' shards) is the single process's."""
    import subprocess
    import sys

    from tests.conftest import CIFAR_MINI

    cmd = [sys.executable, str(ROOT / "recipes" / "make_mosaics.py"), str(CIFAR_MINI), str(tmp_path / "m")]
    subprocess.run([*cmd, "--train", "160", "--test", "0", "--classes", "airplane,frog,ship"], check=True)
    args = ["tiny", "--data", tmp_path / "m" / "labels.csv", "--image-size", "16", "--epochs", "1"]
    args += ["--batch-size", "32", "--optimizer", "sgd", "--lr", "0.05", "--threads", "1", "--val-split", "0.25"]
    single = run_cli("train", *args, "--out", tmp_path / "single", timeout=300)
    assert single.returncode == 0, single.stderr
    ddp = torchrun("train", *args, "--out", tmp_path / "ddp")
    assert ddp.returncode == 0, ddp.stdout + ddp.stderr
    a = json.loads((tmp_path / "single" / "history.json").read_text())["epochs"][0]
    b = json.loads((tmp_path / "ddp" / "history.json").read_text())["epochs"][0]
    assert b["train_loss"] == pytest.approx(a["train_loss"], rel=2e-3)
    assert b["val_map"] == pytest.approx(a["val_map"], abs=0.01) and b["val_loss"] == pytest.approx(
        a["val_loss"], rel=1e-2
    )
