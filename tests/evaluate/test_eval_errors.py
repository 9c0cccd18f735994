"""`cnnctl eval --errors / --predictions`: which files are wrong, by how much; most-confused pairs
and the highest losses in the report; the same rows for a checkpoint and its ONNX export."""

from __future__ import annotations

import csv
import json
import math

import pytest

from tests.conftest import PETS_MINI, assert_user_error, run_cli


def rows(path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_errors_and_predictions_name_the_files(photo_run, tmp_path):
    errors, preds = tmp_path / "errors.csv", tmp_path / "all.csv"
    proc = run_cli(
        "eval",
        photo_run,
        "--data",
        PETS_MINI,
        "--split",
        "all",
        "--errors",
        errors,
        "--predictions",
        preds,
        "--json",
        "--top-losses",
        "5",
    )
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout)
    every = rows(preds)
    assert len(every) == r["images"] and {row["path"] for row in every} == {
        str(p) for p in sorted(PETS_MINI.rglob("*.jpg"))
    }
    wrong = rows(errors)
    assert len(wrong) == sum(row["true"] != row["predicted"] for row in every) == round(r["images"] * (1 - r["top1"]))
    for row in every:
        assert row["true"] == ("Cat" if "/Cat/" in row["path"] else "Dog")  # the folder's label
        assert (row["rank"] == "1") == (row["true"] == row["predicted"])
        assert float(row["loss"]) == pytest.approx(-math.log(max(float(row["true_prob"]), 1e-12)), abs=1e-4)
    mean_loss = sum(float(row["loss"]) for row in every) / len(every)
    assert mean_loss == pytest.approx(r["loss"], abs=1e-3)  # the per-image losses make up the report's loss
    assert [t["loss"] for t in r["top_losses"]] == sorted((float(row["loss"]) for row in every), reverse=True)[:5]
    cm = r["confusion_matrix"]
    if r["most_confused"]:
        top = r["most_confused"][0]
        i, j = r["class_names"].index(top["true"]), r["class_names"].index(top["predicted"])
        assert top["count"] == cm[i][j] == max(cm[0][1], cm[1][0])


def test_an_onnx_export_gives_the_same_rows_with_tta(photo_run, tmp_path):
    assert run_cli("export", photo_run, "-o", tmp_path / "m.onnx").returncode == 0
    out = {}
    for name, target in (("pt", photo_run), ("onnx", tmp_path / "m.onnx")):
        proc = run_cli(
            "eval",
            target,
            "--data",
            PETS_MINI,
            "--split",
            "all",
            "--tta-flip",
            "--predictions",
            tmp_path / f"{name}.csv",
        )
        assert proc.returncode == 0, proc.stderr
        out[name] = rows(tmp_path / f"{name}.csv")
    for a, b in zip(out["pt"], out["onnx"]):
        assert (a["path"], a["true"], a["predicted"], a["rank"]) == (b["path"], b["true"], b["predicted"], b["rank"])
        assert float(a["loss"]) == pytest.approx(float(b["loss"]), abs=1e-4)


def test_a_csv_name_is_checked_before_the_images_are_read(photo_run, tmp_path):
    assert_user_error(
        run_cli("eval", photo_run, "--data", PETS_MINI, "--split", "all", "--errors", tmp_path / "e.json"), ".csv"
    )
    assert not (tmp_path / "e.json").exists()
