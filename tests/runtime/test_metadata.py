"""cnnctl.runtime.metadata: the one typed Metadata, its JSON map, validation, and files from before it."""

from __future__ import annotations

import json
import re
import shutil

import pytest

from cnnctl.errors import CheckpointError
from cnnctl.runtime.metadata import DataInfo, ExportInfo, Metadata, TrainingInfo
from cnnctl.runtime.modelfile import read as read_checkpoint_metadata
from cnnctl.runtime.preprocess import Preprocess
from tests.conftest import FIXTURES, ROOT, assert_user_error, run_cli

pytestmark = pytest.mark.quick

OLD = FIXTURES / "format1-run"  # written by cnnctl before the typed Metadata (train --iters 30 --ema 0.9, then export)


def full() -> Metadata:
    prep = Preprocess(channels=3, size=(32, 32), mean=[0.5] * 3, std=[0.25] * 3)
    return Metadata(
        model="tiny",
        input_shape=(3, 32, 32),
        class_names=("cat", "dog"),
        preprocess=prep,
        data=DataInfo(name="/data/pets", data_dir="/data", val_split=0.2, fingerprint="ab12"),
        versions={"cnnctl": "0.1.0", "torch": "2"},
        training=TrainingInfo(epoch=3, metrics={"val_acc": 0.9}, weights="ema"),
        export=ExportInfo(
            exporter="dynamo", opset=18, source_sha256="ff", versions={"cnnctl": "0.1.0"}, quantization="int8"
        ),
    )


def test_json_map_round_trip():
    meta = full()
    raw = meta.to_json_map()
    assert all(isinstance(v, str) for v in raw.values())
    assert Metadata.from_json_map(raw, "x") == meta
    # The file layout is the flat one every cnnctl file has had.
    flat = {k: json.loads(v) for k, v in raw.items()}
    assert (
        flat["epoch"] == 3
        and flat["weights"] == "ema"
        and flat["exporter"] == "dynamo"
        and flat["versions"]["export"] == {"cnnctl": "0.1.0"}
    )
    assert flat["num_classes"] == 2 and flat["input_shape"] == [3, 32, 32] and flat["format"] == 1
    bare = Metadata(
        model="m", input_shape=(1, 8, 8), class_names=("a",), preprocess=Preprocess(channels=1, size=(8, 8))
    )
    assert Metadata.from_json_map(bare.to_json_map(), "x") == bare
    assert set(bare.to_dict()) == {
        "format",
        "kind",
        "model",
        "input_shape",
        "num_classes",
        "class_names",
        "preprocess",
        "versions",
    }


@pytest.mark.parametrize(
    "change, needle",
    [
        ({"format": 2}, "format 2 is not supported"),
        ({"input_shape": [3, 32]}, "not [C, H, W]"),
        ({"num_classes": 3}, "does not list 3 names"),
        ({"class_names": ["cat", 7]}, "does not list 2 names"),
        ({"preprocess": {"channels": 3}}, "preprocessing metadata is malformed"),
        ({"input_shape": [1, 32, 32]}, "does not match input_shape"),
        ({"epoch": "three"}, "training/export fields are malformed"),
        ({"data": ["not", "a", "dict"]}, None),
    ],
)
def test_validation_names_the_field(change, needle):
    flat = {**full().to_dict(), **change}
    raw = {k: json.dumps(v) for k, v in flat.items()}
    if needle is None:  # an unreadable data section: the model still loads, eval then asks for --data
        assert Metadata.from_json_map(raw, "f.safetensors").data is None
        return
    with pytest.raises(CheckpointError, match=re.escape(needle)) as err:
        Metadata.from_json_map(raw, "f.safetensors")
    assert "f.safetensors" in err.value.message
    for key in ("model", "preprocess"):
        with pytest.raises(CheckpointError, match=f"lacks {key}"):
            Metadata.from_json_map({k: v for k, v in full().to_json_map().items() if k != key}, "f")


def test_files_written_before_the_typed_metadata_still_load(tmp_path):
    meta = read_checkpoint_metadata(OLD / "model.safetensors")
    assert meta.model == "model-a" and meta.input_shape == (1, 28, 28) and meta.num_classes == 10
    assert meta.training is not None and meta.training.epoch == 1 and meta.training.weights in ("model", "ema")
    assert meta.data is not None and meta.data.name == "mnist-mini" and meta.preprocess.channels == 1
    from cnnctl.runtime.inference import OnnxClassifier

    clf = OnnxClassifier(OLD / "model.onnx", "cpu")
    assert (
        clf.meta.export is not None
        and clf.meta.export.exporter in ("dynamo", "torchscript")
        and clf.meta.export.source_sha256
    )
    assert clf.meta.preprocess == meta.preprocess and clf.meta.class_names == meta.class_names
    # The commands users run on such files: eval (checkpoint and ONNX agree), shapes, predict, resume.
    proc = run_cli("eval", OLD, "--compare", OLD / "model.onnx", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["top1"] > 0.5 and report["compare"]["agreement"] == 1.0
    assert run_cli("shapes", OLD).returncode == 0
    run = tmp_path / "old"
    shutil.copytree(OLD, run)
    proc = run_cli("train", "--resume", run, "--iters", "0", "--epochs", "2")
    assert proc.returncode == 0, proc.stderr
    assert [r["epoch"] for r in json.loads((run / "history.json").read_text())["epochs"]] == [1, 2]
    assert read_checkpoint_metadata(run / "model.safetensors").training.epoch in (1, 2)


def test_a_damaged_data_section_is_one_line(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(OLD / "model.safetensors"), "pt") as f:
        raw = f.metadata()
    raw["epoch"] = json.dumps({"not": "a number"})
    save_file(load_file(str(OLD / "model.safetensors")), str(tmp_path / "bad.safetensors"), metadata=raw)
    assert_user_error(run_cli("eval", tmp_path / "bad.safetensors"), "malformed")


def test_formats_doc_lists_every_key():
    """docs/formats.md documents every key the typed record writes."""
    doc = (ROOT / "docs" / "formats.md").read_text()
    for key in full().to_dict():
        assert f"`{key}`" in doc, key
