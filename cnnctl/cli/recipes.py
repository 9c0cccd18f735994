"""`cnnctl recipes [--json]` and `cnnctl recipes show NAME`: the recipes shipped in the package."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from cnnctl.cli.common import out, print_json
from cnnctl.cli.completion import complete_recipe

app = typer.Typer(
    help="The recipes shipped with cnnctl: what each reproduces, its measured result and machine.",
    no_args_is_help=False,
)


@app.callback(invoke_without_command=True)
def recipes(
    ctx: typer.Context,
    json_: Annotated[bool, typer.Option("--json", help="Print a JSON list instead of a table.")] = False,
) -> None:
    """List the shipped recipes (`cnnctl train --recipe NAME`); `cnnctl recipes show NAME` prints one.

    Examples:

    $ cnnctl recipes

    $ cnnctl recipes show mnist-fast > my.toml && cnnctl train --recipe ./my.toml
    """
    if ctx.invoked_subcommand is not None:
        return
    from cnnctl.recipebook import catalogue

    rows = catalogue()
    if json_:
        print_json([r.to_json() for r in rows])
        return
    from rich.table import Table

    table = Table(title=f"{len(rows)} shipped recipes: cnnctl train --recipe NAME", show_lines=True)
    for col in ("name", "reproduces", "measured result", "machine"):
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(r.name, r.reproduces, r.result, r.machine or "-")
    out().print(table)


@app.command("show")
def show(name: Annotated[str, typer.Argument(help="A shipped recipe's name.", autocompletion=complete_recipe)]) -> None:
    """Print a shipped recipe's TOML, to read or to copy and change."""
    from cnnctl.recipebook import is_path, locate

    if is_path(name):
        from cnnctl.errors import UsageError

        raise UsageError(
            f"{name!r} is a path; `cnnctl recipes show` takes a shipped recipe's name (`cnnctl recipes` lists them)"
        )
    sys.stdout.write(locate(name).read_text())


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="recipes")
