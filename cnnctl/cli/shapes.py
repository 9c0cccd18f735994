"""`cnnctl shapes MODEL --input CxHxW`: the layer-by-layer shape trace."""

from __future__ import annotations

from typing import Annotated

import typer

from cnnctl.cli.common import human_bytes, human_count, out, print_json
from cnnctl.cli.completion import complete_model


def shapes(
    model: Annotated[
        str,
        typer.Argument(
            help="Registry name (see `cnnctl models`) or a .safetensors checkpoint / run directory.",
            autocompletion=complete_model,
        ),
    ],
    input: Annotated[
        str | None, typer.Option("--input", "-i", help="Input shape CxHxW, e.g. 3x32x32 (default: the model's own).")
    ] = None,
    batch: Annotated[
        int, typer.Option("--batch", "-b", min=1, max=1_000_000, help="Batch size for the activation-memory estimate.")
    ] = 1,
    num_classes: Annotated[
        int | None, typer.Option("--num-classes", "-k", min=1, help="Number of classes for the head.")
    ] = None,
    depth: Annotated[
        int | None,
        typer.Option(
            "--depth", "-d", min=1, help="Show modules down to this nesting depth (default: every leaf layer)."
        ),
    ] = None,
    fit: Annotated[
        bool,
        typer.Option(
            "--fit",
            help="Build the model for --input (as `cnnctl train` does for its data) instead of its default input.",
        ),
    ] = False,
    explain: Annotated[
        bool, typer.Option("--explain", help="Show the output-size arithmetic of every conv and pool layer.")
    ] = False,
    json_: Annotated[bool, typer.Option("--json", help="Print the trace as JSON.")] = False,
) -> None:
    """Trace shapes, parameters, MACs, receptive field and stride layer by layer.

    Ends "mat1 and mat2 shapes cannot be multiplied": when an input cannot pass through the
    model, the trace stops at the failing layer and says what would fit.

    Examples:

    $ cnnctl shapes tiny --input 3x32x32 --explain

    $ cnnctl shapes catdog --input 1x64x64          (diagnoses the Linear that does not fit)

    $ cnnctl shapes runs/digits                     (the trained model, as built for its data)
    """
    from cnnctl.errors import ShapeError
    from cnnctl.models.shapes import visible_rows
    from cnnctl.models.tracing import trace_target
    from cnnctl.specs import parse_input_shape

    shape = parse_input_shape(input) if input else None
    name, result = trace_target(model, shape, batch=batch, num_classes=num_classes, fit=fit)
    if json_:
        print_json({"model": name, **result.to_dict()})
    else:
        _render(name, result, visible_rows(result.rows, depth), explain)
    if result.diagnosis:
        raise ShapeError(result.diagnosis)


def _render(model: str, result, rows, explain: bool) -> None:
    from rich.table import Table

    from cnnctl.specs import format_shape

    console = out()
    table = Table(title=f"{model} on input {format_shape(result.input_shape)} (batch {result.batch})")
    cols = ["layer", "type", "kernel", "stride", "pad", "output", "params", "MACs", "RF", "jump"]
    for c in cols:
        table.add_column(c, justify="right" if c in ("params", "MACs", "RF", "jump") else "left")
    for r in rows:
        table.add_row(
            "  " * (r.depth - 1) + r.name,
            r.type,
            r.kernel,
            r.stride,
            r.padding,
            format_shape(r.output_shape[1:]) if r.output_shape else "[red]failed[/red]",
            f"{r.params:,}" if r.params else "",
            human_count(r.macs) if r.macs else "",
            str(r.receptive_field) if r.receptive_field else "",
            str(r.jump) if r.jump else "",
        )
    console.print(table)
    if result.flatten and result.flatten.get("from"):
        f = result.flatten
        console.print(
            f"flatten: {format_shape(f['from'])} -> {f['from'][0] * f['from'][1] * f['from'][2]:,} features into {f['layer']} (Linear)"
        )
    if explain:
        for r in rows:
            for line in r.explain:
                console.print(f"  {r.name:<24} {line}")
    if not result.diagnosis:
        console.print(
            f"params: {result.params:,} ({result.trainable_params:,} trainable, {human_bytes(result.param_bytes)})  "
            f"MACs/image: {result.macs:,} ({human_count(result.macs)})  "
            f"activations: {human_bytes(result.activation_bytes_per_image)}/image, "
            f"{human_bytes(result.activation_bytes_per_image * result.batch)} at batch {result.batch}"
        )


def register(app: typer.Typer) -> None:
    app.command("shapes")(shapes)
