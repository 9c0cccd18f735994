"""Per-class metrics checked against a confusion matrix worked by hand."""

import numpy as np
import pytest

from cnnctl.evaluate.metrics import confusion_matrix, per_class

pytestmark = pytest.mark.quick


def test_per_class_numbers_match_a_hand_computed_matrix():
    # 3 classes, 10 images.  true: a a a a b b b c c c ; pred: a a b c b b a c c b
    targets = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2, 2])
    preds = np.array([0, 0, 1, 2, 1, 1, 0, 2, 2, 1])
    cm = confusion_matrix(targets, preds, 3)
    assert cm.tolist() == [[2, 1, 1], [1, 2, 0], [0, 1, 2]]
    report = per_class(cm, ["a", "b", "c"])
    a, b, c = report["per_class"]
    # a: tp 2, predicted 3, support 4 -> P 2/3, R 1/2, F1 = 2*(2/3*1/2)/(2/3+1/2) = 4/7
    assert (
        a["precision"] == pytest.approx(2 / 3) and a["recall"] == pytest.approx(0.5) and a["f1"] == pytest.approx(4 / 7)
    )
    # b: tp 2, predicted 4, support 3 -> P 1/2, R 2/3, F1 4/7
    assert (
        b["precision"] == pytest.approx(0.5) and b["recall"] == pytest.approx(2 / 3) and b["f1"] == pytest.approx(4 / 7)
    )
    # c: tp 2, predicted 3, support 3 -> P = R = F1 = 2/3
    assert c["precision"] == pytest.approx(2 / 3) and c["f1"] == pytest.approx(2 / 3) and c["support"] == 3
    macro = report["averages"]["macro"]
    assert macro["precision"] == pytest.approx((2 / 3 + 1 / 2 + 2 / 3) / 3)
    weighted = report["averages"]["weighted"]
    assert weighted["recall"] == pytest.approx((4 * 0.5 + 3 * 2 / 3 + 3 * 2 / 3) / 10)  # = accuracy 0.6
    assert weighted["support"] == 10


def test_class_never_predicted_has_zero_precision_not_nan():
    cm = confusion_matrix(np.array([0, 1]), np.array([0, 0]), 2)
    report = per_class(cm, ["x", "y"])
    assert report["per_class"][1] == {"class": "y", "precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
