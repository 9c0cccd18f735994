"""Deployment exports: raw-pixel (uint8) graphs and float16 graphs, compared with the float32
path on real photos, and refused combinations. (Triton repositories: tests/export/test_triton.py.)"""

from __future__ import annotations

import json

import numpy as np
import pytest

from cnnctl.runtime.inference import OnnxClassifier, expand_inputs
from cnnctl.runtime.preprocess import load_image
from tests.conftest import PETS_MINI, assert_user_error, run_cli


def photos() -> np.ndarray:
    return expand_inputs([str(PETS_MINI)])


@pytest.fixture(scope="module")
def exports(photo_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("deploy")
    files = {}
    for name, flags in {
        "float": [],
        "nhwc": ["--input", "uint8"],
        "nchw": ["--input", "uint8", "--layout", "nchw"],
        "fp16": ["--fp16"],
    }.items():
        proc = run_cli("export", photo_run, "-o", out / f"{name}.onnx", "--json", *flags)
        assert proc.returncode == 0, proc.stderr
        files[name] = (out / f"{name}.onnx", json.loads(proc.stdout))
    return files


def pixels(clf: OnnxClassifier) -> np.ndarray:
    return np.stack([load_image(p, clf.prep) for p in photos()])


def test_a_raw_pixel_graph_equals_the_float_path_on_real_photos(exports):
    float_clf = OnnxClassifier(exports["float"][0], "cpu")
    x = pixels(float_clf)
    assert len(x) >= 20 and x.shape[1] == 3  # real RGB photos, decoded and resized as the model was trained
    ref = float_clf.logits(float_clf.from_pixels(x))
    for layout in ("nhwc", "nchw"):
        path, report = exports[layout]
        clf = OnnxClassifier(path, "cpu")
        assert clf.session.get_inputs()[0].type == "tensor(uint8)"
        assert clf.meta.export.input_dtype == "uint8" and clf.meta.export.input_layout == layout.upper()
        assert report["input"] == {"dtype": "uint8", "layout": layout.upper()}
        graph_in = clf.from_pixels(x)
        assert graph_in.dtype == np.uint8 and list(graph_in.shape[1:]) == clf.input_item_shape()
        got = clf.logits(graph_in)
        assert np.abs(got - ref).max() <= 1e-5 * max(1.0, np.abs(ref).max())
        assert (got.argmax(1) == ref.argmax(1)).all()


def test_predict_and_eval_take_either_kind_and_agree(exports):
    rows = {}
    for name in ("float", "nhwc"):
        proc = run_cli("predict", exports[name][0], PETS_MINI, "--json", "-k", "2")
        assert proc.returncode == 0, proc.stderr
        rows[name] = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(rows["float"]) == len(photos())
    for a, b in zip(rows["float"], rows["nhwc"]):
        assert a["path"] == b["path"] and [t["label"] for t in a["top"]] == [t["label"] for t in b["top"]]
        assert all(abs(x["prob"] - y["prob"]) <= 2e-6 for x, y in zip(a["top"], b["top"]))
    evals = {}
    for name in ("float", "nhwc"):
        proc = run_cli("eval", exports[name][0], "--data", PETS_MINI, "--split", "all", "--json", "--tta-flip")
        assert proc.returncode == 0, proc.stderr
        evals[name] = json.loads(proc.stdout)
    assert evals["float"]["images"] == evals["nhwc"]["images"] == len(photos())
    assert (
        evals["float"]["top1"] == evals["nhwc"]["top1"] and abs(evals["float"]["loss"] - evals["nhwc"]["loss"]) < 1e-5
    )


def test_from_normalized_recovers_the_exact_pixels(exports):
    clf = OnnxClassifier(exports["nchw"][0], "cpu")
    x = pixels(clf)
    from cnnctl.runtime.preprocess import normalize

    assert np.array_equal(clf.from_normalized(normalize(x, clf.prep)), x)


def test_an_fp16_graph_agrees_with_float32_pytorch_on_real_photos(exports):
    path, report = exports["fp16"]
    clf = OnnxClassifier(path, "cpu")
    assert clf.meta.export.precision == "float16" and report["precision"] == "float16"
    assert clf.session.get_inputs()[0].type == "tensor(float)"  # float32 at the edges
    import onnx

    inits = onnx.load(str(path)).graph.initializer
    assert sum(t.data_type == onnx.TensorProto.FLOAT16 for t in inits) > sum(
        t.data_type == onnx.TensorProto.FLOAT for t in inits
    )
    assert path.stat().st_size < 0.6 * exports["float"][0].stat().st_size  # half-size weights
    for check in report["checks"]:
        assert check["top1_agreement"] >= 0.99 and check["max_abs_diff"] <= 2e-2 * max(1.0, check["max_abs_logit"])
    float_clf = OnnxClassifier(exports["float"][0], "cpu")
    x = pixels(float_clf)
    ref, got = float_clf.logits(float_clf.from_pixels(x)), clf.logits(clf.from_pixels(x))
    assert np.abs(got - ref).max() <= 2e-2 * max(1.0, np.abs(ref).max())
    assert (got.argmax(1) == ref.argmax(1)).mean() >= 0.95


def test_refused_combinations_are_one_line(photo_run, tmp_path):
    assert_user_error(run_cli("export", photo_run, "--input", "uint8", "--int8", "-o", tmp_path / "a.onnx"), "--int8")
    assert_user_error(run_cli("export", photo_run, "--input", "int16", "-o", tmp_path / "a.onnx"), "--input")
    assert_user_error(run_cli("export", photo_run, "--layout", "nhwc", "-o", tmp_path / "a.onnx"), "--layout")
    assert_user_error(run_cli("export", photo_run, "--name", "x", "-o", tmp_path / "a.onnx"), "--format triton")
    assert not list(tmp_path.iterdir())


def test_a_graph_whose_input_contradicts_its_metadata_is_refused(exports, tmp_path):
    import onnx

    model = onnx.load(str(exports["float"][0]))
    for p in model.metadata_props:
        if p.key == "input_dtype":
            p.value = json.dumps("uint8")
    onnx.save(model, str(tmp_path / "liar.onnx"))
    assert_user_error(run_cli("predict", tmp_path / "liar.onnx", PETS_MINI), "re-export")
