"""Photos of any shape: --resize crop keeps the aspect ratio; training crops at random, eval at the centre."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from cnnctl.data.batches import Augmentation, Batches, Order, random_resized_crop
from cnnctl.data.sources import Split
from cnnctl.runtime.preprocess import Preprocess
from tests.conftest import PETS_MINI, assert_user_error, run_cli


@pytest.fixture(scope="module")
def odd_photos(tmp_path_factory) -> Path:
    """The 60 fixture photos cropped to portrait and landscape shapes (real pixels, new aspect ratios)."""
    from PIL import Image

    root = tmp_path_factory.mktemp("odd")
    for i, path in enumerate(sorted(PETS_MINI.rglob("*.jpg"))):
        (root / path.parent.name).mkdir(exist_ok=True)
        box = (20, 0, 140, 180) if i % 2 else (0, 40, 180, 130)
        with Image.open(path) as img:
            img.crop(box).save(root / path.parent.name / path.name, quality=92)
    return root


def test_random_resized_crops_are_whole_batch_and_reproducible():
    x = torch.arange(2 * 3 * 40 * 40, dtype=torch.int64).remainder(256).to(torch.uint8).reshape(2, 3, 40, 40)
    a = random_resized_crop(x, (32, 32), torch.Generator().manual_seed(1))
    b = random_resized_crop(x, (32, 32), torch.Generator().manual_seed(1))
    c = random_resized_crop(x, (32, 32), torch.Generator().manual_seed(2))
    assert a.shape == (2, 3, 32, 32) and torch.equal(a, b) and not torch.equal(a, c)
    assert 0 <= float(a.min()) and float(a.max()) <= 255
    prep = Preprocess(channels=3, size=(32, 32), mean=[0.5] * 3, std=[0.25] * 3)
    xb, _ = next(
        iter(
            Batches(
                Split(x, torch.zeros(2, dtype=torch.int64)),
                prep,
                2,
                order=Order(shuffle=True),
                augmentation=Augmentation(augment="rrc-flip"),
            )
        )
    )
    assert xb.shape == (2, 3, 32, 32)
    xe, _ = next(iter(Batches(Split(x, torch.zeros(2, dtype=torch.int64)), prep, 2)))  # no augmentation: the centre
    assert torch.equal(
        xe, ((x[:, :, 4:36, 4:36].float() / 255 - 0.5) / 0.25).contiguous(memory_format=torch.channels_last)
    )


def test_crop_mode_trains_evaluates_exports_and_predicts_alike(odd_photos, tmp_path):
    out = tmp_path / "run"
    proc = run_cli(
        "train",
        "fastnet-s",
        "--data",
        odd_photos,
        "--resize",
        "crop",
        "--image-size",
        "48",
        "--augment",
        "rrc-flip",
        "--epochs",
        "2",
        "--batch-size",
        "16",
        "--val-split",
        "0.2",
        "--out",
        out,
        "--json",
    )
    assert proc.returncode == 0, proc.stderr
    assert "shorter side to 55, centre 48x48 for evaluation; training images stored at 55x55" in proc.stderr
    config = json.loads((out / "config.json").read_text())
    assert (
        config["preprocess"]["resize"] == "crop"
        and config["preprocess"]["resize_size"] == 55
        and config["preprocess"]["size"] == [48, 48]
    )
    # eval's val split is the training run's (same images, decoded the way predict sees them)
    report = json.loads(run_cli("eval", out, "--split", "val", "--json").stdout)
    hist = json.loads((out / "history.json").read_text())
    best = max(hist["epochs"], key=lambda r: r["val_acc"])
    assert report["images"] == 12 and abs(report["top1"] - best["val_acc"]) < 1e-9
    assert run_cli("export", out).returncode == 0
    photos = sorted(str(p) for p in odd_photos.rglob("*.jpg"))[:8]
    onnx_rows = [
        json.loads(r) for r in run_cli("predict", out / "model.onnx", *photos, "--json", "-k", "2").stdout.splitlines()
    ]
    torch_rows = [json.loads(r) for r in run_cli("predict", out, *photos, "--json", "-k", "2").stdout.splitlines()]
    assert [r["top"][0]["label"] for r in onnx_rows] == [r["top"][0]["label"] for r in torch_rows]
    assert all(abs(a["top"][0]["prob"] - b["top"][0]["prob"]) < 1e-4 for a, b in zip(onnx_rows, torch_rows))


def test_crop_mode_needs_a_size_and_a_folder(tmp_path, odd_photos):
    assert_user_error(
        run_cli("train", "fastnet-s", "--data", odd_photos, "--resize", "crop", "--out", tmp_path / "a"),
        "needs --image-size",
    )
    assert_user_error(run_cli("train", "model-a", "--resize", "crop", "--image-size", "28"), "image folders")
    assert_user_error(
        run_cli("train", "fastnet-s", "--data", odd_photos, "--augment", "rrc-flip", "--resize", "stretch"),
        "--resize crop",
    )
