"""`cnnctl explain RUN IMAGE...`: Grad-CAM-style heatmaps over the images, as the model saw them."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from cnnctl.cli.common import emit, out


def explain_cmd(
    target: Annotated[str, typer.Argument(help="Run directory or .safetensors checkpoint.")],
    images: Annotated[list[str], typer.Argument(help="Image files or folders (searched recursively).")],
    method: Annotated[
        str, typer.Option("--method", metavar="[gradcam|gradcam++|layercam]", help="How the map is computed.")
    ] = "gradcam",
    class_name: Annotated[
        str | None, typer.Option("--class", help="Explain this class (default: each image's predicted class).")
    ] = None,
    layer: Annotated[
        str | None,
        typer.Option("--layer", help="Target layer by module name (default: the last one with a spatial output)."),
    ] = None,
    out_dir: Annotated[
        str, typer.Option("--out", "-o", help="Folder for the PNG overlays (NAME.METHOD.png).")
    ] = "explain",
    device: Annotated[str, typer.Option("--device", metavar="[cpu|cuda]", help="PyTorch device.")] = "cpu",
    json_: Annotated[
        bool,
        typer.Option("--json", help="One JSON document: a record per image with the heatmap's peak in file pixels."),
    ] = False,
) -> None:
    """Where the model looks: a heatmap per image for the predicted class (or --class).

    Examples:

    $ cnnctl explain runs/pets photos/cat1.jpg photos/dog7.jpg

    $ cnnctl explain runs/pets wrong/ --method layercam --class Dog --json
    """
    from cnnctl.evaluate.explain import explain_files
    from cnnctl.runtime.inference import expand_inputs

    paths = expand_inputs(images)
    report = explain_files(
        target,
        paths,
        method=method,
        layer=layer or "",
        class_name=class_name,
        out_dir=out_dir,
        device=device,
        log=lambda m: print(m, file=sys.stderr),
    )
    for line in report["skipped"]:
        print(f"skipped: {line}", file=sys.stderr)
    emit(report, json_, _render)


def _render(r: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table(title=f"{r['method']} on {r['layer']}")
    for col in ("image", "class", "prob", "predicted", "peak x,y (file px)", "png"):
        table.add_column(col, overflow="fold")
    for rec in r["images"]:
        table.add_row(
            rec["path"],
            rec["class"],
            f"{rec['prob']:.3f}",
            rec["predicted"],
            f"{rec['peak']['x']:.0f},{rec['peak']['y']:.0f}" if rec["peak"] else "(flat map)",
            rec.get("png", ""),
        )
    out().print(table)


def register(app: typer.Typer) -> None:
    app.command("explain")(explain_cmd)
