"""`cnnctl predict`: same preprocessing as training, same answers as eval, no torch on the ONNX path."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import torch

from cnnctl.data.batches import Batches
from cnnctl.data.sources import Split, folder_split
from cnnctl.runtime.inference import iter_batches
from cnnctl.runtime.preprocess import Preprocess, load_image, normalize
from tests.conftest import PETS_MINI, ROOT, run_cli, write_mnist_pngs


def test_predict_preprocessing_equals_the_training_pipeline(tmp_path):
    import shutil

    from PIL import Image

    # Real cats-vs-dogs photos, resized to 50x50 and grayscale as the tutorial does; two of them
    # cropped to non-square shapes (portrait and landscape), as users' photos are.
    for cls, name in (("Cat", "1.jpg"), ("Cat", "2.jpg"), ("Dog", "3.jpg")):
        (tmp_path / cls).mkdir(exist_ok=True)
        shutil.copy(PETS_MINI / cls / name, tmp_path / cls / name)
    with Image.open(PETS_MINI / "Dog" / "4.jpg") as img:
        img.crop((10, 0, 130, 180)).save(tmp_path / "Dog" / "portrait.jpg", quality=92)
        img.crop((0, 30, 180, 120)).save(tmp_path / "Dog" / "landscape.png")
    prep = Preprocess(channels=1, size=(50, 50), mean=[0.48], std=[0.26])
    split = folder_split(tmp_path, ["Cat", "Dog"], prep, None, lambda m: None)
    assert len(split) == 5
    train_x, _ = next(iter(Batches(split, prep, 8, channels_last=False)))
    errors: list[str] = []
    names, predict_pixels = next(iter_batches(split.paths, prep, 8, errors))
    assert names == split.paths and not errors
    assert np.array_equal(train_x.numpy(), normalize(predict_pixels, prep))  # bit-identical, not just close


def test_photo_crop_preprocessing_matches_torchvision_and_predict(tmp_path):
    import shutil

    import torchvision.transforms.v2 as T
    from PIL import Image

    # Non-square photos, kept in aspect: shorter side to 73, centre 64x64 (crop_pct 0.875), the
    # way torchvision's weights transforms do it; eval's folder path and predict's path must agree
    # with torchvision to the pixel.
    (tmp_path / "Dog").mkdir()
    with Image.open(PETS_MINI / "Dog" / "4.jpg") as img:
        img.crop((10, 0, 130, 180)).save(tmp_path / "Dog" / "portrait.jpg", quality=92)
        img.crop((0, 30, 180, 120)).save(tmp_path / "Dog" / "landscape.png")
    shutil.copy(PETS_MINI / "Dog" / "5.jpg", tmp_path / "Dog" / "square.jpg")
    prep = Preprocess(
        channels=3, size=(64, 64), mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225], resize="crop", resize_size=73
    )
    split = folder_split(tmp_path, ["Cat", "Dog"], prep, None, lambda m: None)
    reference = T.Compose([T.Resize(73), T.CenterCrop(64), T.PILToTensor()])
    for i, path in enumerate(split.paths):
        with Image.open(path) as img:
            assert np.array_equal(split.images()[i].numpy(), reference(img.convert("RGB")).numpy()), path
    train_x, _ = next(iter(Batches(split, prep, 8, channels_last=False)))
    errors: list[str] = []
    names, predict_pixels = next(iter_batches(split.paths, prep, 8, errors))
    assert names == split.paths and not errors
    assert np.array_equal(train_x.numpy(), normalize(predict_pixels, prep))


def test_png_of_a_dataset_image_gives_the_same_tensor(tmp_path):
    from cnnctl.data.sources import mnist_mini

    files = write_mnist_pngs(tmp_path, per_class=1)
    src = mnist_mini()
    prep = Preprocess(channels=1, size=(28, 28), mean=[0.13], std=[0.31])
    path, _ = files[0]
    index = int(path.stem)
    from_file = normalize(load_image(path, prep)[None], prep)
    from_data, _ = next(
        iter(Batches(Split(src.test.x[index : index + 1], src.test.y[index : index + 1]), prep, 1, channels_last=False))
    )
    assert np.array_equal(from_file, from_data.numpy())


def test_predict_matches_pytorch_on_image_files(quick_run, quick_onnx, tmp_path):
    files = write_mnist_pngs(tmp_path / "digits", per_class=15)
    for f, _ in files[:20]:  # some as JPEG too, which predict must read as well
        from PIL import Image

        Image.open(f).save(f.with_suffix(".jpg"), quality=95)
    proc = run_cli("predict", quick_onnx, tmp_path / "digits", "--json", "-k", "3")
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(rows) == len(files) + 20
    assert all(len(r["top"]) == 3 and abs(sum(t["prob"] for t in r["top"]) - 1) < 0.2 for r in rows)
    onnx_labels = {r["path"]: r["top"][0]["label"] for r in rows if r["path"].endswith(".png")}
    # The same images through the PyTorch checkpoint, as `cnnctl eval` computes them.
    proc = run_cli("predict", quick_run, tmp_path / "digits", "--json")
    torch_labels = {json.loads(line)["path"]: json.loads(line)["top"][0]["label"] for line in proc.stdout.splitlines()}
    assert all(torch_labels[p] == label for p, label in onnx_labels.items())
    accuracy = np.mean([onnx_labels[str(f)] == str(y) for f, y in files])
    assert accuracy >= 0.9
    from cnnctl.data.sources import mnist_mini
    from cnnctl.models.checkpoint import TorchClassifier

    clf = TorchClassifier(quick_run)
    test = mnist_mini().test
    idx = torch.tensor([int(f.stem) for f, _ in files])
    x, _ = next(iter(Batches(Split(test.x[idx], test.y[idx]), clf.prep, len(idx), channels_last=False)))
    eval_labels = clf.logits(x.numpy()).argmax(1)
    assert [onnx_labels[str(f)] for f, _ in files] == [str(v) for v in eval_labels]


PROBE = """
import sys
from cnnctl.cli import main
try:
    main(["predict", {model!r}, {image!r}, "--json"])
