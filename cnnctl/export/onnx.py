"""torch -> ONNX, with the checkpoint's metadata, checked in onnxruntime before it is reported done.

Every export is verified: `onnx.checker`, then onnxruntime against PyTorch on real training
images (or seeded random pixels when the data is not at hand) at batch 1 and at a larger batch.
An export that disagrees beyond the tolerance is deleted and reported as an error.

What the graph takes and computes is chosen here (`Deployed`): normalised float32 NCHW input
(the default), or raw uint8 pixels (`--input uint8`, NHWC or NCHW) scaled and normalised inside
the graph with the model's own mean/std; float32 or float16 (`--fp16`) weights and activations,
float32 at the graph's edges either way. `triton.py` wraps the result in a Triton model repository.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import io
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cnnctl.data.manifest import Manifest
from cnnctl.data.sources import Split
from cnnctl.errors import CnnctlError, ExportError, UsageError
from cnnctl.io import atomic_path, file_sha256
from cnnctl.models.checkpoint import load_model, resolve_checkpoint, versions
from cnnctl.runtime.inference import OnnxClassifier, graph_input
from cnnctl.runtime.metadata import ExportInfo, Metadata
from cnnctl.runtime.modelfile import set_onnx_metadata
from cnnctl.runtime.preprocess import Preprocess, normalize

Log = Callable[[str], None]


def _stderr_log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def sample_split(meta: Metadata, n: int, split: str = "train", recorded: Manifest | None = None) -> tuple[Split, str]:
    """Up to `n` real images (a seeded draw, still uint8) from the model's own data set and split.

    Falls back to the training split when there is no validation split; raises CnnctlError or
    OSError when the data is not at hand. `recorded`: the run's split manifest (its val split).
    """
    from cnnctl.evaluate.report import load_split

    def quiet(message: str) -> None:
        pass

    try:
        pool, name, _, _ = load_split(meta, None, None, split, log=quiet, recorded=recorded)
    except UsageError:  # no validation split (trained with --val-split 0): use training images
        pool, name, _, _ = load_split(meta, None, None, "train", log=quiet, recorded=recorded)
        split = "train"
    idx = torch.randperm(len(pool), generator=torch.Generator().manual_seed(0))[:n]
    return pool.take(idx), f"{len(idx)} {split} images of {name}"


def sample_pixels(
    meta: Metadata, n: int, split: str = "train", log: Log = _stderr_log, recorded: Manifest | None = None
) -> tuple[np.ndarray, np.ndarray | None, str]:
    """Up to `n` real images (uint8 N, C, H, W) from the model's own data set, else seeded random pixels."""
    try:
        pick, source = sample_split(meta, n, split, recorded)
        images = pick.images()
        if tuple(images.shape[-2:]) != tuple(
            meta.preprocess.size
        ):  # stored larger (random-resized crops): the centre, as validation
            from cnnctl.data.batches import centre_crop

            images = centre_crop(images, meta.preprocess.size)
        return images.numpy(), pick.y.numpy(), source
    except (CnnctlError, OSError) as exc:
        log(f"training data not available ({getattr(exc, 'message', exc)}); checking on seeded random pixels")
        rng = np.random.default_rng(0)
        c, h, w = meta.input_shape
        return rng.integers(0, 256, (n, c, h, w), dtype=np.uint8), None, f"{n} seeded random images"


