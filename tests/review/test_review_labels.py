"""`cnnctl review` of a label file: the page shows label sets, a person adds or removes labels per
image (or removes the row), `--apply` rewrites the CSV atomically and `--undo` puts it back byte
for byte; the round trip in headless Chromium."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from cnnctl.review.app import Review, create_app
from cnnctl.review.items import build_items
from tests.conftest import CIFAR_MINI, ROOT, assert_user_error, run_cli
from tests.review.test_review import review_page

CLASSES = "airplane,frog,ship"


@pytest.fixture(scope="module")
def labelled(tmp_path_factory) -> tuple[Path, Path]:
    """(a multi-label CSV of 240 real CIFAR-10 mosaics, a tiny model trained on it)."""
    out = tmp_path_factory.mktemp("mosaics")
    cmd = [sys.executable, str(ROOT / "recipes" / "make_mosaics.py"), str(CIFAR_MINI), str(out / "data")]
    subprocess.run([*cmd, "--train", "200", "--test", "40", "--classes", CLASSES], check=True, capture_output=True)
    run = out / "run"
    proc = run_cli(
        "train", "tiny", "--data", out / "data" / "labels.csv", "--image-size", "32", "--epochs", "2", "--out", run
    )
    assert proc.returncode == 0, proc.stderr
    return out / "data" / "labels.csv", run


def _copy(labels: Path, tmp_path: Path) -> Path:
    """The label file (and its images, linked) in a folder of the test's own: it gets rewritten."""
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "images").symlink_to(labels.parent / "images")
    target = folder / "labels.csv"
    target.write_bytes(labels.read_bytes())
    return target


def _rows(path: Path) -> dict[str, str]:
    with open(path, newline="") as fh:
        return {r["path"]: r["labels"] for r in csv.DictReader(fh)}


def test_marks_rewrite_the_label_file_and_undo_puts_it_back(labelled, tmp_path):
    labels, run = labelled
    data = _copy(labels, tmp_path)
    before = data.read_bytes()
    items, classes, reading = build_items(str(run), str(data), top=8)
    assert reading is not None and classes == CLASSES.split(",")
    assert all("labels" in it and "predicted_labels" in it for it in items)
    log = tmp_path / "review-log.json"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from starlette.testclient import TestClient
    review = Review(str(run), str(data), items, classes, str(log), reading)
    with TestClient(create_app(review, token="t")) as c:
        listing = c.get("/api/items").json()
        assert listing["label_file"] is True
        headers = {"x-cnnctl-token": "t"}
        first, second, third = items[0], items[1], items[2]
        new = sorted(set(first["labels"]) ^ {"ship"})  # toggle one label
        r = c.post("/api/decisions", json={"id": 0, "action": "labels", "labels": new}, headers=headers)
        assert r.status_code == 200 and r.json()["labels"] == [k for k in classes if k in new]
        assert c.post("/api/decisions", json={"id": 1, "action": "remove"}, headers=headers).status_code == 200
        assert c.post("/api/decisions", json={"id": 2, "action": "fine"}, headers=headers).status_code == 200
        bad = c.post("/api/decisions", json={"id": 2, "action": "labels", "labels": ["fox"]}, headers=headers)
        assert bad.status_code == 400 and "fox" in bad.json()["error"]
    assert data.read_bytes() == before  # marks only go to the log
    applied = run_cli("review", "--apply", log, "--json")
    assert applied.returncode == 0, applied.stderr
    result = json.loads(applied.stdout)
    assert result["decisions"]["labels"] == 1 and result["decisions"]["remove"] == 1
    rows = _rows(data)
    assert rows[first["rel"]] == " ".join(k for k in classes if k in new)
    assert second["rel"] not in rows and rows[third["rel"]] == " ".join(third["labels"])
    assert len(rows) == 239 and (labels.parent / second["rel"]).is_file()  # the image stays
    again = run_cli("review", "--apply", log)
    assert_user_error(again, "was applied already")
    assert run_cli("review", "--undo", result["undo"]).returncode == 0
    assert data.read_bytes() == before


def test_undo_refuses_a_label_file_edited_since(labelled, tmp_path):
    labels, run = labelled
    data = _copy(labels, tmp_path)
    items, classes, reading = build_items(str(run), str(data), top=3)
    log = tmp_path / "log.json"
    review = Review(str(run), str(data), items, classes, str(log), reading)
    review.decide(0, "remove", None)
    result = json.loads(run_cli("review", "--apply", log, "--json").stdout)
    data.write_text(data.read_text() + "images/extra.jpg,frog,train\n")
    assert_user_error(run_cli("review", "--undo", result["undo"]), "changed since the apply")


def test_label_sets_through_the_page_in_a_real_browser(labelled, tmp_path):
    labels, run = labelled
    data = _copy(labels, tmp_path)
    before = data.read_bytes()
    log = tmp_path / "review-log.json"
    with review_page(str(run), "--data", str(data), "--top", "4", "--log", str(log)) as (page, items):
        cards = page.locator(".card")
        assert cards.count() == 4
        first = cards.nth(0)
        box = first.locator("input[value='frog']")
        box.set_checked(not box.is_checked())
        first.locator("button.save").click()
        cards.nth(1).locator("button.remove").click()
        page.wait_for_selector("#summary[data-marked='2']")
        shown = first.locator(".state").inner_text()
    decisions = json.loads(log.read_text())["decisions"]
    expected = sorted(set(items[0]["labels"]) ^ {"frog"}, key=CLASSES.split(",").index)
    assert decisions[items[0]["rel"]] == {"action": "labels", "labels": expected}
    assert decisions[items[1]["rel"]] == {"action": "remove"} and shown.startswith("labels:")
    applied = json.loads(run_cli("review", "--apply", log, "--json").stdout)
    rows = _rows(data)
    assert rows[items[0]["rel"]] == " ".join(expected) and items[1]["rel"] not in rows
    assert run_cli("review", "--undo", applied["undo"]).returncode == 0
    assert data.read_bytes() == before
