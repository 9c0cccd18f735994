"""`cnnctl models [PATTERN]`: what the registry holds."""

from __future__ import annotations

from typing import Annotated

import typer

from cnnctl.cli.common import human_count, out, print_json


def models(
    pattern: Annotated[
        str, typer.Argument(help="Shell-style wildcard, e.g. 'resnet*', 'tv:*' or 'timm:*lite*'.")
    ] = "*",
    json_: Annotated[bool, typer.Option("--json", help="Print a JSON list instead of a table.")] = False,
) -> None:
    """List registered models: default input, parameter count, description."""
    from cnnctl.models.catalog import describe_models

    rows = describe_models(pattern)
    if json_:
        print_json(rows)
        return
    from rich.table import Table

    table = Table(title=f"{len(rows)} model(s)" + ("" if pattern == "*" else f" matching {pattern!r}"))
    for col, justify in (
        ("name", "left"),
        ("input", "left"),
        ("classes", "right"),
        ("params", "right"),
        ("description", "left"),
    ):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for r in rows:
        table.add_row(r["name"], r["default_input"], str(r["num_classes"]), human_count(r["params"]), r["description"])
    out().print(table)
    if pattern == "*":
        out().print(
            "Any torchvision classifier works too as tv:NAME (list them with `cnnctl models 'tv:*'`), "
            "and any timm model as timm:NAME with `pip install 'cnnctl[timm]'` (`cnnctl models 'timm:*lite*'`)."
        )


def register(app: typer.Typer) -> None:
    app.command("models")(models)
