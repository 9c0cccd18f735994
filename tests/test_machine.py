"""cnnctl.machine: what depends on the hardware, decided once (amp, threads, eval batch, env)."""

from __future__ import annotations

import json

import pytest
import torch

from cnnctl import machine
from cnnctl.errors import UsageError
from cnnctl.machine import choose_amp, cpu_info, eval_batch
from tests.conftest import assert_user_error, run_cli

pytestmark = pytest.mark.quick

AVX2 = "fpu sse2 avx avx2 fma f16c"  # an AMD EPYC / laptop without AVX-512: no native bf16
BF16 = AVX2 + " avx512f avx512bw avx512_bf16"
AMX = AVX2 + " avx512f amx_tile amx_bf16 amx_int8"


@pytest.fixture
def cpu_flags(monkeypatch):
    def set_flags(flags: str) -> None:
        monkeypatch.setenv(machine.FLAGS_ENV, flags)

    return set_flags


def test_amp_auto_is_float32_without_native_bf16(cpu_flags):
    cpu_flags(AVX2)
    choice = choose_amp("auto", "cpu")
    assert choice.amp == "none" and "without native bf16" in choice.reason


@pytest.mark.parametrize("flags, feature", [(BF16, "avx512_bf16"), (AMX, "AMX")])
def test_amp_auto_is_bf16_where_it_is_native(cpu_flags, flags, feature):
    cpu_flags(flags)
    choice = choose_amp("auto", "cpu")
    assert choice.amp == "bf16" and feature in choice.reason


def test_explicit_bf16_on_an_emulating_cpu_is_refused_naming_auto(cpu_flags):
    cpu_flags(AVX2)
    with pytest.raises(UsageError, match="--amp auto"):
        choose_amp("bf16", "cpu")
    cpu_flags(BF16)
    assert choose_amp("bf16", "cpu").amp == "bf16"


def test_fp16_and_non_cpu_devices(cpu_flags):
    cpu_flags(BF16)
    with pytest.raises(UsageError, match="CUDA"):
        choose_amp("fp16", "cpu")
    assert choose_amp("auto", "mps").amp == "none"
    with pytest.raises(UsageError, match="auto"):
        choose_amp("bf16", "mps")
    assert choose_amp("none", "cpu").amp == "none"


def test_cuda_rule_follows_the_compute_capability(monkeypatch):
    monkeypatch.setattr(machine, "cuda_bf16", lambda index=0: False)
    assert choose_amp("auto", "cuda").amp == "fp16"
    with pytest.raises(UsageError, match="auto"):
        choose_amp("bf16", "cuda")
    monkeypatch.setattr(machine, "cuda_bf16", lambda index=0: True)
    assert choose_amp("auto", "cuda").amp == "bf16"


def test_cpu_info_reads_this_machine_and_names_it(cpu_flags, monkeypatch):
    monkeypatch.delenv(machine.FLAGS_ENV, raising=False)
    real = cpu_info()
    assert real.cores >= 1 and real.model and not real.simulated
    if real.arch in ("x86_64", "amd64"):
        assert "sse2" in real.flags  # every x86-64 CPU has it: the flags were really read
    cpu_flags("avx2, fma")
    sim = cpu_info()
    assert sim.flags == {"avx2", "fma"} and sim.simulated
    assert f"{sim.cores} core" in sim.describe() and "avx2" in sim.describe() and "simulated" in sim.describe()


