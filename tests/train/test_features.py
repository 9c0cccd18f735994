"""The frozen-backbone feature cache (cnnctl/train/features.py): the same logits as the model, keys that
cannot go stale, nothing complete-looking after a kill, and the CLI paths that use it."""

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

from cnnctl.data.batches import Batches, Order
from cnnctl.data.sources import image_folder
from cnnctl.models import create
from cnnctl.train.features import Backbone, FeatureBatches, Store, Views, features_of, head_module, is_head_last
from cnnctl.train.freezing import Freezer
from tests.conftest import PETS_MINI, ROOT, run_cli


def _photos(cache: Path, size: int = 64):
    src = image_folder(str(PETS_MINI), (size, size), False, cache, lambda m: None, "crop", 0.875, "bilinear")
    prep = src.prep.__class__(**{**src.prep.to_dict(), "size": (size, size), "mean": [0.5] * 3, "std": [0.25] * 3})
    return src.train, prep


def _frozen(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = create("tv:resnet18", (3, 64, 64), 2)
    Freezer(model, "backbone").apply(1)
    return model


def _features(model, split, prep, cache: Path, logs: list[str], views: Views = Views()) -> torch.Tensor:
    pixels = Batches(split, prep, 16, device=torch.device("cpu"), channels_last=False)
    return features_of(
        Backbone(model, "fc", "tv:resnet18"), pixels, views, Store(cache, "none", logs.append), "training"
    )


def test_the_head_on_stored_features_gives_the_models_logits(tmp_path):
    split, prep = _photos(tmp_path / "pixels")
    model = _frozen().eval()
    logs: list[str] = []
    feats = _features(model, split, prep, tmp_path / "f", logs)
    assert feats.shape == (1, len(split), 512) and any("running the frozen backbone once" in m for m in logs)
    head = head_module(model, "fc")
    pixels = Batches(split, prep, 8, channels_last=False)
    with torch.inference_mode():
        direct = torch.cat([model(x) for x, _ in pixels])
        cached = torch.cat([head(x) for x, _ in FeatureBatches(pixels, feats)])
    assert direct.abs().mean() > 0.01 and torch.allclose(direct, cached, rtol=1e-5, atol=1e-6), (
        (direct - cached).abs().max()
    )
    assert is_head_last(model, head, next(iter(pixels))[0])

    class Doubled(torch.nn.Module):  # something after the head: the cache would be wrong, so it is refused
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(x) * 2

    assert not is_head_last(Doubled(model), head, next(iter(pixels))[0])


def test_changed_weights_files_or_preprocessing_recompute_the_features(tmp_path):
    split, prep = _photos(tmp_path / "pixels")
    model, cache = _frozen(), tmp_path / "f"
    logs: list[str] = []
    first = _features(model, split, prep, cache, logs).clone()

    def again(m=model, s=split, p=prep, views=Views()) -> tuple[bool, torch.Tensor]:
        logs.clear()
        out = _features(m, s, p, cache, logs, views)
        return any("running the frozen backbone once" in line for line in logs), out

    ran, same = again()
    assert not ran and same.equal(first)  # reused: the same key
    changed = _frozen()
    changed.bn1.running_mean[0] += 0.5  # one BatchNorm statistic of the backbone
    ran, other = again(m=changed)
    assert ran and not other.equal(first)
    head_only = _frozen()
    head_only.fc.weight.data += 1  # the head is not part of the key: it is what trains
    assert not again(m=head_only)[0]
    assert again(p=prep.__class__(**{**prep.to_dict(), "mean": [0.4] * 3}))[0]  # normalisation
    assert again(views=Views(2, "rrc-flip", 0))[0]
    photo = Path(split.paths[3])
    os.utime(photo, ns=(photo.stat().st_atime_ns, photo.stat().st_mtime_ns + 1_000_000_000))  # a file changed
    try:
        assert again()[0]
    finally:
        os.utime(photo, ns=(photo.stat().st_atime_ns, photo.stat().st_mtime_ns - 1_000_000_000))
    assert len(list(cache.glob("features-*.json"))) == 5  # first, weights, mean, views, file


def test_augmented_views_differ_and_epochs_draw_among_them(tmp_path):
    src = image_folder(
        str(PETS_MINI), (72, 72), False, tmp_path / "pixels", lambda m: None, "stretch", 0.875, "bilinear"
    )
    prep = src.prep.__class__(**{**src.prep.to_dict(), "size": (64, 64), "mean": [0.5] * 3, "std": [0.25] * 3})
    feats = _features(_frozen(), src.train, prep, tmp_path / "f", [], Views(3, "rrc-flip", 0))
    assert feats.shape[0] == 3 and not feats[0].equal(feats[1]) and not feats[1].equal(feats[2])
    batches = FeatureBatches(Batches(src.train, prep, 64, channels_last=False, order=Order(shuffle=True)), feats)
    x1, x2 = next(iter(batches.epoch(1)))[0], next(iter(batches.epoch(2)))[0]
    assert not x1.equal(x2) and next(iter(batches.epoch(1)))[0].equal(x1)  # per-epoch draws, reproducible


def test_train_on_features_matches_training_through_the_backbone(tmp_path):
    common = (
        "train",
        "tv:mobilenet_v2",
        "--data",
        PETS_MINI,
        "--image-size",
        "64",
        "--resize",
        "crop",
        "--freeze",
        "backbone",
        "--epochs",
        "2",
        "--batch-size",
        "8",
        "--amp",
        "none",
        "--val-split",
        "0.2",
    )
    live = run_cli(*common, "--feature-cache", "off", "--out", tmp_path / "live")
    cached = run_cli(*common, "--out", tmp_path / "cached")
    assert live.returncode == 0 and cached.returncode == 0, live.stderr + cached.stderr
    assert "the head (classifier) trains on the stored features" in cached.stderr and "features:" not in live.stderr
    a = json.loads((tmp_path / "live" / "history.json").read_text())["epochs"]
    b = json.loads((tmp_path / "cached" / "history.json").read_text())["epochs"]
    for x, y in zip(a, b):  # the same batches, dropout draws and steps: the same run
        assert x["val_acc"] == y["val_acc"] and x["train_acc"] == y["train_acc"]
        assert abs(x["train_loss"] - y["train_loss"]) < 1e-4 and abs(x["val_loss"] - y["val_loss"]) < 1e-4
    # cnnctl eval reuses the validation features; its numbers are the exported ONNX model's.
    proc = run_cli("eval", tmp_path / "cached", "--split", "val", "--json")
    assert proc.returncode == 0, proc.stderr
    assert "features: evaluation images from features-" in proc.stderr
    assert run_cli("export", tmp_path / "cached").returncode == 0
    onnx = run_cli("eval", tmp_path / "cached" / "model.onnx", "--split", "val", "--json")
    assert onnx.returncode == 0 and "features:" not in onnx.stderr, onnx.stderr
    best = max(b, key=lambda r: r["val_acc"])  # the first best epoch: what model.safetensors holds
    assert json.loads(proc.stdout)["top1"] == json.loads(onnx.stdout)["top1"] == best["val_acc"]
    assert json.loads(proc.stdout)["loss"] == pytest.approx(json.loads(onnx.stdout)["loss"], abs=1e-4)


def test_a_kill_during_the_feature_pass_leaves_nothing_complete(tmp_path):
    cache = tmp_path / "cache"
    cmd = [
        sys.executable,
        "-m",
        "cnnctl",
        "train",
        "tv:mobilenet_v2",
        "--data",
        str(PETS_MINI),
        "--image-size",
        "160",
        "--resize",
        "crop",
        "--augment",
        "rrc-flip",
        "--feature-views",
        "6",
        "--freeze",
        "backbone",
        "--epochs",
        "1",
        "--amp",
        "none",
        "--out",
        str(tmp_path / "run"),
    ]
    env = {**os.environ, "CNNCTL_CACHE": str(cache)}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            if "running the frozen backbone once" in line:
                break
        time.sleep(1.0)
        partial = list(cache.glob(".features-*.partial"))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    assert partial, "the kill should land during the feature pass"
    assert not list(cache.glob("features-*.json")) and not [
        p for p in cache.glob("features-*") if p.suffix not in (".lock",)
    ]
    again = subprocess.run(cmd + ["--overwrite"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    assert "running the frozen backbone once over" in again.stderr and "6 views per image" in again.stderr
    assert not list(cache.glob(".features-*.partial"))  # the killed writer's leftovers are gone


def test_an_unwritable_cache_folder_keeps_the_features_in_memory(tmp_path):
    split, prep = _photos(tmp_path / "pixels")
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")  # mkdir below it fails, as a read-only or full disk would
    logs: list[str] = []
    feats = _features(_frozen(), split, prep, blocked / "cache", logs)
    assert any("keeping them in memory" in m for m in logs) and feats.shape == (1, len(split), 512)
    assert feats.equal(_features(_frozen(), split, prep, tmp_path / "ok", []))
