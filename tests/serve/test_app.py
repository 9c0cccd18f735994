"""`cnnctl serve`'s application in-process (Starlette's TestClient): every 4xx/5xx path, auth,
readiness, load shedding, timeouts, metrics and request logs, on a real exported model."""

from __future__ import annotations

import json
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("starlette", reason="cnnctl serve needs the serve extra (pip install -e '.[serve]')")
pytest.importorskip("prometheus_client", reason="cnnctl serve needs the serve extra (pip install -e '.[serve]')")

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

from cnnctl.runtime.inference import OnnxClassifier
from cnnctl.serve import ServeConfig, create_app
from tests.conftest import assert_user_error, run_cli, write_mnist_pngs

KEY = "k" * 24


class Gate:
    """A real classifier whose inference waits for `open` after the first `free` calls (the
    warm-up), so a test decides when the model is ready and when batches finish."""

    def __init__(self, clf: OnnxClassifier, free: int = 0) -> None:
        self.clf, self.free, self.open = clf, free, threading.Event()

    def __getattr__(self, name: str):
        return getattr(self.clf, name)

    def logits(self, x: np.ndarray) -> np.ndarray:
        if self.free > 0:
            self.free -= 1
        else:
            self.open.wait(20)
        return self.clf.logits(x)


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> list[Path]:
    return [f for f, _ in write_mnist_pngs(tmp_path_factory.mktemp("digits"), per_class=1)]


def client(model: Path, clf=None, **settings) -> TestClient:
    settings.setdefault("name", "model")  # the default name (from the path) is tested with tritonclient
    return TestClient(create_app(ServeConfig(str(model), "cpu", **settings), clf))


def wait_ready(c: TestClient) -> None:
    deadline = time.monotonic() + 30
    while c.get("/v2/health/ready").status_code != 200:
        assert time.monotonic() < deadline, "never ready"
        time.sleep(0.02)


def png(path: Path) -> dict:
    return {"content": path.read_bytes(), "headers": {"content-type": "image/png"}}


def error_of(r) -> str:
    body = r.json()
    assert list(body) == ["error"] and "\n" not in body["error"], body
    return body["error"]


def test_readiness_is_false_until_the_model_is_warmed_up(quick_onnx, digits):
    gate = Gate(OnnxClassifier(quick_onnx, "cpu"))  # the warm-up itself waits
    with client(quick_onnx, gate) as c:
        assert c.get("/v2/health/live").json() == {"live": True}
        assert c.get("/v2/health/ready").status_code == 503 and c.get("/health").status_code == 503
        r = c.post("/predict", **png(digits[0]))
        assert r.status_code == 503 and r.headers["retry-after"] == "1" and "loading" in error_of(r)
        assert c.get("/v2/models/model/ready").status_code == 503
        assert "cnnctl_ready 0.0" in c.get("/metrics").text
        gate.open.set()
        wait_ready(c)
        assert c.post("/predict", **png(digits[0])).status_code == 200
        assert "cnnctl_ready 1.0" in c.get("/metrics").text


