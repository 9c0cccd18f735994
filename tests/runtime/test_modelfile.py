"""runtime.modelfile: one reader and one writer of a model file's Metadata, either suffix, atomic,
tensors untouched; runtime.classifier: the one place the temperature is applied."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from cnnctl.errors import CheckpointError
from cnnctl.runtime import modelfile
from cnnctl.runtime.classifier import open_classifier, probabilities, softmax


def _tensor_bytes(path) -> bytes:
    import struct

    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    return data[8 + n :]


def test_write_then_read_both_suffixes(quick_run, quick_onnx, tmp_path):
    import shutil

    for name in ("model.safetensors", "model.onnx", "last.safetensors"):
        shutil.copy(quick_run / name, tmp_path / name)
    ckpt, onnx_file, last = tmp_path / "model.safetensors", tmp_path / "model.onnx", tmp_path / "last.safetensors"
    before = hashlib.sha256(_tensor_bytes(ckpt)).hexdigest()
    for path in (ckpt, onnx_file, last):
        meta = modelfile.read(path)
        assert meta.temperature is None
        modelfile.write(path, meta.replace(temperature=1.7))
        assert modelfile.read(path).temperature == pytest.approx(1.7)
        assert modelfile.read(path).replace(temperature=None) == meta
    assert hashlib.sha256(_tensor_bytes(ckpt)).hexdigest() == before  # weights byte for byte
    # the rewritten checkpoint still loads in safetensors itself, with its loop state kept
    from safetensors import safe_open

    with safe_open(str(last), "np") as f:
        assert "state" in (f.metadata() or {}) and len(list(f.keys())) > 0
    from cnnctl.models.checkpoint import load_model

    load_model(ckpt)
    assert not list(tmp_path.glob(".*.tmp"))  # nothing half-written left behind


def test_read_refuses_what_is_not_a_model_file(tmp_path):
    bad = tmp_path / "x.onnx"
    bad.write_bytes(b"not a protobuf at all" * 10)
    with pytest.raises(CheckpointError):
        modelfile.read(bad)
    with pytest.raises(CheckpointError, match="no such file"):
        modelfile.read(tmp_path / "missing.safetensors")


@pytest.mark.quick
def test_probabilities_apply_the_temperature_once(quick_run):
    meta = modelfile.read(quick_run / "model.safetensors")
    logits = np.array([[2.0, 0.0, -1.0] + [0.0] * 7])
    assert np.allclose(probabilities(logits, meta), softmax(logits))
    hot = meta.replace(temperature=2.0)
    assert np.allclose(probabilities(logits, hot), softmax(logits / 2.0))
    assert np.allclose(probabilities(logits, hot, calibrated=False), softmax(logits))


def test_a_checkpoint_and_its_export_are_one_classifier(quick_run, quick_onnx):

    torch_clf = open_classifier(quick_run, "cpu", threads=1)
    onnx_clf = open_classifier(quick_onnx, "cpu")
    assert torch_clf.provider == "torch-cpu" and onnx_clf.provider == "CPUExecutionProvider"
    assert torch_clf.meta.class_names == onnx_clf.meta.class_names


def test_predict_honours_provider_and_threads_for_a_checkpoint(quick_run, tmp_path):
    import json

    from tests.conftest import assert_user_error, run_cli, write_mnist_pngs

    files = [str(f) for f, _ in write_mnist_pngs(tmp_path / "d", per_class=1)]
    torch_rows = run_cli("predict", quick_run, *files, "--json", "--provider", "cpu", "--threads", "1")
    onnx_rows = (
        run_cli("predict", quick_run / "model.onnx", *files, "--json") if (quick_run / "model.onnx").exists() else None
    )
    assert torch_rows.returncode == 0, torch_rows.stderr
    assert "provider torch-cpu" in torch_rows.stderr
    if onnx_rows is not None:
        a = [json.loads(line)["top"][0] for line in torch_rows.stdout.splitlines()]
        b = [json.loads(line)["top"][0] for line in onnx_rows.stdout.splitlines()]
        assert [r["label"] for r in a] == [r["label"] for r in b]
        assert np.allclose([r["prob"] for r in a], [r["prob"] for r in b], atol=1e-4)
    import torch

    if not torch.cuda.is_available():
        assert_user_error(run_cli("predict", quick_run, *files, "--provider", "cuda"), "--provider cuda", "PyTorch")
    assert_user_error(
        run_cli("predict", quick_run, *files, "--provider", "tpu"), "--provider must be auto, cpu or cuda"
    )
