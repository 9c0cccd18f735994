"""The CUDA paths of train and eval, run for real where a GPU exists (skipped on CPU-only CI).

scripts/gpu_check.sh runs these with more checks on a GPU machine; docs/gpu.md has its results.
"""

from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import run_cli

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device here (CI has none); see docs/gpu.md"
)

ARGS = [
    "model-a",
    "--data",
    "mnist-mini",
    "--subset",
    "3000",
    "--epochs",
    "2",
    "--batch-size",
    "100",
    "--lr",
    "3e-3",
    "--scheduler",
    "onecycle",
    "--device",
    "cuda",
]


@pytest.mark.parametrize("amp", ["none", "bf16", "fp16"])
def test_training_on_cuda_learns_with_each_precision(tmp_path, amp):
    proc = run_cli("train", *ARGS, "--amp", amp, "--out", tmp_path / "run", "--json")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.splitlines()[-1])["summary"]
    assert summary["test"]["acc"] > 0.9
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["device"].startswith("cuda")


def test_compiled_training_resume_and_eval_on_cuda(tmp_path):
    run = tmp_path / "run"
    proc = run_cli("train", *ARGS, "--compile", "--out", run)
    assert proc.returncode == 0, proc.stderr
    proc = run_cli("train", "--resume", run, "--epochs", "3")
    assert proc.returncode == 0, proc.stderr
    assert len(json.loads((run / "history.json").read_text())["epochs"]) == 3
    on_gpu = json.loads(run_cli("eval", run, "--device", "cuda", "--json").stdout)
    on_cpu = json.loads(run_cli("eval", run, "--device", "cpu", "--json").stdout)
    assert on_gpu["images"] == on_cpu["images"] == 2000
    assert abs(on_gpu["top1"] - on_cpu["top1"]) <= 0.002  # same weights; float differences only


def test_deterministic_cuda_runs_are_bit_identical(tmp_path):
    from safetensors.torch import load_file

    for name in ("a", "b"):
        assert run_cli("train", *ARGS, "--deterministic", "--out", tmp_path / name).returncode == 0
    a, b = (load_file(str(tmp_path / n / "model.safetensors")) for n in ("a", "b"))
    assert all(a[k].equal(b[k]) for k in a)
