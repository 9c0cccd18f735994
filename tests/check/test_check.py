"""`cnnctl check` on planted problems in real photos: what is found, with recall and false positives."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import PETS_MINI, run_cli


def _copy_class(src: Path, dst: Path, names: list[str]) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for n in names:
        shutil.copy(src / n, dst / n)


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> dict:
    """train/ with 20 cats and 20 dogs; holdout/ with other photos plus planted copies of train
    photos (3 byte-exact, 3 re-encoded at JPEG quality 70 and resized to 150 px, 1 copy of a
    cat filed as a dog), and every kind of bad or odd file."""
    root = tmp_path_factory.mktemp("planted")
    train, holdout = root / "train", root / "holdout"
    for cls in ("Cat", "Dog"):
        _copy_class(PETS_MINI / cls, train / cls, [f"{i}.jpg" for i in range(20)])
        _copy_class(PETS_MINI / cls, holdout / cls, [f"{i}.jpg" for i in range(20, 30)])
    leaks = []
    for i, cls in [(0, "Cat"), (1, "Dog"), (2, "Cat")]:
        shutil.copy(train / cls / f"{i}.jpg", holdout / cls / f"copy-{i}.jpg")
        leaks.append({str(train / cls / f"{i}.jpg"), str(holdout / cls / f"copy-{i}.jpg")})
    for i, cls in [(3, "Dog"), (4, "Cat"), (5, "Dog")]:
        img = Image.open(train / cls / f"{i}.jpg").convert("RGB").resize((150, 150))
        img.save(holdout / cls / f"reencoded-{i}.jpg", quality=70)
        leaks.append({str(train / cls / f"{i}.jpg"), str(holdout / cls / f"reencoded-{i}.jpg")})
    shutil.copy(train / "Cat" / "6.jpg", holdout / "Dog" / "cat-as-dog.jpg")
    conflict = {str(train / "Cat" / "6.jpg"), str(holdout / "Dog" / "cat-as-dog.jpg")}
    leaks.append(conflict)
    bad = holdout / "Cat"
    data = (PETS_MINI / "Cat" / "25.jpg").read_bytes()
    (bad / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (bad / "notes.jpg").write_text("not an image\n")
    (bad / "empty.jpg").write_bytes(b"")
    (bad / "Thumbs.db").write_bytes(b"\x00" * 64)
    photo = Image.open(PETS_MINI / "Cat" / "26.jpg").convert("RGB")
    photo.rotate(90).convert("CMYK").save(bad / "cmyk.jpg")
    Image.fromarray(np.asarray(photo.rotate(180).convert("L"), dtype=np.uint16) * 257).save(bad / "deep.png")
    photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT).convert("P").save(bad / "palette.png", transparency=0)
    exif = Image.Exif()
    exif[0x0112] = 6
    photo.transpose(Image.Transpose.FLIP_TOP_BOTTOM).save(bad / "rotated.jpg", exif=exif)
    return {"train": train, "holdout": holdout, "leaks": leaks, "conflict": conflict}


def _check(*args) -> dict:
    proc = run_cli("check", *map(str, args), "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def _finding(report: dict, kind: str) -> dict | None:
    return next((f for f in report["findings"] if f["kind"] == kind), None)


def test_check_finds_leaked_copies_across_folders_with_no_false_positives(planted):
    r = _check(planted["train"], "--against", planted["holdout"])
    groups = [{m["path"] for m in g["members"]} for g in r["duplicates"]]
    found = [g for g in groups if g in planted["leaks"]]
    assert len(found) == len(planted["leaks"]), f"recall {len(found)}/{len(planted['leaks'])}: {groups}"
    assert len(groups) == len(planted["leaks"]), f"false positives: {[g for g in groups if g not in planted['leaks']]}"
    kinds = {frozenset(m["path"] for m in g["members"]): g["kind"] for g in r["duplicates"]}
    assert sum(k == "exact" for k in kinds.values()) == 4 and sum(k == "near" for k in kinds.values()) == 3
    leak = _finding(r, "leak")
    assert leak["level"] == "error" and leak["count"] == 2 * len(planted["leaks"])
    conflict = _finding(r, "conflicting-labels")
    assert conflict["level"] == "error" and set(conflict["examples"]) == planted["conflict"]


def test_check_reports_every_bad_and_odd_file(planted):
    r = _check(planted["holdout"])
    status = {Path(p["path"]).name: p["status"] for p in r["problems"]}
    assert status == {
        "truncated.jpg": "truncated",
        "notes.jpg": "undecodable",
        "empty.jpg": "zero-byte",
        "Thumbs.db": "not-image",
    }
    for kind, name in [
        ("cmyk", "cmyk.jpg"),
        ("high-bit-depth", "deep.png"),
        ("alpha", "palette.png"),
        ("palette", "palette.png"),
        ("exif-rotated", "rotated.jpg"),
        ("mixed-modes", "deep.png"),
    ]:
        f = _finding(r, kind)
        assert f is not None and [Path(p).name for p in f["examples"]] == [name], (kind, f)
    assert r["roots"][0]["classes"] == {"Cat": 10 + 3 + 4, "Dog": 10 + 3 + 1}
    assert r["modes"]["RGB"] == 28 and r["modes"]["CMYK"] == 1
    assert r["sizes"]["width"]["min"] == 150 and r["sizes"]["width"]["max"] == 180


def test_strict_exits_1_on_errors_and_0_on_clean_data(planted, tmp_path):
    proc = run_cli("check", planted["train"], "--against", planted["holdout"], "--strict")
    assert proc.returncode == 1 and "check --strict:" in proc.stderr and "leak" in proc.stderr.splitlines()[-1]
    assert "leak" in proc.stdout and "conflicting-labels" in proc.stdout  # the table still printed
    clean = run_cli("check", planted["train"], "--strict", "-o", tmp_path / "report.json")
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert json.loads((tmp_path / "report.json").read_text())["errors"] == 0


def test_a_split_layout_is_checked_for_leaks_between_its_splits(planted, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(planted["train"], root / "train")
    (root / "test" / "Cat").mkdir(parents=True)
    shutil.copy(planted["train"] / "Cat" / "3.jpg", root / "test" / "Cat" / "leaked.jpg")
    r = _check(root)
    assert [g["roots"] for g in r["duplicates"]] == [[str(root / "test"), str(root / "train")]]


def test_check_never_writes_to_the_data(planted):
    before = {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in planted["holdout"].rglob("*")}
    _check(planted["holdout"])
    assert {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in planted["holdout"].rglob("*")} == before


def test_check_of_a_named_set_hashes_its_arrays():
    r = _check("mnist-mini", "--near", "-1")
    assert [root["images"] for root in r["roots"]] == [8000, 2000]
    assert r["modes"] == {"L": 10000}


def test_check_without_labels_does_not_import_torch(planted):
    import subprocess
    import sys

    code = (
        "import sys; from cnnctl.cli import main\n"
        "try:\n    main(['check', sys.argv[1], '--json'])\nexcept SystemExit:\n    pass\n"
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(planted["train"])], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr


def test_bad_check_arguments_are_one_line_errors(tmp_path):
    from tests.conftest import assert_user_error

    assert_user_error(run_cli("check", tmp_path / "missing"), "neither a known data set")
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "a.jpg").write_bytes(b"")
    assert_user_error(run_cli("check", tmp_path / "flat"), "no class subfolders")
    assert_user_error(run_cli("check", PETS_MINI, "--against", PETS_MINI), "named twice")


def test_reencoded_copies_stay_within_the_default_distance():
    """The calibration behind --near 6 and the thumbnail check, on the committed photos."""
    from cnnctl.check.duplicates import THUMB_MAD
    from cnnctl.check.phash import phash, thumbnail

    for path in sorted((PETS_MINI / "Dog").glob("*.jpg"))[:10]:
        img = Image.open(path).convert("RGB")
        buf = io.BytesIO()
        img.resize((120, 120)).save(buf, "JPEG", quality=50)
        copy = Image.open(buf)
        assert bin(phash(img) ^ phash(copy)).count("1") <= 6
        mad = np.abs(
            np.frombuffer(thumbnail(img), np.uint8).astype(int) - np.frombuffer(thumbnail(copy), np.uint8)
        ).mean()
        assert mad <= THUMB_MAD


def test_a_named_backbone_confirms_edited_copies_that_thumbnails_miss(tmp_path, mobilenet_torch_home):
    """20 copies of the committed photos, cropped by 2 px, resized to 150 px and re-encoded at
    quality 60, in a second folder: the thumbnail check confirms only some of the near pairs; with
    mobilenet_v2's embeddings every copy is found, and no group joins two different photos."""
    copies = tmp_path / "copies"
    originals = {}
    for cls in ("Cat", "Dog"):
        (copies / cls).mkdir(parents=True)
        for n in range(0, 30, 3):
            with Image.open(PETS_MINI / cls / f"{n}.jpg") as im:
                w, h = im.size
                edited = im.convert("RGB").crop((2, 2, w - 2, h - 2)).resize((150, 150), Image.Resampling.BILINEAR)
            edited.save(copies / cls / f"copy-{n}.jpg", quality=60)
            originals[str(copies / cls / f"copy-{n}.jpg")] = str(PETS_MINI / cls / f"{n}.jpg")

    def leaks(*extra: str) -> list[dict]:
        env = {"TORCH_HOME": str(mobilenet_torch_home)}
        proc = run_cli("check", PETS_MINI, "--against", copies, "--json", *extra, env=env)
        assert proc.returncode == 0, proc.stderr
        return [g for g in json.loads(proc.stdout)["duplicates"] if len(g["roots"]) > 1]

    plain = leaks()
    assert len(plain) < 20  # the 16x16 thumbnails of the edited copies differ too much
    found = leaks("--model", "tv:mobilenet_v2", "--weights", "IMAGENET1K_V1")
    assert len(found) == 20
    for group in found:  # each group is one photo and its copy: no false joins
        paths = {m["path"] for m in group["members"]}
        copy = next(p for p in paths if "copy-" in p)
        assert paths == {copy, originals[copy]}
