"""`cnnctl distill` through the real CLI on real photos: the proofs the issue asks for (alpha 1 is
plain training to the bit, the view conversion equals decoding twice, a one-class teacher is
learned, the teacher's cached answers follow the teacher and the views), a multi-label teacher,
images only the teacher labels, resume, the latency pick, and the refusals."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from cnnctl.distill.viewtable import ViewTable
from cnnctl.runtime import modelfile
from cnnctl.runtime.preprocess import Preprocess
from tests.conftest import CIFAR_MINI, PETS_MINI, ROOT, assert_user_error, run_cli

SMALL = ["--epochs", "2", "--batch-size", "32", "--lr", "3e-3", "--seed", "3", "--amp", "none", "--threads", "2"]


@pytest.fixture(scope="module")
def cifar_teacher(tmp_path_factory) -> Path:
    """A resnet20 trained briefly on the CIFAR-10 JPEGs (32 px): the teacher of the 32 px tests."""
    out = tmp_path_factory.mktemp("teacher") / "t"
    proc = run_cli("train", "resnet20", "--data", CIFAR_MINI, *SMALL, "--out", out)
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.fixture(scope="module")
def pets_teacher(tmp_path_factory) -> Path:
    """A tiny net on the cats-vs-dogs photos at 64 px: a teacher with a larger input than its students."""
    out = tmp_path_factory.mktemp("teacher") / "pets"
    proc = run_cli("train", "tiny", "--data", PETS_MINI, "--image-size", "64", *SMALL, "--out", out)
    assert proc.returncode == 0, proc.stderr
    return out


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "model.safetensors"))


def test_alpha_one_is_plain_training_to_the_bit(cifar_teacher, tmp_path):
    flags = ["--data", CIFAR_MINI, *SMALL, "--augment", "flip-crop"]
    plain = tmp_path / "plain"
    assert run_cli("train", "resnet8", *flags, "--out", plain).returncode == 0
    kd = tmp_path / "kd"
    proc = run_cli(
        "distill",
        "--teacher",
        cifar_teacher,
        "--student",
        "resnet8",
        *flags,
        "--alpha",
        "1",
        "--no-report",
        "--out",
        kd,
    )
    assert proc.returncode == 0, proc.stderr
    assert "the teacher is not asked" in proc.stderr
    a, b = json.loads((plain / "history.json").read_text()), json.loads((kd / "history.json").read_text())
    for ra, rb in zip(a["epochs"], b["epochs"], strict=True):
        for key in ("train_loss", "train_acc", "val_loss", "val_acc"):
            assert ra[key] == rb[key], key
    wa, wb = _weights(plain), _weights(kd)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    meta = modelfile.read(kd / "model.safetensors")
    assert meta.teacher is not None and meta.teacher["alpha"] == 1.0
    assert json.loads((kd / "config.json").read_text())["distill"]["teacher"] == str(cifar_teacher)


def test_the_view_conversion_equals_decoding_twice():
    from cnnctl.distill.views import convert
    from cnnctl.runtime.preprocess import Preprocess, load_image, normalize

    files = sorted(PETS_MINI.glob("*/*.jpg"))[:12]

    def decoded(prep: Preprocess) -> np.ndarray:
        return normalize(np.stack([load_image(f, prep) for f in files]), prep)

    # Same size: only normalisation and colour change; exact, up to PIL's roundings to uint8 (it
    # makes grey before resizing, each step rounded: within 1.5 grey levels).
    rgb = Preprocess(3, (64, 64), [0.5, 0.5, 0.5], [0.25, 0.25, 0.25])
    grey = Preprocess(1, (64, 64), [0.45], [0.22])
    other = Preprocess(3, (64, 64), [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    x = torch.from_numpy(decoded(rgb))
    assert np.abs(convert(x, rgb, other).numpy() - decoded(other)).max() * 0.229 < 1e-5
    assert np.abs(convert(x, rgb, grey).numpy() - decoded(grey)).max() * 0.22 <= 1.5 / 255 + 1e-5
    # Another size, the same framing (the centre crop's share of the shorter side): what a 224 px
    # view shrinks to is what decoding the file at 96 px gives, to about one grey level on average.
    big = Preprocess(3, (224, 224), [0.5] * 3, [0.5] * 3, "bicubic", "crop", 256)
    small = Preprocess(3, (96, 96), [0.485, 0.456, 0.406], [0.229, 0.224, 0.225], "bilinear", "crop", 110)
    diff = np.abs(convert(torch.from_numpy(decoded(big)), big, small).numpy() - decoded(small)) * 0.226
    assert diff.mean((1, 2, 3)).max() < 0.01, diff.mean((1, 2, 3))


def _one_class_teacher(run: Path, out: Path, cls: int) -> Path:
    """`run`'s checkpoint with its last layer answering class `cls` for every image."""
    out.mkdir()
    path = run / "model.safetensors"
    meta = modelfile.read(path)
    tensors = load_file(str(path))
    n = meta.num_classes
    bias = next(k for k, t in tensors.items() if k.endswith(".bias") and t.shape == (n,))
    weight = bias.removesuffix(".bias") + ".weight"  # the classifier: the layer with one output per class
    tensors[weight] = torch.zeros_like(tensors[weight])
    tensors[bias] = torch.full_like(tensors[bias], -4.0)
    tensors[bias][cls] = 4.0
    save_file(tensors, str(out / "model.safetensors"), metadata=meta.to_json_map())
    return out


