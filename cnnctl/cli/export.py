"""`cnnctl export TARGET [-o model.onnx]`: ONNX verified against PyTorch in onnxruntime."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from cnnctl.cli.common import emit, out
from cnnctl.cli.completion import choices


def export_cmd(
    target: Annotated[str, typer.Argument(help="Run directory or .safetensors checkpoint.")],
    output: Annotated[
        str | None,
        typer.Option(
            "--output",
            "-o",
            help="Output .onnx (default: model.onnx in the run directory); with --format triton, the model repository folder.",
        ),
    ] = None,
    format_: Annotated[
        str,
        typer.Option(
            "--format",
            metavar="[onnx|triton]",
            autocompletion=choices("onnx", "triton"),
            help="onnx: one .onnx file; triton: a Triton model repository (REPO/NAME/config.pbtxt, 1/model.onnx, labels.txt).",
        ),
    ] = "onnx",
    input_: Annotated[
        str,
        typer.Option(
            "--input",
            metavar="[float32|uint8]",
            autocompletion=choices("float32", "uint8"),
            help="What the graph takes: normalised float32 NCHW, or uint8 pixels it scales and normalises itself.",
        ),
    ] = "float32",
    layout: Annotated[
        str,
        typer.Option(
            "--layout",
            metavar="[auto|nhwc|nchw]",
            autocompletion=choices("auto", "nhwc", "nchw"),
            help="Axis order of a --input uint8 graph (auto: NHWC, as images are stored).",
        ),
    ] = "auto",
    fp16: Annotated[
        bool,
        typer.Option(
            "--fp16",
            help="float16 weights and activations (for GPUs); float32 in and out; checked against float32 PyTorch.",
        ),
    ] = False,
    name: Annotated[
        str | None,
        typer.Option(
            "--name", help="--format triton: the model's name in the repository (default: the run directory's name)."
        ),
    ] = None,
    max_batch: Annotated[
        int,
        typer.Option(
            "--max-batch",
            min=1,
            max=65536,
            help="--format triton: max_batch_size, the largest batch dynamic batching forms.",
        ),
    ] = 32,
    max_queue_delay_us: Annotated[
        int,
        typer.Option("--max-queue-delay-us", min=0, help="--format triton: how long Triton waits for a batch to fill."),
    ] = 5000,
    instance_kind: Annotated[
        str,
        typer.Option(
            "--instance-kind",
            metavar="[auto|cpu|gpu]",
            help="--format triton: instance_group kind (auto: leave it to Triton).",
        ),
    ] = "auto",
    opset: Annotated[int, typer.Option("--opset", help="ONNX opset.")] = 18,
    dynamic: Annotated[
        str,
        typer.Option(
            "--dynamic",
            metavar="[batch|none]",
            autocompletion=choices("batch", "none"),
            help="batch: dynamic batch axis; none: fixed --batch.",
        ),
    ] = "batch",
    batch: Annotated[int, typer.Option("--batch", min=1, max=4096, help="Batch size of a --dynamic none export.")] = 1,
    exporter: Annotated[
        str,
        typer.Option(
            "--exporter",
            metavar="[auto|dynamo|torchscript]",
            autocompletion=choices("auto", "dynamo", "torchscript"),
            help="auto: dynamo, falling back to torchscript.",
        ),
    ] = "auto",
    tolerance: Annotated[
        float | None,
        typer.Option(
            "--tolerance",
            help="Largest |logit difference| accepted, scaled by max |logit| when that is above 1 (default 1e-4; 2e-2 with --fp16).",
        ),
    ] = None,
    int8: Annotated[
        bool,
        typer.Option("--int8", help="Also write a static int8 (QDQ, per-channel) model calibrated on training images."),
    ] = False,
    register: Annotated[
        str,
        typer.Option(
            "--register",
            metavar="NAME",
            help="Log the verified file (the int8 one with --int8) through MLflow's ONNX flavour and register it as a new "
            "version of NAME (needs cnnctl[mlflow]; docs/track.md).",
        ),
    ] = "",
    alias: Annotated[
        str, typer.Option("--alias", help="--register: point this alias (e.g. champion) at the new version.")
    ] = "",
    tracking_uri: Annotated[
        str, typer.Option("--tracking-uri", help="--register: the MLflow server (default: $MLFLOW_TRACKING_URI).")
    ] = "",
    json_: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Export to ONNX with the checkpoint's metadata, then prove it matches PyTorch.

    Examples:

    $ cnnctl export runs/digits                     (writes runs/digits/model.onnx)

    $ cnnctl export runs/c10 --int8 -o c10.onnx      (and c10.int8.onnx, calibrated on training images)

    $ cnnctl export runs/pets --input uint8 -o pets-pixels.onnx   (takes uint8 NHWC pixels)

    $ cnnctl export runs/pets --format triton -o model_repository

    $ cnnctl export runs/pets --input uint8 --register pets --alias champion   (then: cnnctl serve models:/pets@champion)
    """
    from cnnctl.errors import UsageError
    from cnnctl.export.onnx import ExportOptions, export, export_triton

    if (alias or tracking_uri) and not register:
        raise UsageError("--alias and --tracking-uri go with --register NAME")
    if register:
        from cnnctl.track.client import check_installed
        from cnnctl.track.client import tracking_uri as server_of

        if format_ != "onnx":
            raise UsageError("--register logs an .onnx file: use it with --format onnx")
        check_installed("--register")  # before the export: nothing to undo
        server_of(tracking_uri, "--register")
    options = ExportOptions(
        opset=opset,
        dynamic=dynamic,
        batch=batch,
        exporter=exporter,
        tolerance=tolerance,
        int8=int8,
        input_dtype=input_,
        layout=layout,
        fp16=fp16,
    )
    if format_ == "triton":
        if not output:
            raise UsageError("--format triton needs -o REPO, the model repository folder (e.g. -o model_repository)")
        report = export_triton(
            target,
            output,
            name,
            max_batch=max_batch,
            max_queue_delay_us=max_queue_delay_us,
            kind=instance_kind,
            opts=options,
        )
    elif format_ == "onnx":
        if name is not None:
            raise UsageError("--name names a model in a Triton repository; use it with --format triton")
        report = export(target, output, options)
        if register:
            from cnnctl.track.registry import register as register_file

            chosen = report["int8"]["output"] if report.get("int8") else report["output"]
            report["registered"] = register_file(chosen, register, alias, tracking_uri)
    else:
        raise UsageError(f"--format must be onnx or triton, got {format_!r}")
    emit(report, json_, _render)


