"""Label issues: confident learning against cleanlab, and planted label noise found through the CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

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


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_multilabel_issues_are_cleanlabs_one_vs_rest(seed):
    """The same suspects as cleanlab's multilabel_classification.find_label_issues on planted noise."""
    from cnnctl.check.labels import find_multilabel_issues

    rng = np.random.default_rng(seed)
    y = (rng.random((600, 4)) < 0.3).astype(np.int64)
    probs = 1 / (1 + np.exp(-(rng.normal(size=y.shape) + (2 * y - 1) * 2.0)))
    noisy = y.copy()
    flip = rng.random(y.shape) < 0.03
    noisy[flip] = 1 - noisy[flip]
    found, worst = find_multilabel_issues(noisy.astype(np.float64), probs)
    planted = np.flatnonzero(flip.any(1))
    assert np.isin(planted, found).mean() > 0.75 and np.isin(found, planted).mean() > 0.8
    given = np.where(noisy == 1, probs, 1 - probs)[found, worst[found]]
    assert (np.diff(given) >= 0).all()  # the least self-confident first
    ml = pytest.importorskip(
        "cleanlab.multilabel_classification.filter", reason="pip install cleanlab to compare with the reference"
    )
    ref = ml.find_label_issues([list(np.flatnonzero(r)) for r in noisy], probs)
    assert set(np.flatnonzero(ref)) == set(found.tolist())


def test_weak_predictions_say_so_and_flag_no_flood(tmp_path):
    """From scratch on 60 photos the k-fold net is barely better than chance: one line says so, and
    at most 1% of the images (here: one) is listed, only if the net is 90% sure of it."""
    data = tmp_path / "pets"
    shutil.copytree(PETS_MINI, data)
    for i in (3, 11, 17):
        shutil.move(data / "Cat" / f"{i}.jpg", data / "Dog" / f"cat-{i}.jpg")
    proc = run_cli(
        "check", data, "--labels", "--epochs", "4", "--json", env={"TORCH_HOME": str(tmp_path / "no-weights")}
    )
    assert proc.returncode == 0, proc.stderr
    lab = json.loads(proc.stdout)["labels"]
    assert lab["weak_evidence"] and lab["skill"] < 0.7 and lab["issues"] <= 1 < lab["candidates"]
    assert all(s["given_prob"] <= 0.1 for s in lab["suspects"])
    line = next(m for m in proc.stderr.splitlines() if "out-of-sample predictions are weak" in m)
    assert "--model tv:mobilenet_v2 --pretrained" in line and "from scratch" in lab["method"]


def test_a_cached_backbone_is_the_default_and_finds_planted_flips(tmp_path, mobilenet_torch_home, shared_data):
    """800 real photos (../shared/data), 40 of them moved to the other class: with mobilenet_v2's
    weights in the torch hub cache, `check --labels` uses its frozen features unasked and ranks
    at least 30 of the 40 flips in its top 80 (docs/check.md has the measured numbers)."""
    tar = shared_data / "petimages-2k.tar.gz"
    if not tar.is_file():
        pytest.skip(f"{tar} not found (the full photos live in ../shared/data)")
    import tarfile

    with tarfile.open(tar) as t:  # photos 0-400 of each class only
        wanted = [m for m in t.getmembers() if m.isfile() and int(Path(m.name).stem) <= 400]
        t.extractall(tmp_path / "src", members=wanted, filter="data")
    src = tmp_path / "src" / "PetImages"
    data, planted = tmp_path / "pets", set()
    rng = np.random.default_rng(0)
    for cls, other in (("Cat", "Dog"), ("Dog", "Cat")):
        names = sorted((p.name for p in (src / cls).iterdir()), key=lambda n: int(n.split(".")[0]))[:400]
        flips = set(rng.choice(names, 20, replace=False).tolist())
        for name in names:
            (data / cls).mkdir(parents=True, exist_ok=True)
            (data / other).mkdir(parents=True, exist_ok=True)
            target = data / other / f"{cls.lower()}-{name}" if name in flips else data / cls / name
            (src / cls / name).rename(target)
            if name in flips:
                planted.add(str(target))
    proc = run_cli("check", data, "--labels", "--json", env={"TORCH_HOME": str(mobilenet_torch_home)})
    assert proc.returncode == 0, proc.stderr
    assert "tv:mobilenet_v2's ImageNet weights (IMAGENET1K_V1) are in the local cache" in proc.stderr
    lab = json.loads(proc.stdout)["labels"]
    top = [s["path"] for s in lab["suspects"][:80]]
    assert len(planted & set(top)) >= 30 and not lab["weak_evidence"], (len(planted & set(top)), lab["method"])


