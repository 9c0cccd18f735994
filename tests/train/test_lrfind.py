"""`cnnctl lr-find`: the range test through the real CLI, on real data, for the shipped recipes'
models: the suggestion lands near the rate each recipe was tuned to; nothing is left behind."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cnnctl.train.lrfind import centred_average, suggestions
from tests.conftest import CIFAR_MINI, assert_user_error, run_cli


@pytest.mark.parametrize(
    "recipe,data,tuned",
    [
        ("mnist-fast", "mnist-mini", 4e-3),  # model-a, AdamW, batch 128
        ("cifar10-fast", str(CIFAR_MINI), 0.2),  # fastnet-s, SGD Nesterov
    ],
)
def test_the_suggestion_lands_near_the_recipes_tuned_rate(recipe, data, tuned, tmp_path):
    extra = ["--batch-size", "32"] if recipe == "cifar10-fast" else []
    proc = run_cli(
        "lr-find",
        "--recipe",
        recipe,
        "--data",
        data,
        *extra,
        "--json",
        "--plot",
        tmp_path / "lr.png",
        "--output",
        tmp_path / "lr.json",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout)
    assert r == json.loads((tmp_path / "lr.json").read_text())
    assert tuned / 4 <= r["suggested_lr"] <= tuned * 4, (r["suggested_lr"], r["valley_lr"], r["min_loss_lr"])
    assert r["rule"].startswith("steepest") and len(r["points"]) >= 50
    lrs = [p["lr"] for p in r["points"]]
    assert lrs == sorted(lrs) and lrs[0] == pytest.approx(1e-7)
    assert (tmp_path / "lr.png").stat().st_size > 5000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lr.json", "lr.png"]  # no run directory


def test_the_rules_on_a_known_curve():
    lrs = np.logspace(-6, 0, 61)
    loss = 2 - 1.5 / (1 + np.exp(-(np.log10(lrs) + 3) * 3))  # falls fastest at 1e-3, flat after
    loss[50:] += np.linspace(0, 5, 11)  # diverges past 1e-1
    low, valley, steepest = suggestions(lrs, centred_average(loss, 3))
    assert (
        steepest == pytest.approx(1e-3, rel=0.3)
        and low == pytest.approx(lrs[50], rel=0.3)
        and valley == pytest.approx(low / 10)
    )


def test_bad_ranges_are_one_line():
    assert_user_error(
        run_cli("lr-find", "model-a", "--data", "mnist-mini", "--start-lr", "1", "--end-lr", "0.1"), "--start-lr"
    )
    assert_user_error(run_cli("lr-find", "model-a", "--data", "mnist-mini", "--steps", "3"), "--steps")


@pytest.mark.parametrize(
    "flag,value,why",
    [
        ("--patience", "3", "validates nothing"),
        ("--monitor", "val_loss", "validates nothing"),
        ("--time-limit", "60", "--steps"),
        ("--log", "csv", "no run directory"),
        ("--feature-cache", "off", "through the model"),
        ("--scheduler", "onecycle", "swept"),
        ("--lr", "0.1", "swept"),
    ],
)
def test_train_flags_it_would_ignore_are_refused(flag, value, why):
    proc = run_cli("lr-find", "model-a", "--data", "mnist-mini", flag, value)
    assert_user_error(proc, f"lr-find does not use {flag}", why, "drop it")


def test_a_frozen_backbone_stays_frozen_during_the_sweep(tmp_path):
    """The seam (plan -> prepare -> fit_prepared) applies --freeze before the first step."""
    from cnnctl.cli.reporter import QuietReporter
    from cnnctl.config import TrainConfig
    from cnnctl.train.plan import make_plan, pick_device
    from cnnctl.train.trainer import fit_prepared, prepare

    cfg = TrainConfig(model="resnet8", data="mnist-mini", subset=256, freeze="backbone", batch_size=64, epochs=1)
    run = prepare(make_plan(cfg, QuietReporter(), pick_device("cpu")), QuietReporter())
    head = run.opt.freezer.head_name
    before = {k: v.clone() for k, v in run.model.state_dict().items() if v.is_floating_point()}
    fit_prepared(run, validate=False)
    changed = {k for k, v in run.model.state_dict().items() if k in before and not v.equal(before[k])}
    assert changed and all(k.startswith(head) or "running_" in k for k in changed), sorted(changed)[:5]
    assert not any("running_" in k for k in changed)  # frozen BatchNorm statistics stay as they are