def _render(r: dict[str, Any]) -> None:
    console = out()
    kind = "" if r["input"]["dtype"] == "float32" else f", takes uint8 {r['input']['layout']} pixels"
    kind += ", float16" if r["precision"] == "float16" else ""
    console.print(
        f"wrote {r['output']} ({r['bytes'] / 1024:.0f} KiB, {r['exporter']} exporter, opset {r['opset']}, "
        f"{'dynamic batch' if r['dynamic'] == 'batch' else 'fixed batch'}{kind})",
        highlight=False,
    )
    for c in r["checks"]:
        console.print(
            f"  parity at batch {c['batch']}: max |logit diff| {c['max_abs_diff']:.2e}, top-1 agreement "
            f"{c['top1_agreement']:.2%} ({r['check_inputs']})",
            highlight=False,
        )
    q = r.get("int8")
    if q:
        acc = (
            f", top-1 {q['float_top1']:.4f} -> {q['int8_top1']:.4f} ({q['top1_drop_points']:+.2f} points)"
            if "int8_top1" in q
            else ""
        )
        verdict = "meets" if q["meets_target"] else "MISSES"
        console.print(
            f"wrote {q['output']}: {q['speedup']:.2f}x faster at batch 64{acc}; {verdict} the target (>= 1.25x, <= 0.5 point drop)",
            highlight=False,
        )
    g = r.get("registered")
    if g:
        moved = f"; {g['alias_uri']} -> version {g['version']}" if g["alias"] else ""
        run = "its training run" if g["linked_to_training_run"] else "a new run"
        console.print(
            f"registered {g['uri']} ({g['variant']}, logged in {run} {g['run_id']} at {g['tracking_uri']}){moved}",
            highlight=False,
            soft_wrap=True,
        )
    t = r.get("triton")
    if t:
        from cnnctl.export.triton import docker_line

        console.print(
            f"Triton model repository {t['repository']}: {t['name']}/config.pbtxt (max_batch_size {t['max_batch_size']}, dynamic batching; "
            f"{t['validated_with']}), {t['name']}/labels.txt, {t['name']}/1/model.onnx",
            highlight=False,
        )
        console.print(f"  serve it: {docker_line(t['repository'])}", highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.command("export")(export_cmd)
