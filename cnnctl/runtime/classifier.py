"""The Classifier protocol: one model file behind one interface, and the one place where the
output activation lives. Torch-free.

Every command that runs a model (eval, calibrate, explain, predict, serve, review, the Triton
export's checks) holds a `Classifier`: an exported graph in onnxruntime (`OnnxClassifier`,
runtime/inference.py) or a checkpoint in PyTorch (`TorchClassifier`, models/checkpoint.py, which
imports torch). `probabilities` turns logits into what users read, with the temperature that
`cnnctl calibrate` stored applied; nothing else computes a softmax of a model's output.
"""

from __future__ import annotations

import os
from typing import Protocol

import numpy as np

from cnnctl.runtime.metadata import Metadata
from cnnctl.runtime.preprocess import Preprocess


class Classifier(Protocol):
    """A model file ready to run: its metadata and preprocessing, and logits of a batch."""

    path: str
    provider: str  # "CPUExecutionProvider", "torch-cpu", ...
    meta: Metadata
    prep: Preprocess

    def from_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """Decoded uint8 images (N, C, H, W) -> this model's input."""
        ...

    def logits(self, x: np.ndarray) -> np.ndarray:
        """Logits (N, classes), float32, of a batch in this model's input form."""
        ...


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax, computed stably."""
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    out: np.ndarray = e / e.sum(axis=1, keepdims=True)
    return out


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """Element-wise logistic function, computed stably for large |logits|."""
    z = np.asarray(logits, dtype=np.float64)
    e = np.exp(-np.abs(z))
    out: np.ndarray = np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
    return out


def probabilities(logits: np.ndarray, meta: Metadata, *, calibrated: bool = True) -> np.ndarray:
    """Class probabilities (float64) of a model's logits: softmax(logits / T) for a single-label
    model, a sigmoid per class, sigmoid(logits / T), for a multi-label one; T is the file's stored
    temperature (1 when it has none, or with `calibrated=False`)."""
    scale = meta.scale if calibrated else 1.0
    z = np.asarray(logits, dtype=np.float64) / scale
    return sigmoid(z) if meta.multilabel else softmax(z)


def decide(probs: np.ndarray, meta: Metadata) -> np.ndarray:
    """A multi-label model's decisions (bool, N x classes): each class's probability at or above
    its threshold (the file's tuned thresholds, 1/2 where it has none)."""
    out: np.ndarray = np.asarray(probs) >= np.asarray(meta.decision_thresholds())[None, :]
    return out


def label_sets(probs: np.ndarray, meta: Metadata) -> list[list[str]]:
    """The predicted label set of each row, in class order."""
    names = meta.class_names
    return [[names[k] for k in np.flatnonzero(row)] for row in decide(probs, meta)]


def open_classifier(path: str | os.PathLike[str], provider: str = "auto", threads: int = 0) -> Classifier:
    """The model file at `path`: an `.onnx` file in onnxruntime (`provider`: auto, cpu or cuda;
    `threads`: intra-op threads, 0 = its default), anything else (a run directory or a
    `.safetensors` checkpoint) in PyTorch on the device `provider` names (auto: CUDA when
    available), with `threads` torch threads; a `models:/NAME/VERSION` or `models:/NAME@ALIAS` URI
    is the registered ONNX file (track/registry.py). Only the second imports torch."""
    if str(path).startswith("models:/"):
        from cnnctl.track.registry import local

        path = local(str(path))[0]
    if str(path).endswith(".onnx"):
        from cnnctl.runtime.inference import OnnxClassifier

        return OnnxClassifier(os.fspath(path), provider, threads)
    from cnnctl.models.checkpoint import TorchClassifier

    return TorchClassifier.for_provider(os.fspath(path), provider, threads)
