"""Label files as --data: every format reads the same rows, bad rows are refused in one line (or left
out, counted, with --skip-bad-rows), splits come from a column or sibling files, and a CSV listing a
folder's files in the folder's order trains exactly as the folder does. Real photos throughout."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from cnnctl.data.labelfile import LabelSpec, read_labels
from cnnctl.data.sources import training_files
from cnnctl.errors import DataError, UsageError
from tests.conftest import PETS_MINI, assert_user_error, run_cli

TRAIN = ["tiny", "--image-size", "16", "--epochs", "2", "--batch-size", "16", "--seed", "3"]


def _rows(root: Path = PETS_MINI) -> list[tuple[str, str]]:
    """(path relative to root, class) of the folder's training files, in the folder's order."""
    return [(Path(p).relative_to(root).as_posix(), Path(p).parent.name) for p in training_files(str(root))]


def _write_csv(path: Path, header: list[str], rows: list[list[str]], **kwargs) -> Path:
    with open(path, "w", newline="", **kwargs) as fh:
        csv.writer(fh, lineterminator=kwargs.pop("lineterminator", "\r\n")).writerows([header, *rows])
    return path


@pytest.fixture()
def pets(tmp_path: Path) -> Path:
    """A copy of the 60 committed photos: the test's own, to break."""
    shutil.copytree(PETS_MINI, tmp_path / "pets")
    return tmp_path / "pets"


def test_a_csv_of_the_folder_in_its_order_trains_exactly_as_the_folder(tmp_path):
    labels = _write_csv(tmp_path / "pets.csv", ["path", "label"], [list(r) for r in _rows()])
    a = run_cli("train", *TRAIN, "--data", PETS_MINI, "--out", tmp_path / "folder")
    b = run_cli("train", *TRAIN, "--data", labels, "--image-root", PETS_MINI, "--out", tmp_path / "csv")
    assert a.returncode == 0 and b.returncode == 0, a.stderr + b.stderr
    h1 = json.loads((tmp_path / "folder" / "history.json").read_text())["epochs"]
    h2 = json.loads((tmp_path / "csv" / "history.json").read_text())["epochs"]
    keys = ("train_loss", "train_acc", "val_loss", "val_acc")
    assert [[r[k] for k in keys] for r in h1] == [[r[k] for k in keys] for r in h2]
    # The run records the label file, its image root and reading options; eval finds the val split again.
    meta = json.loads(run_cli("eval", tmp_path / "csv", "--split", "val", "--json").stdout)
    assert meta["data"] == str(labels.resolve()) and meta["images"] == 6


def test_every_format_reads_the_same_rows(tmp_path, pets):
    rows = _rows(pets)
    # CSV with a byte-order mark, CRLF line ends, a quoted comma and an extra column.
    for i, (p, c) in enumerate(rows[:3]):
        new = pets / c / f"a, b {i}.jpg"
        shutil.copy(pets / p, new)
        rows.append((new.relative_to(pets).as_posix(), c))
    body = [[p, c, "x,y"] for p, c in rows]
    expected = read_labels(LabelSpec(str(_write_csv(pets / "plain.csv", ["file", "class", "note"], body))))
    _write_csv(pets / "bom.csv", ["Image", "Label", "note"], body, encoding="utf-8-sig")
    (pets / "tab.tsv").write_text("path\tlabels\n" + "".join(f"{p}\t{c}\n" for p, c in rows))
    (pets / "lines.jsonl").write_text("".join(json.dumps({"image": p, "labels": [c]}) + "\n" for p, c in rows))
    files = ["bom.csv", "tab.tsv", "lines.jsonl"]
    pa = pytest.importorskip("pyarrow", reason="Parquet label files need pyarrow (pip install 'cnnctl[labels]')")
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"filename": [p for p, _ in rows], "target": [c for _, c in rows]}), pets / "t.parquet")
    files.append("t.parquet")
    for name in files:
        got = read_labels(LabelSpec(str(pets / name)))
        assert (got.paths, got.labels, got.classes) == (expected.paths, expected.labels, expected.classes), name
    assert len(expected) == 63 and expected.classes == ["Cat", "Dog"] and not expected.multilabel
    assert any(", b" in p for p in expected.paths)


