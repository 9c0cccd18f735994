"""Start weights and freezing: --init from runs and plain state dicts, --freeze, --unfreeze-at."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from cnnctl.errors import CheckpointError
from cnnctl.models import create
from cnnctl.start import Freezer, init_from, param_groups
from tests.conftest import assert_user_error, run_cli, write_mnist_pngs


@pytest.fixture(scope="module")
def three_digits(tmp_path_factory) -> Path:
    """Real digits of classes 0, 1, 2 only, as an image folder (another class list than mnist-mini)."""
    root = tmp_path_factory.mktemp("three")
    write_mnist_pngs(root, per_class=40)
    for d in root.iterdir():
        if d.name not in ("0", "1", "2"):
            shutil.rmtree(d)
    return root


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "model.safetensors"))


def last_weights(run: Path) -> dict[str, torch.Tensor]:
    """The weights after the last epoch (model.safetensors holds the best epoch's)."""
    return {k.removeprefix("model/"): v for k, v in load_file(str(run / "last.safetensors")).items() if k.startswith("model/")}


def test_init_from_a_run_loads_the_backbone_and_starts_a_new_head(quick_run, three_digits, tmp_path):
    out = tmp_path / "probe"
    proc = run_cli("train", "model-a", "--data", three_digits, "--grayscale", "--image-size", "28", "--init", quick_run,
                   "--freeze", "backbone", "--epochs", "2", "--batch-size", "16", "--val-split", "0.25", "--out", out)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "loaded 4 of 6 tensors; initialised anew: classifier.weight (shape [10, 1568] in the source, [3, 1568] here)" in proc.stderr
    source, probe = weights(quick_run), last_weights(out)
    for name in ("features.0.weight", "features.0.bias", "features.3.weight", "features.3.bias"):
        assert probe[name].equal(source[name]), name  # loaded, then frozen: bit-identical
    assert probe["classifier.weight"].shape == (3, 1568)
    config = json.loads((out / "config.json").read_text())
    assert config["init_report"]["loaded"] == 4 and "classifier.bias" in config["init_report"]["initialised_anew"]
    hist = json.loads((out / "history.json").read_text())
    assert hist["epochs"][-1]["val_acc"] >= 0.9  # a linear probe on digit features separates 0/1/2


def test_unfreeze_at_trains_the_backbone_from_that_epoch(quick_run, three_digits, tmp_path):
    out = tmp_path / "ft"
    proc = run_cli("train", "model-a", "--data", three_digits, "--grayscale", "--image-size", "28", "--init", quick_run,
                   "--freeze", "backbone", "--unfreeze-at", "2", "--backbone-lr-scale", "0.1", "--epochs", "2",
                   "--batch-size", "16", "--out", out)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "epoch 2: the backbone trains from now on" in proc.stderr
    assert not last_weights(out)["features.0.weight"].equal(weights(quick_run)["features.0.weight"])
    # A resumed run repeats the same freeze schedule.
    proc = run_cli("train", "--resume", out, "--epochs", "3")
    assert proc.returncode == 0, proc.stderr


def test_batchnorm_statistics_of_a_frozen_backbone_do_not_move(tmp_path):
    base = tmp_path / "base"
    assert run_cli("train", "resnet8", "--subset", "400", "--epochs", "1", "--batch-size", "50", "--out", base).returncode == 0
    probe = tmp_path / "probe"
    proc = run_cli("train", "resnet8", "--subset", "400", "--epochs", "1", "--batch-size", "50", "--init", base,
                   "--freeze", "backbone", "--lr", "0.01", "--out", probe)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    a, b = weights(base), last_weights(probe)
    backbone = [k for k in a if k.startswith("features.")]
    assert any("running_mean" in k for k in backbone)
    assert all(a[k].equal(b[k]) for k in backbone), [k for k in backbone if not a[k].equal(b[k])]
    assert not a["classifier.weight"].equal(b["classifier.weight"])


def test_a_plain_state_dict_with_a_wrapper_prefix_loads(tmp_path):
    torch.manual_seed(1)
    donor = create("tiny", (3, 32, 32), 10)
    save_file({f"module.{k}": v.contiguous() for k, v in donor.state_dict().items()}, str(tmp_path / "plain.safetensors"))
    torch.manual_seed(2)
    model = create("tiny", (3, 32, 32), 4)
    report = init_from(model, str(tmp_path / "plain.safetensors"))
    assert len(report.loaded) == len(model.state_dict()) - 2  # all but the last Linear's weight and bias
    assert model.state_dict()["features.0.weight"].equal(donor.state_dict()["features.0.weight"])


def test_another_architecture_or_a_pickle_is_refused(quick_run, tmp_path):
    with pytest.raises(CheckpointError, match="matches only 0%"):
        init_from(create("tiny", (1, 28, 28), 10), str(quick_run))
    assert_user_error(run_cli("train", "tiny", "--init", quick_run, "--out", tmp_path / "x"), "another architecture")
    assert not (tmp_path / "x").exists()  # refused in setup: no run directory left behind
    (tmp_path / "w.pt").write_bytes(b"\x80\x04junk")
    assert_user_error(run_cli("train", "model-a", "--init", tmp_path / "w.pt", "--out", tmp_path / "y"), "pickled")
    assert_user_error(run_cli("train", "model-a", "--unfreeze-at", "2"), "needs --freeze backbone")


def test_param_groups_give_the_backbone_its_own_rate():
    model = create("model-a")
    freezer = Freezer(model, "backbone")
    groups = param_groups(model, freezer, 0.1)
    assert [g["name"] for g in groups] == ["head", "backbone"] and groups[1]["lr_scale"] == 0.1
    assert freezer.apply(1) and not any(p.requires_grad for p in model.features.parameters())
    assert all(p.requires_grad for p in model.classifier.parameters())
