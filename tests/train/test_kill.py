"""Reliability: SIGKILL at random moments never leaves a broken run; resume is exact."""

from __future__ import annotations

import json
import os

from cnnctl.io import RunLock
from scripts.kill_test import run_trials
from tests.conftest import assert_user_error, run_cli


def test_sigkill_at_random_moments_then_resume_is_exact(tmp_path):
    results = run_trials(1, tmp_path, kills_per_trial=2, seed=1, log=lambda m: None)  # scripts/kill_test.py runs 30
    assert all(r["identical"] for r in results)
    # Every trial was really interrupted: a SIGKILL landed on a live process before its training ended.
    for r in results:
        assert any(k["killed_while_running"] and k["epochs_done"] < 3 for k in r["kills"]), r


def test_second_writer_is_refused_and_a_dead_owner_lock_is_taken_over(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / ".lock").write_text(str(os.getpid()))  # a live process (this test) holds it
    proc = run_cli(
        "train", "model-c", "--subset", "200", "--epochs", "1", "--out", run, subprocess_=True
    )  # another pid
    assert_user_error(proc, "in use by another cnnctl process")
    (run / ".lock").write_text("999999999")  # no such process: stale
    proc = run_cli("train", "model-c", "--subset", "200", "--epochs", "1", "--out", run)
    assert proc.returncode == 0, proc.stderr
    assert not (run / ".lock").exists()
    with RunLock(run):
        assert (run / ".lock").read_text() == str(os.getpid())


def test_same_seed_twice_gives_identical_histories_and_weights(tmp_path):
    from safetensors.torch import load_file

    # A fixed eval batch: "auto" follows the free memory, which other processes move.
    args = [
        "train",
        "tiny",
        "--subset",
        "300",
        "--epochs",
        "2",
        "--augment",
        "shift",
        "--seed",
        "4",
        "--eval-batch-size",
        "256",
    ]
    for name in ("a", "b"):
        assert run_cli(*args, "--out", tmp_path / name).returncode == 0
    wa, wb = (load_file(str(tmp_path / n / "model.safetensors")) for n in ("a", "b"))
    assert all(wa[k].equal(wb[k]) for k in wa)

    def strip(n: str) -> list[dict]:
        epochs = json.loads((tmp_path / n / "history.json").read_text())["epochs"]
        return [{k: v for k, v in r.items() if k not in ("seconds", "images_per_s")} for r in epochs]

    assert strip("a") == strip("b")


def test_no_pickle_loading_anywhere_in_the_package():
    from pathlib import Path

    import cnnctl

    for path in Path(cnnctl.__file__).parent.rglob("*.py"):
        text = path.read_text()
        assert "import pickle" not in text, path
        for line in text.splitlines():
            if "torch.load(" in line:
                assert "weights_only=True" in line, f"{path}: {line}"
