"""`cnnctl export --format triton`: a model repository whose config parses with Triton's own
model-config schema and matches the graph it ships."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import assert_user_error, run_cli

pytest.importorskip(
    "tritonclient.grpc.model_config_pb2",
    reason="Triton's model-config schema ships in tritonclient (pip install -e '.[dev]')",
)


def test_a_triton_repository_parses_with_tritons_schema_and_matches_the_graph(photo_run, tmp_path):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    repo = tmp_path / "model_repository"
    proc = run_cli(
        "export", photo_run, "--format", "triton", "-o", repo, "--input", "uint8", "--max-batch", "16", "--json"
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    name = photo_run.name
    assert sorted(p.relative_to(repo).as_posix() for p in repo.rglob("*")) == [
        name,
        f"{name}/1",
        f"{name}/1/model.onnx",
        f"{name}/config.pbtxt",
        f"{name}/labels.txt",
    ]
    cfg = text_format.Parse((repo / name / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert cfg.name == name and cfg.backend == "onnxruntime" and cfg.max_batch_size == 16
    assert cfg.dynamic_batching.max_queue_delay_microseconds == 5000
    (inp,), (out,) = cfg.input, cfg.output
    assert inp.name == "input" and inp.data_type == model_config_pb2.TYPE_UINT8 and list(inp.dims) == [64, 64, 3]
    assert inp.format == model_config_pb2.ModelInput.FORMAT_NHWC
    assert out.name == "logits" and out.data_type == model_config_pb2.TYPE_FP32 and list(out.dims) == [2]
    assert (repo / name / out.label_filename).read_text().splitlines() == ["Cat", "Dog"]
    # The shipped graph is what the config says, and it is a verified cnnctl export.
    from cnnctl.runtime.inference import OnnxClassifier

    clf = OnnxClassifier(repo / name / "1" / "model.onnx", "cpu")
    spec = clf.session.get_inputs()[0]
    assert spec.type == "tensor(uint8)" and spec.shape[1:] == [64, 64, 3] and not isinstance(spec.shape[0], int)
    assert clf.logits(np.zeros((3, 64, 64, 3), np.uint8)).shape == (3, 2)
    assert report["triton"]["max_batch_size"] == 16 and all(c["top1_agreement"] == 1.0 for c in report["checks"])


def test_a_float_repository_and_a_replaced_model_leave_no_staging(photo_run, tmp_path):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    repo = tmp_path / "repo"
    for _ in range(2):  # the second export replaces the first in place
        proc = run_cli(
            "export", photo_run, "--format", "triton", "-o", repo, "--name", "pets", "--instance-kind", "cpu"
        )
        assert proc.returncode == 0, proc.stderr
        assert "tritonserver --model-repository" in proc.stdout
    assert [p.name for p in repo.iterdir()] == ["pets"]
    cfg = text_format.Parse((repo / "pets" / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert list(cfg.input[0].dims) == [3, 64, 64] and cfg.input[0].data_type == model_config_pb2.TYPE_FP32
    assert cfg.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU


def test_refusals_leave_the_repository_untouched(photo_run, tmp_path):
    repo = tmp_path / "repo"
    assert_user_error(run_cli("export", photo_run, "--format", "triton"), "-o REPO")
    assert_user_error(
        run_cli("export", photo_run, "--format", "triton", "-o", repo, "--dynamic", "none"), "--dynamic batch"
    )
    assert_user_error(run_cli("export", photo_run, "--format", "triton", "-o", repo, "--int8"), "--int8")
    assert_user_error(run_cli("export", photo_run, "--format", "triton", "-o", repo, "--name", "bad/name"), "--name")
    assert_user_error(run_cli("export", photo_run, "--format", "triton", "-o", tmp_path / "x.onnx"), "folder")
    assert_user_error(run_cli("export", photo_run, "--format", "tflite", "-o", repo), "--format")
    assert not repo.exists() or not list(repo.iterdir())


def test_the_config_text_is_checked_against_the_schema():
    from cnnctl.errors import ExportError
    from cnnctl.export.triton import config_text, parse_config

    good = config_text(
        "m",
        input_dtype="float32",
        input_dims=[3, 8, 8],
        input_layout="NCHW",
        classes=4,
        max_batch=8,
        max_queue_delay_us=100,
        instances=1,
        kind="auto",
    )
    assert parse_config(good).max_batch_size == 8
    with pytest.raises(ExportError, match="does not parse"):
        parse_config(good.replace("max_batch_size", "max_batch"))