def test_a_saved_hugging_face_dataset_with_image_bytes_trains(tmp_path):
    datasets = pytest.importorskip("datasets", reason="Hugging Face datasets need pip install 'cnnctl[hf]'")
    rows = _rows()[::3]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["Cat", "Dog"])})
    ds = datasets.Dataset.from_dict(
        {"image": [str(PETS_MINI / p) for p, _ in rows], "label": [0 if c == "Cat" else 1 for _, c in rows]},
        features=features,
    )
    ds = ds.cast_column("image", datasets.Image(decode=False))
    ds.save_to_disk(str(tmp_path / "hf"))
    table = read_labels(LabelSpec(str(tmp_path / "hf"), cache_dir=str(tmp_path / "cache")))
    assert table.classes == ["Cat", "Dog"] and len(table) == len(rows)
    # The stored bytes became files in the cache, named by content; labels came from ClassLabel names.
    first = Path(table.paths[0])
    assert first.read_bytes() == (PETS_MINI / rows[0][0]).read_bytes() and table.labels[0] == (rows[0][1],)
    proc = run_cli(
        "train", *TRAIN, "--data", tmp_path / "hf", "--cache-dir", tmp_path / "cache", "--out", tmp_path / "r"
    )
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize(
    "kind, needle",
    [
        ("missing", "naming missing files (row 3: Cat/gone.jpg"),
        ("duplicate", "listing a file again (row 4: Cat/0.jpg (first on row 2))"),
        ("empty", "with an empty path (row 3"),
        ("no-label", "without a label (row 3: Cat/0.jpg"),
    ],
)
def test_bad_rows_are_refused_in_one_line_then_left_out_with_the_flag(tmp_path, kind, needle):
    rows = [list(r) for r in _rows()]
    bad = {
        "missing": ["Cat/gone.jpg", "Cat"],
        "duplicate": ["Cat/0.jpg", "Cat"],
        "empty": ["", "Cat"],
        "no-label": ["Cat/0.jpg", ""],
    }[kind]
    if kind == "no-label":
        rows = [r for r in rows if r[0] != "Cat/0.jpg"]
    rows.insert(1 if kind != "duplicate" else 2, bad)
    labels = _write_csv(tmp_path / "l.csv", ["path", "label"], rows)
    proc = run_cli("train", *TRAIN, "--data", labels, "--image-root", PETS_MINI, "--out", tmp_path / "r")
    assert_user_error(proc, needle, "--skip-bad-rows")
    assert not (tmp_path / "r").exists()  # refused before anything was written
    proc = run_cli(
        "train", *TRAIN, "--data", labels, "--image-root", PETS_MINI, "--skip-bad-rows", "--out", tmp_path / "r"
    )
    assert proc.returncode == 0, proc.stderr
    assert "left out 1 row(s)" in proc.stderr


def test_undecodable_files_are_bad_rows_too(tmp_path, pets):
    (pets / "Cat" / "broken.jpg").write_text("not a JPEG")
    rows = [list(r) for r in _rows(PETS_MINI)] + [["Cat/broken.jpg", "Cat"]]
    labels = _write_csv(pets / "l.csv", ["path", "label"], rows)
    proc = run_cli("train", *TRAIN, "--data", labels, "--cache-dir", tmp_path / "c", "--out", tmp_path / "r")
    assert_user_error(proc, "1 naming files that do not decode (row 62: Cat/broken.jpg", "--skip-bad-rows")
    proc = run_cli(
        "train", *TRAIN, "--data", labels, "--cache-dir", tmp_path / "c", "--skip-bad-rows", "--out", tmp_path / "r"
    )
    assert proc.returncode == 0, proc.stderr


