"""`cnnctl serve`: a real server process on a free loopback port, a real HTTP client."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, assert_user_error, run_cli, write_mnist_pngs

httpx = pytest.importorskip("httpx", reason="the serve extra's test client (pip install -e '.[dev]')")
pytest.importorskip("uvicorn", reason="cnnctl serve needs the serve extra (pip install -e '.[serve]')")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`python -m cnnctl serve MODEL ARGS` on 127.0.0.1:<free port>, stopped with SIGTERM."""

    def __init__(self, model: Path, *args: str, env: dict[str, str] | None = None) -> None:
        import os

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cnnctl", "serve", str(model), "--port", str(self.port), *args],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **(env or {})},
        )
        self.stderr: list[str] = []
        threading.Thread(target=lambda: self.stderr.extend(self.proc.stderr), daemon=True).start()
        deadline = time.monotonic() + 60
        while True:
            assert self.proc.poll() is None, "".join(self.stderr)
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.1)

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> list[Path]:
    files = write_mnist_pngs(tmp_path_factory.mktemp("digits"), per_class=2)
    return [f for f, _ in files]


@pytest.fixture(scope="module")
def server(quick_onnx):
    s = Server(quick_onnx, "--max-wait-ms", "20", "--max-bytes", str(1 << 20))
    yield s
    assert s.stop() == 0


def predict_cli(model: Path, files: list[Path]) -> list[dict]:
    proc = run_cli("predict", model, *files, "--json", "-k", "3")
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines()]


def same_rows(served: list[dict], printed: list[dict]) -> None:
    assert len(served) == len(printed)
    for a, b in zip(served, printed):
        assert Path(b["path"]).name == a["path"]
        assert [t["label"] for t in a["top"]] == [t["label"] for t in b["top"]]
        assert all(abs(x["prob"] - y["prob"]) < 1e-5 for x, y in zip(a["top"], b["top"]))


def test_predict_raw_and_multipart_give_the_rows_predict_prints(server, quick_onnx, digits):
    printed = predict_cli(quick_onnx, digits[:6])
    raw = httpx.post(
        server.url + "/predict?top_k=3", content=digits[0].read_bytes(), headers={"content-type": "image/png"}
    )
    assert raw.status_code == 200, raw.text
    assert raw.json()["predictions"][0]["top"][0]["label"] == printed[0]["top"][0]["label"]
    files = [("file", (f.name, f.read_bytes(), "image/png")) for f in digits[:6]]
    multi = httpx.post(server.url + "/predict?top_k=3", files=files)
    assert multi.status_code == 200, multi.text
    same_rows(multi.json()["predictions"], printed)


def test_health_and_metadata(server, quick_onnx):
    import hashlib

    health = httpx.get(server.url + "/health").json()
    assert health["status"] == "ok" and health["model"] == "model-a"
    meta = httpx.get(server.url + "/metadata").json()
    assert meta["class_names"] == [str(i) for i in range(10)]
    assert meta["preprocess"]["size"] == [28, 28] and meta["preprocess"]["channels"] == 1
    assert meta["sha256"] == hashlib.sha256(quick_onnx.read_bytes()).hexdigest()
    from cnnctl.runtime.inference import OnnxClassifier
    from cnnctl.runtime.metadata import Metadata

    assert (
        Metadata.from_dict(meta, "/metadata") == OnnxClassifier(quick_onnx, "cpu").meta
    )  # the file's own record, as JSON
    from cnnctl import __version__

    assert meta["cnnctl_version"] == __version__
    page = httpx.get(server.url + "/")
    assert page.status_code == 200 and '<input id="file" type="file"' in page.text


def bomb_png() -> bytes:
    # A valid PNG header that claims 20000 x 20000 pixels (400 M): refused before decoding.
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", 20000, 20000, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 100)) + chunk(b"IEND", b"")
    )


