"""`cnnctl train` end to end on real data: accuracy reached, files that reload, exact resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from tests.conftest import ROOT, assert_user_error, run_cli


def test_quick_run_reaches_97_percent_on_the_test_digits(quick_run):
    hist = json.loads((quick_run / "history.json").read_text())
    assert hist["test"]["images"] == 2000
    assert hist["test"]["acc"] >= 0.97, hist["test"]


def test_run_files_reload_and_are_complete(quick_run):
    with safe_open(str(quick_run / "model.safetensors"), framework="pt") as f:
        meta = {k: json.loads(v) for k, v in f.metadata().items()}
        keys = list(f.keys())
    for key in (
        "format",
        "model",
        "input_shape",
        "num_classes",
        "class_names",
        "preprocess",
        "epoch",
        "metrics",
        "versions",
        "data",
    ):
        assert key in meta, key
    assert meta["model"] == "model-a" and meta["input_shape"] == [1, 28, 28] and meta["num_classes"] == 10
    assert meta["class_names"] == [str(i) for i in range(10)]
    assert len(meta["preprocess"]["mean"]) == 1 and 0.1 < meta["preprocess"]["mean"][0] < 0.2
    assert "features.0.weight" in keys
    hist = json.loads((quick_run / "history.json").read_text())
    assert hist["format"] == 1 and [r["epoch"] for r in hist["epochs"]] == [1, 2, 3, 4]
    for key in ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds", "images_per_s"):
        assert key in hist["epochs"][0]
    config = json.loads((quick_run / "config.json").read_text())
    assert config["model"] == "model-a" and config["seed"] == 0 and config["device"] == "cpu"
    assert config["data_summary"]["train"] == 7200 and config["data_summary"]["val"] == 800
    last = load_file(str(quick_run / "last.safetensors"))
    assert any(k.startswith("optim/") for k in last) and "rng/torch" in last
    assert not list(quick_run.glob("*.tmp")) and not (quick_run / ".lock").exists()


def test_json_lines_and_summary(quick_run):
    # The fixture ran with --json: re-run briefly to check stdout is pure JSON lines.
    proc = run_cli("train", "model-c", "--iters", "30", "--out", quick_run.parent / "j", "--json")
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert lines[0]["epoch"] == 1 and lines[0]["steps"] == 30 and lines[-1]["summary"]["stopped"] == "iters"


def test_model_a_sgd_on_full_mnist_reaches_90_percent(shared_data, tmp_path):
    # The MNIST tutorial's settings (SGD lr 0.01, batch 100) for a few hundred iterations.
    proc = run_cli(
        "train",
        "model-a",
        "--data",
        "mnist",
        "--data-dir",
        shared_data,
        "--optimizer",
        "sgd",
        "--lr",
        "0.01",
        "--momentum",
        "0",
        "--batch-size",
        "100",
        "--iters",
        "600",
        "--out",
        tmp_path / "a",
    )
    assert proc.returncode == 0, proc.stderr
    hist = json.loads((tmp_path / "a" / "history.json").read_text())
    assert hist["epochs"][-1]["steps"] == 600
    assert hist["test"]["images"] == 10000 and hist["test"]["acc"] >= 0.90, hist["test"]


def _train_args(out: Path, extra: tuple[str, ...] = (), model: str = "tiny") -> list[str]:
    return [
        "train",
        model,
        "--data",
        "mnist-mini",
        "--subset",
        "400",
        "--epochs",
        "2",
        "--batch-size",
        "50",
        "--augment",
        "shift",
        "--seed",
        "3",
        # A fixed eval batch: "auto" follows the free memory, which other processes move, and a
        # different batch sums the validation loss in another order (the last digits differ).
        "--eval-batch-size",
        "256",
        "--out",
        str(out),
        *extra,
    ]


# Every regulariser of #17 at once: the EMA weights, the mixing and policy draws, the
# accumulation groups and the lookahead must all replay exactly after an interruption.
REGULARISED = (
    "--ema",
    "0.95",
    "--mixup",
    "0.4",
    "--cutmix",
    "1.0",
    "--mix-prob",
    "0.8",
    "--auto-augment",
    "trivialaugment",
    "--aug-group",
    "4",
    "--clip-grad",
    "2.0",
    "--accumulate",
    "2",
    "--lookahead",
    "3",
    "--log",
    "csv",
)
# airbench's tricks on a BatchNorm net: fixed BatchNorm weights, scaled bias rates, fast statistics,
# lookahead, alternating flips.
AIRBENCH = (
    "--bn-bias-lr-scale",
    "64",
    "--bn-momentum",
    "0.4",
    "--lookahead",
    "5",
    "--ema",
    "0.9",
    "--augment",
    "flip-shift",
    "--allow-flip",
    "--alternate-flip",
    "--optimizer",
    "sgd",
    "--lr",
    "0.05",
    "--nesterov",
)


@pytest.mark.parametrize(
    "model, extra",
    # tiny (dropout, augmentation) with every regulariser on, and the airbench recipe's net: a
    # plain run's path is a subset of the first (and tests/train/test_kill.py kills model-c runs
    # at random moments and checks the resumed weights too).
    [("tiny", REGULARISED), ("fastnet-wd", AIRBENCH)],
    ids=["ema-mix-policy-accumulate-lookahead", "airbench"],
)
def test_resume_after_sigint_is_bit_identical(tmp_path, model, extra):
    # tiny has dropout and augmentation: both must replay exactly after the interruption.
    full = run_cli(*_train_args(tmp_path / "full", extra, model))
    assert full.returncode == 0, full.stderr
    proc = subprocess.Popen(
        [sys.executable, "-m", "cnnctl", *_train_args(tmp_path / "cut", extra, model)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    for line in proc.stderr:
        if line.startswith("epoch 1 "):
            break
    proc.send_signal(signal.SIGINT)  # epoch 1 is saved and printed: this lands early in epoch 2
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "cnnctl train --resume" in err and "Traceback" not in err
    hist = json.loads((tmp_path / "cut" / "history.json").read_text())
    assert [r["epoch"] for r in hist["epochs"]] == [1]
    resumed = run_cli("train", "--resume", tmp_path / "cut")
    assert resumed.returncode == 0, resumed.stderr
    a, b = load_file(str(tmp_path / "full" / "last.safetensors")), load_file(str(tmp_path / "cut" / "last.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].equal(b[key]), key
    ha = json.loads((tmp_path / "full" / "history.json").read_text())
    hb = json.loads((tmp_path / "cut" / "history.json").read_text())
    strip = lambda h: [{k: v for k, v in r.items() if k not in ("seconds", "images_per_s")} for r in h["epochs"]]  # noqa: E731
    assert strip(ha) == strip(hb)
    if extra:
        assert any(k.startswith("ema/") for k in a)
        assert {r["weights"] for r in ha["epochs"]} <= {"ema", "model"} and "ema_val_acc" in ha["epochs"][0]
    if extra == REGULARISED:
        assert (tmp_path / "full" / "steps.csv").read_text() == (tmp_path / "cut" / "steps.csv").read_text()
    if extra == AIRBENCH:  # the BatchNorm weights never left 1; the biases did train
        norms = [k for k in a if k.startswith("model/") and k.endswith(".running_var")]
        assert len(norms) == 6
        for k in norms:
            layer = k.removesuffix(".running_var")
            assert (
                torch.equal(a[f"{layer}.weight"], torch.ones_like(a[f"{layer}.weight"]))
                and a[f"{layer}.bias"].abs().max() > 0
            )


def test_resume_with_more_epochs_extends_the_run(tmp_path):
    out = tmp_path / "ext"
    assert run_cli("train", "model-c", "--subset", "500", "--epochs", "1", "--out", out).returncode == 0
    proc = run_cli("train", "--resume", out, "--epochs", "2")
    assert proc.returncode == 0, proc.stderr
    assert [r["epoch"] for r in json.loads((out / "history.json").read_text())["epochs"]] == [1, 2]


def test_image_folder_with_odd_and_broken_files(tmp_path):
    from PIL import Image

    from tests.conftest import write_mnist_pngs

    root = tmp_path / "digits"
    files = write_mnist_pngs(root, per_class=12)
    # Formats that must work: CMYK JPEG, palette PNG, 16-bit PNG, RGBA PNG.
    import numpy as np

    img = Image.open(files[0][0])
    img.convert("CMYK").save(root / "0" / "cmyk.jpg")
    img.convert("P").save(root / "1" / "palette.png")
    Image.fromarray(np.asarray(img).astype(np.uint16) * 257).save(root / "2" / "deep.png")
    img.convert("RGBA").save(root / "3" / "alpha.png")
    # Broken files that must be skipped with a count.
    (root / "4" / "empty.jpg").write_bytes(b"")
    (root / "5" / "text.jpg").write_text("not an image")
    data = (root / "6" / sorted(os.listdir(root / "6"))[0]).read_bytes()
    (root / "6" / "truncated.png").write_bytes(data[: len(data) // 2])
    proc = run_cli(
        "train",
        "model-a",
        "--data",
        root,
        "--grayscale",
        "--epochs",
        "1",
        "--val-split",
        "0.2",
        "--out",
        tmp_path / "run",
        "--cache-dir",
        tmp_path / "cache",
    )
    assert proc.returncode == 0, proc.stderr
    assert "skipped 3 unreadable image(s) of 127" in proc.stderr
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["data_summary"]["train"] + config["data_summary"]["val"] == 124


def test_cifar_folder_trains_tiny_with_flip_crop(cifar_small, tmp_path):
    proc = run_cli(
        "train",
        "tiny",
        "--data",
        cifar_small,
        "--epochs",
        "1",
        "--augment",
        "flip-crop",
        "--out",
        tmp_path / "c",
        "--cache-dir",
        tmp_path / "cache",
        "--json",
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.splitlines()[-1])["summary"]
    assert summary["test"]["images"] == 50
    with safe_open(str(tmp_path / "c" / "model.safetensors"), framework="pt") as f:
        m = {k: json.loads(v) for k, v in f.metadata().items()}
    assert m["input_shape"] == [3, 32, 32] and m["class_names"][0] == "airplane"


@pytest.mark.parametrize(
    "args, needles",
    [
        (["model-a", "--data", "mnist", "--data-dir", "/nonexistent"], ["not found", "--download"]),
        (["model-a", "--data", "/nonexistent/folder"], ["neither a known data set"]),
        (["model-a", "--optimizer", "sgdd"], ["not one of", "did you mean sgd"]),
        (["model-a", "--augment", "flip-crop"], ["--augment shift", "--allow-flip"]),
        (["model-a", "--val-split", "1.5"], ["--val-split"]),
        (["model-a", "--lr", "0"], ["--lr"]),
        (
            ["catdog", "--data", "mnist-mini", "--image-size", "8"],
            ["(Conv2d) cannot take input 32x2x2", "larger input"],
        ),
        (["nosuchmodel"], ["unknown model"]),
        ([], ["no model given"]),
        (["model-a", "--amp", "fp16", "--device", "cpu"], ["needs a CUDA device", "--amp auto"]),
        (["model-a", "--eval-batch-size", "lots"], ["--eval-batch-size", "auto"]),
        (["model-a", "--mean", "a,b"], ["comma-separated numbers"]),
        (["model-a", "--monitor", "last", "--patience", "2"], ["--patience needs --monitor val_acc or val_loss"]),
        (["model-a", "--recipe", "/nonexistent.toml"], ["not found"]),
    ],
)
def test_bad_input_is_one_line(args, needles, tmp_path):
    proc = run_cli("train", *args, "--out", tmp_path / "bad")
    assert_user_error(proc, *needles)
    assert not (tmp_path / "bad" / "model.safetensors").exists()


def test_non_empty_out_is_refused(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep.txt").write_text("mine")
    assert_user_error(run_cli("train", "model-a", "--out", tmp_path / "x"), "not empty", "--overwrite")
    assert (tmp_path / "x" / "keep.txt").read_text() == "mine"


def test_divergence_stops_with_a_clear_message(tmp_path):
    # Epoch 1 trains normally; the step schedule then multiplies the rate by 1e30.
    proc = run_cli(
        "train",
        "model-a",
        "--optimizer",
        "sgd",
        "--lr",
        "0.01",
        "--scheduler",
        "step",
        "--step-size",
        "1",
        "--gamma",
        "1e30",
        "--subset",
        "2000",
        "--epochs",
        "3",
        "--out",
        tmp_path / "nan",
    )
    assert_user_error(proc, "the loss became", "lower --lr")
    assert proc.returncode == 3
    assert not list((tmp_path / "nan").glob("*.tmp"))
    # The last good epoch stays resumable and loadable.
    hist = json.loads((tmp_path / "nan" / "history.json").read_text())
    assert [r["epoch"] for r in hist["epochs"]] == [1]
    assert load_file(str(tmp_path / "nan" / "model.safetensors"))


def test_recipe_with_flag_override(tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text('model = "model-c"\ndata = "mnist-mini"\nepochs = 3\nsubset = 400\nlr = 0.002\n')
    proc = run_cli("train", "--recipe", recipe, "--epochs", "1", "--out", tmp_path / "r")
    assert proc.returncode == 0, proc.stderr
    config = json.loads((tmp_path / "r" / "config.json").read_text())
    assert config["model"] == "model-c" and config["epochs"] == 1 and config["lr"] == 0.002
    recipe.write_text('model = "model-c"\nlearning_rate = 0.1\n')
    assert_user_error(run_cli("train", "--recipe", recipe, "--out", tmp_path / "r2"), "unknown key 'learning_rate'")


def test_time_limit_fits_the_onecycle_schedule_to_the_budget(tmp_path):
    # 60 epochs cannot fit in 8 s: the schedule is shortened to what fits after every epoch, so
    # the learning rate has annealed to near its floor when time runs out, not stopped at its peak.
    proc = run_cli(
        "train",
        "model-a",
        "--data",
        "mnist-mini",
        "--subset",
        "2000",
        "--epochs",
        "60",
        "--scheduler",
        "onecycle",
        "--lr",
        "0.004",
        "--time-limit",
        "8",
        "--threads",
        "1",
        "--out",
        tmp_path / "run",
        "--json",
    )
    assert proc.returncode == 0, proc.stderr
    hist = json.loads((tmp_path / "run" / "history.json").read_text())
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    epochs = hist["epochs"]
    assert hist["stopped"] == "time-limit" and len(epochs) < 60
    planned = [r["planned_steps"] for r in epochs if "planned_steps" in r]
    assert planned and all(p < config["total_steps"] for p in planned)
    assert epochs[-1]["steps"] <= planned[-1] or epochs[-1].get("truncated")
    # Without fitting, the rate at 8 s would still be above 90% of its peak.
    assert epochs[-1]["lr"] < 0.25 * 0.004, [r["lr"] for r in epochs]
    assert f"schedule fitted to the time limit: {planned[-1]} steps" in proc.stderr
    assert hist["test"]["acc"] > 0.9


def test_bf16_autocast_trains_on_cpu(tmp_path):
    # --amp bf16 on a CPU: oneDNN's bfloat16 convolutions (about 2x float32 where the CPU has
    # avx512_bf16 or AMX). Where it has neither, oneDNN would emulate them, many times slower:
    # refused in one line naming --amp auto (tests/test_machine.py forces both kinds of CPU).
    from cnnctl.machine import choose_amp

    args = [
        "train",
        "model-a",
        "--subset",
        "900",
        "--epochs",
        "2",
        "--batch-size",
        "50",
        "--lr",
        "3e-3",
        "--amp",
        "bf16",
        "--device",
        "cpu",
    ]
    if choose_amp("auto", "cpu").amp != "bf16":
        assert_user_error(run_cli(*args, "--out", tmp_path / "bf16"), "--amp auto")
        pytest.skip("this CPU has no native bf16: the refusal is what it gets")
    proc = run_cli(*args, "--out", tmp_path / "bf16")
    assert proc.returncode == 0, proc.stderr
    assert "hardware: cpu, bf16 autocast" in proc.stderr
    hist = json.loads((tmp_path / "bf16" / "history.json").read_text())
    assert hist["test"]["acc"] > 0.85, hist["test"]
    config = json.loads((tmp_path / "bf16" / "config.json").read_text())
    assert config["amp"] == "bf16" and config["hardware"]["amp"] == "bf16"


def test_time_limit_fits_the_schedule_from_the_first_steps(tmp_path):
    """The speed is measured over the first steps, not at the end of the first epoch: a budget
    smaller than one epoch still anneals, and the log says in one line that it buys too little."""
    proc = run_cli(
        "train",
        "model-c",
        "--data",
        "mnist-mini",
        "--epochs",
        "40",
        "--batch-size",
        "16",
        "--scheduler",
        "onecycle",
        "--lr",
        "0.003",
        "--time-limit",
        "1",
        "--threads",
        "1",
        "--out",
        tmp_path / "run",
    )
    assert proc.returncode == 0, proc.stderr
    hist = json.loads((tmp_path / "run" / "history.json").read_text())
    first, last = hist["epochs"][0], hist["epochs"][-1]
    # 450 steps an epoch: the probe fits the plan inside epoch 1, which ends early at the plan.
    assert hist["stopped"] == "time-limit" and first["steps"] < 450 and first["planned_steps"] < 450
    line = next(line for line in proc.stderr.splitlines() if line.startswith("time budget:"))
    assert "img/s measured over" in line and "of 40 planned epoch(s)" in line and "less than a quarter" in line
    assert proc.stderr.index("time budget:") < proc.stderr.index("epoch 1 ")
    # The plan was fitted to what the budget buys (not the configured 18,000 steps), so the
    # one-cycle schedule peaks and anneals inside it; the run ends at the plan or at the deadline.
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["total_steps"] == 18_000 and last["planned_steps"] < 450
    assert last["steps"] <= last["planned_steps"] or last.get("truncated")


def test_monitor_last_keeps_the_last_epoch_and_ema_picks_between_the_two(tmp_path):
    out = tmp_path / "last"
    proc = run_cli(
        "train",
        "model-a",
        "--subset",
        "600",
        "--epochs",
        "3",
        "--batch-size",
        "50",
        "--lr",
        "3e-3",
        "--ema",
        "0.9",
        "--monitor",
        "last",
        "--out",
        out,
    )
    assert proc.returncode == 0, proc.stderr
    hist = json.loads((out / "history.json").read_text())
    final = hist["epochs"][-1]
    assert hist["test"]["epoch"] == 3 and hist["test"]["weights"] == final["weights"]
    # The weights the epoch says were better on val_loss are the ones saved.
    expected = "ema" if final["ema_val_loss"] < final["val_loss"] else "model"
    assert final["weights"] == expected
    saved = load_file(str(out / "model.safetensors"))
    last = load_file(str(out / "last.safetensors"))
    prefix = "ema/module." if expected == "ema" else "model/"
    for key, value in saved.items():
        assert torch.equal(value, last[prefix + key]), key
