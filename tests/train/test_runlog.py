"""`--log csv|tensorboard`: the history where other tools read it, read back with their readers."""

from __future__ import annotations

import csv
import json
import os

import pytest

from tests.conftest import assert_user_error, run_cli

ARGS = ["model-a", "--data", "mnist-mini", "--subset", "600", "--epochs", "2", "--batch-size", "50", "--ema", "0.9"]


def test_tensorboard_event_files_read_back_with_tensorboards_reader(tmp_path):
    pytest.importorskip(
        "tensorboard", reason="the tensorboard extra is not installed: pip install 'cnnctl[tensorboard]'"
    )
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    proc = run_cli("train", *ARGS, "--log", "tensorboard", "--out", tmp_path / "tb")
    assert proc.returncode == 0, proc.stderr
    history = json.loads((tmp_path / "tb" / "history.json").read_text())["epochs"]
    events = EventAccumulator(str(tmp_path / "tb" / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"step/loss", "step/lr", "train/loss", "train/acc", "val/acc", "val/loss", "ema/val_acc", "train/lr"} <= tags
    steps = history[-1]["steps"]
    assert [e.step for e in events.Scalars("step/loss")] == list(range(1, steps + 1))
    assert [e.step for e in events.Scalars("val/acc")] == [r["steps"] for r in history]
    assert [e.value for e in events.Scalars("val/acc")] == pytest.approx([r["val_acc"] for r in history])
    assert [e.value for e in events.Scalars("ema/val_acc")] == pytest.approx([r["ema_val_acc"] for r in history])


def test_csv_history_and_steps(tmp_path):
    proc = run_cli("train", *ARGS, "--log", "csv", "--out", tmp_path / "c")
    assert proc.returncode == 0, proc.stderr
    history = json.loads((tmp_path / "c" / "history.json").read_text())["epochs"]
    rows = list(csv.DictReader((tmp_path / "c" / "history.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert [float(r["val_acc"]) for r in rows] == pytest.approx([r["val_acc"] for r in history])
    assert {r["weights"] for r in rows} <= {"ema", "model"}
    steps = list(csv.DictReader((tmp_path / "c" / "steps.csv").open()))
    assert [int(r["step"]) for r in steps] == list(range(1, history[-1]["steps"] + 1))
    assert all(float(r["loss"]) > 0 and float(r["lr"]) == pytest.approx(1e-3) for r in steps)


def test_missing_tensorboard_is_one_line_before_anything_is_written(tmp_path):
    # A process where `import tensorboard` fails, as on a machine without the extra.
    (tmp_path / "shadow" / "tensorboard").mkdir(parents=True)
    (tmp_path / "shadow" / "tensorboard" / "__init__.py").write_text(
        "raise ImportError('No module named tensorboard')\n"
    )
    env = {"PYTHONPATH": os.pathsep.join([str(tmp_path / "shadow"), os.environ.get("PYTHONPATH", "")])}
    proc = run_cli("train", *ARGS, "--log", "tensorboard", "--out", tmp_path / "none", env=env, subprocess_=True)
    assert_user_error(proc, "pip install 'cnnctl[tensorboard]'", "--log csv")
    assert not (tmp_path / "none").exists()
