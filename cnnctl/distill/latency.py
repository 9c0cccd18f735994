"""Which student fits a latency budget: candidates exported to ONNX and timed in onnxruntime here.

A candidate is a model name at an input size (`tv:mobilenet_v2@96`, `resnet20`, `'tv:mobilenet_v3*@128'`).
Each is built with random weights (speed does not depend on their values), exported with the
exporter `cnnctl export` uses, and run in an onnxruntime session with this machine's threads:
batch-1 latency (p50 and p99 of timed runs after a warm-up) and batch-32 throughput. The pick is
the largest candidate (parameters, then input pixels) whose batch-1 p50 is inside the budget.
"""

from __future__ import annotations

import math
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cnnctl.errors import UsageError

# Tried when --latency-budget-ms is given without --student: ImageNet-pretrainable mobile nets at
# sizes below a 224 px teacher's, and cnnctl's own small from-scratch nets.
SHORTLIST = (
    "tv:mobilenet_v3_small@96",
    "tv:mobilenet_v3_small@128",
    "tv:mobilenet_v2@96",
    "tv:mobilenet_v2@112",
    "tv:mobilenet_v2@128",
    "tv:mobilenet_v3_large@128",
    "resnet20@64",
    "fastnet@64",
)


@dataclass(frozen=True)
class Candidate:
    model: str
    size: tuple[int, int] | None  # None: the size the data (or --image-size) gives

    @property
    def label(self) -> str:
        if self.size is None:
            return self.model
        h, w = self.size
        return f"{self.model}@{h}" if h == w else f"{self.model}@{h}x{w}"


def parse_candidates(text: str) -> list[Candidate]:
    """`--student` as candidates: comma-separated MODEL[@SIZE], MODEL a name or a wildcard pattern."""
    from cnnctl.models.registry import get_entry, list_models
    from cnnctl.specs import parse_image_size

    out: list[Candidate] = []
    for item in (s.strip() for s in text.split(",")):
        if not item:
            continue
        name, _, size_text = item.partition("@")
        size = parse_image_size(size_text) if size_text else None
        if any(ch in name for ch in "*?["):
            names = list_models(name)
            if not names:
                raise UsageError(f"--student {name}: no model matches (list them with `cnnctl models '{name}'`)")
        else:
            get_entry(name)  # unknown names are refused with suggestions
            names = [name]
        out.extend(Candidate(n, size) for n in names)
    if not out:
        raise UsageError("--student: give a model (or several, comma-separated)")
    return list(dict.fromkeys(out))


@dataclass
class Timing:
    """One model's speed in onnxruntime on this machine, and its size."""

    label: str
    params: int
    bytes: int
    p50_ms: float
    p99_ms: float
    batch: int
    throughput: float  # images/s at `throughput_batch`
    throughput_batch: int
    fits: bool | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def time_session(
    path: Path, shape: tuple[int, ...], dtype: str, *, batch: int, threads: int, seconds: float
) -> tuple[float, float, float]:
    """(p50 ms, p99 ms) of single calls at `batch` images, then images/s at 32, of the ONNX file."""
    from cnnctl.runtime.inference import make_session

    session, _ = make_session(path, "cpu", threads=threads)
    name = session.get_inputs()[0].name
    rng = np.random.default_rng(0)

    def inputs(n: int) -> np.ndarray:
        if dtype == "uint8":
            return rng.integers(0, 256, (n, *shape), dtype=np.uint8)
        return rng.standard_normal((n, *shape)).astype(np.float32)

    one = inputs(batch)
    for _ in range(5):
        session.run(None, {name: one})
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < 20 or (time.perf_counter() - start < seconds and len(times) < 2000):
        t = time.perf_counter()
        session.run(None, {name: one})
        times.append(time.perf_counter() - t)
    many = inputs(32)
    session.run(None, {name: many})
    best = math.inf
    for _ in range(3):
        t = time.perf_counter()
        session.run(None, {name: many})
        best = min(best, time.perf_counter() - t)
    ms = np.asarray(times) * 1000
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99)), 32 / best


def time_file(path: Path, label: str, params: int, *, batch: int, threads: int, seconds: float) -> Timing:
    """The Timing of an exported cnnctl ONNX file (its input as its metadata says)."""
    from cnnctl.runtime.inference import OnnxClassifier

    clf = OnnxClassifier(path, "cpu")
    p50, p99, rate = time_session(
        path, tuple(clf.input_item_shape()), clf.input_dtype, batch=batch, threads=threads, seconds=seconds
    )
    return Timing(label, params, path.stat().st_size, p50, p99, batch, rate, 32)


def time_candidate(
    c: Candidate, channels: int, size: tuple[int, int], classes: int, *, batch: int, threads: int, seconds: float
) -> Timing:
    """Build the candidate (random weights), export it as `cnnctl export` would, and time it."""
    import torch

    from cnnctl.export.onnx import ExportOptions, write_graph
    from cnnctl.models import create

    h, w = c.size or size
    torch.manual_seed(0)
    model = create(c.model, (channels, h, w), classes).eval()
    params = sum(p.numel() for p in model.parameters())
    with tempfile.TemporaryDirectory(prefix="cnnctl-latency-") as tmp:
        path = Path(tmp) / "model.onnx"
        write_graph(
            model, torch.zeros(2, channels, h, w), path, path, ExportOptions().checked(), c.model, lambda m: None
        )
        p50, p99, rate = time_session(path, (channels, h, w), "float32", batch=batch, threads=threads, seconds=seconds)
        size_bytes = path.stat().st_size
    return Timing(c.label, params, size_bytes, p50, p99, batch, rate, 32)


def pick(candidates: list[Candidate], timings: list[Timing], budget_ms: float) -> Candidate:
    """The largest candidate (parameters, then pixels) whose batch p50 is inside `budget_ms`."""
    fitting = []
    for c, t in zip(candidates, timings):
        t.fits = t.p50_ms <= budget_ms
        if t.fits:
            pixels = (c.size[0] * c.size[1]) if c.size else 0
            fitting.append((t.params, pixels, -t.p50_ms, c))
    if not fitting:
        fastest = min(timings, key=lambda t: t.p50_ms)
        raise UsageError(
            f"no student meets --latency-budget-ms {budget_ms:g}: the fastest, {fastest.label}, takes "
            f"{fastest.p50_ms:.2f} ms; raise the budget or name smaller ones with --student"
        )
    return max(fitting, key=lambda f: f[:3])[3]
