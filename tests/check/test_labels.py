"""Label issues: confident learning against cleanlab, and planted label noise found through the CLI."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from cnnctl.check.confident import confident_joint, find_issues
from tests.conftest import PETS_MINI, run_cli, write_mnist_pngs


def _noisy(seed: int, n: int = 1500, k: int = 4, rate: float = 0.1):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k))
    logits[np.arange(n), y] += 2.5
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    noisy = y.copy()
    flip = rng.random(n) < rate
    noisy[flip] = (y[flip] + rng.integers(1, k, flip.sum())) % k
    return noisy, probs, np.flatnonzero(flip)


def test_confident_learning_finds_planted_noise_and_its_rows_sum_to_the_labels():
    noisy, probs, flipped = _noisy(0)
    cj = confident_joint(noisy, probs)
    assert (cj.sum(1) == np.bincount(noisy)).all()
    found = find_issues(noisy, probs)
    recall = np.isin(flipped, found).mean()
    precision = np.isin(found, flipped).mean()
    assert recall > 0.8 and precision > 0.7, (recall, precision)
    assert (np.diff(probs[found, noisy[found]]) >= 0).all()  # least self-confident first


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_same_issues_in_the_same_order_as_cleanlab(seed):
    cleanlab = pytest.importorskip(
        "cleanlab.filter", reason="pip install cleanlab to compare with the reference implementation"
    )
    noisy, probs, _ = _noisy(seed, k=3 + seed)
    ref = cleanlab.find_label_issues(noisy, probs, return_indices_ranked_by="self_confidence")
    assert find_issues(noisy, probs).tolist() == list(ref)


def test_labels_from_scratch_find_flipped_digits(tmp_path):
    """The offline default: 4-fold model-a on 1,000 real digits, 40 of them moved to a wrong class."""
    written = write_mnist_pngs(tmp_path / "digits", per_class=100, split="train")
    rng = np.random.default_rng(0)
    planted = set()
    for i in rng.choice(len(written), 40, replace=False):
        path, label = written[i]
        wrong = (label + int(rng.integers(1, 10))) % 10
        target = tmp_path / "digits" / str(wrong) / path.name
        shutil.move(path, target)
        planted.add(str(target))
    proc = run_cli("check", tmp_path / "digits", "--labels", "--json")
    assert proc.returncode == 0, proc.stderr
    lab = json.loads(proc.stdout)["labels"]
    found = [s["path"] for s in lab["suspects"]]
    recall = len(planted & set(found)) / len(planted)
    false_positives = len(set(found) - planted)
    assert recall >= 0.75 and false_positives <= 15, (recall, false_positives, lab["out_of_sample_accuracy"])
    top = lab["suspects"][0]
    assert top["path"] in planted and top["suggested"] != top["given"] and 0 < top["score"] <= 1
    assert "4-fold model-a from scratch" in lab["method"]


def test_labels_with_imagenet_features_find_flipped_photos(tmp_path, mobilenet_torch_home):
    """--pretrained: the frozen mobilenet_v2 features of 60 real photos, 6 of them in the wrong class."""
    data = tmp_path / "pets"
    shutil.copytree(PETS_MINI, data)
    planted = set()
    for cls, other in (("Cat", "Dog"), ("Dog", "Cat")):
        for i in (3, 11, 17):
            shutil.move(data / cls / f"{i}.jpg", data / other / f"{cls.lower()}-{i}.jpg")
            planted.add(str(data / other / f"{cls.lower()}-{i}.jpg"))
    proc = run_cli(
        "check",
        data,
        "--labels",
        "--model",
        "tv:mobilenet_v2",
        "--weights",
        "IMAGENET1K_V1",
        "--image-size",
        "160",
        "--json",
        env={"TORCH_HOME": str(mobilenet_torch_home)},
    )
    assert proc.returncode == 0, proc.stderr
    lab = json.loads(proc.stdout)["labels"]
    found = {s["path"] for s in lab["suspects"]}
    # 54 training photos per fold: a few hard true photos (a dog half out of frame) rank too.
    assert len(planted & found) >= 5 and len(found - planted) <= 3, (sorted(found), lab["out_of_sample_accuracy"])
    assert "frozen features" in lab["method"]


def test_labels_refuse_missing_weights_before_decoding(tmp_path):
    from tests.conftest import assert_user_error

    proc = run_cli(
        "check",
        PETS_MINI,
        "--labels",
        "--model",
        "tv:mobilenet_v2",
        "--pretrained",
        env={
            "TORCH_HOME": str(tmp_path / "empty"),
            "HTTPS_PROXY": "http://127.0.0.1:9",
            "https_proxy": "http://127.0.0.1:9",
        },
    )
    assert_user_error(proc)
    assert "decoded" not in proc.stderr
