"""`cnnctl serve`: an HTTP inference service over an exported model. Imports no torch.

Starlette (ASGI) routes on uvicorn. Each image is decoded and normalised exactly as `cnnctl
predict` does it (`preprocess.load_image` with the `Preprocess` stored in the model), in a thread
pool off the event loop; a single batcher task gathers the images of concurrent requests into one
onnxruntime call of up to `max_batch` images, waiting at most `max_wait_ms` for a batch to fill
(dynamic batching, as Triton and TorchServe do), so throughput grows with concurrency while a lone
request waits only that long.

Routes: `POST /predict` (raw image body, or multipart with one or more files; `?top_k=N`),
`GET /health`, `GET /metadata`, `GET /` (a small page to try the model in a browser). Every
error is a 4xx with a one-line JSON body `{"error": "..."}`; bad input never stops the service.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import numpy as np

from cnnctl import __version__
from cnnctl.errors import DataError
from cnnctl.inference import OnnxClassifier, prediction_json, softmax, top_k
from cnnctl.io import file_sha256
from cnnctl.preprocess import load_image, normalize

ENV = "CNNCTL_SERVE_CONFIG"  # how `--workers N` hands the settings to each worker process


@dataclass
class ServeConfig:
    model: str
    provider: str = "auto"
    max_batch: int = 32
    max_wait_ms: float = 5.0
    max_bytes: int = 10 << 20
    top_k: int = 5
    threads: int = 0


class HTTPError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


@dataclass
class Stats:
    requests: int = 0
    images: int = 0
    batches: int = 0
    largest_batch: int = 0
    errors: int = 0
    batch_sizes: dict[int, int] = field(default_factory=dict)


class Batcher:
    """Runs the model on batches gathered from concurrent requests (one onnxruntime call at a time).

    A batch takes every image already queued; it waits (at most `max_wait_ms`) for more only
    while other requests are still being decoded, so a lone request never waits for company that
    is not coming, and under load the images that arrive during one call form the next batch.
    """

    def __init__(self, clf: OnnxClassifier, max_batch: int, max_wait_ms: float, stats: Stats) -> None:
        self.clf, self.max_batch, self.max_wait = clf, max_batch, max_wait_ms / 1000.0
        self.stats = stats
        self.queue: asyncio.Queue[tuple[np.ndarray, asyncio.Future[np.ndarray]]] = asyncio.Queue()
        self.runner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cnnctl-infer")
        self.task: asyncio.Task[None] | None = None
        self.decoding = 0  # images of accepted requests not yet queued
        self.arrived = asyncio.Event()

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            try:
                await self.task
            except asyncio.CancelledError:
                pass
        self.runner.shutdown(wait=True)

    async def probabilities(self, x: np.ndarray) -> np.ndarray:
        """Class probabilities for one normalised image (C, H, W), computed in some batch."""
        future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        self.queue.put_nowait((x, future))
        self.arrived.set()
        return await future

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            items = [await self.queue.get()]
            deadline = loop.time() + self.max_wait
            while len(items) < self.max_batch:
                while not self.queue.empty() and len(items) < self.max_batch:
                    items.append(self.queue.get_nowait())
                timeout = deadline - loop.time()
                if len(items) >= self.max_batch or self.decoding <= 0 or timeout <= 0:
                    break
                self.arrived.clear()
                try:
                    await asyncio.wait_for(self.arrived.wait(), timeout)
                except asyncio.TimeoutError:
                    break
            batch = np.stack([x for x, _ in items])
            try:
                logits = await loop.run_in_executor(self.runner, self.clf.logits, batch)
                probs = softmax(logits.astype(np.float64))
            except Exception as exc:  # noqa: BLE001 - fail these requests, keep serving
                for _, future in items:
                    if not future.done():
                        future.set_exception(exc)
                continue
            self.stats.batches += 1
            self.stats.largest_batch = max(self.stats.largest_batch, len(items))
            self.stats.batch_sizes[len(items)] = self.stats.batch_sizes.get(len(items), 0) + 1
            for (_, future), row in zip(items, probs):
                if not future.done():
                    future.set_result(row)


def _log(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def create_app(cfg: ServeConfig, clf: OnnxClassifier | None = None) -> Any:
    """The ASGI application for one model (loaded here unless given)."""
    from contextlib import asynccontextmanager

    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, JSONResponse, Response
    from starlette.routing import Route

    clf = clf or OnnxClassifier(cfg.model, cfg.provider, cfg.threads)
    classes: list[str] = list(clf.meta.class_names)
    stats = Stats()
    batcher = Batcher(clf, cfg.max_batch, cfg.max_wait_ms, stats)
    decoder = ThreadPoolExecutor(max_workers=max(1, min(8, os.cpu_count() or 1)), thread_name_prefix="cnnctl-decode")
    metadata = {  # the model file's own Metadata, and how this server runs it
        **clf.meta.to_dict(),
        "file": os.path.basename(cfg.model),
        "sha256": file_sha256(cfg.model),
        "provider": clf.provider,
        "cnnctl_version": __version__,
        "trained_with": clf.meta.versions.get("cnnctl"),
        "max_batch": cfg.max_batch,
        "max_wait_ms": cfg.max_wait_ms,
        "max_bytes": cfg.max_bytes,
    }

    def decode(name: str, data: bytes) -> np.ndarray:
        if not data:
            raise HTTPError(400, f"{name}: empty upload; send the image file's bytes")
        try:
            return normalize(load_image(io.BytesIO(data), clf.prep, name=name)[None], clf.prep)[0]
        except DataError as exc:
            raise HTTPError(400, exc.message) from None

    async def read_body(request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > cfg.max_bytes:
            raise HTTPError(413, f"request body of {int(declared):,} bytes exceeds --max-bytes {cfg.max_bytes:,}")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > cfg.max_bytes:
                raise HTTPError(413, f"request body exceeds --max-bytes {cfg.max_bytes:,}")
            chunks.append(chunk)
        return b"".join(chunks)

    async def uploads(request: Request) -> list[tuple[str, bytes]]:
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        body = await read_body(request)
        if kind.startswith("image/") or kind == "application/octet-stream":
            return [("body", body)]
        if kind == "multipart/form-data":
            async def replay() -> dict[str, Any]:
                return {"type": "http.request", "body": body, "more_body": False}

            try:
                form = await Request(request.scope, replay).form(max_files=256, max_fields=256, max_part_size=cfg.max_bytes)
            except Exception as exc:  # noqa: BLE001 - starlette/multipart parse errors
                raise HTTPError(400, f"malformed multipart body ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
            files = [(v.filename or k, await v.read()) for k, v in form.multi_items() if hasattr(v, "filename")]
            await form.close()
            if not files:
                raise HTTPError(400, "the multipart body has no file parts; send images as files")
            return files
        raise HTTPError(415, f"content type {kind or '(none)'!r} is not accepted; send an image (image/*, application/octet-stream) or multipart/form-data")

    async def predict(request: Request) -> Response:
        try:
            k = int(request.query_params.get("top_k", cfg.top_k))
        except ValueError:
            raise HTTPError(400, "top_k must be a whole number") from None
        k = max(1, min(k, len(classes)))
        files = await uploads(request)
        loop = asyncio.get_running_loop()
        batcher.decoding += len(files)
        try:
            images = await asyncio.gather(*(loop.run_in_executor(decoder, decode, n, d) for n, d in files))
        finally:
            batcher.decoding -= len(files)
        probs = await asyncio.gather(*(batcher.probabilities(x) for x in images))
        rows = [prediction_json(name, top) for (name, _), top in zip(files, top_k(np.stack(probs), classes, k))]
        stats.images += len(rows)
        return JSONResponse({"predictions": rows, "model": metadata["model"]})

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok", "model": metadata["model"], "requests": stats.requests, "images": stats.images,
                             "batches": stats.batches, "largest_batch": stats.largest_batch, "errors": stats.errors})  # fmt: skip

    async def meta(request: Request) -> Response:
        return JSONResponse({**metadata, "batch_sizes": {str(k): v for k, v in sorted(stats.batch_sizes.items())}})

    page = resources.files("cnnctl").joinpath("static/index.html").read_text()

    async def index(request: Request) -> Response:
        return HTMLResponse(page)

    @asynccontextmanager
    async def lifespan(app: Any):  # type: ignore[no-untyped-def]
        batcher.start()
        _log(f"serving {cfg.model} ({metadata['model']}, {len(classes)} classes, {clf.provider}); "
             f"dynamic batches of up to {cfg.max_batch} within {cfg.max_wait_ms:g} ms")  # fmt: skip
        try:
            yield
        finally:
            await batcher.stop()
            decoder.shutdown(wait=False)

    from starlette.exceptions import HTTPException

    async def user_error(request: Request, exc: Exception) -> Response:
        if isinstance(exc, HTTPError):
            return JSONResponse({"error": exc.message}, status_code=exc.status)
        assert isinstance(exc, HTTPException)  # 404, 405 from routing
        return JSONResponse({"error": f"{exc.detail}: {request.method} {request.url.path}; routes: GET /, GET /health, GET /metadata, POST /predict"},
                            status_code=exc.status_code)  # fmt: skip

    async def bug(request: Request, exc: Exception) -> Response:  # logged by uvicorn with its traceback
        return JSONResponse({"error": f"internal error: {type(exc).__name__}: {exc}".splitlines()[0]}, status_code=500)

    app = Starlette(routes=[
        Route("/", index, methods=["GET"]),
        Route("/predict", predict, methods=["POST"]),
        Route("/health", health, methods=["GET"]),
        Route("/metadata", meta, methods=["GET"]),
    ], lifespan=lifespan, exception_handlers={HTTPError: user_error, HTTPException: user_error, Exception: bug})  # fmt: skip

    async def asgi(scope: dict[str, Any], receive: Any, send: Any) -> None:
        """One log line per request (errors become one line of JSON in the handlers above)."""
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        start = time.perf_counter()
        status = [0]

        async def send_logged(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        stats.requests += 1
        try:
            await app(scope, receive, send_logged)
        finally:
            if status[0] >= 400:
                stats.errors += 1
            client = scope.get("client") or ("-", 0)
            _log(f"{client[0]} {scope['method']} {scope['path']} {status[0]} {(time.perf_counter() - start) * 1000:.1f} ms")

    return asgi


def app_from_env() -> Any:
    """Factory for uvicorn's worker processes (`--workers N`): settings come from $CNNCTL_SERVE_CONFIG."""
    return create_app(ServeConfig(**json.loads(os.environ[ENV])))


