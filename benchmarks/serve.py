"""Load test of `cnnctl serve` on 127.0.0.1 against a sequential onnxruntime loop in one process.

Baseline: one process reads each image, preprocesses it (`load_image` + `normalize`, what
predict does) and calls the onnxruntime session with a batch of 1, one image after another.
Server: `cnnctl serve MODEL` in its own process. The load comes from `wrk` (Debian's package: a
C client that costs the shared CPU little) keeping C connections busy (C = 1, 8, 32) for
`--seconds` each, POSTing one real JPEG per request; without wrk, an asyncio httpx client does
the same with the distinct JPEGs for at most `--requests` per level (httpx costs ~1 ms of CPU per
request itself, so its numbers understate the server). Only the loopback address is used.

    python -m benchmarks.serve [--model X.onnx] [--requests 600] [--seconds 20]

Without --model it trains and exports `tiny` on the CIFAR-10 fixture (tests/fixtures) first.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks._common import ROOT

IMAGES = sorted((ROOT / "tests" / "fixtures" / "cifar10-mini").rglob("*.jpg"))


def _model(work: Path) -> Path:
    cli = [sys.executable, "-m", "cnnctl"]
    subprocess.run([*cli, "train", "tiny", "--data", str(IMAGES[0].parents[2]), "--epochs", "2", "--out", str(work / "run")],
                   cwd=ROOT, check=True, capture_output=True)  # fmt: skip
    subprocess.run([*cli, "export", str(work / "run")], cwd=ROOT, check=True, capture_output=True)
    return work / "run" / "model.onnx"


def sequential(model: Path, n: int, seconds: float) -> tuple[float, list[float]]:
    from cnnctl.inference import OnnxClassifier
    from cnnctl.preprocess import load_image, normalize

    clf = OnnxClassifier(model, "cpu")
    lat: list[float] = []
    start = time.perf_counter()
    for i in range(n):
        t = time.perf_counter()
        x = normalize(load_image(IMAGES[i % len(IMAGES)], clf.prep)[None], clf.prep)
        clf.logits(x)
        lat.append(time.perf_counter() - t)
        if time.perf_counter() - start > seconds:
            break
    return len(lat) / (time.perf_counter() - start), lat


async def load(url: str, concurrency: int, n: int, seconds: float) -> tuple[float, list[float]]:
    import httpx

    bodies = [p.read_bytes() for p in IMAGES]
    lat: list[float] = []
    sent = 0
    stop_at = time.perf_counter() + seconds

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal sent
        while sent < n and time.perf_counter() < stop_at:
            body = bodies[sent % len(bodies)]
            sent += 1
            t = time.perf_counter()
            r = await client.post("/predict", content=body, headers={"content-type": "image/jpeg"})
            r.raise_for_status()
            lat.append(time.perf_counter() - t)

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:
        await client.post("/predict", content=bodies[0], headers={"content-type": "image/jpeg"})  # warm-up
        start = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        return len(lat) / (time.perf_counter() - start), lat


def load_wrk(url: str, concurrency: int, seconds: float) -> tuple[float, float, float]:
    """(requests/s, p50 ms, p99 ms) from wrk posting one JPEG for `seconds`."""
    import os
    import re
    import shutil

    script = Path(tempfile.mkdtemp()) / "post.lua"
    script.write_text('wrk.method = "POST"\nwrk.headers["Content-Type"] = "image/jpeg"\n'
                      'local f = io.open(os.getenv("IMG"), "rb"); wrk.body = f:read("*a"); f:close()\n')  # fmt: skip
    out = subprocess.run([shutil.which("wrk") or "wrk", "-t1", f"-c{concurrency}", f"-d{int(seconds)}s", "--latency", "-s", str(script),
                          url + "/predict"], env={**os.environ, "IMG": str(IMAGES[0])}, capture_output=True, text=True, check=True).stdout  # fmt: skip

    def ms(label: str) -> float:
        value, unit = re.search(rf"{label}\s+([\d.]+)(us|ms|s)", out).groups()
        return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]

    return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)), ms("50%"), ms("99%")


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1] * 1000 if len(values) > 1 else values[0] * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model")
    parser.add_argument("--requests", type=int, default=600)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="cnnctl-serve-bench-"))
    model = Path(args.model) if args.model else _model(work)
    rate, lat = sequential(model, args.requests, args.seconds)
    print(f"model {model.name} ({model.stat().st_size / 1e6:.1f} MB); {len(IMAGES)} distinct JPEGs, one per request")
    print(f"sequential onnxruntime loop, 1 process: {rate:7.1f} img/s  p50 {pct(lat, 50):6.2f} ms  p99 {pct(lat, 99):6.2f} ms")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "cnnctl", "serve", str(model), "--port", str(port), "--max-batch",
                               str(args.max_batch), "--max-wait-ms", str(args.max_wait_ms)],
                              cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        import httpx

        for _ in range(300):
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        import shutil

        client = "wrk" if shutil.which("wrk") else "httpx"
        for c in (1, 8, 32):
            if client == "wrk":
                rps, p50, p99 = load_wrk(url, c, args.seconds)
            else:
                rps, lat = asyncio.run(load(url, c, args.requests, args.seconds))
                p50, p99 = pct(lat, 50), pct(lat, 99)
            print(f"cnnctl serve, concurrency {c:2d} ({client}): {rps:7.1f} req/s  p50 {p50:6.2f} ms  p99 {p99:6.2f} ms"
                  f"  ({rps / rate:.2f}x the sequential loop)")  # fmt: skip
        sizes = httpx.get(url + "/metadata").json()["batch_sizes"]
        print(f"batch sizes formed (size: count): {sizes}")
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