class Deployed(torch.nn.Module):
    """The network as the ONNX graph computes it: optional raw-pixel input, optional float16.

    uint8 pixels are scaled and normalised with the same float32 operations, in the same order,
    as `preprocess.normalize` (x / 255, then (x - mean) / std), so the graph's first layer sees
    the very numbers the float path feeds it. With float16 the network runs in half precision
    between a cast in and a cast out: callers send and receive what a float32 graph takes.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        prep: Preprocess,
        input_dtype: str = "float32",
        layout: str = "NCHW",
        precision: str = "float32",
    ) -> None:
        super().__init__()
        self.model, self.pixels, self.nhwc, self.fp16 = (
            model,
            input_dtype == "uint8",
            layout == "NHWC",
            precision == "float16",
        )
        c = prep.channels
        self.normalise = bool(prep.mean)
        self.mean: torch.Tensor
        self.std: torch.Tensor
        self.register_buffer("mean", torch.tensor(prep.mean or [0.0] * c, dtype=torch.float32).reshape(1, c, 1, 1))
        self.register_buffer("std", torch.tensor(prep.std or [1.0] * c, dtype=torch.float32).reshape(1, c, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pixels:
            if self.nhwc:
                x = x.permute(0, 3, 1, 2)
            x = x.to(torch.float32) / 255.0
            if self.normalise:
                x = (x - self.mean) / self.std
        if self.fp16:
            return self.model(x.half()).float()
        return self.model(x)


def _export_dynamo(model: torch.nn.Module, x: torch.Tensor, path: Path, opset: int, dynamic: bool) -> None:
    shapes = ({0: torch.export.Dim.DYNAMIC},) if dynamic else None
    torch.onnx.export(
        model,
        (x,),
        str(path),
        input_names=["input"],
        output_names=["logits"],
        opset_version=opset,
        dynamo=True,
        dynamic_shapes=shapes,
        external_data=False,
        verbose=False,
    )


def _export_torchscript(model: torch.nn.Module, x: torch.Tensor, path: Path, opset: int, dynamic: bool) -> None:
    axes = {"input": {0: "batch"}, "logits": {0: "batch"}} if dynamic else None
    torch.onnx.export(
        model,
        (x,),
        str(path),
        input_names=["input"],
        output_names=["logits"],
        opset_version=min(opset, 20),
        dynamo=False,
        dynamic_axes=axes,
    )


EXPORTERS = {"dynamo": _export_dynamo, "torchscript": _export_torchscript}
FP16_TOLERANCE = 2e-2  # |logit diff| / max(1, max |logit|) accepted for a float16 graph
FP16_MIN_AGREEMENT = 0.99


def _input_kind(input_dtype: str, layout: str) -> tuple[str, str]:
    """(dtype, layout) of the graph's input from `--input` / `--layout` (auto: NHWC for uint8, as images are stored)."""
    if input_dtype in ("float", "float32"):
        if layout not in ("auto", "nchw", "NCHW"):
            raise UsageError("--layout applies to --input uint8; a float32 input is always NCHW (normalised tensors)")
        return "float32", "NCHW"
    if input_dtype != "uint8":
        raise UsageError(f"--input must be float32 or uint8, got {input_dtype!r}")
    if layout.upper() not in ("AUTO", "NHWC", "NCHW"):
        raise UsageError(f"--layout must be nhwc or nchw, got {layout!r}")
    return "uint8", "NHWC" if layout.upper() == "AUTO" else layout.upper()