def test_a_student_of_a_one_class_teacher_learns_that_class(pets_teacher, tmp_path):
    teacher = _one_class_teacher(pets_teacher, tmp_path / "dog-teacher", 1)
    student = tmp_path / "s"
    proc = run_cli(
        "distill", "--teacher", teacher, "--student", "resnet8", "--data", PETS_MINI, "--image-size", "32",
        "--epochs", "6", "--batch-size", "16", "--lr", "1e-2", "--alpha", "0", "--temperature", "1",
        "--seed", "0", "--amp", "none", "--out", student, "--json",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "views: drawn at 64x64 (the teacher's input), shrunk to the student's 32x32" in proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])["report"]
    assert report["student"]["input"] == [3, 32, 32] and report["teacher"]["input"] == [3, 64, 64]
    assert report["student"]["p50_ms"] > 0 and report["latency_ratio"] is not None
    assert (student / "model.onnx").is_file() and (student / "teacher.onnx").is_file()
    assert json.loads((student / "distill.json").read_text())["student"]["model"] == "resnet8"
    pred = run_cli("predict", student / "model.onnx", *map(str, sorted(PETS_MINI.glob("*/*.jpg"))), "--json")
    assert pred.returncode == 0, pred.stderr
    answers = [json.loads(line)["top"][0]["label"] for line in pred.stdout.splitlines()]
    assert len(answers) == len(list(PETS_MINI.glob("*/*.jpg"))) and set(answers) == {"Dog"}


