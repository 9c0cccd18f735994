"""`cnnctl review`: mark doubtful images on a local page, then apply (or undo) the change log."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from cnnctl.cli.common import ImageRoot, LabelColumn, LabelDelim, PathColumn, emit, label_options, out


def review_cmd(
    target: Annotated[
        str | None, typer.Argument(help="Run directory or .safetensors checkpoint whose top losses to review.")
    ] = None,
    data: Annotated[
        str | None,
        typer.Option(
            "--data",
            help="The image folder (class subfolders) or label file (CSV, TSV, JSONL: rewritten on --apply) to review.",
        ),
    ] = None,
    image_root: ImageRoot = "",
    path_column: PathColumn = "",
    label_column: LabelColumn = "",
    label_delim: LabelDelim = "",
    labels: Annotated[
        str | None,
        typer.Option("--labels", help="Also show the suspects of `cnnctl check DATA --labels --json > FILE`."),
    ] = None,
    top: Annotated[
        int, typer.Option("--top", min=1, help="How many of the highest-loss images (and suspects) to show.")
    ] = 50,
    log: Annotated[
        str, typer.Option("--log", help="The change log the marks go to (continued when it exists).")
    ] = "review-log.json",
    host: Annotated[str, typer.Option("--host", help="Address to bind (this machine only by default).")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="Port to bind.")] = 8100,
    apply: Annotated[
        str | None,
        typer.Option(
            "--apply", help="Apply this change log: move relabelled files to their class, removed ones to quarantine."
        ),
    ] = None,
    quarantine: Annotated[
        str | None,
        typer.Option(
            "--quarantine", help="--apply: where removed files go (default: DATA-quarantine beside the folder)."
        ),
    ] = None,
    undo: Annotated[
        str | None, typer.Option("--undo", help="Undo an applied change log, from its LOG.undo.json.")
    ] = None,
    json_: Annotated[bool, typer.Option("--json", help="--apply/--undo: print the result as JSON.")] = False,
) -> None:
    """Review the images a model gets most wrong and the suspected label errors, then fix the folder.

    Examples:

    $ cnnctl check photos/ --labels --json > suspects.json

    $ cnnctl review runs/pets --data photos/ --labels suspects.json

    $ cnnctl review --apply review-log.json

    $ cnnctl review --undo review-log.undo.json

    Files are moved, never deleted; every move is checked before the first one, and an undo log is written.
    """
    from cnnctl.errors import UsageError

    if apply or undo:
        if target or data or (apply and undo):
            raise UsageError("--apply and --undo take only the log (and --quarantine); give one of them alone")
        from cnnctl.review.changes import apply_log
        from cnnctl.review.changes import undo as undo_log

        result = apply_log(apply, quarantine) if apply else undo_log(undo or "")
        emit(result, json_, _render)
        return
    if not target or not data:
        raise UsageError("give a run and --data FOLDER to review (or --apply LOG / --undo UNDO)")
    if host not in ("127.0.0.1", "localhost", "::1"):
        print(
            f"cnnctl review: binding {host}: anyone who can reach it can mark (not move) files; the page has no login",
            file=sys.stderr,
        )
    from cnnctl.review.app import Review, run
    from cnnctl.review.items import build_items

    reading = label_options(image_root, path_column, label_column, label_delim, False)
    items, classes, spec = build_items(
        target, data, labels=labels, top=top, log=lambda m: print(m, file=sys.stderr), reading=reading
    )
    run(Review(target, data, items, classes, log, spec), host, port)


def _render(r: dict[str, Any]) -> None:
    console = out()
    if "applied" in r and "label_file" in r:
        d = r["decisions"]
        console.print(
            f"rewrote {r['label_file']}: {d['labels']} row(s) with new labels, {d['remove']} removed; {d['fine']} marked fine. "
            f"Undo with: cnnctl review --undo {r['undo']}",
            highlight=False,
        )
    elif "applied" in r:
        d = r["decisions"]
        console.print(
            f"moved {r['applied']} file(s): {d['relabel']} relabelled, {d['remove']} to quarantine; {d['fine']} marked fine. "
            f"Undo with: cnnctl review --undo {r['undo']}",
            highlight=False,
        )
    else:
        what = f"put {r['label_file']} back" if "label_file" in r else f"moved {r['undone']} file(s) back"
        console.print(f"{what} ({r['undo']})", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("review")(review_cmd)