except SystemExit as exc:
    code = exc.code
print("TORCH_LOADED" if any(m == "torch" or m.startswith("torch.") for m in sys.modules) else "TORCH_FREE", code, file=sys.stderr)
print("MLFLOW_LOADED" if "mlflow" in sys.modules else "MLFLOW_FREE", file=sys.stderr)
"""


def test_onnx_predict_never_imports_torch(quick_onnx, tmp_path):
    files = write_mnist_pngs(tmp_path, per_class=1)
    proc = subprocess.run(
        [sys.executable, "-c", PROBE.format(model=str(quick_onnx), image=str(files[0][0]))],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert "TORCH_FREE 0" in proc.stderr and "MLFLOW_FREE" in proc.stderr, proc.stderr
    assert json.loads(proc.stdout)["path"] == str(files[0][0])


def test_unreadable_files_are_reported_and_the_rest_predicted(quick_onnx, tmp_path):
    files = write_mnist_pngs(tmp_path / "d", per_class=1)
    (tmp_path / "d" / "0" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    (tmp_path / "d" / "1" / "empty.jpg").write_bytes(b"")
    proc = run_cli("predict", quick_onnx, tmp_path / "d", tmp_path / "nothere.png", "--json")
    assert proc.returncode == 1
    assert len(proc.stdout.splitlines()) == len(files)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("cnnctl: error:")]
    assert len(errors) == 4 and "3 of 13 input(s) could not be read" in errors[-1]
    assert "Traceback" not in proc.stderr


def test_stdin_and_glob_inputs(quick_onnx, tmp_path):
    files = write_mnist_pngs(tmp_path, per_class=1)
    listing = "\n".join(str(f) for f, _ in files[:3]) + "\n"
    proc = run_cli("predict", quick_onnx, "-", "--json", input=listing)
    assert proc.returncode == 0 and len(proc.stdout.splitlines()) == 3
    proc = run_cli("predict", quick_onnx, str(tmp_path / "*" / "*.png"), "--json")
    assert proc.returncode == 0 and len(proc.stdout.splitlines()) == 10
    proc = run_cli("predict", quick_onnx, str(tmp_path / "nope*.png"))
    assert proc.returncode != 0 and "matches no files" in proc.stderr
