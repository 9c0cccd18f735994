"""Per-class decision thresholds of a multi-label model, tuned on held-out images. Numpy only.

A multi-label model answers "is class k in this image?" for every k with a probability; the
threshold turns it into a yes/no. One global 1/2 is wrong for rare classes (their probabilities
rarely reach it) and for frequent ones; tuning a threshold per class on the validation split is
the standard fix. The rules (`--threshold-rule`):

- `f1`: the threshold of maximum F1 for the class (the default);
- `precision=X`: the lowest threshold whose precision reaches X (the most recall at that precision);
- `recall=X`: the highest threshold whose recall reaches X (the most precision at that recall);
- `fixed=X`: X for every class.

A tuned threshold sits halfway between the lowest score it accepts and the next score below it
(not on a validation image's exact score, which would be fitted to that one image). A class with no
positive validation images keeps 1/2, and a class where the rule cannot be met keeps 1/2 too; both
are reported, never hidden.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from cnnctl.config import parse_threshold_rule

DEFAULT = 0.5


@dataclass
class Tuned:
    """Thresholds per class, and the classes that kept the default (and why)."""

    thresholds: np.ndarray
    defaulted: dict[str, str] = field(default_factory=dict)  # class -> reason


def tune_thresholds(probs: np.ndarray, targets: np.ndarray, rule: str, classes: list[str]) -> Tuned:
    """Each class's threshold on `probs` (N x K probabilities) for `targets` (N x K in {0, 1})."""
    kind, value = parse_threshold_rule(rule)
    k = probs.shape[1]
    out = np.full(k, value if kind == "fixed" else DEFAULT, dtype=np.float64)
    defaulted: dict[str, str] = {}
    if kind == "fixed":
        return Tuned(out, defaulted)
    for c in range(k):
        y = targets[:, c] > 0.5
        if not y.any():
            defaulted[classes[c]] = "no positive validation images"
            continue
        t = _one(probs[:, c], y, kind, value)
        if t is None:
            defaulted[classes[c]] = f"{kind} {value:g} is never reached"
        else:
            out[c] = t
    return Tuned(out, defaulted)


def _one(scores: np.ndarray, y: np.ndarray, kind: str, value: float) -> float | None:
    order = np.argsort(-scores, kind="mergesort")
    s, hits = scores[order].astype(np.float64), y[order]
    last = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]  # accepting every score down to s[last[j]]
    tp = np.cumsum(hits)[last].astype(np.float64)
    predicted = last + 1.0
    precision, recall = tp / predicted, tp / hits.sum()
    if kind == "f1":
        f1 = np.where(tp > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0.0)
        j = int(np.argmax(f1))  # the first maximum: the highest such threshold
    elif kind == "precision":
        ok = np.nonzero(precision >= value)[0]
        if not len(ok):
            return None
        j = int(ok[-1])  # the lowest threshold that still has the precision
    else:
        ok = np.nonzero(recall >= value)[0]
        if not len(ok):
            return None
        j = int(ok[0])  # the highest threshold that reaches the recall
    lowest = s[last[j]]
    below = s[last[j] + 1] if last[j] + 1 < len(s) else 0.0
    return float((lowest + below) / 2)