def test_bad_input_gets_a_4xx_line_and_the_service_stays_up(server, digits):
    good = digits[0].read_bytes()
    cases = [
        ({"content": b"just some text", "headers": {"content-type": "image/jpeg"}}, 400, "not a readable image"),
        ({"content": good[: len(good) // 2], "headers": {"content-type": "image/png"}}, 400, "not a readable image"),
        ({"content": b"", "headers": {"content-type": "image/png"}}, 400, "empty"),
        ({"content": bomb_png(), "headers": {"content-type": "image/png"}}, 400, "pixel"),
        ({"content": good, "headers": {"content-type": "text/plain"}}, 415, "not accepted"),
        ({"content": b"x" * (2 << 20), "headers": {"content-type": "image/png"}}, 413, "max-bytes"),
        ({"files": [("note", ("a.txt", b"hello", "text/plain"))]}, 400, "a.txt: not a readable image"),
        ({"data": {"field": "value"}}, 415, "not accepted"),  # urlencoded form: not an upload
    ]
    for kwargs, status, needle in cases:
        r = httpx.post(server.url + "/predict", **kwargs)
        assert r.status_code == status, (needle, r.status_code, r.text)
        body = r.json()
        assert list(body) == ["error"] and needle in body["error"] and "\n" not in body["error"]
    assert (
        httpx.post(server.url + "/predict?top_k=x", content=good, headers={"content-type": "image/png"}).status_code
        == 400
    )
    assert httpx.get(server.url + "/nothing").status_code == 404
    ok = httpx.post(server.url + "/predict", content=good, headers={"content-type": "image/png"})
    assert ok.status_code == 200 and httpx.get(server.url + "/health").json()["status"] == "ok"
    log = "".join(server.stderr)
    assert " POST /predict 415 " in log and " POST /predict 200 " in log  # one line per request


def test_concurrent_requests_are_batched_together(server, digits):
    import asyncio

    async def burst() -> list[int]:
        async with httpx.AsyncClient(base_url=server.url) as client:
            posts = [
                client.post("/predict", content=f.read_bytes(), headers={"content-type": "image/png"})
                for f in digits[:16]
            ]
            return [r.status_code for r in await asyncio.gather(*posts)]

    before = httpx.get(server.url + "/health").json()
    assert asyncio.run(burst()) == [200] * 16
    after = httpx.get(server.url + "/health").json()
    assert after["images"] - before["images"] == 16
    assert (
        after["batches"] - before["batches"] < 16 and after["largest_batch"] > 1
    )  # several requests per onnxruntime call


def test_sigterm_finishes_the_request_in_flight(quick_onnx, digits):
    s = Server(quick_onnx, "--max-wait-ms", "1500")  # a lone request waits 1.5 s for company
    result: dict = {}

    def post() -> None:
        result["r"] = httpx.post(
            s.url + "/predict", content=digits[1].read_bytes(), headers={"content-type": "image/png"}, timeout=30
        )

    t = threading.Thread(target=post)
    t.start()
    time.sleep(0.5)
    assert s.stop() == 0
    t.join()
    assert result["r"].status_code == 200 and result["r"].json()["predictions"][0]["top"]


def test_a_file_that_is_not_a_cnnctl_export_is_refused_at_start(tmp_path, quick_onnx):
    import torch

    torch.onnx.export(torch.nn.Linear(4, 2), (torch.zeros(1, 4),), str(tmp_path / "plain.onnx"), dynamo=False)
    proc = run_cli("serve", tmp_path / "plain.onnx", "--port", str(free_port()), subprocess_=True, timeout=60)
    assert_user_error(proc, "plain.onnx")
    assert_user_error(run_cli("serve", quick_onnx.parent, "--port", "1"), "export")


def test_the_serving_process_never_loads_torch(server, digits):
    ok = httpx.post(server.url + "/predict", content=digits[2].read_bytes(), headers={"content-type": "image/png"})
    assert ok.status_code == 200
    maps = Path(f"/proc/{server.proc.pid}/maps").read_text()
    assert "onnxruntime" in maps and "libtorch" not in maps


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


BROWSER_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.mark.skipif(_chromium() is None, reason="no chromium here (apt-get install chromium; .ci/run installs it)")
def test_the_page_classifies_a_picked_image_in_a_real_browser(server, digits, tmp_path):
    playwright = pytest.importorskip("playwright.sync_api", reason="pip install playwright (the dev extra has it)")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=_chromium(), args=BROWSER_FLAGS)
        page = browser.new_page()
        page.goto(server.url + "/")
        page.wait_for_function("document.getElementById('meta').textContent.includes('model-a')")
        page.set_input_files("#file", str(digits[4]))
        page.wait_for_selector("#result[data-done='1']", timeout=20000)
        rows = page.locator("#result tr").all_inner_texts()
        page.screenshot(path=str(tmp_path / "page.png"))
        browser.close()
    served = httpx.post(
        server.url + "/predict?top_k=5", content=digits[4].read_bytes(), headers={"content-type": "image/png"}
    ).json()
    top = served["predictions"][0]["top"]
    assert len(rows) == 5 and rows[0].split()[0] == top[0]["label"]
    assert (tmp_path / "page.png").stat().st_size > 1000


@pytest.mark.skipif(_chromium() is None, reason="no chromium here (apt-get install chromium; .ci/run installs it)")
def test_the_page_asks_for_the_key_of_a_protected_server(quick_onnx, digits):
    playwright = pytest.importorskip("playwright.sync_api", reason="pip install playwright (the dev extra has it)")
    key = "page-test-key-0123456789"
    s = Server(quick_onnx, "--api-key-env", "CNNCTL_PAGE_KEY", env={"CNNCTL_PAGE_KEY": key})
    try:
        with playwright.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=_chromium(), args=BROWSER_FLAGS)
            page = browser.new_page()
            page.goto(s.url + "/")
            page.wait_for_selector("#keyrow:not([hidden])")
            page.fill("#key", "wrong-key-wrong-key")
            page.click("#usekey")
            page.wait_for_function("document.getElementById('meta').textContent.includes('API key')")
            page.fill("#key", key)
            page.click("#usekey")
            page.wait_for_function("document.getElementById('meta').textContent.includes('model-a')")
            page.set_input_files("#file", str(digits[2]))
            page.wait_for_selector("#result[data-done='1']", timeout=20000)
            rows = page.locator("#result tr").all_inner_texts()
            browser.close()
        assert len(rows) == 5
    finally:
        assert s.stop() == 0
    log = "".join(s.stderr)
    assert "GET /metadata 401" in log and "POST /predict 200" in log


def test_several_worker_processes_serve_and_stop_cleanly(quick_onnx, digits):
    s = Server(quick_onnx, "--workers", "2")
    codes = []
    for f in digits[:6]:
        # /health answered by one worker: the other may still be warming up, and says so with a
        # 503 + Retry-After, which a client retries (as here); every image is answered in the end.
        deadline = time.monotonic() + 30
        while (
            r := httpx.post(s.url + "/predict", content=f.read_bytes(), headers={"content-type": "image/png"})
        ).status_code == 503:
            assert "retry-after" in r.headers and time.monotonic() < deadline
            time.sleep(0.2)
        codes.append(r.status_code)
    assert codes == [200] * 6
    deadline = time.monotonic() + 30  # both workers warmed up: readiness is the minimum over them
    while "cnnctl_ready 1.0" not in (text := httpx.get(s.url + "/metrics").text):
        assert time.monotonic() < deadline, text
        time.sleep(0.2)
    for _ in range(3):  # whichever worker answers the scrape, it reports the sum over both
        assert 'cnnctl_requests_total{code="200",route="/predict"} 6.0' in httpx.get(s.url + "/metrics").text
        assert "cnnctl_images_total 6.0" in httpx.get(s.url + "/metrics").text
    assert s.stop() == 0
    assert "".join(s.stderr).count("serving ") == 2  # one model load per worker
