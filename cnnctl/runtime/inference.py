"""onnxruntime inference with preprocessing read from the model's metadata. Imports no torch.

`cnnctl predict model.onnx ...` runs entirely on this module, PIL and numpy: a deployment pays
the onnxruntime start-up and nothing else.
"""

from __future__ import annotations

import glob
import os
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cnnctl.errors import CheckpointError, DataError, UsageError
from cnnctl.runtime import modelfile
from cnnctl.runtime.classifier import Classifier, label_sets, probabilities
from cnnctl.runtime.metadata import Metadata
from cnnctl.runtime.preprocess import IMAGE_SUFFIXES, Preprocess, load_image, normalize

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}


def make_session(path: str | Path, provider: str = "auto", *, threads: int = 0) -> tuple[Any, str]:
    """An onnxruntime session with all graph optimisations; returns (session, provider used)."""
    import onnxruntime as ort

    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{p}: no such file")
    available = ort.get_available_providers()
    if provider == "auto":
        chosen = [PROVIDERS["cuda"]] if PROVIDERS["cuda"] in available else []
        chosen.append(PROVIDERS["cpu"])
    elif provider in PROVIDERS:
        if PROVIDERS[provider] not in available:
            raise UsageError(
                f"--provider {provider}: onnxruntime here has no {PROVIDERS[provider]} (it has "
                f"{', '.join(available)}); install onnxruntime-gpu or use --provider cpu"
            )
        chosen = [PROVIDERS[provider]]
    else:
        raise UsageError(f"--provider must be auto, cpu or cuda, got {provider!r}")
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    try:
        session = ort.InferenceSession(str(p), sess_options=opts, providers=chosen)
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{p} is not a loadable ONNX model ({first[:200]})") from None
    return session, session.get_providers()[0]


def expand_inputs(inputs: Iterable[str], stdin: Iterable[str] | None = None) -> list[str]:
    """Files, folders (recursively), globs, or "-" (paths from stdin) -> image paths, in order."""
    paths: list[str] = []
    for item in inputs:
        if item == "-":
            paths += [line.strip() for line in (stdin if stdin is not None else sys.stdin) if line.strip()]
        elif os.path.isdir(item):
            for dirpath, dirnames, names in os.walk(item):
                dirnames.sort()
                paths += [os.path.join(dirpath, n) for n in sorted(names) if n.lower().endswith(IMAGE_SUFFIXES)]
        elif any(c in item for c in "*?[") and not os.path.exists(item):
            matches = sorted(glob.glob(item, recursive=True))
            if not matches:
                raise UsageError(f"{item!r} matches no files")
            paths += matches
        else:
            paths.append(item)
    if not paths:
        raise UsageError("no input images: give image files, folders, globs, or - to read paths from stdin")
    return paths


@dataclass
class Prediction:
    path: str
    top: list[tuple[str, float]]  # (label, probability), best first
    labels: list[str] | None = None  # multi-label models: the predicted set (class order)
    probs: dict[str, float] | None = None  # multi-label models: every class's probability

    def to_json(self) -> dict[str, Any]:
        """The one JSON form of a prediction: `predict --json` lines and serve's rows. A
        multi-label model's rows add `labels` (the set at the tuned thresholds) and `probs`."""
        row: dict[str, Any] = {
            "path": self.path,
            "top": [{"label": label, "prob": round(p, 6)} for label, p in self.top],
        }
        if self.labels is not None and self.probs is not None:
            row["labels"] = self.labels
            row["probs"] = {name: round(p, 6) for name, p in self.probs.items()}
        return row


def predictions(names: list[str], probs: np.ndarray, meta: Metadata, k: int) -> list[Prediction]:
    """One Prediction per row of `probs` (from `probabilities`): top-k labels, and for a multi-label
    model its label set and every class's probability (the one place predict and serve build rows)."""
    classes = list(meta.class_names)
    tops = top_k(probs, classes, max(1, min(k, len(classes))))
    if not meta.multilabel:
        return [Prediction(n, t) for n, t in zip(names, tops)]
    sets = label_sets(probs, meta)
    return [
        Prediction(n, t, s, {c: float(p) for c, p in zip(classes, row)})
        for n, t, s, row in zip(names, tops, sets, probs)
    ]


def iter_batches(
    paths: list[str], prep: Preprocess, batch_size: int, errors: list[str]
) -> Iterator[tuple[list[str], np.ndarray]]:
    """Decode images into uint8 (N, C, H, W) batches; unreadable files go to `errors`."""
    buf: list[np.ndarray] = []
    names: list[str] = []
    for path in paths:
        try:
            buf.append(load_image(path, prep))
            names.append(path)
        except DataError as exc:
            errors.append(exc.message)
            continue
        if len(buf) == batch_size:
            yield names, np.stack(buf)
            buf, names = [], []
    if buf:
        yield names, np.stack(buf)


def top_k(probs: np.ndarray, classes: list[str], k: int) -> list[list[tuple[str, float]]]:
    idx = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return [[(classes[j], float(row[j])) for j in order] for row, order in zip(probs, idx)]


