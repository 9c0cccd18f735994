"""`cnnctl eval` of a multi-label model: the metrics at the file's thresholds, calibration per
class, and the rows per image (predicted set, false positives, false negatives). Numpy only."""

from __future__ import annotations

from typing import Any

import numpy as np

from cnnctl.evaluate.metrics import calibration, multilabel_scores
from cnnctl.runtime.classifier import decide, probabilities
from cnnctl.runtime.metadata import Metadata


def binary_calibration(p: np.ndarray, y: np.ndarray) -> float:
    """Expected calibration error of one class's probabilities (a two-way softmax: p vs 1 - p)."""
    return float(calibration(np.stack([1 - p, p], axis=1), (y > 0.5).astype(np.int64))["ece"])


def per_class_ece(probs: np.ndarray, targets: np.ndarray, classes: list[str]) -> dict[str, float]:
    return {c: round(binary_calibration(probs[:, k], targets[:, k]), 6) for k, c in enumerate(classes)}


def bce(probs: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Each image's binary cross-entropy, the mean over its classes."""
    p = np.clip(probs, 1e-12, 1 - 1e-12)
    y = targets > 0.5
    out: np.ndarray = -np.where(y, np.log(p), np.log(1 - p)).mean(axis=1)
    return out


def scores(logits: np.ndarray, targets: np.ndarray, meta: Metadata, paths: list[str]) -> dict[str, Any]:
    """The report's multi-label part and every image's row (sorted as given)."""
    classes = list(meta.class_names)
    probs = probabilities(logits, meta)
    thresholds = np.asarray(meta.decision_thresholds())
    out = multilabel_scores(probs, targets, thresholds, classes)
    out["thresholds"] = {c: float(t) for c, t in zip(classes, thresholds)}
    out["thresholds_tuned"] = meta.thresholds is not None
    out["ece_per_class"] = per_class_ece(probs, targets, classes)
    out["ece"] = float(np.mean(list(out["ece_per_class"].values())))
    pred, y = decide(probs, meta), targets > 0.5
    losses = bce(probs, targets)
    out["rows"] = [
        {
            "path": paths[i],
            "true": " ".join(classes[k] for k in np.flatnonzero(y[i])),
            "predicted": " ".join(classes[k] for k in np.flatnonzero(pred[i])),
            "false_positives": " ".join(classes[k] for k in np.flatnonzero(pred[i] & ~y[i])),
            "false_negatives": " ".join(classes[k] for k in np.flatnonzero(~pred[i] & y[i])),
            "loss": round(float(losses[i]), 6),
        }
        for i in range(len(paths))
    ]
    return out
