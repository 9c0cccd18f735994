"""Multi-label metrics equal scikit-learn's on the same arrays; thresholds follow their rules."""

from __future__ import annotations

import numpy as np
import pytest

from cnnctl.evaluate.metrics import average_precision, multilabel_scores
from cnnctl.evaluate.thresholds import tune_thresholds
from cnnctl.runtime.classifier import decide, label_sets, probabilities, sigmoid
from cnnctl.runtime.metadata import Metadata
from cnnctl.runtime.preprocess import Preprocess

sk = pytest.importorskip("sklearn.metrics", reason="the comparison needs scikit-learn (a test dependency)")


def _arrays(seed: int, n: int = 400, k: int = 6) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random((n, k)) < rng.uniform(0.05, 0.5, k)).astype(np.int64)
    p = np.clip(0.35 * y + 0.7 * rng.random((n, k)), 0, 1)
    p[: n // 4, 0] = np.round(p[: n // 4, 0], 1)  # ties, which average precision must group
    return p, y


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_equal_scikit_learns(seed):
    p, y = _arrays(seed)
    t = np.linspace(0.3, 0.6, y.shape[1])
    r = multilabel_scores(p, y, t, [f"c{i}" for i in range(y.shape[1])])
    pred = (p >= t).astype(np.int64)
    assert r["map"] == pytest.approx(sk.average_precision_score(y, p, average="macro"), abs=1e-12)
    assert r["micro_map"] == pytest.approx(sk.average_precision_score(y, p, average="micro"), abs=1e-12)
    assert r["macro_f1"] == pytest.approx(sk.f1_score(y, pred, average="macro", zero_division=0), abs=1e-12)
    assert r["micro_f1"] == pytest.approx(sk.f1_score(y, pred, average="micro", zero_division=0), abs=1e-12)
    assert r["subset_accuracy"] == pytest.approx(sk.accuracy_score(y, pred))
    assert r["hamming_loss"] == pytest.approx(sk.hamming_loss(y, pred))
    for k, row in enumerate(r["per_class"]):
        assert row["ap"] == pytest.approx(sk.average_precision_score(y[:, k], p[:, k]), abs=1e-6)
        assert row["precision"] == pytest.approx(sk.precision_score(y[:, k], pred[:, k], zero_division=0), abs=1e-6)
        assert row["recall"] == pytest.approx(sk.recall_score(y[:, k], pred[:, k], zero_division=0), abs=1e-6)
        assert row["support"] == int(y[:, k].sum())


def test_a_class_without_positives_is_left_out_of_map_and_said():
    p, y = _arrays(3)
    y[:, 2] = 0
    r = multilabel_scores(p, y, np.full(y.shape[1], 0.5), list("abcdef"))
    assert r["per_class"][2]["ap"] is None
    assert np.isnan(average_precision(p[:, 2], y[:, 2]))
    assert r["map"] == pytest.approx(np.mean([row["ap"] for row in r["per_class"] if row["ap"] is not None]))


def test_threshold_rules():
    p, y = _arrays(4, n=600)
    classes = list("abcdef")
    f1 = tune_thresholds(p, y, "f1", classes).thresholds
    for k in range(y.shape[1]):  # no threshold on the grid of scores does better than the tuned one
        grid = np.unique(p[:, k])[:, None]
        pred, pos = p[None, :, k] >= grid, y[None, :, k] == 1
        tp = (pred & pos).sum(1)
        best = (2 * tp / (pred.sum(1) + pos.sum(1))).max()
        assert sk.f1_score(y[:, k], p[:, k] >= f1[k], zero_division=0) == pytest.approx(best)
    prec = tune_thresholds(p, y, "precision=0.9", classes)
    for k in range(y.shape[1]):
        if classes[k] not in prec.defaulted:
            assert sk.precision_score(y[:, k], p[:, k] >= prec.thresholds[k]) >= 0.9
            lower = p[:, k][p[:, k] < prec.thresholds[k]].max()  # one step lower breaks the precision or adds nothing
            assert sk.recall_score(y[:, k], p[:, k] >= lower) >= sk.recall_score(y[:, k], p[:, k] >= prec.thresholds[k])
    rec = tune_thresholds(p, y, "recall=0.8", classes).thresholds
    assert all(sk.recall_score(y[:, k], p[:, k] >= rec[k]) >= 0.8 for k in range(y.shape[1]))
    assert list(tune_thresholds(p, y, "fixed=0.3", classes).thresholds) == [0.3] * 6
    y[:, 1] = 0
    assert tune_thresholds(p, y, "f1", classes).defaulted == {"b": "no positive validation images"}


def test_the_classifier_applies_sigmoid_temperature_and_thresholds():
    meta = Metadata(
        "tiny",
        (3, 8, 8),
        ("a", "b", "c"),
        Preprocess(channels=3, size=(8, 8)),
        task="multilabel",
        thresholds=(0.5, 0.9, 0.1),
    )
    logits = np.array([[0.0, 2.0, -2.0], [3.0, 3.0, -3.0]])
    probs = probabilities(logits, meta)
    assert np.allclose(probs, 1 / (1 + np.exp(-logits)))
    assert np.allclose(probabilities(logits, meta.replace(temperature=2.0)), sigmoid(logits / 2))
    assert decide(probs, meta).tolist() == [[True, False, True], [True, True, False]]
    assert label_sets(probs, meta) == [["a", "c"], ["a", "b"]]
    assert np.allclose(sigmoid(np.array([-800.0, 800.0])), [0.0, 1.0])  # no overflow
    # The task and thresholds survive the file format; a damaged list is one clear error.
    again = Metadata.from_json_map(meta.to_json_map(), "x")
    assert again.task == "multilabel" and again.thresholds == (0.5, 0.9, 0.1)
    from cnnctl.errors import CheckpointError

    with pytest.raises(CheckpointError, match="thresholds must be 3 numbers"):
        Metadata.from_json_map({**meta.to_json_map(), "thresholds": "[0.5, 2]"}, "x")
