"""Dynamic batching: one onnxruntime call at a time over the images of concurrent requests."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from cnnctl.runtime.inference import OnnxClassifier
from cnnctl.serve.prometheus import Metrics


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
    Items are single images already in the graph's input form (`OnnxClassifier.from_pixels`).
    """

    def __init__(self, clf: OnnxClassifier, max_batch: int, max_wait_ms: float, stats: Stats, metrics: Metrics) -> None:
        self.clf, self.max_batch, self.max_wait = clf, max_batch, max_wait_ms / 1000.0
        self.stats, self.metrics = stats, metrics
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

    async def logits(self, x: np.ndarray) -> np.ndarray:
        """The logits of one image (the graph's input without the batch axis), computed in some batch."""
        future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        self.queue.put_nowait((x, future))
        self.arrived.set()
        return await future

    def _timed(self, batch: np.ndarray) -> np.ndarray:
        start = time.perf_counter()
        out = self.clf.logits(batch)
        self.metrics.inference.observe(time.perf_counter() - start)
        return out

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
            items = [(x, f) for x, f in items if not f.done()]  # requests that timed out meanwhile
            if not items:
                continue
            batch = np.stack([x for x, _ in items])
            try:
                logits = await loop.run_in_executor(self.runner, self._timed, batch)
            except Exception as exc:  # noqa: BLE001 - fail these requests, keep serving
                for _, future in items:
                    if not future.done():
                        future.set_exception(exc)
                continue
            n = len(items)
            self.stats.batches += 1
            self.stats.largest_batch = max(self.stats.largest_batch, n)
            self.stats.batch_sizes[n] = self.stats.batch_sizes.get(n, 0) + 1
            self.metrics.batch.observe(n)
            for (_, future), row in zip(items, logits):
                if not future.done():
                    future.set_result(row)