def graph_input(pixels: np.ndarray, prep: Preprocess, input_dtype: str, layout: str) -> np.ndarray:
    """Decoded uint8 images (N, C, H, W) -> what a graph with this input takes: normalised
    float32 NCHW, or the uint8 pixels themselves in the graph's layout."""
    if input_dtype == "float32":
        return normalize(pixels, prep)
    return np.ascontiguousarray(pixels.transpose(0, 2, 3, 1) if layout == "NHWC" else pixels)


ONNX_TYPES = {"tensor(float)": "float32", "tensor(uint8)": "uint8", "tensor(float16)": "float16"}


class OnnxClassifier:
    """An exported cnnctl model in onnxruntime: metadata, preprocessing and logits.

    The graph takes either normalised float32 NCHW tensors or, exported with `--input uint8`, raw
    uint8 pixels (NHWC or NCHW) that it scales and normalises itself (`meta.export.input_dtype`).
    `from_pixels` turns decoded images (`preprocess.load_image`: uint8 C, H, W) into whichever the
    file takes, so every caller feeds both kinds the same way.
    """

    def __init__(self, path: str | Path, provider: str = "auto", threads: int = 0) -> None:
        self.path = str(path)
        self.session, self.provider = make_session(path, provider, threads=threads)
        self.meta = modelfile.from_session(self.session, self.path)
        self.prep = self.meta.preprocess
        export = self.meta.export
        self.input_dtype = export.input_dtype if export is not None else "float32"
        self.input_layout = export.input_layout if export is not None else "NCHW"
        spec = self.session.get_inputs()[0]
        if ONNX_TYPES.get(spec.type) != self.input_dtype or len(spec.shape) != 4:
            raise CheckpointError(
                f"{self.path}: its metadata says the input is {self.input_dtype} {self.input_layout} but the graph takes "
                f"{spec.type} of rank {len(spec.shape)}; re-export it with cnnctl export"
            )
        self.np_dtype = np.uint8 if self.input_dtype == "uint8" else np.float32
        self.input_shape = tuple(self.input_item_shape())
        shape = spec.shape
        self.fixed_batch = shape[0] if isinstance(shape[0], int) else None

    def input_item_shape(self) -> list[int]:
        """One image's shape at the graph's input: [C, H, W], or [H, W, C] for NHWC."""
        c, h, w = self.meta.input_shape
        return [h, w, c] if self.input_layout == "NHWC" else [c, h, w]

    def from_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """Decoded uint8 images (N, C, H, W) -> the graph's input."""
        return graph_input(pixels, self.prep, self.input_dtype, self.input_layout)

    def from_normalized(self, x: np.ndarray) -> np.ndarray:
        """Normalised float32 images (N, C, H, W), what training batches hold -> the graph's input.

        For a uint8 graph this undoes `normalize` and rounds: every value came from a uint8 pixel
        (x = (p / 255 - mean) / std, in float32), so the pixels are recovered exactly.
        """
        if self.input_dtype == "float32":
            return x
        c = x.shape[1]
        mean = np.asarray(self.prep.mean or [0.0] * c, np.float64).reshape(1, -1, 1, 1)
        std = np.asarray(self.prep.std or [1.0] * c, np.float64).reshape(1, -1, 1, 1)
        pixels = np.clip(np.rint((x.astype(np.float64) * std + mean) * 255.0), 0, 255).astype(np.uint8)
        return self.from_pixels(pixels)

    def logits(self, x: np.ndarray) -> np.ndarray:
        """Logits (N, classes) of a batch already in the graph's input form (see `from_pixels`)."""
        x = np.ascontiguousarray(x, dtype=self.np_dtype)
        if self.fixed_batch and x.shape[0] != self.fixed_batch:
            # A fixed-batch export: run in chunks, padding the last one.
            outs = []
            for i in range(0, x.shape[0], self.fixed_batch):
                chunk = x[i : i + self.fixed_batch]
                n = chunk.shape[0]
                if n < self.fixed_batch:
                    chunk = np.concatenate([chunk, np.zeros((self.fixed_batch - n, *chunk.shape[1:]), self.np_dtype)])
                outs.append(self.session.run(["logits"], {"input": chunk})[0][:n])
            return np.concatenate(outs).astype(np.float32, copy=False)
        out: np.ndarray = self.session.run(["logits"], {"input": x})[0]
        return out.astype(np.float32, copy=False)


def predict_paths(
    model: Classifier, paths: list[str], *, batch_size: int = 64, k: int = 5
) -> tuple[list[Prediction], list[str]]:
    """Top-k predictions for every readable path; unreadable files are returned as messages."""
    errors: list[str] = []
    results: list[Prediction] = []
    for names, x in iter_batches(paths, model.prep, batch_size, errors):
        probs = probabilities(model.logits(model.from_pixels(x)), model.meta)
        results += predictions(names, probs, model.meta, k)
    return results, errors
