"""The parts of track/ that need no server: what a run directory becomes in MLflow, names, URIs
and variants (these run where MLflow is not installed too)."""

from __future__ import annotations

import dataclasses

import pytest

from cnnctl.errors import UsageError
from cnnctl.runtime import modelfile
from cnnctl.runtime.metadata import ExportInfo
from cnnctl.track.client import experiment_name, first_line, tracking_uri
from cnnctl.track.registry import parse, variant
from cnnctl.track.sender import epoch_metrics, params_and_tags


def test_config_json_becomes_params_and_tags():
    config = {
        "lr": 0.003, "model": "model-a", "mean": "", "pretrained": False, "init_report": None,
        "preprocess": {"size": [32, 32], "resize": "stretch"},
        "hardware": {"device": "cpu", "threads": 2}, "versions": {"cnnctl": "0.1.0", "torch": "2.14.1"},
    }  # fmt: skip
    params, tags = params_and_tags(config)
    assert params == {"lr": "0.003", "model": "model-a", "mean": "", "pretrained": "false", "init_report": "null",
                      "preprocess.size": "[32, 32]", "preprocess.resize": "stretch"}  # fmt: skip
    assert tags == {"cnnctl.hardware.device": "cpu", "cnnctl.hardware.threads": "2", "cnnctl.version.cnnctl": "0.1.0",
                    "cnnctl.version.torch": "2.14.1"}  # fmt: skip
    record = {"epoch": 3, "train_loss": 0.5, "val_acc": 1, "weights": "ema", "truncated": True, "steps": 10}
    assert epoch_metrics(record) == {"train_loss": 0.5, "val_acc": 1.0, "steps": 10.0}


def test_names_uris_and_refusals(monkeypatch):
    assert experiment_name("", "/data/pets/") == "pets" and experiment_name("", "/d/labels.csv") == "labels"
    assert experiment_name("mine", "/data/pets") == "mine" and experiment_name("", "mnist-mini") == "mnist-mini"
    assert parse("models:/pets/3") == ("pets", "3", "") and parse("models:/pets@champion") == ("pets", "", "champion")
    for bad in ("models:/pets", "models:/pets/latest", "models:/a/b/c", "models:/@x"):
        with pytest.raises(UsageError, match="models:/NAME/VERSION or models:/NAME@ALIAS"):
            parse(bad)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(UsageError, match="--tracking-uri http://HOST:5000 or set MLFLOW_TRACKING_URI"):
        tracking_uri("")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://m:5000")
    assert tracking_uri("") == "http://m:5000" and tracking_uri("sqlite:///x.db") == "sqlite:///x.db"
    long = ConnectionError(
        "API request to http://h/api failed ... (Caused by NewConnectionError(... Connection refused))"
    )
    assert first_line(long) == "connection refused"


def test_the_variant_of_an_export_is_named_from_its_metadata(tmp_path, quick_onnx):
    meta = modelfile.read(quick_onnx)
    assert variant(meta) == "float32"
    e = meta.export
    assert e is not None
    assert (
        variant(meta.replace(export=dataclasses.replace(e, input_dtype="uint8", input_layout="NHWC"))) == "uint8-input"
    )
    assert variant(meta.replace(export=dataclasses.replace(e, precision="float16"))) == "float16"
    assert variant(meta.replace(export=dataclasses.replace(e, quantization="int8-qdq"))) == "int8"
    assert isinstance(e, ExportInfo)
