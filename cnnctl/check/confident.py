"""Confident learning (Northcutt, Jiang & Chuang, JAIR 2021): which given labels are likely wrong,
from out-of-sample predicted probabilities. numpy only.

The steps are cleanlab's defaults (`cleanlab.filter.find_label_issues` with
filter_by="prune_by_noise_rate", ranked by "self_confidence"), written out here so that
`cnnctl check --labels` does not pull in cleanlab's scikit-learn and pandas:
1. per-class thresholds t_j: the mean probability of class j over the images labelled j;
2. the confident joint C[s][y]: images labelled s whose probability of y reaches t_y (the most
   probable such y when several do), calibrated so each row sums to the count of label s;
3. prune by noise rate: for each s != y, the C[s][y] images labelled s with the largest margin
   p_y - p_s are issues (keeping at least one image of each class);
4. an image the model predicts as its given label is never an issue;
5. issues are ranked by self-confidence: the lowest probability of the given label first.
tests/check/test_confident.py compares the result with cleanlab's where cleanlab is installed.
"""

from __future__ import annotations

import numpy as np


def confident_joint(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """The calibrated confident joint (K x K, rows: given labels, columns: likely true labels)."""
    n, k = probs.shape
    counts = np.bincount(labels, minlength=k)
    thresholds = np.array([probs[labels == j, j].mean() if counts[j] else 1.0 for j in range(k)])
    confident = probs >= thresholds - 1e-6
    has = confident.any(1)
    # The most probable class among those whose threshold is reached.
    true = np.where(confident, probs, -np.inf).argmax(1)
    cj = np.zeros((k, k), dtype=np.int64)
    np.add.at(cj, (labels[has], true[has]), 1)
    # Calibrate: rows sum to the given-label counts, the whole to n; round keeping row totals.
    rows = np.clip(cj.sum(1, keepdims=True), 1, None)
    cal = cj / rows * counts[:, None]
    cal = cal / max(1.0, cal.sum()) * counts.sum()
    return _round_keeping_row_totals(cal)


def _round_keeping_row_totals(m: np.ndarray) -> np.ndarray:
    floor = np.floor(m).astype(np.int64)
    for i in range(m.shape[0]):
        missing = int(round(m[i].sum())) - int(floor[i].sum())
        if missing > 0:
            order = np.argsort(-(m[i] - floor[i]), kind="stable")
            floor[i, order[:missing]] += 1
    return floor


def find_issues(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Indices of the likely label errors, the least confident in their given label first."""
    labels = np.asarray(labels, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    n, k = probs.shape
    cj = confident_joint(labels, probs)
    counts = np.bincount(labels, minlength=k)
    issue = np.zeros(n, dtype=bool)
    for s in range(k):
        members = np.flatnonzero(labels == s)
        # Prune at most counts[s] - 1 images of class s: one always stays.
        budget = max(0, counts[s] - 1)
        for y in range(k):
            if y == s or cj[s, y] == 0 or budget == 0:
                continue
            take = min(int(cj[s, y]), budget)
            margin = probs[members, y] - probs[members, s]
            chosen = members[np.argsort(-margin, kind="stable")[:take]]
            issue[chosen] = True
            budget -= take
    issue[probs.argmax(1) == labels] = False
    idx = np.flatnonzero(issue)
    return idx[np.argsort(probs[idx, labels[idx]], kind="stable")]