def test_columns_by_name_by_flag_and_a_clear_line_when_absent(tmp_path):
    rows = [[p, c] for p, c in _rows()]
    labels = _write_csv(tmp_path / "l.csv", ["picture", "kind"], rows)
    with pytest.raises(UsageError, match="no path column among picture, kind.*--path-column"):
        read_labels(LabelSpec(str(labels), image_root=str(PETS_MINI)))
    with pytest.raises(UsageError, match="no column 'pic' \\(--path-column\\)"):
        read_labels(LabelSpec(str(labels), image_root=str(PETS_MINI), path_column="pic", label_column="kind"))
    table = read_labels(LabelSpec(str(labels), image_root=str(PETS_MINI), path_column="picture", label_column="kind"))
    assert len(table) == 60
    proc = run_cli("train", *TRAIN, "--data", labels, "--out", tmp_path / "r")
    assert_user_error(proc, "--path-column")


def test_kaggle_ids_without_suffix_and_a_label_delimiter(tmp_path):
    rows = [[Path(p).with_suffix("").as_posix(), f"{c};pet"] for p, c in _rows()]
    labels = _write_csv(tmp_path / "train.csv", ["id", "tags"], rows)
    table = read_labels(LabelSpec(str(labels), image_root=str(PETS_MINI), label_delim=";"))
    assert table.paths[0].endswith("Cat/0.jpg") and table.labels[0] == ("Cat", "pet")
    assert table.multilabel and table.classes == ["Cat", "Dog", "pet"]


def test_splits_from_a_column_and_from_sibling_files(tmp_path):
    rows = _rows()
    split_of = ["test" if i % 5 == 0 else ("valid" if i % 5 == 1 else "train") for i in range(len(rows))]
    one = _write_csv(tmp_path / "one.csv", ["path", "label", "split"], [[p, c, s] for (p, c), s in zip(rows, split_of)])
    table = read_labels(LabelSpec(str(one), image_root=str(PETS_MINI)))
    assert table.splits.count("test") == 12 and table.splits.count("val") == 12
    folder = tmp_path / "kaggle"
    folder.mkdir()
    for split in ("train", "val", "test"):
        part = [[p, c] for (p, c), s in zip(rows, split_of) if s.startswith(split[:3])]
        _write_csv(folder / f"{split}.csv", ["path", "label"], part)
    siblings = read_labels(LabelSpec(str(folder / "train.csv"), image_root=str(PETS_MINI)))
    assert sorted(zip(siblings.paths, siblings.splits)) == sorted(zip(table.paths, table.splits))
    assert "sibling files val.csv, test.csv" in siblings.notes[0]
    # Training uses them: 36 train, 12 val; the test rows are measured once at the end.
    proc = run_cli("train", *TRAIN, "--data", folder / "train.csv", "--image-root", PETS_MINI, "--out", tmp_path / "r")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((tmp_path / "r" / "config.json").read_text())["data_summary"]
    assert (summary["train"], summary["val"], summary["test"]) == (36, 12, 12)
    report = json.loads(run_cli("eval", tmp_path / "r", "--json").stdout)
    assert report["split"] == "test" and report["images"] == 12
    bad = _write_csv(tmp_path / "bad.csv", ["path", "label", "split"], [[rows[0][0], "Cat", "holdout"]])
    with pytest.raises(DataError, match="split 'holdout' is not train, val or test"):
        read_labels(LabelSpec(str(bad), image_root=str(PETS_MINI)))