def test_the_teachers_answers_are_cached_and_follow_the_teacher_and_the_views(cifar_teacher, tmp_path):
    cache = tmp_path / "cache"
    flags = ["--student", "resnet8", "--data", CIFAR_MINI, *SMALL, "--no-report", "--cache-dir", cache, "--overwrite"]
    first = run_cli("distill", "--teacher", cifar_teacher, *flags, "--out", tmp_path / "a")
    assert first.returncode == 0, first.stderr
    assert "teacher: answering once for 180 training image(s) x 1 fixed view(s)" in first.stderr
    again = run_cli("distill", "--teacher", cifar_teacher, *flags, "--out", tmp_path / "a")
    assert "teacher: answers for 180 training image(s) x 1 fixed view(s) from the cache" in again.stderr
    assert (
        json.loads((tmp_path / "a" / "history.json").read_text())["epochs"]
        == json.loads((tmp_path / "a" / "history.json").read_text())["epochs"]
    )
    other = _one_class_teacher(cifar_teacher, tmp_path / "other", 0)
    changed = run_cli("distill", "--teacher", other, *flags, "--out", tmp_path / "b")
    assert (
        "teacher: answering once for 180 training image(s) x 1 fixed view(s)" in changed.stderr
    )  # another teacher, new answers
    assert len(list(cache.glob("teacher-*.float32"))) == 2
    augmented = run_cli("distill", "--teacher", cifar_teacher, *flags, "--augment", "flip", "--out", tmp_path / "c")
    assert "teacher: answers for each view as it is drawn" in augmented.stderr
    # The key names the views: other images or another preprocessing give another entry.
    from cnnctl.data.batches import Batches
    from cnnctl.data.sources import load_source
    from cnnctl.distill.views import outputs_key
    from cnnctl.runtime.preprocess import Preprocess

    src = load_source(str(CIFAR_MINI), image_size=(32, 32), cache_dir=str(cache))
    prep = Preprocess(3, (32, 32), [0.5] * 3, [0.25] * 3)
    one = ViewTable.draw(1, "none", 0, len(src.train), (32, 32), (32, 32))

    def key(sha: str = "a" * 64, split=src.train, p=prep, table=one) -> str:
        return outputs_key(sha, prep, Batches(split, p, 32), table, "none")

    assert key() == key()
    assert key() != key(sha="b" * 64)
    assert key() != key(split=src.train.take(torch.arange(10)))
    assert key() != key(p=Preprocess(3, (32, 32), [0.4] * 3, [0.25] * 3))
    assert key() != key(table=ViewTable.draw(4, "flip-crop", 0, len(src.train), (32, 32), (32, 32)))
    assert key(table=ViewTable.draw(4, "flip-crop", 0, 180, (32, 32), (32, 32))) != key(
        table=ViewTable.draw(4, "flip-crop", 1, 180, (32, 32), (32, 32))
    )
    # Fixed augmented views: the teacher answers for 180 x 4 views once; the next run reads them.
    views = ["--augment", "flip-crop", "--feature-views", "4"]
    fixed = run_cli("distill", "--teacher", cifar_teacher, *flags, *views, "--out", tmp_path / "d")
    assert "teacher: answering once for 180 training image(s) x 4 fixed view(s)" in fixed.stderr, fixed.stderr
    fixed = run_cli("distill", "--teacher", cifar_teacher, *flags, *views, "--out", tmp_path / "d")
    assert "teacher: answers for 180 training image(s) x 4 fixed view(s) from the cache" in fixed.stderr, fixed.stderr
    policy = run_cli(
        "distill",
        "--teacher",
        cifar_teacher,
        *flags,
        *views,
        "--auto-augment",
        "trivialaugment",
        "--out",
        tmp_path / "e",
    )
    assert_user_error(policy, "--feature-views 4 fixes crops and flips")


def test_a_fixed_view_is_made_again_exactly_for_any_batch():
    from cnnctl.data.batches import Batches, centre_crop
    from cnnctl.data.sources import Split

    images = torch.randint(0, 256, (40, 3, 40, 40), dtype=torch.uint8)
    split = Split(images, torch.zeros(40, dtype=torch.int64))
    for augment in ("flip-crop", "rrc-flip"):
        table = ViewTable.draw(5, augment, 7, 40, (32, 32), (40, 40))
        rows = torch.arange(40)
        view = torch.randint(5, (40,), generator=torch.Generator().manual_seed(1))
        whole = table.images(split, rows, view).float()
        some = torch.tensor([3, 17, 29])
        assert torch.equal(table.images(split, some, view[some]).float(), whole[some])
        plain = table.images(split, rows, torch.zeros(40, dtype=torch.int64)).float()  # view 0: as evaluation sees it
        first = next(iter(Batches(split, Preprocess(3, (32, 32)), 40, channels_last=False)))[0] * 255
        assert torch.allclose(plain, centre_crop(images, (32, 32)).float()) and torch.allclose(plain, first, atol=1e-3)
        assert not torch.equal(whole[view > 0], plain[view > 0])


