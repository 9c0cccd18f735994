"""Classification metrics from predictions and targets (numpy; no torch)."""

from __future__ import annotations

from typing import Any

import numpy as np


def confusion_matrix(targets: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
    """cm[i, j] = number of images of true class i predicted as j."""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (targets.astype(np.int64), preds.astype(np.int64)), 1)
    return cm


def per_class(cm: np.ndarray, class_names: list[str]) -> dict[str, Any]:
    """Precision, recall, F1 and support per class, with macro and weighted averages."""
    tp = np.diag(cm).astype(np.float64)
    predicted = cm.sum(axis=0).astype(np.float64)
    support = cm.sum(axis=1).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        recall = np.where(support > 0, tp / support, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    rows = [
        {"class": name, "precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
        for name, p, r, f, s in zip(class_names, precision, recall, f1, support)
    ]
    total = support.sum()
    avg = {
        "macro": {"precision": float(precision.mean()), "recall": float(recall.mean()), "f1": float(f1.mean()), "support": int(total)},
        "weighted": {
            "precision": float((precision * support).sum() / total) if total else 0.0,
            "recall": float((recall * support).sum() / total) if total else 0.0,
            "f1": float((f1 * support).sum() / total) if total else 0.0,
            "support": int(total),
        },
    }
    return {"per_class": rows, "averages": avg}
