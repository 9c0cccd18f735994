"""`cnnctl plot RUN_DIR... [-o curves.png]`: loss and accuracy curves of one or more runs."""

from __future__ import annotations

from typing import Annotated

import typer


def plot(
    runs: Annotated[
        list[str], typer.Argument(help="Run directories (each with a history.json) to draw in one figure.")
    ],
    output: Annotated[str, typer.Option("--output", "-o", help="Image file (.png, .svg or .pdf).")] = "curves.png",
) -> None:
    """Draw train and validation loss and accuracy per epoch, several runs side by side."""
    from pathlib import Path

    from cnnctl.cli.common import out
    from cnnctl.evaluate.plots import plot_histories
    from cnnctl.train import history

    histories = {}
    for run in runs:
        name = Path(run).resolve().name
        histories[name if name not in histories else run] = history.load(Path(run) / "history.json")["epochs"]
    plot_histories(histories, output)
    out().print(f"wrote {output} ({len(histories)} run(s))", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("plot")(plot)