def _planted_mosaics(tmp_path, n: int = 480):
    """`n` real CIFAR-10 mosaics (recipes/make_mosaics.py) in a CSV, 1 row in 20 with one class
    added or removed: {path: "add CLASS" | "remove CLASS"}."""
    import csv
    import subprocess
    import sys

    from tests.conftest import CIFAR_MINI, ROOT

    out = tmp_path / "mosaics"
    cmd = [sys.executable, str(ROOT / "recipes" / "make_mosaics.py"), str(CIFAR_MINI), str(out), "--train", str(n)]
    subprocess.run([*cmd, "--test", "0", "--classes", "airplane,automobile,frog,ship"], check=True, capture_output=True)
    rows = list(csv.DictReader(open(out / "labels.csv", newline="")))
    rng = np.random.default_rng(1)
    planted = {}
    for i in rng.choice(len(rows), n // 20, replace=False):
        labels = set(rows[i]["labels"].split())
        cls = ["airplane", "automobile", "frog", "ship"][int(rng.integers(4))]
        rows[i]["labels"] = " ".join(sorted(labels ^ {cls}))
        planted[str(out / rows[i]["path"])] = ("remove " if cls not in labels else "add ") + cls
    with open(out / "labels.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["path", "labels", "split"])
        w.writeheader()
        w.writerows(rows)
    return out / "labels.csv", planted


def test_multilabel_label_issues_through_a_label_file(tmp_path, mobilenet_torch_home):
    """With the cached mobilenet_v2's features (one logistic regression per class) most planted
    changes rank first, each saying which class to add or remove."""
    labels, planted = _planted_mosaics(tmp_path)
    proc = run_cli("check", labels, "--labels", "--json", env={"TORCH_HOME": str(mobilenet_torch_home)})
    assert proc.returncode == 0, proc.stderr
    lab = json.loads(proc.stdout)["labels"]
    assert "one-vs-rest" in lab["scoring"] and not lab["weak_evidence"], lab
    top = lab["suspects"][:36]
    hits = [s for s in top if s["path"] in planted]
    assert len(hits) >= 12, (len(hits), lab["issues"], lab["out_of_sample_accuracy"])
    assert sum(s["change"] == planted[s["path"]] for s in hits) >= 0.8 * len(hits)


def test_multilabel_label_issues_without_a_backbone_do_not_flood(tmp_path):
    """From scratch (tiny, 2 epochs per fold, 240 mosaics): no more suspects than the evidence
    supports (weak predictions list at most 2% of the images)."""
    labels, planted = _planted_mosaics(tmp_path, 240)
    proc = run_cli("check", labels, "--labels", "--model", "tiny", "--epochs", "2", "--image-size", "16", "--json")
    assert proc.returncode == 0, proc.stderr
    lab = json.loads(proc.stdout)["labels"]
    assert "one-vs-rest" in lab["scoring"] and "from scratch" in lab["method"]
    if lab["weak_evidence"]:
        assert lab["issues"] <= 0.02 * lab["images"] and "predictions are weak" in proc.stderr
    else:
        assert lab["issues"] <= 2 * len(planted)