def test_bad_requests_get_one_json_line_each(quick_onnx, digits):
    with client(quick_onnx, max_bytes=50_000) as c:
        wait_ready(c)
        before = c.get("/health").json()["errors"]
        cases = [
            (c.post("/predict", content=b"", headers={"content-type": "image/png"}), 400, "empty upload"),
            (
                c.post("/predict", content=b"not an image", headers={"content-type": "image/png"}),
                400,
                "not a readable image",
            ),
            (c.post("/predict", content=b"{}", headers={"content-type": "application/json"}), 415, "content type"),
            (c.post("/predict", content=b"x" * 60_000, headers={"content-type": "image/png"}), 413, "--max-bytes"),
            (c.post("/predict?top_k=many", **png(digits[0])), 400, "top_k"),
            (c.get("/nowhere"), 404, "routes"),
            (c.get("/predict"), 405, "routes"),
            (c.post("/v2/models/model/infer", content=b"{nope"), 400, "not JSON"),
            (c.post("/v2/models/other/infer", json={}), 404, "serves 'model'"),
            (c.get("/v2/models/model/versions/2"), 404, "version 1"),
            (c.post("/v2/models/model/infer", json={"inputs": []}), 400, "inputs"),
            (
                c.post(
                    "/v2/models/model/infer",
                    json={"inputs": [{"name": "x", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": [0.0] * 784}]},
                ),
                400,
                "takes one input",
            ),
            (
                c.post(
                    "/v2/models/model/infer",
                    json={
                        "inputs": [{"name": "input", "shape": [1, 1, 28, 28], "datatype": "UINT8", "data": [0] * 784}]
                    },
                ),
                400,
                "--input uint8",
            ),
            (
                c.post(
                    "/v2/models/model/infer",
                    json={
                        "inputs": [{"name": "input", "shape": [1, 3, 28, 28], "datatype": "FP32", "data": [0.0] * 2352}]
                    },
                ),
                400,
                "shape",
            ),
            (
                c.post(
                    "/v2/models/model/infer",
                    json={
                        "inputs": [{"name": "input", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": [0.0] * 5}]
                    },
                ),
                400,
                "needs 784",
            ),
            (
                c.post(
                    "/v2/models/model/infer",
                    json={
                        "inputs": [{"name": "input", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": ["a"] * 784}]
                    },
                ),
                400,
                "numbers",
            ),
            (
                c.post(
                    "/v2/models/model/infer",
                    json={"inputs": [{"name": "input", "shape": [1, 1, 28, 28], "datatype": "STRING", "data": []}]},
                ),
                400,
                "datatype",
            ),
            (
                c.post(
                    "/v2/models/model/infer",
                    json={
                        "inputs": [{"name": "input", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": [0.0] * 784}],
                        "outputs": [{"name": "embeddings"}],
                    },
                ),
                400,
                "outputs: logits, probabilities",
            ),
            (
                c.post(
                    "/v2/models/model/infer",
                    content=b'{"inputs": []}',
                    headers={"inference-header-content-length": "999"},
                ),
                400,
                "does not fit",
            ),
        ]
        for r, status, needle in cases:
            assert r.status_code == status, (needle, r.status_code, r.text)
            assert needle in error_of(r), (needle, r.text)
        binary = np.zeros((1, 1, 28, 28), np.float32).tobytes()
        head = json.dumps(
            {
                "inputs": [
                    {
                        "name": "input",
                        "shape": [1, 1, 28, 28],
                        "datatype": "FP32",
                        "parameters": {"binary_data_size": len(binary) - 4},
                    }
                ]
            }
        ).encode()
        r = c.post(
            "/v2/models/model/infer", content=head + binary, headers={"inference-header-content-length": str(len(head))}
        )
        assert r.status_code == 400 and "needs 3136" in error_of(r)
        health = c.get("/health").json()
        assert health["status"] == "ok" and health["errors"] - before == len(cases) + 1  # and the service is still up
        assert c.post("/predict", **png(digits[0])).status_code == 200


def test_a_bearer_token_guards_everything_but_the_probes(quick_onnx, digits, monkeypatch):
    monkeypatch.setenv("CNNCTL_TEST_KEY", KEY)
    with client(quick_onnx, api_key_env="CNNCTL_TEST_KEY") as c:
        wait_ready(c)
        for path in ("/v2/health/live", "/v2/health/ready", "/health", "/"):
            assert c.get(path).status_code == 200, path
        for headers in (
            {},
            {"authorization": "Bearer " + "x" * 24},
            {"authorization": "Basic " + KEY},
            {"authorization": "Bearer " + KEY[:-1]},
        ):
            for method, path in (
                ("post", "/predict"),
                ("get", "/metrics"),
                ("get", "/metadata"),
                ("get", "/v2/models/model"),
            ):
                if method == "post":
                    r = c.post(path, content=digits[0].read_bytes(), headers={**headers, "content-type": "image/png"})
                else:
                    r = c.get(path, headers=headers)
                assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer"), (path, headers)
                assert "Authorization: Bearer" in error_of(r)
        good = {"authorization": "Bearer " + KEY}
        r = c.post("/predict", content=digits[0].read_bytes(), headers={**good, "content-type": "image/png"})
        assert r.status_code == 200
        assert c.get("/metadata", headers=good).json()["auth"] == "bearer"
        assert 'cnnctl_requests_total{code="401",route="/predict"} 4.0' in c.get("/metrics", headers=good).text


def test_the_cli_refuses_exposure_without_a_key(quick_onnx):
    assert_user_error(run_cli("serve", quick_onnx, "--host", "0.0.0.0"), "--api-key-env", "--no-auth")
    assert_user_error(
        run_cli("serve", quick_onnx, "--api-key-env", "CNNCTL_NOT_SET_ANYWHERE"), "CNNCTL_NOT_SET_ANYWHERE"
    )
    assert_user_error(run_cli("serve", quick_onnx, "--api-key-env", "SHORT", env={"SHORT": "abc"}), "16 characters")
    assert_user_error(run_cli("serve", quick_onnx, "--api-key-env", "K", "--no-auth", env={"K": KEY}), "contradict")
    assert_user_error(run_cli("serve", quick_onnx, "--log-format", "xml"), "--log-format")


def test_a_full_queue_sheds_load_with_503_and_retry_after(quick_onnx, digits):
    gate = Gate(
        OnnxClassifier(quick_onnx, "cpu"), free=1
    )  # the warm-up (one call at max_batch 1) passes; then batches wait
    with client(quick_onnx, gate, max_queue=3, max_batch=1) as c:
        wait_ready(c)
        try:
            shed(c, gate, digits)
        finally:
            gate.open.set()  # never leave the request threads waiting, whatever failed


def shed(c: TestClient, gate: Gate, digits: list[Path]) -> None:
    """Three requests fill a queue of 3 while inference waits; the fourth is shed."""
    results: list[int] = []
    threads = [
        threading.Thread(target=lambda: results.append(c.post("/predict", **png(digits[0])).status_code))
        for _ in range(3)
    ]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 10
    while c.get("/health").json()["queued"] < 3:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    r = c.post("/predict", **png(digits[0]))
    assert r.status_code == 503 and r.headers["retry-after"] == "1" and "--max-queue 3" in error_of(r)
    body = {"inputs": [{"name": "input", "shape": [4, 1, 28, 28], "datatype": "FP32", "data": [0.0] * 4 * 784}]}
    assert c.post("/v2/models/model/infer", json=body).status_code == 413  # more than the queue can ever hold
    gate.open.set()
    for t in threads:
        t.join(20)
    assert results == [200, 200, 200]
    text = c.get("/metrics").text
    assert "cnnctl_shed_requests_total 1.0" in text and "cnnctl_queue_depth 0.0" in text
    assert c.get("/health").json()["queued"] == 0


def test_a_request_that_takes_too_long_gets_504(quick_onnx, digits):
    gate = Gate(OnnxClassifier(quick_onnx, "cpu"), free=2)
    with client(quick_onnx, gate, timeout_s=0.3) as c:
        wait_ready(c)
        start = time.monotonic()
        r = c.post("/predict", **png(digits[0]))
        assert r.status_code == 504 and "--timeout 0.3" in error_of(r) and time.monotonic() - start < 5
        gate.open.set()
        assert c.post("/predict", **png(digits[0])).status_code == 200  # the batcher carries on


def test_metrics_count_requests_errors_batches_and_latency(quick_onnx, digits):
    from prometheus_client.parser import text_string_to_metric_families

    with client(quick_onnx, max_wait_ms=50) as c:
        wait_ready(c)
        files = [("file", (f.name, f.read_bytes(), "image/png")) for f in digits[:6]]
        assert c.post("/predict", files=files).status_code == 200
        assert c.post("/predict", **png(digits[0])).status_code == 200
        assert c.post("/predict", content=b"junk", headers={"content-type": "image/png"}).status_code == 400
        families = {f.name: f for f in text_string_to_metric_families(c.get("/metrics").text)}
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples}
    assert samples[("cnnctl_requests_total", (("code", "200"), ("route", "/predict")))] == 2
    assert samples[("cnnctl_requests_total", (("code", "400"), ("route", "/predict")))] == 1
    assert samples[("cnnctl_images_total", ())] == 7
    batches = samples[("cnnctl_batch_size_count", ())]
    assert (
        samples[("cnnctl_batch_size_sum", ())] == 7 and 2 <= batches < 7
    )  # the warm-up is not counted; 6 files share batches
    assert samples[("cnnctl_inference_duration_seconds_count", ())] == batches
    assert samples[("cnnctl_request_duration_seconds_count", (("route", "/predict"),))] == 3
    assert samples[("cnnctl_queue_depth", ())] == 0


def test_one_json_log_line_per_request(quick_onnx, digits, capfd):
    with client(quick_onnx, log_format="json") as c:
        wait_ready(c)
        c.post(
            "/predict", headers={"x-request-id": "req-7", "content-type": "image/png"}, content=digits[0].read_bytes()
        )
        c.get("/nowhere")
    lines = [json.loads(line) for line in capfd.readouterr().err.splitlines() if line.startswith("{")]
    lines = [x for x in lines if x["path"] != "/v2/health/ready"][-2:]
    assert [(x["method"], x["path"], x["status"]) for x in lines] == [
        ("POST", "/predict", 200),
        ("GET", "/nowhere", 404),
    ]
    assert (
        lines[0]["request_id"] == "req-7"
        and lines[0]["route"] == "/predict"
        and lines[0]["ms"] > 0
        and lines[1]["route"] == "other"
    )