def test_unlabeled_images_resume_and_an_onnx_teacher(cifar_teacher, tmp_path):
    assert run_cli("export", cifar_teacher, "-o", tmp_path / "teacher.onnx").returncode == 0
    extra = tmp_path / "extra"
    shutil.copytree(CIFAR_MINI / "test", extra)  # no class folders needed: any images below it
    run = tmp_path / "s"
    flags = [
        "--student",
        "resnet8",
        "--data",
        CIFAR_MINI,
        *SMALL,
        "--no-report",
        "--augment",
        "flip-crop",
        "--ema",
        "0.9",
    ]
    proc = run_cli(
        "distill", "--teacher", tmp_path / "teacher.onnx", *flags, "--epochs", "1", "--unlabeled", extra, "--out", run
    )
    assert proc.returncode == 0, proc.stderr
    assert "--unlabeled: 50 image(s) from" in proc.stderr
    record = json.loads((run / "history.json").read_text())["epochs"][0]
    assert record["train_acc"] <= 1.0  # counted over the labelled images only
    more = run_cli("distill", "--resume", run, "--epochs", "2", "--no-report")
    assert more.returncode == 0, more.stderr
    assert [r["epoch"] for r in json.loads((run / "history.json").read_text())["epochs"]] == [1, 2]
    meta = modelfile.read(run / "model.safetensors")
    assert (
        meta.teacher is not None and meta.teacher["kind"] == "onnx" and meta.teacher["source"].endswith("teacher.onnx")
    )
    refused = run_cli("distill", "--resume", run, "--alpha", "0.9", "--epochs", "3")
    assert_user_error(refused, "--alpha")
    calibrated = run_cli("calibrate", run, "--split", "test", "--check", "val", "--json")  # an ordinary run directory
    assert calibrated.returncode == 0, calibrated.stderr
    assert modelfile.read(run / "model.safetensors").teacher == meta.teacher


def test_under_torchrun_every_rank_learns_from_the_teacher(cifar_teacher, tmp_path):
    from tests.train.test_distributed import torchrun

    flags = ["--student", "resnet8", "--data", CIFAR_MINI, "--epochs", "1", "--batch-size", "32", "--seed", "3"]
    proc = torchrun(
        "distill", "--teacher", cifar_teacher, *flags, "--no-report", "--threads", "1", "--out", tmp_path / "ddp"
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    single = run_cli(
        "distill", "--teacher", cifar_teacher, *flags, "--no-report", "--threads", "1", "--out", tmp_path / "one"
    )
    assert single.returncode == 0, single.stderr
    a = json.loads((tmp_path / "one" / "history.json").read_text())["epochs"][0]
    b = json.loads((tmp_path / "ddp" / "history.json").read_text())["epochs"][0]
    assert b["train_loss"] == pytest.approx(a["train_loss"], rel=2e-3) and b["steps"] == a["steps"]
    assert json.loads((tmp_path / "ddp" / "config.json").read_text())["world_size"] == 2


def test_a_multilabel_teacher_gives_sigmoid_targets(tmp_path):
    cmd = [sys.executable, str(ROOT / "recipes" / "make_mosaics.py"), str(CIFAR_MINI), str(tmp_path / "m")]
    made = subprocess.run(
        [*cmd, "--train", "160", "--test", "40", "--classes", "airplane,frog,ship"], capture_output=True, text=True
    )
    assert made.returncode == 0, made.stderr
    labels = tmp_path / "m" / "labels.csv"
    teacher = tmp_path / "t"
    assert run_cli("train", "tiny", "--data", labels, "--image-size", "32", *SMALL, "--out", teacher).returncode == 0
    student = tmp_path / "s"
    proc = run_cli(
        "distill",
        "--teacher",
        teacher,
        "--student",
        "resnet8",
        "--data",
        labels,
        "--image-size",
        "32",
        *SMALL,
        "--out",
        student,
        "--json",
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])["report"]
    assert report["student"]["test"]["metric"] == "map" and report["teacher"]["test"]["images"] == 40
    assert modelfile.read(student / "model.safetensors").task == "multilabel"
    from cnnctl.distill.loss import divergence

    t = torch.tensor([[3.0, -2.0, 0.5]])
    assert float(divergence(t, t, 2.0, True)) == pytest.approx(0.0, abs=1e-6)
    assert float(divergence(torch.zeros(1, 3), t, 2.0, True)) > 0


