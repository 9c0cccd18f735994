"""Image folders: labels always come from the current listing, whatever the decode cache holds."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from cnnctl.data.layout import folder_layout
from cnnctl.data.sources import folder_split, image_folder
from cnnctl.errors import DataError
from cnnctl.runtime.preprocess import Preprocess, load_image
from tests.conftest import PETS_MINI, assert_user_error, run_cli

PREP = Preprocess(channels=3, size=(24, 24))


def copy_pets(dest: Path, per_class: int, classes: tuple[str, ...] = ("Cat", "Dog"), start: int = 0) -> None:
    for cls in classes:
        (dest / cls).mkdir(parents=True, exist_ok=True)
        for i in range(start, start + per_class):
            shutil.copy(PETS_MINI / cls / f"{i}.jpg", dest / cls / f"{i}.jpg")


def test_same_files_under_another_class_list_get_that_lists_labels(tmp_path):
    # The files are decoded and cached under one mapping, then read by a model whose classes are
    # a superset (Bird, Cat, Dog): the cache must not hand back the first mapping's labels.
    copy_pets(tmp_path / "photos", 3)
    cache = tmp_path / "cache"
    first = folder_split(tmp_path / "photos", ["Cat", "Dog"], PREP, cache, lambda m: None)
    assert first.y.tolist() == [0, 0, 0, 1, 1, 1]
    logs: list[str] = []
    second = folder_split(tmp_path / "photos", ["Bird", "Cat", "Dog"], PREP, cache, logs.append)
    assert not any(m.startswith("decoded") for m in logs)  # the pixels did come from the cache
    assert second.y.tolist() == [1, 1, 1, 2, 2, 2]
    assert torch.equal(first.images(), second.images())
    # A folder missing a class keeps the others' labels by name.
    shutil.rmtree(tmp_path / "photos" / "Cat")
    third = folder_split(tmp_path / "photos", ["Bird", "Cat", "Dog"], PREP, cache, lambda m: None)
    assert third.y.tolist() == [2, 2, 2]
    assert torch.equal(third.images()[0], torch.from_numpy(load_image(PETS_MINI / "Dog" / "0.jpg", PREP)))


def test_a_class_the_list_lacks_is_refused(tmp_path):
    copy_pets(tmp_path / "photos", 2)
    (tmp_path / "photos" / "Fox").mkdir()
    shutil.copy(PETS_MINI / "Dog" / "5.jpg", tmp_path / "photos" / "Fox" / "a.jpg")
    with pytest.raises(DataError, match=r"has classes \['Fox'\] that the model lacks"):
        folder_split(tmp_path / "photos", ["Cat", "Dog"], PREP, None, lambda m: None, "the model")


def test_split_folders_are_never_read_as_classes(tmp_path):
    copy_pets(tmp_path / "X" / "test", 2)
    layout = folder_layout(str(tmp_path / "X"))
    assert list(layout.splits) == ["test"]
    with pytest.raises(DataError, match="no train/ folder"):
        image_folder(str(tmp_path / "X"), (24, 24), False, None, lambda m: None)
    copy_pets(tmp_path / "X" / "Extra", 1)  # a class folder beside split folders: ambiguous
    with pytest.raises(DataError, match="mixes split folders"):
        folder_layout(str(tmp_path / "X"))


def support(report: dict) -> dict[str, int]:
    return {row["class"]: row["support"] for row in report["per_class"]}


@pytest.fixture(scope="module")
def pets_run(tmp_path_factory) -> Path:
    """A cats-vs-dogs model (classes Cat, Dog) trained briefly on the plain PetImages fixture folder."""
    out = tmp_path_factory.mktemp("pets") / "run"
    proc = run_cli(
        "train",
        "catdog",
        "--data",
        PETS_MINI,
        "--grayscale",
        "--image-size",
        "50",
        "--epochs",
        "1",
        "--batch-size",
        "16",
        "--out",
        out,
    )
    assert proc.returncode == 0, proc.stderr
    return out


def test_eval_on_folders_labels_by_name_as_the_folder_changes(pets_run, tmp_path):
    # The sequence that once evaluated 2,000 photos "all Cat": X holds only test/ at first ...
    x = tmp_path / "X"
    copy_pets(x / "test", 6, start=10)
    first = run_cli("eval", pets_run, "--data", x, "--json")
    assert first.returncode == 0, first.stderr
    r1 = json.loads(first.stdout)
    assert r1["split"] == "test" and r1["images"] == 12 and support(r1) == {"Cat": 6, "Dog": 6}
    assert_user_error(run_cli("train", "catdog", "--data", x, "--out", tmp_path / "r"), "no train/ folder")
    # ... then gains train/: the same test images, the same labels.
    copy_pets(x / "train", 4, start=20)
    second = json.loads(run_cli("eval", pets_run, "--data", x, "--json").stdout)
    assert support(second) == {"Cat": 6, "Dog": 6} and second["top1"] == r1["top1"]
    assert second["confusion_matrix"] == r1["confusion_matrix"]
    # A plain folder of class subfolders is evaluated whole; a missing class is fine.
    plain = tmp_path / "plain"
    copy_pets(plain, 6, classes=("Dog",), start=10)
    r3 = json.loads(run_cli("eval", pets_run, "--data", plain, "--json").stdout)
    assert r3["split"] == "all" and support(r3) == {"Cat": 0, "Dog": 6}
    # The same Dog photos get the same predictions, whichever folder they sit in.
    assert r3["confusion_matrix"][1] == r1["confusion_matrix"][1]
    # A class the model does not know: one line, no report.
    copy_pets(plain, 1, classes=("Cat",))
    (plain / "Cat").rename(plain / "Fox")
    assert_user_error(run_cli("eval", pets_run, "--data", plain), "has classes ['Fox'] that the model lacks")


def test_eval_on_the_training_folder_needs_a_split_it_was_not_trained_on(pets_run):
    assert_user_error(run_cli("eval", pets_run, "--data", PETS_MINI), "trained on", "--split val")
    proc = run_cli("eval", pets_run, "--split", "val", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    config = json.loads((pets_run / "config.json").read_text())
    assert report["images"] == config["data_summary"]["val"] == 6
