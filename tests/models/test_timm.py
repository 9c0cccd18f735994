"""timm:NAME models (cnnctl/models/timm_models.py): listed, traced, trained, exported and predicted
through the real CLI; --pretrained offline says what is missing in one line. Skips without timm."""

from __future__ import annotations

import json

import pytest

from tests.conftest import PETS_MINI, assert_user_error, run_cli

pytest.importorskip("timm", reason="timm not installed (pip install 'cnnctl[timm]')")


def test_timm_models_are_listed_traced_and_refused_by_name():
    proc = run_cli("models", "timm:*lite0*", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = {r["name"]: r for r in json.loads(proc.stdout)}
    assert (
        rows["timm:tf_efficientnet_lite0"]["params"] == 4_652_008
        and rows["timm:tf_efficientnet_lite0"]["default_input"] == "3x224x224"
    )
    proc = run_cli(
        "shapes", "timm:tf_efficientnet_lite0", "--input", "1x96x96", "--fit", "--num-classes", "3", "--json"
    )
    assert proc.returncode == 0, proc.stderr
    trace = json.loads(proc.stdout)
    assert trace["input_shape"] == [1, 96, 96] and trace["params"] == 3_374_275 and trace["flatten"]["features"] == 1280
    assert_user_error(run_cli("shapes", "timm:tf_efficentnet_lite0"), "did you mean timm:tf_efficientnet_lite0")
    assert_user_error(run_cli("shapes", "timm:tf_efficientnet_lite0.in22k"), "in1k")


def test_a_timm_model_trains_exports_and_predicts(tmp_path):
    out = tmp_path / "run"
    proc = run_cli(
        "train",
        "timm:tf_efficientnet_lite0",
        "--data",
        PETS_MINI,
        "--image-size",
        "64",
        "--iters",
        "2",
        "--batch-size",
        "8",
        "--out",
        out,
    )
    assert proc.returncode == 0, proc.stderr
    proc = run_cli("export", out, "--json")  # checks onnxruntime against PyTorch, or fails
    assert proc.returncode == 0, proc.stderr
    checks = json.loads(proc.stdout)["checks"]
    assert checks and all(c["top1_agreement"] == 1.0 and c["max_abs_diff"] < 1e-3 for c in checks)
    proc = run_cli("predict", out / "model.onnx", PETS_MINI / "Dog" / "3.jpg", "--json")
    assert proc.returncode == 0 and json.loads(proc.stdout)["top"][0]["label"] in ("Cat", "Dog"), proc.stderr


def test_timm_pretrained_offline_is_one_line_naming_the_fix(tmp_path):
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1", "TORCH_HOME": str(tmp_path / "torch")}
    # A process of its own: huggingface_hub reads HF_HUB_OFFLINE when it is imported.
    proc = run_cli(
        "train",
        "timm:tf_efficientnet_lite0",
        "--pretrained",
        "--data",
        PETS_MINI,
        "--iters",
        "1",
        "--out",
        tmp_path / "run",
        env=env,
        subprocess_=True,
    )
    assert_user_error(
        proc,
        "timm/tf_efficientnet_lite0.in1k is not in the Hugging Face cache",
        "hf download timm/tf_efficientnet_lite0.in1k",
        "--pretrained --init FILE",
    )
    assert not (tmp_path / "run").exists() and "decoded" not in proc.stderr  # refused before any image was read
    assert_user_error(
        run_cli("train", "timm:tf_efficientnet_lite0", "--weights", "in22k", "--data", PETS_MINI), "tagged in1k"
    )
    assert_user_error(
        run_cli(
            "train", "timm:tf_efficientnet_lite0", "--pretrained", "--init", tmp_path / "nope.pth", "--data", PETS_MINI
        ),
        "no such file",
    )
