"""`cnnctl export`: every registered model exports, matches PyTorch, and carries its metadata."""

from __future__ import annotations

import json

import onnx
import pytest
import torch

from cnnctl.errors import ExportError
from cnnctl.export.onnx import ExportOptions, export
from cnnctl.models import create, get_entry, list_models
from cnnctl.models.checkpoint import save_model, versions
from cnnctl.runtime.inference import OnnxClassifier
from cnnctl.runtime.metadata import DataInfo, Metadata, TrainingInfo
from cnnctl.runtime.preprocess import Preprocess
from tests.conftest import assert_user_error, run_cli


def _checkpoint(tmp_path, name: str):
    entry = get_entry(name)
    torch.manual_seed(0)
    model = create(name).eval()
    c = entry.default_input[0]
    prep = Preprocess(channels=c, size=entry.default_input[1:], mean=[0.5] * c, std=[0.25] * c)
    meta = Metadata(
        model=name,
        input_shape=entry.default_input,
        class_names=tuple(f"c{i}" for i in range(entry.num_classes)),
        preprocess=prep,
        data=DataInfo(name="/nonexistent-data"),
        versions=versions(),
        training=TrainingInfo(epoch=0),
    )
    path = tmp_path / f"{name}.safetensors"
    save_model(path, model, meta)
    return path


# One model of each family through torch's dynamo exporter (the default; explicitly, so a
# fallback cannot hide a failure); the rest through the TorchScript exporter that `--exporter
# auto` falls back to: every model is proven exportable with parity, in a tenth of the time.
DYNAMO = {"resnet8", "fastnet-wd", "model-c", "tiny-bn", "fashion", "lenet5", "catdog"}


@pytest.mark.parametrize("name", list_models())
def test_every_registered_model_exports_with_parity(name, tmp_path):
    exporter = "dynamo" if name in DYNAMO else "torchscript"
    report = export(str(_checkpoint(tmp_path, name)), opts=ExportOptions(exporter=exporter), log=lambda m: None)
    assert report["exporter"] == exporter
    assert [c["batch"] for c in report["checks"]] == [1, 32]
    assert all(c["top1_agreement"] == 1.0 and c["max_abs_diff"] < 1e-3 for c in report["checks"])
    clf = OnnxClassifier(report["output"], "cpu")
    assert clf.meta.model == name and clf.meta.export is not None and clf.meta.export.source_sha256
    assert clf.session.get_inputs()[0].shape[0] == "batch" or not isinstance(clf.session.get_inputs()[0].shape[0], int)


def test_cli_export_of_trained_run_reports_parity_on_real_images(quick_run, tmp_path):
    proc = run_cli("export", quick_run, "-o", tmp_path / "m.onnx", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert "train images of mnist-mini" in report["check_inputs"]
    model = onnx.load(str(tmp_path / "m.onnx"))
    props = {p.key: json.loads(p.value) for p in model.metadata_props}
    assert props["class_names"] == [str(i) for i in range(10)] and props["preprocess"]["size"] == [28, 28]
    assert props["exporter"] in ("dynamo", "torchscript")
    assert [i.name for i in model.graph.input] == ["input"] and [o.name for o in model.graph.output] == ["logits"]


def test_fixed_batch_export(quick_run, tmp_path):
    proc = run_cli(
        "export", quick_run, "-o", tmp_path / "f.onnx", "--dynamic", "none", "--batch", "4", "--exporter", "torchscript"
    )
    assert proc.returncode == 0, proc.stderr
    clf = OnnxClassifier(tmp_path / "f.onnx", "cpu")
    assert clf.session.get_inputs()[0].shape[0] == 4
    import numpy as np

    assert clf.logits(np.zeros((6, 1, 28, 28), np.float32)).shape == (6, 10)  # chunked + padded


def test_failed_parity_leaves_no_file(quick_run, tmp_path):
    with pytest.raises(ExportError, match="disagrees with PyTorch"):
        export(str(quick_run), str(tmp_path / "x.onnx"), ExportOptions(tolerance=0.0), log=lambda m: None)
    assert list(tmp_path.iterdir()) == []


def test_int8_export_reports_accuracy_and_speed(quick_run, tmp_path):
    report = export(str(quick_run), str(tmp_path / "q.onnx"), ExportOptions(int8=True), log=lambda m: None)
    q = report["int8"]
    assert (tmp_path / "q.int8.onnx").exists() and not (tmp_path / "q.pre.onnx").exists()
    assert q["int8_top1"] > 0.9 and abs(q["top1_drop_points"]) < 3
    assert q["speedup"] > 0 and isinstance(q["meets_target"], bool)
    ops = {n.op_type for n in onnx.load(str(tmp_path / "q.int8.onnx")).graph.node}
    assert "QuantizeLinear" in ops and "ConvInteger" not in ops


@pytest.mark.parametrize(
    "args, needle",
    [
        (["/nonexistent"], "no such file"),
        (["RUN", "--dynamic", "maybe"], "--dynamic must be"),
        (["RUN", "-o", "out.txt"], "must end in .onnx"),
        (["RUN", "--opset", "3"], "--opset 3"),
    ],
)
def test_bad_export_arguments(args, needle, quick_run, tmp_path):
    args = [str(quick_run) if a == "RUN" else a for a in args]
    assert_user_error(run_cli("export", *args, cwd=tmp_path), needle)
