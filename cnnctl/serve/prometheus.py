"""Prometheus metrics of one server (the `prometheus-client` library), served at GET /metrics.

Each app has its own registry. Under `--workers N` every worker process writes its values to
files in $PROMETHEUS_MULTIPROC_DIR (set by `serve.run`) and a scrape of any worker aggregates all
of them (the library's multiprocess mode): counters and histograms summed, the queue gauge summed
over live processes.
"""

from __future__ import annotations

import os

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    def __init__(self, max_batch: int) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

        disable_created_metrics()  # no *_created series: half the scrape, nothing a dashboard uses
        r = self.registry = CollectorRegistry()
        self.requests = Counter(
            "cnnctl_requests", "HTTP requests answered, by route and status code", ["route", "code"], registry=r
        )
        self.latency = Histogram(
            "cnnctl_request_duration_seconds",
            "Time from request to response, by route",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.images = Counter("cnnctl_images", "Images classified", registry=r)
        sizes, b = [], 1
        while b < max_batch:
            sizes.append(float(b))
            b *= 2
        self.batch = Histogram(
            "cnnctl_batch_size",
            "Images per onnxruntime call (dynamic batching)",
            buckets=(*sizes, float(max_batch)),
            registry=r,
        )
        self.inference = Histogram(
            "cnnctl_inference_duration_seconds", "Time of each onnxruntime call", buckets=LATENCY_BUCKETS, registry=r
        )
        self.queue = Gauge(
            "cnnctl_queue_depth",
            "Images admitted and not yet answered (--max-queue bounds it)",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.shed = Counter("cnnctl_shed_requests", "Requests refused with 503 because the queue was full", registry=r)
        self.ready = Gauge(
            "cnnctl_ready", "1 once the model is loaded and warmed up", registry=r, multiprocess_mode="livemin"
        )

    def render(self) -> tuple[bytes, str]:
        """(body, content type) of a scrape."""
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
