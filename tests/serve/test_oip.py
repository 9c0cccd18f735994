"""The Open Inference Protocol on a real `cnnctl serve` process, driven by Triton's own client
(`tritonclient[http]` from PyPI): health, metadata, and infer results equal to `cnnctl predict`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cnnctl.runtime.inference import OnnxClassifier
from cnnctl.runtime.preprocess import load_image
from tests.conftest import run_cli, write_mnist_pngs
from tests.serve.test_server import Server

http = pytest.importorskip(
    "tritonclient.http", reason="Triton's HTTP client (pip install -e '.[dev]' brings tritonclient[http])"
)
pytest.importorskip("uvicorn", reason="cnnctl serve needs the serve extra (pip install -e '.[serve]')")

KEY = "triton-test-key-0123456789"


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> list[Path]:
    return [f for f, _ in write_mnist_pngs(tmp_path_factory.mktemp("digits"), per_class=1)]


@pytest.fixture(scope="module")
def pixel_onnx(quick_run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pixels") / "digits-uint8.onnx"
    proc = run_cli("export", quick_run, "--input", "uint8", "-o", out)
    assert proc.returncode == 0, proc.stderr
    return out


def printed(model: Path, files: list[Path]) -> dict[str, dict[str, float]]:
    """`cnnctl predict --json` for every class: {file name: {label: prob}}."""
    proc = run_cli("predict", model, *files, "--json", "-k", "10")
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    return {Path(r["path"]).name: {t["label"]: t["prob"] for t in r["top"]} for r in rows}


def tensor(clf: OnnxClassifier, files: list[Path]) -> np.ndarray:
    """What a client sends: the images decoded as the model's metadata says, in the graph's input form."""
    return clf.from_pixels(np.stack([load_image(f, clf.prep) for f in files]))


@pytest.mark.parametrize("kind", ["float32", "uint8"])
def test_tritonclient_infer_equals_cnnctl_predict(kind, quick_onnx, pixel_onnx, digits):
    model = quick_onnx if kind == "float32" else pixel_onnx
    clf = OnnxClassifier(model, "cpu")
    name = "quick" if kind == "float32" else "digits-uint8"  # the default name: the run directory's, or the file's
    expected = printed(model, digits)
    server = Server(model, "--max-wait-ms", "10", "--api-key-env", "CNNCTL_OIP_KEY", env={"CNNCTL_OIP_KEY": KEY})
    try:
        auth = {"Authorization": f"Bearer {KEY}"}
        client = http.InferenceServerClient(server.url.removeprefix("http://"), concurrency=4)
        assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(name)
        assert client.get_server_metadata(headers=dict(auth))["extensions"] == ["binary_tensor_data", "classification"]
        meta = client.get_model_metadata(name, headers=dict(auth))
        want = "FP32" if kind == "float32" else "UINT8"
        assert meta["inputs"] == [{"name": "input", "datatype": want, "shape": [-1, *clf.input_item_shape()]}]
        assert {o["name"] for o in meta["outputs"]} == {"logits", "probabilities"}
        x = tensor(clf, digits)
        for binary in (True, False):
            inp = http.InferInput("input", list(x.shape), want)
            inp.set_data_from_numpy(x, binary_data=binary)
            outputs = [
                http.InferRequestedOutput("probabilities", binary_data=binary),
                http.InferRequestedOutput("logits", binary_data=binary, class_count=3),
            ]
            result = client.infer(name, [inp], outputs=outputs, request_id="r1", headers=dict(auth))
            probs = result.as_numpy("probabilities")
            assert probs.shape == (len(digits), 10) and result.get_response()["id"] == "r1"
            for f, row in zip(digits, probs):
                for label, p in expected[f.name].items():
                    assert abs(float(row[int(label)]) - p) <= 1e-6, (f.name, label)
            top = result.as_numpy("logits")  # classification: "logit:index:label", best first
            for f, entries in zip(digits, top):
                entries = [e.decode() if isinstance(e, bytes) else e for e in entries]
                assert [e.split(":")[2] for e in entries] == list(expected[f.name])[:3]
        gz = client.infer(name, [inp], headers=dict(auth), request_compression_algorithm="gzip")
        np.testing.assert_allclose(
            gz.as_numpy("probabilities"), probs, atol=1e-7
        )  # a gzip request body, as tritonclient can send
        async_results = [
            client.async_infer(name, [inp], headers=dict(auth)) for _ in range(8)
        ]  # concurrent requests, batched together
        assert all(
            np.array_equal(r.get_result().as_numpy("logits").argmax(1), x_logits_argmax(clf, x)) for r in async_results
        )
        with pytest.raises(Exception, match="401"):
            client.infer(name, [inp])  # no key
        client.close()
    finally:
        assert server.stop() == 0


def x_logits_argmax(clf: OnnxClassifier, x: np.ndarray) -> np.ndarray:
    return clf.logits(x).argmax(1)


def test_the_codec_round_trips_binary_and_bytes_tensors():
    from cnnctl.serve import oip

    x = np.arange(24, dtype=np.float32).reshape(2, 3, 2, 2)
    head = json.dumps(
        {
            "id": "a",
            "inputs": [
                {
                    "name": "input",
                    "shape": [2, 3, 2, 2],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": x.nbytes},
                }
            ],
            "outputs": [
                {"name": "logits", "parameters": {"binary_data": True, "classification": 2}},
                {"name": "probabilities"},
            ],
        }
    ).encode()
    req = oip.decode_request(head + x.tobytes(), str(len(head)))
    assert req.id == "a" and np.array_equal(req.inputs["input"], x)
    assert [(o.name, o.binary, o.classification) for o in req.outputs] == [
        ("logits", True, 2),
        ("probabilities", False, 0),
    ]
    values = np.array([[0.1, 0.7, 0.2]], np.float32)
    labels = oip.classification(values, ["a", "b", "c"], 2)
    assert labels.tolist() == [["0.7:1:b", "0.2:2:c"]]
    body, headers = oip.encode_response("m", "a", [(req.outputs[0], labels), (req.outputs[1], values)])
    n = int(headers[oip.HEADER])
    response = json.loads(body[:n])
    assert response["outputs"][1]["data"] == pytest.approx([0.1, 0.7, 0.2])
    from tritonclient.http import InferResult

    result = InferResult.from_response_body(body, header_length=n)  # Triton's own parser reads it back
    assert [s.decode() for s in result.as_numpy("logits")[0]] == ["0.7:1:b", "0.2:2:c"]
    np.testing.assert_array_equal(result.as_numpy("probabilities"), values)
