"""Everything one server holds: the model (once loaded and warmed), its batcher, admission
control, statistics and metrics. Handlers receive it as `request.app.state.serve`."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Awaitable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, TypeVar

import numpy as np

from cnnctl import __version__
from cnnctl.export.triton import model_name
from cnnctl.io import file_sha256
from cnnctl.runtime.inference import OnnxClassifier
from cnnctl.serve.batcher import Batcher, Stats
from cnnctl.serve.config import HTTPError, ServeConfig, api_key
from cnnctl.serve.prometheus import Metrics

T = TypeVar("T")


def log(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


class ServeState:
    """A server's model and bookkeeping. Not ready until the session is loaded and warmed up."""

    def __init__(self, cfg: ServeConfig, clf: OnnxClassifier | None = None) -> None:
        self.cfg = cfg
        self.name = cfg.name or model_name(cfg.model)
        self.key = api_key(cfg)
        self.clf = clf
        self.ready = False
        self.failed: str | None = None
        self.stats = Stats()
        self.metrics = Metrics(cfg.max_batch)
        self.pending = 0  # images admitted and not yet answered
        self.batcher: Batcher | None = None
        self.decoder = ThreadPoolExecutor(
            max_workers=max(1, min(8, os.cpu_count() or 1)), thread_name_prefix="cnnctl-decode"
        )
        self.metadata: dict[str, Any] = {}
        self.warmup_ms = 0.0

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        """Load (unless given) and warm the session off the event loop, then start batching."""
        loop = asyncio.get_running_loop()
        try:
            clf = await loop.run_in_executor(None, self._load)
        except Exception as exc:  # noqa: BLE001 - stay up, not ready, and say why
            self.failed = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
            log(f"cnnctl serve: the model could not be loaded: {self.failed}")
            return
        self.batcher = Batcher(clf, self.cfg.max_batch, self.cfg.max_wait_ms, self.stats, self.metrics)
        self.batcher.start()
        self.ready = True
        self.metrics.ready.set(1)
        what = f"{self.cfg.registered['uri']} ({self.cfg.model})" if self.cfg.registered else self.cfg.model
        log(
            f"serving {what} as {self.name!r} version {self.cfg.version} ({clf.meta.model}, {clf.meta.num_classes} classes, "
            f"input {clf.input_dtype} {clf.input_layout}, {clf.provider}); dynamic batches of up to {self.cfg.max_batch} "
            f"within {self.cfg.max_wait_ms:g} ms; "
            f"ready after a {self.warmup_ms:.0f} ms warm-up"
        )

    def _load(self) -> OnnxClassifier:
        cfg = self.cfg
        clf = self.clf or OnnxClassifier(cfg.model, cfg.provider, cfg.threads)
        start = time.perf_counter()
        for n in sorted({1, cfg.max_batch}):  # the first runs allocate and tune: not on a user's request
            clf.logits(np.zeros((n, *clf.input_shape), clf.np_dtype))
        self.warmup_ms = (time.perf_counter() - start) * 1000
        self.metadata = {  # the model file's own Metadata, and how this server runs it
            **clf.meta.to_dict(),
            "name": self.name,
            "file": os.path.basename(cfg.model),
            "sha256": file_sha256(cfg.model),
            "provider": clf.provider,
            "cnnctl_version": __version__,
            "trained_with": clf.meta.versions.get("cnnctl"),
            "input": {"dtype": clf.input_dtype, "layout": clf.input_layout, "shape": [-1, *clf.input_shape]},
            "max_batch": cfg.max_batch,
            "max_wait_ms": cfg.max_wait_ms,
            "max_bytes": cfg.max_bytes,
            "max_queue": cfg.max_queue,
            "timeout_s": cfg.timeout_s,
            "auth": "bearer" if self.key else "none",
            "calibrated": clf.meta.temperature is not None,  # probabilities are softmax(logits / temperature)
            "version": cfg.version,
            **({"registered": cfg.registered} if cfg.registered else {}),
        }
        self.clf = clf
        return clf

    async def stop(self) -> None:
        if self.batcher is not None:
            await self.batcher.stop()
        self.decoder.shutdown(wait=False)

    # -- per request -------------------------------------------------------------------------
    def model(self) -> tuple[OnnxClassifier, Batcher]:
        """The loaded model and its batcher, or 503 while it is loading."""
        if not self.ready or self.clf is None or self.batcher is None:
            why = (
                f"the model failed to load: {self.failed}"
                if self.failed
                else "the model is still loading; retry shortly (GET /v2/health/ready)"
            )
            raise HTTPError(503, why, {"Retry-After": "1"})
        return self.clf, self.batcher

    @contextmanager
    def admit(self, images: int) -> Iterator[None]:
        """Hold `images` places in the queue for one request; 503 + Retry-After when it is full."""
        if images > self.cfg.max_queue:
            raise HTTPError(
                413, f"{images} images in one request exceed --max-queue {self.cfg.max_queue}; send fewer per request"
            )
        if self.pending + images > self.cfg.max_queue:
            self.metrics.shed.inc()
            raise HTTPError(
                503,
                f"busy: {self.pending} images queued (--max-queue {self.cfg.max_queue}); retry after a second",
                {"Retry-After": "1"},
            )
        self.pending += images
        self.metrics.queue.set(self.pending)
        try:
            yield
        finally:
            self.pending -= images
            self.metrics.queue.set(self.pending)

    async def within_timeout(self, work: Awaitable[T]) -> T:
        try:
            return await asyncio.wait_for(work, self.cfg.timeout_s)
        except asyncio.TimeoutError:
            raise HTTPError(
                504,
                f"the request took longer than --timeout {self.cfg.timeout_s:g} s; send fewer images or raise --timeout",
            ) from None

    async def classify(self, inputs: list[np.ndarray]) -> np.ndarray:
        """Logits (N, classes) of images already in the graph's input form, through the batcher."""
        _, batcher = self.model()
        rows = await asyncio.gather(*(batcher.logits(x) for x in inputs))
        self.stats.images += len(rows)
        self.metrics.images.inc(len(rows))
        return np.stack(rows) if rows else np.zeros((0, 0), np.float32)
