"""`cnnctl train --dry-run`: the plan, measured on real steps, and nothing left on disk."""

from __future__ import annotations

import json

from tests.conftest import assert_user_error, run_cli

ARGS = ["model-c", "--data", "mnist-mini", "--batch-size", "32", "--threads", "1"]


def test_dry_run_prints_the_plan_and_writes_no_run_directory(tmp_path):
    out = tmp_path / "never"
    proc = run_cli("train", *ARGS, "--epochs", "30", "--time-limit", "20", "--out", out, "--dry-run", "--json")
    assert proc.returncode == 0, proc.stderr
    plan = json.loads(proc.stdout)
    assert not out.exists()
    assert plan["model"] == "model-c" and plan["data"]["train"] == 7200 and plan["steps_per_epoch"] == 225
    assert plan["measured_steps"] == 10 and plan["warmup_steps"] == 2 and plan["train_images_per_s"] > 0
    assert plan["epoch_seconds"] >= plan["epoch_train_seconds"] > 0 and plan["eval_images_per_s"] > 0
    assert 0 < plan["epochs_in_budget"] and plan["total_seconds"] <= 20 + plan["test_seconds"] + 0.1
    assert plan["peak_memory_bytes"] > 50 * 2**20
    hw = plan["hardware"]
    assert hw["amp"] == "none" and hw["threads"] == 1 and hw["channels_last"] and hw["eval_batch_size"] >= 1
    text = run_cli("train", *ARGS, "--epochs", "400", "--time-limit", "5", "--dry-run")
    assert text.returncode == 0, text.stderr
    assert "img/s training" in text.stdout and "less than a quarter" in text.stdout and "peak memory" in text.stdout


def test_the_estimate_is_within_2x_of_the_real_epoch(tmp_path):
    plan = json.loads(run_cli("train", *ARGS, "--epochs", "2", "--dry-run", "--json").stdout)
    proc = run_cli("train", *ARGS, "--epochs", "2", "--out", tmp_path / "real")
    assert proc.returncode == 0, proc.stderr
    epochs = json.loads((tmp_path / "real" / "history.json").read_text())["epochs"]
    real = min(r["seconds"] for r in epochs)  # the steadier of the two (the first pays one-off start-up)
    ratio = plan["epoch_train_seconds"] / real
    assert 0.5 <= ratio <= 2.0, f"estimated {plan['epoch_train_seconds']:.2f} s, measured {real:.2f} s an epoch"


def test_dry_run_refuses_what_the_run_would_refuse(tmp_path, monkeypatch):
    monkeypatch.setenv("CNNCTL_CPU_FLAGS", "avx2 fma")
    assert_user_error(run_cli("train", *ARGS, "--amp", "bf16", "--dry-run"), "--amp auto")
    proc = run_cli("train", *ARGS, "--amp", "auto", "--dry-run", "--json")
    assert proc.returncode == 0 and json.loads(proc.stdout)["hardware"]["amp"] == "none"
