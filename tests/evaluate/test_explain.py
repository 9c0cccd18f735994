"""`cnnctl explain`: heatmaps that point where the evidence is, in the input file's coordinates."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from tests.conftest import CIFAR_MINI, assert_user_error, run_cli

BOX = (60, 12, 76, 28)  # x0, y0, x1, y1 of the patch in the 96x72 files
METHODS = ("gradcam", "gradcam++", "layercam")


@pytest.fixture(scope="module")
def patch_run(tmp_path_factory):
    """A resnet8 trained on real CIFAR-10 photos (96x72, stretched to 64x64) whose class is only
    whether a magenta/green checker patch sits at BOX: the evidence is there and nowhere else."""
    root = tmp_path_factory.mktemp("patch")
    backgrounds = sorted(CIFAR_MINI.rglob("*.jpg"))
    checker = (np.indices((16, 16)).sum(0) // 4 % 2)[..., None]
    for i, path in enumerate(backgrounds):
        img = np.asarray(Image.open(path).convert("RGB").resize((96, 72), Image.Resampling.BILINEAR)).copy()
        cls = "patch" if i % 2 == 0 else "plain"
        if cls == "patch":
            img[BOX[1] : BOX[3], BOX[0] : BOX[2]] = np.where(checker == 1, [255, 0, 255], [0, 255, 0])
        folder = root / ("held-out" if i % 10 == 0 else "train") / cls
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img.astype(np.uint8)).save(folder / f"{i}.png")
    run = root / "run"
    proc = run_cli(
        "train",
        "resnet8",
        "--data",
        root / "train",
        "--image-size",
        "64",
        "--epochs",
        "6",
        "--batch-size",
        "32",
        "--lr",
        "3e-3",
        "--optimizer",
        "adamw",
        "--scheduler",
        "onecycle",
        "--augment",
        "none",
        "--monitor",
        "last",
        "--out",
        run,
    )
    assert proc.returncode == 0, proc.stderr
    return run, sorted((root / "held-out" / "patch").glob("*.png"))


@pytest.mark.parametrize("method", METHODS)
def test_the_heatmap_peaks_on_the_patch_in_file_coordinates(patch_run, method, tmp_path):
    run, images = patch_run
    proc = run_cli("explain", run, *images, "--method", method, "--json", "-o", tmp_path / "png")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["layer"] == "features.5"  # the last stage before the global pool
    inside = [BOX[0] <= r["peak"]["x"] < BOX[2] and BOX[1] <= r["peak"]["y"] < BOX[3] for r in report["images"]]
    assert all(r["predicted"] == "patch" for r in report["images"])
    assert sum(inside) >= 0.9 * len(inside), [r["peak"] for r in report["images"]]
    png = Image.open(report["images"][0]["png"])
    assert png.size == (192, 192) and png.mode == "RGB"  # the 64x64 model view, shown at 3x


def test_most_of_the_heatmap_mass_lies_on_the_patch(patch_run):
    from cnnctl.evaluate.explain import Explainer

    run, images = patch_run
    for method in METHODS:
        explainer = Explainer(str(run), method=method)
        for path in images[:8]:
            heat = explainer.explain(str(path)).heatmap
            box = np.zeros_like(heat, dtype=bool)  # BOX in the 64x64 input, widened by one 4-pixel grid cell
            box[
                int(BOX[1] * 64 / 72) - 4 : int(BOX[3] * 64 / 72) + 4,
                int(BOX[0] * 64 / 96) - 4 : int(BOX[2] * 64 / 96) + 4,
            ] = True
            share = heat[box].sum() / heat.sum()
            assert share >= 0.6, (method, path.name, share, box.mean())


def test_another_class_can_be_explained_and_bad_names_are_refused(patch_run):
    run, images = patch_run
    proc = run_cli("explain", run, images[0], "--class", "plain", "--json", "-o", run / "x")
    record = json.loads(proc.stdout)["images"][0]
    assert record["class"] == "plain" and record["predicted"] == "patch" and record["prob"] < 0.5
    assert_user_error(run_cli("explain", run, images[0], "--class", "Dog"), "--class 'Dog'")
    assert_user_error(run_cli("explain", run, images[0], "--layer", "nope"), "--layer 'nope'")
    assert_user_error(run_cli("explain", run, images[0], "--method", "saliency"), "--method 'saliency'")


@pytest.mark.parametrize("size", [(300, 200), (200, 300), (181, 97)])
def test_input_points_map_back_through_the_centre_crop(size, tmp_path):
    """A bright pixel in the file, found in the cropped model view, maps back to where it is."""
    from cnnctl.evaluate.explain import to_file_xy
    from cnnctl.runtime.preprocess import Preprocess, load_image

    prep = Preprocess(3, (64, 64), resize="crop", resize_size=73, interpolation="nearest")
    w, h = size
    for fx, fy in [(w // 2, h // 2), (w // 2 + 20, h // 2 - 15)]:
        arr = np.zeros((h, w, 3), np.uint8)
        arr[fy - 2 : fy + 3, fx - 2 : fx + 3] = (
            255  # 5x5: nearest-neighbour sampling at ~1/3 scale always keeps some of it
        )
        Image.fromarray(arr).save(tmp_path / "dot.png")
        view = load_image(tmp_path / "dot.png", prep)[0]
        ys, xs = np.nonzero(view)
        gx, gy = to_file_xy(float(xs.mean()), float(ys.mean()), prep, w, h)
        step = max(w, h) / 73  # one model pixel in file pixels
        assert abs(gx - fx) <= step and abs(gy - fy) <= step, (size, (fx, fy), (gx, gy))