def test_threads_share_the_cores_among_ranks():
    cores = machine.usable_cores()
    assert machine.threads(0, 1)[0] == cores
    assert machine.threads(0, 2)[0] == max(1, cores // 2)
    assert machine.threads(3, 2) == (3, "--threads")


def test_explicit_eval_batch_wins_and_bad_values_are_refused():
    assert eval_batch(64, "tiny", (3, 256, 256), 2).size == 64
    assert eval_batch("96", "tiny", (3, 256, 256), 2).size == 96
    for bad in ("-3", "lots", -3):
        with pytest.raises(UsageError, match="auto"):
            eval_batch(bad, "tiny", (3, 256, 256), 2)
    with pytest.raises(UsageError, match="^--batch-size"):  # `cnnctl eval` names its own flag
        eval_batch("lots", "tiny", (3, 256, 256), 2, flag="--batch-size")


def test_auto_eval_batch_fits_the_budget_and_shrinks_with_the_image():
    small = eval_batch("auto", "model-a", (1, 28, 28), 10)
    assert small.size == machine.EVAL_BATCH_CAP  # tiny digits: the cap, not the budget
    large = eval_batch("auto", "tiny", (3, 256, 256), 2)
    assert 1 <= large.size < 64 and large.size * large.per_image_bytes <= large.budget_bytes
    tta = eval_batch("auto", "tiny", (3, 256, 256), 2, views=6)
    assert tta.per_image_bytes > large.per_image_bytes and tta.size <= large.size


def test_the_budget_follows_the_available_memory(monkeypatch):
    monkeypatch.setattr(machine, "memory_bytes", lambda: (4 << 30, 2 << 30))
    assert machine.eval_memory_budget("cpu")[0] == (2 << 30) // 16
    # Megabytes of jitter in the free memory leave the budget (and so the eval batch) where it was.
    for available in (6700 << 20, 6900 << 20, 7100 << 20):
        monkeypatch.setattr(machine, "memory_bytes", lambda a=available: (24 << 30, a))
        assert machine.eval_memory_budget("cpu")[0] == 384 * machine.MiB
    monkeypatch.setattr(machine, "memory_bytes", lambda: (64 << 30, 48 << 30))
    assert machine.eval_memory_budget("cpu")[0] == 512 * machine.MiB


@pytest.mark.parametrize(
    "name, shape, batch", [("tiny", (3, 160, 160), 16), ("resnet20", (3, 32, 32), 128), ("catdog", (1, 50, 50), 128)]
)
def test_the_estimate_covers_the_memory_a_forward_pass_really_takes(name, shape, batch):
    """Measured peak RssAnon of a real inference batch stays below the estimate the budget uses."""
    from cnnctl.models import create

    if not machine.rss_anon_bytes():
        pytest.skip("RssAnon is read from /proc (Linux)")
    estimate = eval_batch("auto", name, shape, 10).per_image_bytes
    model = create(name, shape, 10).eval().to(memory_format=torch.channels_last)
    x = torch.randint(0, 256, (batch, *shape), dtype=torch.uint8)
    with torch.inference_mode():
        model(torch.zeros(2, *shape).contiguous(memory_format=torch.channels_last))  # oneDNN's one-off buffers
        with machine.PeakMemory(interval=0.0005) as peak:
            base = machine.rss_anon_bytes()
            model(x.float().div_(255).contiguous(memory_format=torch.channels_last))
    measured = (peak.peak - base) / batch
    assert measured <= estimate, f"{name}: {measured / 2**20:.2f} MiB/image measured > {estimate / 2**20:.2f} estimated"


def test_env_reports_the_machine_and_its_choices(cpu_flags):
    proc = run_cli("env", "--json")
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout)
    assert r["cpu"]["cores"] >= 1 and set(r["cpu"]["flags"]) >= {"avx2", "avx512f", "avx512_bf16", "amx_bf16"}
    assert r["versions"]["torch"] == torch.__version__ and "CPUExecutionProvider" in r["onnxruntime_providers"]
    assert r["choices"]["amp"] in ("none", "bf16", "fp16") and r["choices"]["threads"] >= 1
    cpu_flags(AVX2)
    sim = json.loads(run_cli("env", "--json").stdout)
    assert sim["cpu"]["simulated"] and sim["choices"]["amp"] == "none" and not sim["cpu"]["native_bf16"]
    table = run_cli("env")
    assert table.returncode == 0 and "--amp auto" in table.stdout and "simulated" in table.stdout


def test_train_on_a_cpu_without_bf16(tmp_path, cpu_flags):
    """--amp auto trains in float32 and config.json says why; an explicit bf16 is refused, nothing written."""
    cpu_flags(AVX2)
    out = tmp_path / "auto"
    proc = run_cli("train", "model-a", "--data", "mnist-mini", "--iters", "3", "--amp", "auto", "--out", out)
    assert proc.returncode == 0, proc.stderr
    hw = json.loads((out / "config.json").read_text())["hardware"]
    assert hw["amp"] == "none" and "without native bf16" in hw["amp_reason"] and hw["threads"] >= 1
    assert hw["eval_batch_size"] == machine.EVAL_BATCH_CAP and "auto" in hw["eval_batch_reason"]
    assert "hardware: cpu, float32" in proc.stderr
    refused = tmp_path / "bf16"
    assert_user_error(
        run_cli("train", "model-a", "--data", "mnist-mini", "--iters", "3", "--amp", "bf16", "--out", refused),
        "--amp auto",
    )
    assert not refused.exists()


def test_train_picks_bf16_where_native(tmp_path, cpu_flags):
    cpu_flags(BF16)  # on a CPU without it oneDNN emulates bf16: slow, still correct, so keep it to 2 steps
    out = tmp_path / "bf16"
    proc = run_cli(
        "train",
        "model-a",
        "--data",
        "mnist-mini",
        "--iters",
        "2",
        "--batch-size",
        "32",
        "--val-split",
        "0.05",
        "--amp",
        "auto",
        "--eval-batch-size",
        "200",
        "--out",
        out,
    )
    assert proc.returncode == 0, proc.stderr
    hw = json.loads((out / "config.json").read_text())["hardware"]
    assert hw["amp"] == "bf16" and hw["eval_batch_size"] == 200 and hw["eval_batch_reason"] == "given"


def test_onednn_has_the_last_word_on_a_real_cpu(monkeypatch):
    """Flags that promise bf16 are not enough where oneDNN runs no bf16 kernels (an old build, or
    ONEDNN_MAX_CPU_ISA=AVX2): auto is float32 and an explicit bf16 is refused."""
    cpu = machine.CpuInfo(model="test CPU", cores=2, flags=frozenset(BF16.split()), arch="x86_64")
    monkeypatch.setattr(machine, "_torch_cpu_bf16", lambda: False)
    choice = choose_amp("auto", "cpu", cpu=cpu)
    assert choice.amp == "none" and "oneDNN" in choice.reason
    with pytest.raises(UsageError, match="--amp auto"):
        choose_amp("bf16", "cpu", cpu=cpu)
    monkeypatch.setattr(machine, "_torch_cpu_bf16", lambda: True)
    assert choose_amp("auto", "cpu", cpu=cpu).amp == "bf16"
