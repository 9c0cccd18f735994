"""What depends on the hardware, decided once: mixed precision, threads, memory budgets.

Recipes and flags say what a run should do; this module says how this machine does it. Setup,
`cnnctl eval`, export's checks and `cnnctl env` all ask here, so a rule changes in one place:

- `choose_amp`: `--amp auto` is bf16 where bf16 is native (a CPU with avx512_bf16 or AMX, a CUDA
  GPU of compute capability 8.0+), fp16 on older CUDA GPUs, float32 elsewhere. An explicit bf16
  that this machine would only emulate is refused (emulated bf16 convolutions ran ~50x slower
  than float32 on an AVX2-only EPYC), never silently slow.
- `threads`: the cores this process may run on, shared among the ranks of one node.
- `eval_batch`: the largest inference batch whose forward pass fits a memory budget, from the
  activation sizes of the model's shape trace, so validation memory does not grow with the data.

The module itself is torch-free (`cnnctl env --help` stays fast); the parts that ask torch
import it when called. `CNNCTL_CPU_FLAGS` replaces the CPU flags read from /proc/cpuinfo, to
see what cnnctl would choose on another CPU (`CNNCTL_CPU_FLAGS="avx2 fma" cnnctl env`) and in
tests; it changes decisions, not the hardware.
"""

from __future__ import annotations

import math
import os
import platform
from dataclasses import asdict, dataclass, field
from typing import Any

from cnnctl.errors import UsageError

FLAGS_ENV = "CNNCTL_CPU_FLAGS"
# The CPU features that change what cnnctl picks or how fast it runs, in the order `env` shows them.
NOTABLE_FLAGS = (
    "avx2",
    "fma",
    "avx512f",
    "avx512_bf16",
    "avx512_vnni",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
    "asimd",
    "bf16",
    "sve",
)
MiB = 1 << 20
EVAL_BATCH_CAP = 1024
FALLBACK_EVAL_BATCH = 32  # when a model's shape trace cannot run on the meta device
# Inference memory per image is estimated as this many times the largest (2 x input + output) of
# any layer in float32: measured peak RssAnon per image over tiny, catdog, resnet20, fastnet-wd
# and torchvision's mobilenet_v2/v3_small and resnet18/50 was 0.7-2.4x that (docs/train.md).
ACTIVATION_FACTOR = 2.5


@dataclass(frozen=True)
class CpuInfo:
    """The CPU as cnnctl sees it: model name, usable cores, feature flags."""

    model: str
    cores: int
    flags: frozenset[str]
    arch: str
    simulated: bool = False  # flags came from CNNCTL_CPU_FLAGS

    @property
    def avx2(self) -> bool:
        return "avx2" in self.flags

    @property
    def avx512(self) -> bool:
        return "avx512f" in self.flags

    @property
    def amx(self) -> bool:
        return "amx_bf16" in self.flags or "amx_tile" in self.flags

    @property
    def native_bf16(self) -> bool:
        """bf16 arithmetic in hardware: x86 avx512_bf16 or AMX, or the Arm bf16 extension."""
        return "avx512_bf16" in self.flags or self.amx or (self.arch in ("aarch64", "arm64") and "bf16" in self.flags)

    def describe(self) -> str:
        """e.g. "AMD EPYC (2 cores; avx2, avx512f, avx512_bf16)": how figures name their machine."""
        shown = [f for f in NOTABLE_FLAGS if f in self.flags]
        sim = f", simulated by {FLAGS_ENV}" if self.simulated else ""
        return f"{self.model} ({self.cores} core{'s' if self.cores != 1 else ''}; {', '.join(shown) or 'no AVX2'}{sim})"


def cpu_info() -> CpuInfo:
    """Read /proc/cpuinfo (Linux) once per call; elsewhere the platform's name and no flags."""
    model, flags = "", set[str]()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:  # the first core's entry names the model and flags (every core repeats them)
                key, _, value = line.partition(":")
                key = key.strip().lower()
                if key in ("model name", "hardware", "cpu model") and not model:
                    model = value.strip()
                elif key in ("flags", "features") and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    model = model or platform.processor() or platform.machine()
    simulated = FLAGS_ENV in os.environ
    if simulated:
        flags = {f.strip().lower() for f in os.environ[FLAGS_ENV].replace(",", " ").split() if f.strip()}
    return CpuInfo(
        model=model or "unknown CPU",
        cores=usable_cores(),
        flags=frozenset(flags),
        arch=platform.machine().lower(),
        simulated=simulated,
    )


