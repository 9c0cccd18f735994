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
        "macro": {
            "precision": float(precision.mean()),
            "recall": float(recall.mean()),
            "f1": float(f1.mean()),
            "support": int(total),
        },
        "weighted": {
            "precision": float((precision * support).sum() / total) if total else 0.0,
            "recall": float((recall * support).sum() / total) if total else 0.0,
            "f1": float((f1 * support).sum() / total) if total else 0.0,
            "support": int(total),
        },
    }
    return {"per_class": rows, "averages": avg}


def log_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def nll(logits: np.ndarray, targets: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of the true class with logits divided by `temperature`."""
    lp = log_softmax(logits.astype(np.float64) / temperature)
    return float(-lp[np.arange(len(targets)), targets.astype(np.int64)].mean())


def calibration(probs: np.ndarray, targets: np.ndarray, bins: int = 15) -> dict[str, Any]:
    """Expected calibration error (top-1 confidence vs accuracy, `bins` equal-width bins, as Guo
    et al. 2017) and the reliability table behind it."""
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == targets
    edges = np.linspace(0.0, 1.0, bins + 1)
    rows, ece = [], 0.0
    n = max(1, len(targets))
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = (conf > lo) & (conf <= hi) if lo > 0 else (conf >= lo) & (conf <= hi)
        count = int(inside.sum())
        if count:
            c, a = float(conf[inside].mean()), float(correct[inside].mean())
            ece += count / n * abs(a - c)
            rows.append({"lower": float(lo), "upper": float(hi), "count": count, "confidence": c, "accuracy": a})
    return {"ece": float(ece), "bins": rows}


def binary_nll(logits: np.ndarray, targets: np.ndarray, temperature: float = 1.0) -> float:
    """Mean binary cross-entropy of sigmoid(logits / T) against multi-label targets (N x K)."""
    z = logits.astype(np.float64) / temperature
    # log(1 + e^-|z|) + max(z, 0) - y z: the stable form of BCE with logits
    return float(np.mean(np.logaddexp(0.0, -np.abs(z)) + np.maximum(z, 0.0) - (targets > 0.5) * z))


def fit_temperature(logits: np.ndarray, targets: np.ndarray) -> float:
    """The temperature T > 0 minimising the NLL of softmax(logits / T) (temperature scaling,
    Guo et al. 2017), or for multi-label targets (N x K) the binary cross-entropy of
    sigmoid(logits / T), one T for every class. The loss is smooth and unimodal in log T: a
    golden-section search over T in [0.05, 20] to 1e-4 in log T."""
    multilabel = targets.ndim == 2
    logits, targets = logits.astype(np.float64), targets.astype(np.float64 if multilabel else np.int64)
    loss = binary_nll if multilabel else nll
    lo, hi = np.log(0.05), np.log(20.0)
    g = (np.sqrt(5) - 1) / 2
    a, b = hi - g * (hi - lo), lo + g * (hi - lo)
    fa, fb = loss(logits, targets, np.exp(a)), loss(logits, targets, np.exp(b))
    while hi - lo > 1e-4:
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - g * (hi - lo)
            fa = loss(logits, targets, np.exp(a))
        else:
            lo, a, fa = a, b, fb
            b = lo + g * (hi - lo)
            fb = loss(logits, targets, np.exp(b))
    return float(np.exp((lo + hi) / 2))


def average_precision(scores: np.ndarray, targets: np.ndarray) -> float:
    """Average precision of one class (scikit-learn's `average_precision_score`: the sum over the
    distinct score thresholds of (R_n - R_{n-1}) * P_n, no interpolation); nan without positives."""
    y = np.asarray(targets) > 0.5
    positives = int(y.sum())
    if positives == 0:
        return float("nan")
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="mergesort")
    s, hits = np.asarray(scores, dtype=np.float64)[order], y[order]
    last = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]  # the last position of each distinct score
    tp = np.cumsum(hits)[last]
    precision = tp / (last + 1)
    recall = tp / positives
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def mean_average_precision(scores: np.ndarray, targets: np.ndarray) -> float:
    """Macro mean of the per-class average precision over the classes that have positives."""
    aps = [average_precision(scores[:, k], targets[:, k]) for k in range(scores.shape[1])]
    valid = [a for a in aps if not np.isnan(a)]
    return float(np.mean(valid)) if valid else float("nan")


def multilabel_scores(
    probs: np.ndarray, targets: np.ndarray, thresholds: np.ndarray, classes: list[str]
) -> dict[str, Any]:
    """Multi-label metrics of probabilities (N x K) against targets (N x K, {0, 1}), decided at
    `thresholds` (K): per class AP, precision, recall, F1, support and threshold; `map` (the macro
    mean AP over the classes with positives), `micro_map` (AP of every (image, class) pair at once),
    macro and micro F1, subset accuracy (the whole set right) and Hamming loss (the share of wrong
    (image, class) decisions). They equal scikit-learn's on the same arrays (tests/evaluate), except
    that `map` leaves out classes without positives, which scikit-learn counts as 0."""
    y = np.asarray(targets) > 0.5
    pred = np.asarray(probs) >= np.asarray(thresholds)[None, :]
    tp = (pred & y).sum(0).astype(np.float64)
    fp = (pred & ~y).sum(0).astype(np.float64)
    fn = (~pred & y).sum(0).astype(np.float64)
    precision = np.divide(tp, tp + fp, out=np.zeros_like(tp), where=(tp + fp) > 0)
    recall = np.divide(tp, tp + fn, out=np.zeros_like(tp), where=(tp + fn) > 0)
    f1 = np.divide(2 * tp, 2 * tp + fp + fn, out=np.zeros_like(tp), where=(2 * tp + fp + fn) > 0)
    aps = [average_precision(probs[:, k], y[:, k]) for k in range(y.shape[1])]
    rows = [
        {
            "class": name,
            "ap": None if np.isnan(aps[k]) else round(aps[k], 6),
            "precision": round(float(precision[k]), 6),
            "recall": round(float(recall[k]), 6),
            "f1": round(float(f1[k]), 6),
            "support": int(y[:, k].sum()),
            "threshold": round(float(thresholds[k]), 6),
        }
        for k, name in enumerate(classes)
    ]
    valid = [a for a in aps if not np.isnan(a)]
    stp, sfp, sfn = tp.sum(), fp.sum(), fn.sum()
    return {
        "map": float(np.mean(valid)) if valid else None,
        "micro_map": average_precision(np.asarray(probs).ravel(), y.ravel()) if y.any() else None,
        "macro_f1": float(f1.mean()),
        "micro_f1": float(2 * stp / (2 * stp + sfp + sfn)) if (2 * stp + sfp + sfn) > 0 else 0.0,
        "subset_accuracy": float((pred == y).all(1).mean()) if len(y) else 0.0,
        "hamming_loss": float((pred != y).mean()) if len(y) else 0.0,
        "per_class": rows,
    }
