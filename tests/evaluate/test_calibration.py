"""Calibration: ECE in `eval`, temperature scaling with `cnnctl calibrate`, and calibrated
probabilities in `predict` and `serve` (metadata), on a real overconfident model."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cnnctl.evaluate.metrics import calibration, fit_temperature, nll
from tests.conftest import assert_user_error, run_cli, write_mnist_pngs


@pytest.fixture(scope="module")
def overconfident(tmp_path_factory):
    """model-a overfitted on 400 digits for 30 epochs: confident beyond its accuracy."""
    out = tmp_path_factory.mktemp("cal") / "over"
    proc = run_cli(
        "train",
        "model-a",
        "--data",
        "mnist-mini",
        "--epochs",
        "30",
        "--lr",
        "3e-3",
        "--subset",
        "400",
        "--out",
        out,
        "--json",
    )
    assert proc.returncode == 0, proc.stderr
    return out


def test_ece_and_the_fitted_temperature_on_known_cases():
    rng = np.random.default_rng(0)
    logits = rng.normal(scale=1.5, size=(20000, 4))
    true = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    targets = np.array([rng.choice(4, p=p) for p in true])  # softmax(logits) is calibrated by construction...
    assert calibration(true, targets)["ece"] < 0.02
    probs = np.exp(3 * logits) / np.exp(3 * logits).sum(
        1, keepdims=True
    )  # ...a model reporting softmax(3 * logits) is overconfident
    assert calibration(probs, targets)["ece"] > 0.1
    t = fit_temperature(3 * logits, targets)
    assert 2.8 < t < 3.2  # recovers the factor that was applied
    assert nll(3 * logits, targets, t) < nll(3 * logits, targets, 1.0)
    perfect = np.eye(4)[targets]
    assert calibration(perfect, targets)["ece"] == 0.0


def test_calibrate_lowers_ece_on_images_not_used_for_fitting(overconfident, tmp_path):
    before = json.loads(run_cli("eval", overconfident, "--json").stdout)
    assert before["temperature"] is None and before["ece"] > 0.03
    proc = run_cli("calibrate", overconfident, "--json")
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout)
    assert (
        r["fit"]["split"] == "val" and r["check"]["split"] == "test" and r["temperature"] > 1.2
    )  # overconfident: T > 1
    assert r["check"]["after"]["ece"] < 0.6 * r["check"]["before"]["ece"]  # on the 2,000 test digits, never used to fit
    assert r["check"]["after"]["top1"] == r["check"]["before"]["top1"]
    after = json.loads(run_cli("eval", overconfident, "--json", "--plot-calibration", tmp_path / "rel.png").stdout)
    assert after["temperature"] == pytest.approx(r["temperature"], rel=1e-5)
    assert after["ece"] < 0.6 * before["ece"] and after["ece_uncalibrated"] == pytest.approx(before["ece"])
    assert after["top1"] == before["top1"] and (tmp_path / "rel.png").stat().st_size > 5000
    # export carries it; predict (ONNX, no torch) and serve report calibrated probabilities
    assert run_cli("export", overconfident).returncode == 0
    from cnnctl.runtime.classifier import softmax
    from cnnctl.runtime.inference import OnnxClassifier
    from cnnctl.runtime.preprocess import load_image

    clf = OnnxClassifier(overconfident / "model.onnx", "cpu")
    assert clf.meta.temperature == pytest.approx(r["temperature"], rel=1e-5)
    files = [f for f, _ in write_mnist_pngs(tmp_path / "digits", per_class=1)]
    rows = [
        json.loads(line)
        for line in run_cli("predict", overconfident / "model.onnx", *files, "--json").stdout.splitlines()
    ]
    for f, row in zip(files, rows):
        logits = clf.logits(clf.from_pixels(load_image(f, clf.prep)[None])).astype(np.float64)
        assert row["top"][0]["prob"] == pytest.approx(softmax(logits / clf.meta.temperature).max(), abs=1e-6)
        assert row["top"][0]["prob"] < softmax(logits).max()  # less confident than the raw softmax


def test_serve_reports_that_it_is_calibrated(overconfident):
    pytest.importorskip("starlette")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from starlette.testclient import TestClient
    from cnnctl.serve import ServeConfig, create_app

    if not (overconfident / "model.onnx").exists():
        run_cli("calibrate", overconfident)
        run_cli("export", overconfident)
    with TestClient(create_app(ServeConfig(str(overconfident / "model.onnx"), "cpu"))) as c:
        import time

        while c.get("/v2/health/ready").status_code != 200:
            time.sleep(0.02)
        meta = c.get("/metadata").json()
    assert meta["calibrated"] is True and meta["temperature"] > 1


def test_calibrate_refuses_what_would_be_wrong(overconfident, tmp_path):
    assert_user_error(run_cli("calibrate", overconfident, "--split", "train"), "held-out")
    assert_user_error(run_cli("calibrate", overconfident, "--split", "test", "--check", "test"), "not fitted on")
    before = (overconfident / "model.safetensors").read_bytes()
    proc = run_cli("calibrate", overconfident, "--dry-run")
    assert proc.returncode == 0 and "nothing written" in proc.stdout
    assert (overconfident / "model.safetensors").read_bytes() == before