def usable_cores() -> int:
    """Cores this process may run on (the affinity mask, as taskset and containers set it)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def memory_bytes() -> tuple[int, int]:
    """(total, available) RAM in bytes; (0, 0) where it cannot be read."""
    try:
        values = {}
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                key, _, rest = line.partition(":")
                values[key] = int(rest.split()[0]) * 1024
        return values.get("MemTotal", 0), values.get("MemAvailable", values.get("MemFree", 0))
    except (OSError, ValueError, IndexError):
        try:
            total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
            return total, total // 2
        except (ValueError, OSError, AttributeError):
            return 0, 0


def threads(requested: int, local_world_size: int = 1, cpu: CpuInfo | None = None) -> tuple[int, str]:
    """(threads per process, why): the usable cores shared among this node's ranks."""
    if requested:
        return requested, "--threads"
    cores = (cpu or cpu_info()).cores
    n = max(1, cores // max(1, local_world_size))
    why = f"{cores} usable core(s)" + (f" / {local_world_size} ranks on this node" if local_world_size > 1 else "")
    return n, why


@dataclass(frozen=True)
class AmpChoice:
    """The precision a run computes in, and why (recorded in config.json)."""

    amp: str  # none | bf16 | fp16
    reason: str

    @property
    def label(self) -> str:
        return {"none": "float32", "bf16": "bf16 autocast", "fp16": "fp16 autocast"}[self.amp]


def cuda_bf16(index: int = 0) -> bool:
    """Native bf16 on this CUDA device: compute capability 8.0 (Ampere) or newer."""
    import torch

    return torch.cuda.get_device_capability(index)[0] >= 8


def choose_amp(requested: str, device_type: str, *, cpu: CpuInfo | None = None, device_index: int = 0) -> AmpChoice:
    """Resolve --amp for this device; refuse what this machine could only emulate or not run."""
    if requested == "none":
        return AmpChoice("none", "--amp none: float32")
    if device_type == "cuda":
        native = cuda_bf16(device_index)
        if requested == "auto":
            return (
                AmpChoice("bf16", "CUDA device with native bf16")
                if native
                else AmpChoice("fp16", "CUDA device without bf16: fp16 + GradScaler")
            )
        if requested == "bf16" and not native:
            raise UsageError(
                "--amp bf16: this CUDA device has no native bf16 (compute capability < 8.0); use --amp auto (fp16 here) or --amp fp16"
            )
        return AmpChoice(requested, f"--amp {requested}")
    if requested == "fp16":
        raise UsageError(f"--amp fp16 needs a CUDA device (this run is on {device_type}); use --amp auto")
    if device_type != "cpu":
        if requested == "auto":
            return AmpChoice("none", f"{device_type}: float32 (cnnctl runs no autocast there)")
        raise UsageError(f"--amp bf16 runs on CUDA or CPU, not {device_type}; use --amp auto")
    cpu = cpu or cpu_info()
    onednn = (
        cpu.simulated or _torch_cpu_bf16()
    )  # oneDNN can lack kernels the flags promise (or be capped: ONEDNN_MAX_CPU_ISA)
    native = cpu.native_bf16 and onednn
    if requested == "auto":
        if native:
            return AmpChoice("bf16", f"CPU with native bf16 ({_bf16_feature(cpu)}): bf16 autocast")
        if cpu.native_bf16:
            return AmpChoice(
                "none", f"the CPU lists {_bf16_feature(cpu)} but oneDNN here runs no bf16 kernels: float32"
            )
        return AmpChoice("none", "CPU without native bf16 (no avx512_bf16 or AMX): float32")
    if not native:  # requested == "bf16"
        raise UsageError(
            f"--amp bf16: this CPU ({cpu.model}) has no native bf16 (avx512_bf16 or AMX), so it would be emulated, "
            f"many times slower than float32; use --amp auto (float32 here)"
        )
    return AmpChoice("bf16", f"--amp bf16 (native: {_bf16_feature(cpu)})")


def _bf16_feature(cpu: CpuInfo) -> str:
    return "AMX" if cpu.amx else ("avx512_bf16" if "avx512_bf16" in cpu.flags else "bf16")


def _torch_cpu_bf16() -> bool:
    """What oneDNN itself reports (it can lack kernels a CPU flag promises)."""
    try:
        import torch

        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError, ImportError):
        return False


