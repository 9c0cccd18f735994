"""Imbalanced classes: --class-weights and --sampler balanced, from the weights' arithmetic to the
real CLI (the accuracy proof on real photos is in docs/results.md)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from cnnctl.data.batches import Batches, Order
from cnnctl.data.sources import Split
from cnnctl.errors import UsageError
from cnnctl.runtime.preprocess import Preprocess
from cnnctl.train.imbalance import balanced_sample_weights, class_counts, loss_weights
from tests.conftest import PETS_MINI, assert_user_error, run_cli

Y = torch.tensor([0] * 900 + [1] * 90 + [2] * 10)


def test_weights_are_inverse_frequency_or_effective_number_with_mean_one(tmp_path):
    counts = class_counts(Y, 3)
    auto = loss_weights("auto", counts, ["a", "b", "c"])
    assert torch.allclose(auto[1] / auto[0], torch.tensor(10.0)) and torch.allclose(
        auto[2] / auto[0], torch.tensor(90.0)
    )
    eff = loss_weights("effective", counts, ["a", "b", "c"])
    assert 1 < float(eff[1] / eff[0]) < 10 and float(eff[2] / eff[1]) > 1  # gentler than inverse frequency
    for w in (auto, eff):
        assert float((w.double() * counts).sum() / counts.sum()) == pytest.approx(1.0)  # the loss keeps its scale
    f = tmp_path / "w.json"
    f.write_text(json.dumps({"a": 1, "b": 2, "c": 4}))
    given = loss_weights(str(f), counts, ["a", "b", "c"])
    assert torch.allclose(given / given[0], torch.tensor([1.0, 2.0, 4.0]))
    f.write_text(json.dumps({"a": 1, "b": 2}))
    with pytest.raises(UsageError, match="exactly the classes"):
        loss_weights(str(f), counts, ["a", "b", "c"])
    with pytest.raises(UsageError, match="no training images"):
        loss_weights("auto", class_counts(torch.tensor([0, 0, 1]), 3), ["a", "b", "c"])


def split() -> Split:
    return Split(torch.zeros((len(Y), 1, 2, 2), dtype=torch.uint8), Y.clone())


def test_a_balanced_epoch_draws_every_class_about_equally_and_is_seeded():
    prep = Preprocess(channels=1, size=(2, 2))
    draw = balanced_sample_weights(Y, class_counts(Y, 3))
    batches = Batches(split(), prep, 100, channels_last=False, order=Order(shuffle=True, seed=3, draw=draw))
    labels = torch.cat([y for _, y in batches.epoch(1)])
    assert len(labels) == len(Y)  # an epoch is still N images
    shares = torch.bincount(labels, minlength=3).double() / len(labels)
    assert torch.all((shares - 1 / 3).abs() < 0.05), shares  # 90% / 9% / 1% in the data
    again = torch.cat(
        [
            y
            for _, y in Batches(
                split(), prep, 100, channels_last=False, order=Order(shuffle=True, seed=3, draw=draw)
            ).epoch(1)
        ]
    )
    assert torch.equal(labels, again) and not torch.equal(labels, torch.cat([y for _, y in batches.epoch(2)]))


def test_ranks_slice_the_same_balanced_global_batches():
    prep = Preprocess(channels=1, size=(2, 2))
    draw = balanced_sample_weights(Y, class_counts(Y, 3))
    whole = [
        y
        for _, y in Batches(
            split(), prep, 100, channels_last=False, order=Order(shuffle=True, seed=1, draw=draw)
        ).epoch(0)
    ]
    ranks = [
        [
            y
            for _, y in Batches(
                split(), prep, 100, channels_last=False, order=Order(shuffle=True, seed=1, draw=draw, rank=r, world=2)
            ).epoch(0)
        ]
        for r in (0, 1)
    ]
    for b, full in enumerate(whole):
        assert torch.equal(torch.cat([ranks[0][b], ranks[1][b]]), full)


def test_the_cli_logs_records_and_refuses(tmp_path):
    data = tmp_path / "pets"
    for cls, keep in (("Cat", 30), ("Dog", 6)):  # 5:1
        (data / cls).mkdir(parents=True)
        for f in sorted((PETS_MINI / cls).glob("*.jpg"))[:keep]:
            shutil.copy(f, data / cls / f.name)
    out = tmp_path / "run"
    proc = run_cli(
        "train",
        "tiny",
        "--data",
        data,
        "--image-size",
        "32",
        "--iters",
        "3",
        "--class-weights",
        "auto",
        "--sampler",
        "balanced",
        "--val-split",
        "0",
        "--out",
        out,
    )
    assert proc.returncode == 0, proc.stderr
    assert "class weights (auto; weight (training images)): Cat 0.6 (30), Dog 3 (6)" in proc.stderr
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["class_weights"] == "auto" and cfg["sampler"] == "balanced"
    assert_user_error(
        run_cli("train", "tiny", "--data", data, "--class-weights", "inverse", "--iters", "1"), "--class-weights"
    )
    assert_user_error(
        run_cli(
            "train",
            "tiny",
            "--data",
            data,
            "--class-weights",
            str(tmp_path / "none.json"),
            "--iters",
            "1",
            "--image-size",
            "32",
        ),
        "no such file",
    )
    (tmp_path / "bad.json").write_text("{Cat: 1")
    assert_user_error(
        run_cli(
            "train",
            "tiny",
            "--data",
            data,
            "--class-weights",
            str(tmp_path / "bad.json"),
            "--iters",
            "1",
            "--image-size",
            "32",
        ),
        "give a JSON object of {class: weight}",
    )
    assert_user_error(
        run_cli("train", "tiny", "--data", data, "--class-weights", "auto", "--loss", "mse", "--iters", "1"),
        "--loss ce",
    )
    assert_user_error(run_cli("train", "tiny", "--data", data, "--sampler", "oversample", "--iters", "1"), "--sampler")
