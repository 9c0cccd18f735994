"""The split manifest: a run is judged and resumed on the images it recorded, whatever happens to
the folder afterwards (files added, removed, replaced, renamed), and says so in one line."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pytest

from cnnctl.data.manifest import FILE, Manifest, compare, deal
from tests.conftest import FIXTURES, PETS_MINI, assert_user_error, run_cli

TRAIN = ["tiny", "--image-size", "16", "--epochs", "1", "--batch-size", "16", "--val-split", "0.25", "--seed", "1"]


def _eval(run: Path, *args: str) -> tuple[dict, str]:
    proc = run_cli("eval", run, "--json", *args)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout), proc.stderr


def _val_paths(report: dict) -> set[str]:
    return {Path(r["path"]).relative_to(Path(report["data"]).resolve()).as_posix() for r in report["top_losses"]}


@pytest.fixture()
def grown(tmp_path: Path) -> tuple[Path, Path]:
    """A run on a copy of the 60 committed photos; the folder is the test's to change."""
    data = tmp_path / "pets"
    shutil.copytree(PETS_MINI, data)
    run = tmp_path / "run"
    proc = run_cli("train", *TRAIN, "--data", data, "--out", run)
    assert proc.returncode == 0, proc.stderr
    return data, run


def test_manifest_records_every_split_file(grown):
    data, run = grown
    manifest = Manifest.read(run)
    assert manifest is not None and manifest.data == str(data.resolve())
    train, val = manifest.splits["train"], manifest.splits["val"]
    assert len(train) == 45 and len(val) == 15 and not set(train.paths) & set(val.paths)
    assert set(train.paths) | set(val.paths) == {p.relative_to(data).as_posix() for p in data.rglob("*.jpg")}
    # labels are the class folders; size and mtime as on disk
    for rel, label, size in zip(val.paths, val.labels, val.sizes):
        assert ["Cat", "Dog"][label] == rel.split("/")[0] and (data / rel).stat().st_size == size
    doc = json.loads(gzip.decompress((run / FILE).read_bytes()))
    assert (
        doc["format"] == 1
        and doc["fingerprint"] == json.loads((run / "config.json").read_text())["data_summary"]["fingerprint"]
    )


def test_eval_reads_the_recorded_split_after_the_folder_changed(grown):
    data, run = grown
    before, err = _eval(run, "--split", "val", "--top-losses", "100")
    assert before["images"] == 15 and "added" not in err
    recorded = Manifest.read(run)
    assert recorded is not None
    val = list(recorded.splits["val"].paths)
    # 20 new photos (real ones the run never saw), one val file removed, one replaced by another
    # photo, one renamed, one training file removed
    pets = sorted((FIXTURES / "cifar10-mini" / "train" / "cat").glob("*.jpg"))[:10]
    for i, p in enumerate(pets):
        shutil.copy(p, data / "Cat" / f"new{i}.jpg")
        shutil.copy(p, data / "Dog" / f"new{i}.jpg")
    (data / val[0]).unlink()
    shutil.copy(pets[0], data / val[1])
    (data / val[2]).rename(data / (val[2] + ".renamed.jpg"))
    train_file = next(p for p in recorded.splits["train"].paths)
    (data / train_file).unlink()

    after, err = _eval(run, "--split", "val", "--top-losses", "100")
    assert after["images"] == 12  # 15 recorded - removed - replaced - renamed; nothing new comes in
    assert _val_paths(after) == set(val[3:])
    line = next(line for line in err.splitlines() if line.startswith("val:"))
    assert "2 missing and 1 changed" in line and "21 file(s) added" in line, line
    train, _ = _eval(run, "--split", "train")
    assert train["images"] == 44