def eval_memory_budget(device_type: str, device_index: int = 0) -> tuple[int, str]:
    """(bytes, why) one inference batch's activations may take.

    CPU: 512 MiB, or 1/16 of the available RAM where that is less (CPU inference gains nothing
    from batches beyond a few dozen photos), rounded down to 64 MiB steps: the free memory moves
    by megabytes from one moment to the next (another process, the page cache), and a budget that
    followed it would give a resumed or repeated run another eval batch, and so validation sums that
    differ in their last digits. CUDA: a quarter of the device's free memory, at most 4 GiB.
    """
    if device_type == "cuda":
        import torch

        free, _ = torch.cuda.mem_get_info(device_index)
        return min(4096 * MiB, free // 4), "a quarter of the free GPU memory, at most 4 GiB"
    _, available = memory_bytes()
    if available and available // 16 < 512 * MiB:
        steady = max(64 * MiB, available // 16 // (64 * MiB) * (64 * MiB))
        return steady, "1/16 of the available RAM, in steps of 64 MiB"
    return 512 * MiB, "the CPU default"


def per_image_inference_bytes(rows: list[Any], input_shape: tuple[int, ...], views: int = 1) -> int:
    """Estimated peak bytes per image of one inference forward pass (see ACTIVATION_FACTOR).

    `rows` are a shape trace's rows at batch 1; `views` > 1 adds the extra input copies that
    test-time augmentation makes (flipped and shifted images).
    """
    largest = 0
    for r in rows:
        if getattr(r, "leaf", False) and r.output_shape and r.input_shape:
            largest = max(largest, 2 * math.prod(r.input_shape) + math.prod(r.output_shape))
    image = math.prod(input_shape)
    return int(ACTIVATION_FACTOR * largest * 4 + (views + 1) * image * 4 + image)


def batch_for_budget(per_image: int, budget: int, cap: int = EVAL_BATCH_CAP) -> int:
    return max(1, min(cap, budget // max(1, per_image)))


@dataclass(frozen=True)
class EvalBatch:
    """The inference batch size of a run or an eval, and why."""

    size: int
    reason: str
    per_image_bytes: int = 0
    budget_bytes: int = 0


def eval_batch(
    requested: int | str,
    model_name: str,
    input_shape: tuple[int, int, int],
    num_classes: int,
    device_type: str = "cpu",
    *,
    views: int = 1,
    flag: str = "--eval-batch-size",
) -> EvalBatch:
    """--eval-batch-size / eval --batch-size (`flag`, for the error): an explicit number wins;
    "auto" (or 0) fits the budget. The estimate comes from the model's shape trace on the meta
    device (no memory, no time).
    """
    n = parse_batch_size(requested, flag)
    if n:
        return EvalBatch(n, "given")
    from cnnctl.models.tracing import trace_built

    try:
        result = trace_built(model_name, input_shape, num_classes)
    except Exception as exc:  # noqa: BLE001 - a model the meta-device trace cannot run still evaluates
        return EvalBatch(
            FALLBACK_EVAL_BATCH, f"auto: the shape trace failed ({type(exc).__name__}); {FALLBACK_EVAL_BATCH} images"
        )
    if result.diagnosis:
        return EvalBatch(
            FALLBACK_EVAL_BATCH,
            f"auto: the shape trace stopped ({result.diagnosis[:80]}); {FALLBACK_EVAL_BATCH} images",
        )
    per_image = per_image_inference_bytes(result.rows, tuple(input_shape), views)
    budget, why = eval_memory_budget(device_type)
    size = batch_for_budget(per_image, budget)
    capped = f", capped at {EVAL_BATCH_CAP}" if size == EVAL_BATCH_CAP else ""
    return EvalBatch(
        size, f"auto: ~{per_image / MiB:.2f} MiB/image in a {budget / MiB:.0f} MiB budget{capped}", per_image, budget
    )


def parse_batch_size(text: str | int, flag: str) -> int:
    """ "auto" -> 0, "256" (or 256) -> 256; anything else is one line naming the choices."""
    value = str(text).strip().lower()
    if value in ("auto", "0", ""):
        return 0
    try:
        n = int(value)
    except ValueError:
        raise UsageError(f"{flag} must be auto or a positive number of images, got {text!r}") from None
    if n < 1:
        raise UsageError(f"{flag} must be auto or at least 1, got {text!r}")
    return n


@dataclass(frozen=True)
class HardwarePlan:
    """Everything about a training run that depends on the machine, decided in one place.

    `config.json` records it under "hardware"; `--dry-run` prints it.
    """

    device: str
    cpu: str
    amp: AmpChoice
    threads: int
    threads_reason: str
    channels_last: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "cpu": self.cpu,
            "amp": self.amp.amp,
            "amp_reason": self.amp.reason,
            "threads": self.threads,
            "threads_reason": self.threads_reason,
            "channels_last": self.channels_last,
        }

    def summary(self) -> str:
        """One log line: what this run computes in and with, and why."""
        layout = "channels_last" if self.channels_last else "contiguous (NCHW)"
        return f"hardware: {self.device}, {self.amp.label} ({self.amp.reason}); {self.threads} thread(s); {layout}"


def plan(
    amp: str,
    requested_threads: int,
    channels_last: bool,
    device_type: str,
    *,
    device_index: int = 0,
    local_world_size: int = 1,
) -> HardwarePlan:
    """The run's precision, threads and memory layout on this machine (the eval batch, which needs
    the data's shapes, is `eval_batch`; train/plan.py holds both)."""
    cpu = cpu_info()
    n, why = threads(requested_threads, local_world_size, cpu)
    where = cpu.describe()
    if device_type == "cuda":
        import torch

        where = f"{torch.cuda.get_device_name(device_index)} (cuda:{device_index}); CPU {where}"
    return HardwarePlan(
        device_type, where, choose_amp(amp, device_type, cpu=cpu, device_index=device_index), n, why, channels_last
    )


@dataclass
class Report:
    """What `cnnctl env` prints: this machine, and what cnnctl would choose on it."""

    cpu: dict[str, Any]
    memory: dict[str, int]
    python: str
    versions: dict[str, str]
    onnxruntime_providers: list[str]
    cuda: list[dict[str, Any]]
    choices: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def report() -> Report:
    """Everything `cnnctl env` shows (imports torch and onnxruntime)."""
    import sys

    import torch

    cpu = cpu_info()
    total, available = memory_bytes()
    versions = {"torch": torch.__version__, "torch_cuda": str(torch.version.cuda), "cpu_capability": _cpu_capability()}
    providers: list[str] = []
    try:
        import onnxruntime as ort

        versions["onnxruntime"] = ort.__version__
        providers = list(ort.get_available_providers())
    except ImportError:
        versions["onnxruntime"] = "not installed"
    from cnnctl import __version__

    versions["cnnctl"] = __version__
    cuda = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            cuda.append(
                {
                    "index": i,
                    "name": props.name,
                    "capability": f"{props.major}.{props.minor}",
                    "memory_bytes": int(props.total_memory),
                    "bf16": props.major >= 8,
                }
            )
    device = "cuda" if cuda else "cpu"
    amp = choose_amp("auto", device, cpu=cpu)
    n_threads, why = threads(0, 1, cpu)
    budget, budget_why = eval_memory_budget(device)
    choices = {
        "device": device,
        "amp": amp.amp,
        "amp_reason": amp.reason,
        "threads": n_threads,
        "threads_reason": why,
        "channels_last": True,
        "eval_memory_budget_bytes": budget,
        "eval_memory_budget_reason": budget_why,
        "torch_native_bf16": _torch_cpu_bf16(),
    }
    return Report(
        cpu={
            "model": cpu.model,
            "arch": cpu.arch,
            "cores": cpu.cores,
            "logical_cpus": os.cpu_count() or 1,
            "flags": {f: f in cpu.flags for f in NOTABLE_FLAGS},
            "native_bf16": cpu.native_bf16,
            "simulated": cpu.simulated,
            "describe": cpu.describe(),
        },
        memory={"total_bytes": total, "available_bytes": available},
        python=sys.version.split()[0],
        versions=versions,
        onnxruntime_providers=providers,
        cuda=cuda,
        choices=choices,
    )


def _cpu_capability() -> str:
    try:
        import torch

        return str(torch.backends.cpu.get_cpu_capability())
    except (AttributeError, RuntimeError):
        return "unknown"


def rss_anon_bytes(pid: int | str = "self") -> int:
    """This process's anonymous resident memory (what grows with activations; mapped files aside)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


class PeakMemory:
    """Samples RssAnon every `interval` seconds in a thread while the block runs: `peak` bytes.

    Where /proc is not there (macOS, Windows), the peak is the process's maximum RSS instead.
    """

    def __init__(self, interval: float = 0.005) -> None:
        self.interval, self.peak, self.kind = interval, 0, "RssAnon"
        self._stop: Any = None
        self._thread: Any = None

    def __enter__(self) -> PeakMemory:
        import threading

        if not rss_anon_bytes():
            self.kind = "max RSS"
            return self
        self.peak = rss_anon_bytes()
        self._stop = threading.Event()

        def sample() -> None:
            while not self._stop.is_set():
                self.peak = max(self.peak, rss_anon_bytes())
                self._stop.wait(self.interval)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, rss_anon_bytes())
        else:
            import resource
            import sys

            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            self.peak = rss if sys.platform == "darwin" else rss * 1024
