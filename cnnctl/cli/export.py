"""`cnnctl export TARGET [-o model.onnx]`: ONNX verified against PyTorch in onnxruntime."""

from __future__ import annotations

from typing import Annotated, Any, Optional

import typer

from cnnctl.cli.common import out, print_json


def export_cmd(
    target: Annotated[str, typer.Argument(help="Run directory or .safetensors checkpoint.")],
    output: Annotated[Optional[str], typer.Option("--output", "-o", help="Output .onnx (default: model.onnx in the run directory).")] = None,
    opset: Annotated[int, typer.Option("--opset", help="ONNX opset.")] = 18,
    dynamic: Annotated[str, typer.Option("--dynamic", metavar="[batch|none]", help="batch: dynamic batch axis; none: fixed --batch.")] = "batch",
    batch: Annotated[int, typer.Option("--batch", min=1, max=4096, help="Batch size of a --dynamic none export.")] = 1,
    exporter: Annotated[str, typer.Option("--exporter", metavar="[auto|dynamo|torchscript]", help="auto: dynamo, falling back to torchscript.")] = "auto",
    tolerance: Annotated[float, typer.Option("--tolerance", help="Largest |logit difference| accepted (scaled by max |logit| when that is above 1).")] = 1e-4,
    int8: Annotated[bool, typer.Option("--int8", help="Also write a static int8 (QDQ, per-channel) model calibrated on training images.")] = False,
    json_: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Export to ONNX with the checkpoint's metadata, then prove it matches PyTorch.

    Examples:

    $ cnnctl export runs/digits                     (writes runs/digits/model.onnx)

    $ cnnctl export runs/c10 --int8 -o c10.onnx      (and c10.int8.onnx, calibrated on training images)
    """
    from cnnctl.export import export

    report = export(target, output, opset=opset, dynamic=dynamic, batch=batch, exporter=exporter, tolerance=tolerance, int8=int8)
    if json_:
        print_json(report)
    else:
        _render(report)


def _render(r: dict[str, Any]) -> None:
    console = out()
    console.print(f"wrote {r['output']} ({r['bytes'] / 1024:.0f} KiB, {r['exporter']} exporter, opset {r['opset']}, {'dynamic batch' if r['dynamic'] == 'batch' else 'fixed batch'})", highlight=False)
    for c in r["checks"]:
        console.print(f"  parity at batch {c['batch']}: max |logit diff| {c['max_abs_diff']:.2e}, top-1 agreement {c['top1_agreement']:.2%} ({r['check_inputs']})", highlight=False)
    q = r.get("int8")
    if q:
        acc = f", top-1 {q['float_top1']:.4f} -> {q['int8_top1']:.4f} ({q['top1_drop_points']:+.2f} points)" if "int8_top1" in q else ""
        verdict = "meets" if q["meets_target"] else "MISSES"
        console.print(f"wrote {q['output']}: {q['speedup']:.2f}x faster at batch 64{acc}; {verdict} the target (>= 1.25x, <= 0.5 point drop)", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("export")(export_cmd)
