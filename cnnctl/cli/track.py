"""`cnnctl track sync RUN`: send to MLflow what a training run's tracker could not."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from cnnctl.cli.common import emit, out

app = typer.Typer(help="Experiment tracking on MLflow (docs/track.md).", no_args_is_help=True)


@app.command("sync")
def sync(
    run_dir: Annotated[str, typer.Argument(help="A run directory (trained with --track mlflow, or not yet tracked).")],
    tracking_uri: Annotated[
        str,
        typer.Option(
            "--tracking-uri", help="For a run not tracked yet: the tracking server (default: $MLFLOW_TRACKING_URI)."
        ),
    ] = "",
    experiment: Annotated[
        str,
        typer.Option("--experiment", help="For a run not tracked yet: the experiment (default: the data set's name)."),
    ] = "",
    json_: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Send a run directory to its MLflow run: whatever has not arrived (params, epochs, test
    metrics, files, how the run ended). Safe to repeat: what arrived is not sent again.

    Examples:

    $ cnnctl track sync runs/pets                   (after the tracking server was away)

    $ cnnctl track sync runs/old --tracking-uri http://mlflow:5000   (track a run trained without --track)
    """
    from cnnctl.track.sync import sync_run

    emit(sync_run(run_dir, tracking_uri, experiment), json_, _render)


def _render(r: dict[str, Any]) -> None:
    sent = r["sent"]
    parts = [f"{sent['epochs']} epoch(s)"]
    parts += [f"{sent['params']} params"] if sent["params"] else []
    parts += ["test metrics"] if sent["test"] else []
    parts += [f"{sent['files']} file(s)"] if sent["files"] else []
    parts += [f"status {sent['status']}"] if sent["status"] else []
    what = (
        ", ".join(parts)
        if any((sent["epochs"], sent["params"], sent["test"], sent["files"], sent["status"]))
        else "nothing new"
    )
    out().print(
        f"{r['run_dir']} -> MLflow run {r['run_id']} (experiment {r['experiment']!r} at {r['tracking_uri']}): sent {what}",
        highlight=False,
        soft_wrap=True,
    )


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="track")