def run(cfg: ServeConfig, host: str, port: int, workers: int) -> None:
    """Check the model (one line on failure), then serve until SIGINT/SIGTERM; exit 0 after draining."""
    import signal

    import uvicorn

    clf = OnnxClassifier(cfg.model, cfg.provider, cfg.threads)  # refuses a non-cnnctl file before binding
    common = {"host": host, "port": port, "access_log": False, "log_level": "warning", "timeout_graceful_shutdown": 30}
    # uvicorn drains requests in flight on SIGINT/SIGTERM, then re-sends the signal to the handler
    # that was installed before it: this one records it, so a requested stop exits 0, not by signal.
    stopped: list[int] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, frame: stopped.append(signum))
    if workers > 1:
        from dataclasses import asdict

        os.environ[ENV] = json.dumps(asdict(cfg))
        del clf
        _log(f"cnnctl serve: {workers} worker processes on http://{host}:{port}")
        uvicorn.run("cnnctl.serve:app_from_env", factory=True, workers=workers, **common)
    else:
        _log(f"cnnctl serve: http://{host}:{port}")
        uvicorn.run(create_app(cfg, clf), **common)
    _log(f"cnnctl serve: stopped ({signal.Signals(stopped[0]).name if stopped else 'shutdown'}), requests in flight were answered")