def _quiet(fn: Callable[[], None]) -> str:
    """Run an exporter with its chatter captured (stdout must stay clean for --json)."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fn()
    return buf.getvalue()


def _attach_metadata(path: Path, meta: Metadata) -> None:
    import onnx

    model = onnx.load(str(path))
    set_onnx_metadata(model, meta)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))


def parity(clf: OnnxClassifier, model: torch.nn.Module, pixels: np.ndarray) -> dict[str, float]:
    """Max |logit difference| and top-1 agreement of onnxruntime vs the float32 PyTorch model on
    the same decoded images (uint8 N, C, H, W), each fed its own way."""
    with torch.inference_mode():
        ref = model(torch.from_numpy(normalize(pixels, clf.prep))).float().numpy()
    got = clf.logits(clf.from_pixels(pixels))
    return {
        "batch": int(pixels.shape[0]),
        "max_abs_diff": float(np.abs(got - ref).max()),
        "max_abs_logit": float(np.abs(ref).max()),
        "top1_agreement": float((got.argmax(1) == ref.argmax(1)).mean()),
    }


def default_output(target: str | Path) -> Path:
    p = Path(target)
    return p / "model.onnx" if p.is_dir() else resolve_checkpoint(p).with_suffix(".onnx")


@dataclass(frozen=True)
class ExportOptions:
    """How `cnnctl export` writes the graph (docs/export.md)."""

    opset: int = 18
    dynamic: str = "batch"  # "batch": any batch size; "none": fixed at `batch`
    batch: int = 1
    exporter: str = "auto"  # dynamo, torchscript, or auto (dynamo, falling back to torchscript)
    tolerance: float | None = None  # the parity bound (default: 1e-4, or FP16_TOLERANCE with fp16)
    int8: bool = False
    input_dtype: str = "float32"  # or "uint8": raw pixels, normalised inside the graph
    layout: str = "auto"
    fp16: bool = False
    check_batch: int = 32

    def checked(self) -> ExportOptions:
        """The options with the input kind and tolerance resolved; refuses what cannot be exported."""
        input_dtype, layout = _input_kind(self.input_dtype, self.layout)
        if self.int8 and (input_dtype != "float32" or self.fp16):
            raise UsageError("--int8 quantizes the float32 model: export it without --input uint8 / --fp16")
        if self.dynamic not in ("batch", "none"):
            raise UsageError(f"--dynamic must be batch or none, got {self.dynamic!r}")
        if self.exporter not in ("auto", *EXPORTERS):
            raise UsageError(f"--exporter must be auto, dynamo or torchscript, got {self.exporter!r}")
        if not 7 <= self.opset <= 23:
            raise UsageError(f"--opset {self.opset} is outside what cnnctl supports (7..23); 18 is a good default")
        tolerance = self.tolerance if self.tolerance is not None else (FP16_TOLERANCE if self.fp16 else 1e-4)
        return dataclasses.replace(self, input_dtype=input_dtype, layout=layout, tolerance=tolerance)

    @property
    def precision(self) -> str:
        return "float16" if self.fp16 else "float32"

    @property
    def is_dynamic(self) -> bool:
        return self.dynamic == "batch"


def export(
    target: str, output: str | None = None, opts: ExportOptions | None = None, log: Log = _stderr_log
) -> dict[str, Any]:
    """Export `target` to ONNX and verify it in onnxruntime; returns the report (see docs/export.md).
    Nothing is written unless the graph agrees with PyTorch."""
    opts = (opts or ExportOptions()).checked()
    model, meta, ckpt = load_model(target, "cpu")
    out = Path(output) if output else default_output(target)
    if out.suffix != ".onnx":
        raise UsageError(f"-o {out}: the output name must end in .onnx")
    prep = meta.preprocess
    recorded = Manifest.beside(ckpt)
    pixels, _, source = sample_pixels(
        meta, max(2, opts.check_batch) if opts.is_dynamic else opts.batch, log=log, recorded=recorded
    )
    report: dict[str, Any] = {
        "output": str(out),
        "checkpoint": str(ckpt),
        "check_inputs": source,
        "dynamic": opts.dynamic,
        "input": {"dtype": opts.input_dtype, "layout": opts.layout},
        "precision": opts.precision,
    }
    graph: torch.nn.Module = model
    if opts.input_dtype != "float32" or opts.fp16:
        graph = Deployed(
            copy.deepcopy(model) if opts.fp16 else model, prep, opts.input_dtype, opts.layout, opts.precision
        ).eval()
        if opts.fp16:
            graph.model.half()
    dummy = torch.from_numpy(
        graph_input(pixels[: opts.batch] if not opts.is_dynamic else pixels[:2], prep, opts.input_dtype, opts.layout)
    )
    with atomic_path(out) as tmp:
        used = write_graph(graph, dummy, tmp, out, opts, meta.model, log)
        export_info = ExportInfo(
            exporter=used,
            opset=opts.opset,
            source_sha256=file_sha256(ckpt),
            versions=versions(),
            input_dtype=opts.input_dtype,
            input_layout=opts.layout,
            precision=opts.precision,
        )
        meta = meta.replace(export=export_info)
        try:
            _attach_metadata(tmp, meta)
        except Exception as exc:  # noqa: BLE001 - onnx.checker raises several types
            raise ExportError(f"the exported model fails onnx.checker: {str(exc).splitlines()[0][:200]}") from None
        report.update(
            exporter=used, opset=opts.opset, checks=_verify(tmp, model, pixels, opts), tolerance=opts.tolerance
        )
    report["bytes"] = out.stat().st_size
    if opts.fp16:
        report["float_bytes_estimate"] = sum(
            t.numel() * 4 for t in model.state_dict().values() if t.is_floating_point()
        )
    if opts.int8:
        report["int8"] = quantize(out, model, meta, prep, log=log, recorded=recorded)
    return report


def write_graph(
    graph: torch.nn.Module, dummy: torch.Tensor, tmp: Path, out: Path, opts: ExportOptions, model_name: str, log: Log
) -> str:
    """Run the exporter(s) into `tmp` (renamed to `out` later); returns the one that succeeded
    (auto: dynamo, then torchscript)."""
    order = ["dynamo", "torchscript"] if opts.exporter == "auto" else [opts.exporter]
    failures = []
    for name in order:
        try:
            _quiet(lambda: EXPORTERS[name](graph, dummy, tmp, opts.opset, opts.is_dynamic))  # noqa: B023 - called at once
            return name
        except OSError as exc:  # the disk, not the exporter: no fallback can help
            raise ExportError(f"cannot write {out}: {exc.strerror or exc} (disk full or read-only?)") from None
        except Exception as exc:  # noqa: BLE001 - any exporter failure triggers the fallback
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            failures.append(f"{name}: {first[:200]}")
            if len(order) > 1:
                log(f"the {name} exporter failed for {model_name} ({first[:200]}); falling back")
    raise ExportError(f"could not export {model_name}: {'; '.join(failures)}")


def _verify(path: Path, model: torch.nn.Module, pixels: np.ndarray, opts: ExportOptions) -> list[dict[str, float]]:
    """Parity of the written graph with PyTorch at batch 1 (or the fixed batch) and at the check
    batch; float16 rounds every activation, so a near-tie may flip: 99% top-1 agreement there,
    all of it in float32."""
    clf = OnnxClassifier(path, "cpu")
    checks = [parity(clf, model, pixels[:1] if opts.is_dynamic else pixels[: opts.batch])]
    if opts.is_dynamic:
        checks.append(parity(clf, model, pixels))
    tolerance = opts.tolerance if opts.tolerance is not None else 1e-4
    min_agreement = FP16_MIN_AGREEMENT if opts.fp16 else 1.0
    for c in checks:
        if c["max_abs_diff"] > tolerance * max(1.0, c["max_abs_logit"]) or c["top1_agreement"] < min_agreement:
            raise ExportError(
                f"onnxruntime disagrees with PyTorch at batch {c['batch']}: max |logit diff| {c['max_abs_diff']:.3g} "
                f"(tolerance {tolerance:g}), top-1 agreement {c['top1_agreement']:.2%}; nothing was written"
            )
    return checks


def export_triton(
    target: str,
    repo: str,
    name: str | None = None,
    *,
    max_batch: int = 32,
    max_queue_delay_us: int = 5000,
    instances: int = 1,
    kind: str = "auto",
    opts: ExportOptions | None = None,
) -> dict[str, Any]:
    """`cnnctl export --format triton -o REPO`: the verified export inside a Triton model repository."""
    from cnnctl.export.triton import model_name, write_repository

    opts = opts or ExportOptions()
    if opts.int8:
        raise UsageError("--format triton takes one model file; export --int8 separately (cnnctl export RUN --int8)")
    if opts.dynamic != "batch":
        raise UsageError("--format triton uses Triton's dynamic batching, which needs --dynamic batch")
    resolve_checkpoint(target)  # a missing run fails before the repository is touched
    return write_repository(
        repo,
        name or model_name(target),
        lambda path: export(target, str(path), opts),
        max_batch=max_batch,
        max_queue_delay_us=max_queue_delay_us,
        instances=instances,
        kind=kind,
    )


def quantize(
    float_path: Path,
    model: torch.nn.Module,
    meta: Metadata,
    prep: Preprocess,
    *,
    calib: int = 256,
    log: Log = _stderr_log,
    recorded: Manifest | None = None,
) -> dict[str, Any]:
    """Static QDQ per-channel int8 quantization calibrated on training images, then measured."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pixels, _, source = sample_pixels(meta, calib, log=log, recorded=recorded)
    x_cal = normalize(pixels, prep)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter([{"input": x_cal[i : i + 32]} for i in range(0, len(x_cal), 32)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.items, None)

    out = float_path.with_name(float_path.stem + ".int8.onnx")
    with atomic_path(out) as tmp, atomic_path(float_path.with_name(float_path.stem + ".pre.onnx")) as pre:
        _quiet(lambda: quant_pre_process(str(float_path), str(pre), skip_symbolic_shape=True))
        _quiet(
            lambda: quantize_static(
                str(pre),
                str(tmp),
                Reader(),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
            )
        )
        assert meta.export is not None
        _attach_metadata(
            tmp, meta.replace(export=dataclasses.replace(meta.export, quantization="int8 static QDQ per-channel"))
        )
    pre_path = float_path.with_name(float_path.stem + ".pre.onnx")
    pre_path.unlink(missing_ok=True)
    result: dict[str, Any] = {"output": str(out), "calibration": source}
    try:
        val, result["validation"] = sample_split(meta, 2000, split="val", recorded=recorded)
    except (CnnctlError, OSError):
        val, result["validation"] = None, "no images: the model's data is not at hand"
    if val is not None:
        from cnnctl.evaluate.report import Target
        from cnnctl.train.engine import evaluate

        for key, path in (("float_top1", float_path), ("int8_top1", out)):
            target = Target(str(path), "cpu")  # batches sized by the memory budget, as `cnnctl eval` does
            result[key] = evaluate(target.module, target.batches(val, target.eval_batch("auto").size)).acc
        result["top1_drop_points"] = 100 * (result["float_top1"] - result["int8_top1"])
    f_clf, q_clf = OnnxClassifier(float_path, "cpu"), OnnxClassifier(out, "cpu")
    if val is not None:  # the timing batch: 64 of the validation images already drawn
        bench = normalize(val.take(torch.arange(min(64, len(val)))).images().numpy(), prep)
    else:
        bench = normalize(sample_pixels(meta, 64, split="val", log=lambda m: None, recorded=recorded)[0], prep)
    result["float_ms_batch64"] = _time_ms(f_clf, bench)
    result["int8_ms_batch64"] = _time_ms(q_clf, bench)
    result["speedup"] = result["float_ms_batch64"] / result["int8_ms_batch64"]
    misses = []
    if result["speedup"] < 1.25:
        misses.append(f"speedup {result['speedup']:.2f}x < 1.25x")
    if result.get("top1_drop_points", 0.0) > 0.5:
        misses.append(f"top-1 drop {result['top1_drop_points']:.2f} points > 0.5")
    result["meets_target"] = not misses
    if misses:
        log(f"int8 model misses the target ({'; '.join(misses)}); the float model is the safer choice")
    return result


def _time_ms(clf: OnnxClassifier, x: np.ndarray, repeats: int = 5) -> float:
    clf.logits(x)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        clf.logits(x)
        best = min(best, time.perf_counter() - start)
    return best * 1000