def test_resume_refuses_a_changed_folder_and_accepts_on_request(grown):
    data, run = grown
    shutil.copy(data / "Cat" / "0.jpg", data / "Cat" / "copy-of-0.jpg")  # a training or val photo, copied
    proc = run_cli("train", "--resume", run, "--epochs", "2")
    assert_user_error(
        proc, "changed since this run recorded its splits", "1 file(s) added", "--accept-data-change", "--out"
    )
    assert "decoded" not in proc.stderr  # refused on the listing, before any image is decoded
    assert (
        json.loads((run / "history.json").read_text())["epochs"][-1]["epoch"] == 1
    )  # nothing trained, nothing written

    before = Manifest.read(run)
    proc = run_cli("train", "--resume", run, "--epochs", "2", "--accept-data-change")
    assert proc.returncode == 0, proc.stderr
    assert "accepted (--accept-data-change)" in proc.stderr
    after = Manifest.read(run)
    assert before is not None and after is not None
    assert after.changes == ({"added": 1, "removed": 0, "changed": 0},)
    # no recorded image moved between train and val; the new one went where its path's hash says
    for name in ("train", "val"):
        assert set(before.splits[name].paths) <= set(after.splits[name].paths)
    assert ("Cat/copy-of-0.jpg" in after.splits["val"].paths) == deal("Cat/copy-of-0.jpg", 0.25)
    # once accepted, a resume goes on without a word
    proc = run_cli("train", "--resume", run, "--epochs", "3")
    assert proc.returncode == 0 and "changed since" not in proc.stderr, proc.stderr


def test_accept_data_change_needs_resume(tmp_path):
    proc = run_cli("train", *TRAIN, "--data", PETS_MINI, "--out", tmp_path / "r", "--accept-data-change")
    assert_user_error(proc, "--accept-data-change goes with --resume")


def test_named_set_records_rows_and_eval_uses_them(quick_run):
    manifest = Manifest.read(quick_run)
    assert manifest is not None and manifest.data == "mnist-mini" and not manifest.is_folder
    val = manifest.splits["val"].rows
    assert val is not None and len(val) == 800 and not set(val) & set(manifest.splits["train"].rows or ())
    report, _ = _eval(quick_run, "--split", "val")
    assert report["images"] == 800


def test_an_old_run_without_a_manifest_still_evaluates_with_a_note(tmp_path):
    run = tmp_path / "old"
    shutil.copytree(FIXTURES / "format1-run", run)
    assert not (run / FILE).exists()
    report, err = _eval(run, "--split", "val")
    assert report["images"] == 800
    assert "no split manifest" in err


def test_compare_counts_added_removed_changed(tmp_path):
    root = tmp_path / "d"
    (root / "a").mkdir(parents=True)
    for name in ("1.jpg", "2.jpg", "3.jpg"):
        (root / "a" / name).write_bytes(b"x")
    from cnnctl.data.manifest import record_files

    rec = record_files(str(root), [str(root / "a" / n) for n in ("1.jpg", "2.jpg", "3.jpg")], [0, 0, 0])
    manifest = Manifest(str(root), {"train": rec})
    (root / "a" / "1.jpg").unlink()
    (root / "a" / "2.jpg").write_bytes(b"longer")
    (root / "a" / "4.jpg").write_bytes(b"x")
    change = compare(manifest, str(root), [str(p) for p in sorted(root.rglob("*.jpg"))])
    assert (change.added, change.removed, change.changed) == (["a/4.jpg"], ["a/1.jpg"], ["a/2.jpg"])


def test_a_damaged_manifest_is_one_line(grown):
    _, run = grown
    (run / FILE).write_bytes(b"not gzip")
    proc = run_cli("eval", run, "--split", "val")
    assert_user_error(proc, "splits.json.gz is damaged")


def test_an_unreadable_file_is_recorded_and_is_not_new_on_resume(tmp_path):
    data = tmp_path / "pets"
    shutil.copytree(PETS_MINI, data)
    (data / "Cat" / "broken.jpg").write_bytes(b"this is not a JPEG")
    run = tmp_path / "run"
    proc = run_cli("train", *TRAIN, "--data", data, "--out", run)
    assert proc.returncode == 0 and "skipped 1 unreadable image" in proc.stderr, proc.stderr
    manifest = Manifest.read(run)
    assert manifest is not None and manifest.splits["skipped"].paths == ("Cat/broken.jpg",)
    assert "Cat/broken.jpg" not in manifest.splits["train"].paths + manifest.splits["val"].paths
    resumed = run_cli("train", "--resume", run, "--epochs", "2")
    assert resumed.returncode == 0 and "changed since" not in resumed.stderr, resumed.stderr
