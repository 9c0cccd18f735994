"""A corpus of bad input: each case is one `cnnctl: error:` line, a non-zero exit, no traceback,
and no output file left behind. Odd-but-valid images must simply work."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from PIL import Image

from tests.conftest import assert_user_error, run_cli, write_mnist_pngs


def _meta_variant(quick_run, tmp_path, name: str, **changes) -> str:
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(quick_run / "model.safetensors"), framework="pt") as f:
        meta = f.metadata()
    meta.update({k: json.dumps(v) for k, v in changes.items()})
    path = tmp_path / name
    save_file(load_file(str(quick_run / "model.safetensors")), str(path), metadata=meta)
    return str(path)


@pytest.fixture()
def corpus(quick_run, quick_onnx, tmp_path):
    real = (quick_run / "model.safetensors").read_bytes()
    onnx_bytes = quick_onnx.read_bytes()
    files = {
        "random.safetensors": np.random.default_rng(0).bytes(4096),
        "truncated.safetensors": real[: len(real) // 2],
        "empty.safetensors": b"",
        "huge-header.safetensors": struct.pack("<Q", 1 << 60) + b"{}",
        "array-header.safetensors": struct.pack("<Q", 2) + b"[]",
        "random.onnx": np.random.default_rng(1).bytes(4096),
        "truncated.onnx": onnx_bytes[: len(onnx_bytes) // 2],
        "model.pt": b"\x80\x04K\x01.",
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    return tmp_path


CASES = [
    ("eval", "random.safetensors", "header length"),
    ("eval", "truncated.safetensors", "damaged"),
    ("eval", "empty.safetensors", "too short"),
    ("eval", "huge-header.safetensors", "out of range"),
    ("eval", "array-header.safetensors", "not a valid safetensors file"),
    ("export", "random.safetensors", "header length"),
    ("export", "model.pt", "pickled"),
    ("predict", "random.onnx", "not a loadable ONNX model"),
    ("predict", "truncated.onnx", "not a loadable ONNX model"),
    ("predict", "model.pt", "pickled"),
    ("shapes", "random.onnx", "unknown model"),
]


@pytest.mark.parametrize("command, name, needle", CASES, ids=[f"{c}-{n}" for c, n, _ in CASES])
def test_damaged_model_files(corpus, command, name, needle):
    args = [command, corpus / name]
    if command == "predict":
        args.append(corpus / "random.onnx")
    assert_user_error(run_cli(*args, cwd=corpus), needle)
    assert not list(corpus.glob("*.tmp")) and not (corpus / "random.onnx.tmp").exists()


@pytest.mark.parametrize(
    "change, needle",
    [
        ({"input_shape": [-1, 28, 28]}, "input_shape"),
        ({"class_names": ["a", "b"]}, "class_names does not list 10"),
        ({"format": 99}, "format 99 is not supported"),
        ({"num_classes": "ten"}, "num_classes"),
        ({"preprocess": {"channels": 1, "size": [28, 28], "mean": [0.1], "std": [0.0]}}, "zero std"),
        ({"model": "model-c"}, "weights do not fit model model-c"),
        ({"model": "no-such-net"}, "unknown model"),
    ],
)
def test_hostile_or_wrong_metadata(quick_run, tmp_path, change, needle):
    path = _meta_variant(quick_run, tmp_path, "m.safetensors", **change)
    assert_user_error(run_cli("eval", path), needle)
    assert_user_error(run_cli("export", path, "-o", tmp_path / "m.onnx"), needle)
    assert not (tmp_path / "m.onnx").exists()


def test_onnx_without_cnnctl_metadata(tmp_path):
    import torch

    torch.onnx.export(torch.nn.Linear(4, 2), (torch.zeros(1, 4),), str(tmp_path / "plain.onnx"), dynamo=False)
    write_mnist_pngs(tmp_path / "img", per_class=1)
    assert_user_error(run_cli("predict", tmp_path / "plain.onnx", tmp_path / "img"), "no cnnctl metadata")


def test_decompression_bomb_and_odd_images(quick_onnx, tmp_path):
    files = write_mnist_pngs(tmp_path / "ok", per_class=1)
    src = Image.open(files[0][0])
    src.convert("CMYK").save(tmp_path / "ok" / "cmyk.jpg")
    src.convert("P").save(tmp_path / "ok" / "palette.png")
    Image.fromarray(np.asarray(src).astype(np.uint16) * 257).save(tmp_path / "ok" / "deep16.png")
    src.convert("RGBA").save(tmp_path / "ok" / "alpha.png")
    proc = run_cli("predict", quick_onnx, tmp_path / "ok", "--json")
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.splitlines()) == len(files) + 4
    Image.new("L", (9000, 9000)).save(tmp_path / "bomb.png")  # 81 Mpixel, a few KB on disk
    proc = run_cli("predict", quick_onnx, tmp_path / "bomb.png", files[0][0])
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "exceeds the 64,000,000-pixel limit" in proc.stderr or "decompression bomb" in proc.stderr


@pytest.mark.parametrize(
    "args, needle",
    [
        (["train", "--recipe", "RECIPE_BAD_TOML"], "not valid TOML"),
        (["train", "--recipe", "RECIPE_BAD_TYPE"], "epochs must be int"),
        (["predict", "MODEL", "IMG", "--top-k", "0"], "--top-k"),
        (["predict", "MODEL"], "missing argument"),
        (["eval", "RUN", "--split", "holdout"], "--split must be"),
        (["export", "RUN", "-o", "/proc/cnnctl-test.onnx"], "cannot write"),
        (["train", "model-a", "--image-size", "0"], "image size"),
        (["train", "model-a", "--epochs", "0"], "--epochs"),
        (["shapes", "model-a", "--input", "1x2x2", "--fit"], "larger input"),
    ],
)
def test_bad_arguments_across_commands(args, needle, quick_run, quick_onnx, tmp_path):
    (tmp_path / "bad.toml").write_text('model = "model-a"\nepochs = [\n')
    (tmp_path / "type.toml").write_text('model = "model-a"\nepochs = "ten"\n')
    img = write_mnist_pngs(tmp_path / "img", per_class=1)[0][0]
    subst = {
        "RECIPE_BAD_TOML": tmp_path / "bad.toml",
        "RECIPE_BAD_TYPE": tmp_path / "type.toml",
        "MODEL": quick_onnx,
        "IMG": img,
        "RUN": quick_run,
    }
    full = [subst.get(a, a) for a in args] + (["--out", tmp_path / "o"] if args[0] == "train" else [])
    proc = run_cli(*full)
    assert_user_error(proc, needle)
    assert not (tmp_path / "o" / "model.safetensors").exists()


def _small_disk(limit: int):
    """preexec_fn: files this process writes may not grow past `limit` bytes (a full disk)."""
    import resource
    import signal

    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG instead of being killed
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


@pytest.mark.parametrize("command", ["eval", "export"])
def test_full_disk_leaves_nothing_behind(command, quick_run, tmp_path):
    import os
    import subprocess
    import sys

    from tests.conftest import ROOT

    target = tmp_path / ("report.json" if command == "eval" else "m.onnx")
    args = [quick_run, "--output" if command == "eval" else "-o", target]
    proc = subprocess.run(
        [sys.executable, "-m", "cnnctl", command, *map(str, args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        preexec_fn=_small_disk(1024),
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )
    assert_user_error(proc, "cannot write", "disk full")
    assert list(tmp_path.iterdir()) == []
