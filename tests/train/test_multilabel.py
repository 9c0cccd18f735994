"""Multi-label classification end to end on real photos: 2x2 mosaics of CIFAR-10 JPEGs (the
shipped recipes/make_mosaics.py) labelled by the classes they show. Trained through the CLI; the
thresholds tuned on val land in Metadata and in every export; predict, serve (/predict and the Open
Inference Protocol) and eval give every test image the same label set."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from cnnctl.data.policies import BatchMix
from cnnctl.runtime import modelfile
from cnnctl.runtime.classifier import label_sets, probabilities
from cnnctl.runtime.inference import OnnxClassifier
from cnnctl.runtime.preprocess import load_image
from cnnctl.train.engine import make_loss
from tests.conftest import CIFAR_MINI, ROOT, assert_user_error, run_cli

CLASSES = "airplane,automobile,frog,ship"
TRAIN = ["tiny", "--image-size", "32", "--epochs", "6", "--batch-size", "32", "--lr", "3e-3", "--seed", "0"]


@pytest.fixture(scope="module")
def mosaics(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("mosaics")
    cmd = [sys.executable, str(ROOT / "recipes" / "make_mosaics.py"), str(CIFAR_MINI), str(out)]
    proc = subprocess.run(
        [*cmd, "--train", "480", "--test", "120", "--fill", "0.35", "--classes", CLASSES],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    return out / "labels.csv"


@pytest.fixture(scope="module")
def ml_run(mosaics, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("ml") / "run"
    proc = run_cli("train", *TRAIN, "--data", mosaics, "--out", run)
    assert proc.returncode == 0, proc.stderr
    assert "multi-label: some rows of labels.csv hold several labels" in proc.stderr
    assert "thresholds (f1, on 48 validation images)" in proc.stderr
    return run


def _truth(labels: Path) -> dict[str, set[str]]:
    with open(labels, newline="") as fh:
        return {
            str((labels.parent / r["path"]).resolve()): set(r["labels"].split())
            for r in csv.DictReader(fh)
            if r["split"] == "test"
        }


def test_the_run_learns_label_sets_and_stores_its_thresholds(ml_run, mosaics):
    meta = modelfile.read(ml_run / "model.safetensors")
    assert meta.task == "multilabel" and meta.class_names == tuple(CLASSES.split(","))
    assert meta.thresholds is not None and len(set(meta.thresholds)) > 1  # tuned per class, not 1/2 for all
    history = json.loads((ml_run / "history.json").read_text())
    best = max(history["epochs"], key=lambda r: r["val_map"])  # --monitor auto: val_map
    assert meta.training is not None and meta.training.epoch == best["epoch"]
    report = json.loads(run_cli("eval", ml_run, "--json").stdout)
    assert report["task"] == "multilabel" and report["images"] == 120 and report["thresholds_tuned"]
    # Chance: a score that knows nothing ranks at the class's prevalence (its expected AP).
    prevalence = np.mean([row["support"] / report["images"] for row in report["per_class"]])
    assert report["map"] > prevalence + 0.25, (report["map"], prevalence)
    assert report["map"] == pytest.approx(history["test"]["map"], abs=1e-6)
    assert set(report["thresholds"]) == set(CLASSES.split(","))


def test_predict_serve_oip_and_eval_agree_on_every_label_set(ml_run, mosaics, tmp_path):
    pytest.importorskip("starlette", reason="serve needs the serve extra")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from starlette.testclient import TestClient
    from cnnctl.serve import ServeConfig, create_app

    onnx = tmp_path / "model.onnx"
    assert run_cli("export", ml_run, "-o", onnx).returncode == 0
    meta = modelfile.read(onnx)
    assert meta.task == "multilabel" and meta.thresholds == modelfile.read(ml_run / "model.safetensors").thresholds
    truth = _truth(mosaics)
    files = sorted(truth)
    eval_csv = tmp_path / "predictions.csv"
    proc = run_cli("eval", onnx, "--data", mosaics, "--predictions", eval_csv, "--json")
    assert proc.returncode == 0, proc.stderr
    with open(eval_csv, newline="") as fh:
        from_eval = {r["path"]: set(r["predicted"].split()) for r in csv.DictReader(fh)}
    proc = run_cli("predict", onnx, *files, "--json")
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    from_predict = {r["path"]: set(r["labels"]) for r in rows}
    assert all(set(r["probs"]) == set(CLASSES.split(",")) for r in rows)
    assert from_predict == from_eval and len(from_predict) == 120
    # /predict and the Open Inference Protocol of `cnnctl serve`, on the same file.
    clf = OnnxClassifier(onnx, "cpu")
    with TestClient(create_app(ServeConfig(str(onnx), "cpu", name="model"), clf)) as c:
        deadline = time.monotonic() + 30
        while c.get("/v2/health/ready").status_code != 200:
            assert time.monotonic() < deadline, "never ready"
            time.sleep(0.05)
        for f in files[:16]:
            r = c.post("/predict", content=Path(f).read_bytes(), headers={"content-type": "image/jpeg"})
            assert set(r.json()["predictions"][0]["labels"]) == from_predict[f]
        x = clf.from_pixels(np.stack([load_image(f, clf.prep) for f in files[:16]]))
        body = {
            "inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}],
            "outputs": [{"name": "probabilities"}],
        }
        out = c.post("/v2/models/model/infer", json=body).json()["outputs"][0]
        probs = np.asarray(out["data"], dtype=np.float64).reshape(out["shape"])
        # The OIP client turns sigmoid probabilities into sets with the thresholds in /metadata.
        thresholds = c.get("/metadata").json()["thresholds"]
        sets = [{n for n, p, t in zip(meta.class_names, row, thresholds) if p >= t} for row in probs]
        assert sets == [from_predict[f] for f in files[:16]]
    assert label_sets(probabilities(clf.logits(x), meta), meta) == [sorted(s) for s in sets]


@pytest.mark.parametrize("variant", [["--input", "uint8"], ["--fp16"], ["--int8"]])
def test_every_export_variant_carries_the_task_and_thresholds(ml_run, tmp_path, variant):
    out = tmp_path / "m.onnx"
    proc = run_cli("export", ml_run, *variant, "-o", out)
    assert proc.returncode == 0, proc.stderr
    meta = modelfile.read(out)
    assert meta.task == "multilabel" and meta.thresholds == modelfile.read(ml_run / "model.safetensors").thresholds


def test_eval_errors_lists_false_positives_and_negatives_by_path(ml_run, tmp_path):
    errors = tmp_path / "errors.csv"
    report = json.loads(run_cli("eval", ml_run, "--errors", errors, "--json").stdout)
    with open(errors, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == report["images_with_errors"] > 0
    for r in rows:
        true, pred = set(r["true"].split()), set(r["predicted"].split())
        assert set(r["false_positives"].split()) == pred - true and set(r["false_negatives"].split()) == true - pred


def test_multilabel_loss_weights_smoothing_and_mixing():
    y = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 0.0], [1.0, 0.0, 1.0]])
    logits = torch.randn(4, 3)
    pos = torch.tensor([0.5, 2.0, 3.0])
    loss = make_loss("ce", 3, 0.1, pos, multilabel=True)(logits, y)
    target = y * 0.9 + 0.05
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits, target, pos_weight=pos)
    assert torch.allclose(loss, expected)
    from cnnctl.train.imbalance import pos_weights

    assert pos_weights("auto", y, list("abc")).tolist() == pytest.approx([1 / 3, 3.0, 3.0])
    torch.manual_seed(0)
    x = torch.randn(4, 3, 8, 8)
    for kind in ({"mixup": 0.4}, {"cutmix": 1.0}):
        mixed_x, mixed_y = BatchMix(3, multilabel=True, **kind)(x, y)
        lam = 1 - float(mixed_y[0, 2])  # image 0 has no class 2, image 3 (the one before it) has
        assert torch.allclose(mixed_y, lam * y + (1 - lam) * y.roll(1, 0))
        if "mixup" in kind:
            assert torch.allclose(mixed_x, lam * x + (1 - lam) * x.roll(1, 0), atol=1e-6)
        else:  # the pasted box's share of the image is 1 - lam
            assert float((mixed_x != x).any(1).float().mean()) == pytest.approx(1 - lam, abs=1e-6)


def test_what_multi_label_runs_refuse(mosaics, tmp_path):
    proc = run_cli("train", *TRAIN, "--data", mosaics, "--task", "single", "--out", tmp_path / "a")
    assert_user_error(proc, "labels; --task single needs exactly one per row")
    proc = run_cli("train", *TRAIN, "--data", mosaics, "--loss", "mse", "--out", tmp_path / "b")
    assert_user_error(proc, "--loss mse is for single-label")
    proc = run_cli("train", *TRAIN, "--data", mosaics, "--sampler", "balanced", "--out", tmp_path / "c")
    assert_user_error(proc, "--sampler balanced")
    proc = run_cli("train", *TRAIN, "--data", CIFAR_MINI, "--monitor", "val_map", "--out", tmp_path / "d")
    assert_user_error(proc, "--monitor val_map is the multi-label")
    proc = run_cli("train", *TRAIN, "--data", mosaics, "--threshold-rule", "precision=2", "--out", tmp_path / "e")
    assert_user_error(proc, "--threshold-rule 'precision=2'")


def test_the_triton_repository_carries_the_thresholds(ml_run, mosaics, tmp_path):
    pytest.importorskip("tritonclient", reason="checking a Triton config needs the triton extra")
    from cnnctl.export.triton import parse_config

    proc = run_cli("export", ml_run, "--format", "triton", "-o", tmp_path / "repo", "--json")
    assert proc.returncode == 0, proc.stderr
    folder = tmp_path / "repo" / json.loads(proc.stdout)["triton"]["name"]
    cfg = parse_config((folder / "config.pbtxt").read_text())
    labels = (folder / "labels.txt").read_text().split()
    thresholds = [float(t) for t in cfg.parameters["cnnctl_thresholds"].string_value.split(",")]
    assert cfg.parameters["cnnctl_task"].string_value == "multilabel" and labels == CLASSES.split(",")
    meta = modelfile.read(ml_run / "model.safetensors")
    assert thresholds == pytest.approx(list(meta.thresholds), abs=1e-6)
    # What a Triton client does with the logits (docs/labels.md): the same sets as cnnctl predict.
    clf = OnnxClassifier(folder / "1" / "model.onnx", "cpu")
    files = sorted(_truth(mosaics))[:20]
    logits = clf.logits(clf.from_pixels(np.stack([load_image(f, clf.prep) for f in files])))
    client_sets = [[n for n, z, t in zip(labels, row, thresholds) if 1 / (1 + np.exp(-z)) >= t] for row in logits]
    rows = [json.loads(line) for line in run_cli("predict", ml_run, *files, "--json").stdout.splitlines()]
    assert client_sets == [r["labels"] for r in rows]


def test_calibrate_fits_one_temperature_and_keeps_every_decision(ml_run, mosaics, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(ml_run, run)
    files = sorted(_truth(mosaics))
    before = [json.loads(line)["labels"] for line in run_cli("predict", run, *files, "--json").stdout.splitlines()]
    proc = run_cli("calibrate", run, "--split", "test", "--check", "val", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    meta = modelfile.read(run / "model.safetensors")
    assert meta.temperature == pytest.approx(report["temperature"], abs=1e-6)
    assert report["fit"]["after"]["nll"] <= report["fit"]["before"]["nll"] + 1e-9
    after = [json.loads(line)["labels"] for line in run_cli("predict", run, *files, "--json").stdout.splitlines()]
    assert after == before  # the thresholds moved with the temperature


def test_explain_answers_for_the_class_asked_with_the_image_label_set(ml_run, mosaics, tmp_path):
    f = sorted(_truth(mosaics))[0]
    row = json.loads(run_cli("predict", ml_run, f, "--json").stdout)
    for name in ("frog", "ship"):
        proc = run_cli("explain", ml_run, f, "--class", name, "--json", "-o", tmp_path / name)
        assert proc.returncode == 0, proc.stderr
        record = json.loads(proc.stdout)["images"][0]
        assert record["class"] == name and record["prob"] == pytest.approx(row["probs"][name], abs=1e-5)
        assert record["labels"] == row["labels"]


def test_lr_find_and_a_frozen_backbone_with_cached_features_take_the_label_file(
    mosaics, tmp_path, mobilenet_torch_home
):
    """The other tools that train read the label file as train does: lr-find's sweep (BCE), and a
    linear probe on mobilenet_v2's frozen ImageNet features, stored once in the feature cache."""
    proc = run_cli("lr-find", "tiny", "--data", mosaics, "--image-size", "16", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["points"] and "multi-label" in proc.stderr
    args = ["tv:mobilenet_v2", "--data", mosaics, "--weights", "IMAGENET1K_V1", "--freeze", "backbone"]
    args += ["--image-size", "96", "--epochs", "3", "--lr", "3e-3", "--subset", "160", "--cache-dir", tmp_path / "c"]
    env = {"TORCH_HOME": str(mobilenet_torch_home)}
    proc = run_cli("train", *args, "--out", tmp_path / "probe", env=env)
    assert proc.returncode == 0, proc.stderr
    assert "features: running the frozen backbone once" in proc.stderr
    assert "the head (classifier) trains on the stored features" in proc.stderr
    meta = modelfile.read(tmp_path / "probe" / "model.safetensors")
    assert meta.task == "multilabel" and meta.thresholds is not None