def test_labels_the_model_does_not_know_are_bad_rows_at_eval(tmp_path):
    rows = [[p, c] for p, c in _rows()]
    labels = _write_csv(tmp_path / "l.csv", ["path", "label"], rows)
    proc = run_cli("train", *TRAIN, "--data", labels, "--image-root", PETS_MINI, "--out", tmp_path / "r")
    assert proc.returncode == 0, proc.stderr
    other = _write_csv(tmp_path / "o.csv", ["path", "label"], rows[:5] + [[rows[5][0], "Fox"]])
    proc = run_cli("eval", tmp_path / "r", "--data", other, "--image-root", PETS_MINI, "--split", "all")
    assert_user_error(proc, "1 with labels the model does not know (row 7: Cat/13.jpg (Fox))")
    proc = run_cli(
        "eval",
        tmp_path / "r",
        "--data",
        other,
        "--image-root",
        PETS_MINI,
        "--split",
        "all",
        "--skip-bad-rows",
        "--json",
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["images"] == 5


def test_resume_refuses_a_label_file_that_grew(tmp_path, pets):
    rows = [[p, c] for p, c in _rows(pets)]
    labels = _write_csv(pets / "l.csv", ["path", "label"], rows[:50])
    run = tmp_path / "r"
    assert run_cli("train", *TRAIN, "--data", labels, "--out", run).returncode == 0
    _write_csv(pets / "l.csv", ["path", "label"], rows)
    proc = run_cli("train", "--resume", run, "--epochs", "3")
    assert_user_error(proc, "10 file(s) added", "--accept-data-change")
    proc = run_cli("train", "--resume", run, "--epochs", "3", "--accept-data-change")
    assert proc.returncode == 0, proc.stderr


def test_label_file_flags_on_a_folder_are_refused(tmp_path):
    proc = run_cli("train", *TRAIN, "--data", PETS_MINI, "--label-column", "tags", "--out", tmp_path / "r")
    assert_user_error(proc, "--label-column is for label files")
    proc = run_cli("train", *TRAIN, "--data", PETS_MINI, "--task", "multilabel", "--out", tmp_path / "r")
    assert_user_error(proc, "--task multilabel learns label sets from a label file")


def test_check_reads_a_label_file_as_a_listing(tmp_path, pets):
    rows = [[p, c, "test" if i % 6 == 0 else "train"] for i, (p, c) in enumerate(_rows(pets))]
    shutil.copy(pets / "Dog" / "3.jpg", pets / "Dog" / "copy-of-3.jpg")  # the same photo in train and test
    rows += [
        ["Cat/missing.jpg", "Fox", "train"],  # a missing file, the only row of the label Fox
        [rows[1][0], "Dog", "train"],  # row 3's file again, with another label
        [rows[2][0], rows[2][1], "test"],  # row 4's file again, in another split
        ["Dog/copy-of-3.jpg", "Dog", "test"],
    ]
    Path(pets / "Cat" / "unlisted.jpg").write_bytes((pets / "Cat" / "5.jpg").read_bytes()[:-1] + b"\xd9")
    labels = _write_csv(pets / "l.csv", ["path", "label", "split"], rows)
    proc = run_cli("check", labels, "--json", "--strict")
    assert proc.returncode != 0
    report = json.loads(proc.stdout)
    kinds = {f["kind"]: f for f in report["findings"]}
    assert kinds["rows-missing"]["examples"] == ["row 62: Cat/missing.jpg"]
    assert kinds["rows-conflicting"]["examples"][0].startswith("row 63: Cat/1.jpg (first on row 3)")
    assert kinds["rows-cross-split"]["examples"][0].startswith("row 64: Cat/10.jpg (first on row 4)")
    assert kinds["labels-without-images"]["examples"] == ["Fox"]
    assert str(pets / "Cat" / "unlisted.jpg") in kinds["unlisted-files"]["examples"]
    assert kinds["leak"]["level"] == "error"  # Dog/3.jpg (train) and its copy (test)
    leak = next(g for g in report["duplicates"] if len(g["roots"]) > 1)
    assert {Path(m["path"]).name for m in leak["members"]} == {"3.jpg", "copy-of-3.jpg"}
    section = report["label_files"][0]
    assert section["good_rows"] == 61 and section["rows"] == 64 and not section["multilabel"]
    assert [r["name"].rsplit(":", 1)[1] for r in report["roots"]] == ["train", "test"]