def test_the_latency_budget_picks_the_largest_student_that_fits(cifar_teacher, tmp_path):
    students = "resnet8@32,resnet56@32"
    proc = run_cli("distill", "--teacher", cifar_teacher, "--student", students, "--data", CIFAR_MINI,
                   "--latency-budget-ms", "1000", "--dry-run", "--json")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert [c["label"] for c in info["candidates"]] == ["resnet8@32", "resnet56@32"]
    assert info["chosen"] == "resnet56@32" and all(c["fits"] for c in info["candidates"])
    assert info["teacher"]["p50_ms"] > 0 and info["candidates"][1]["params"] > info["candidates"][0]["params"]
    trained = run_cli("distill", "--teacher", cifar_teacher, "--student", "resnet8@32,resnet20@32", "--data", CIFAR_MINI,
                      "--latency-budget-ms", "1000", "--epochs", "1", "--no-report", "--json", "--out", tmp_path / "s")  # fmt: skip
    assert trained.returncode == 0, trained.stderr
    lines = [json.loads(line) for line in trained.stdout.splitlines()]  # the table went to stderr: stdout stays JSON
    assert "summary" in lines[-1] and "<- chosen" in trained.stderr
    assert json.loads((tmp_path / "s" / "config.json").read_text())["model"] == "resnet20"
    none = run_cli("distill", "--teacher", cifar_teacher, "--student", students, "--data", CIFAR_MINI,
                   "--latency-budget-ms", "0.0001", "--dry-run")  # fmt: skip
    assert_user_error(none, "no student meets --latency-budget-ms 0.0001", "resnet8@32")


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--student", "resnet8", "--data", str(CIFAR_MINI)], "--teacher"),
        (["--teacher", "T", "--student", "resnet8,resnet20", "--data", str(CIFAR_MINI)], "--latency-budget-ms"),
        (["--teacher", "T", "--student", "resnet8", "--data", str(CIFAR_MINI), "--alpha", "2"], "--alpha 2"),
        (["--teacher", "T", "--student", "resnet8", "--data", str(PETS_MINI), "--image-size", "32"], "other classes"),
        (
            ["--teacher", "T", "--student", "resnet8", "--data", str(CIFAR_MINI), "--unlabeled", "nowhere"],
            "--unlabeled",
        ),
        (["--teacher", "missing.onnx", "--student", "resnet8", "--data", str(CIFAR_MINI)], "no such file"),
        (["--teacher", "T", "--recipe", "R", "--data", str(CIFAR_MINI)], "unknown key 'beta' in [distill]"),
    ],
)
def test_refusals_are_one_line(cifar_teacher, tmp_path, args, needle):
    recipe = tmp_path / "r.toml"
    recipe.write_text('model = "resnet8"\n[distill]\nalpha = 0.3\nbeta = 1\n')
    args = [str(cifar_teacher) if a == "T" else (str(recipe) if a == "R" else a) for a in args]
    proc = run_cli("distill", *args, "--epochs", "1", "--out", tmp_path / "never")
    assert_user_error(proc, needle)
    assert not (tmp_path / "never").exists()
