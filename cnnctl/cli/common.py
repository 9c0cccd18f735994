"""What every subcommand shares: consoles, JSON output, number formatting. Torch-free."""

from __future__ import annotations

import json
import os
import sys
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

if TYPE_CHECKING:
    from cnnctl.data.labelfile import LabelSpec

_consoles: dict[str, Console] = {}


def _console(name: str) -> Console:
    """A console on stdout or stderr; wide when not a terminal, so tables stay unwrapped in files."""
    if name not in _consoles:
        stream = sys.stdout if name == "out" else sys.stderr
        width = None if stream.isatty() else int(os.environ.get("COLUMNS", "160"))
        _consoles[name] = Console(file=stream, width=width, soft_wrap=name == "err")
    return _consoles[name]


def out() -> Console:
    """Console for results (stdout)."""
    return _console("out")


def err() -> Console:
    """Console for progress and logs (stderr)."""
    return _console("err")


def print_json(obj: Any) -> None:
    """One JSON document on stdout (plain print: no rich markup or wrapping)."""
    sys.stdout.write(json.dumps(obj, indent=None, default=str) + "\n")
    sys.stdout.flush()


def emit(report: Any, as_json: bool, render: Any) -> None:
    """A command's result on stdout: one JSON document with --json, else `render(report)`."""
    if as_json:
        print_json(report)
    else:
        render(report)


def human_count(n: int | float) -> str:
    """1116970 -> "1.12M" (for compact table cells)."""
    n = float(n)
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return f"{int(n)}"


def human_bytes(n: int | float) -> str:
    n = float(n)
    for unit, div in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= div:
            return f"{n / div:.2f} {unit}"
    return f"{int(n)} B"


# How a label file given as --data is read: the same five options on every command that reads data.
ImageRoot = Annotated[
    str, typer.Option("--image-root", help="Label files: the folder image paths are relative to (default: the file's).")
]
PathColumn = Annotated[str, typer.Option("--path-column", help="Label files: the column of image paths.")]
LabelColumn = Annotated[str, typer.Option("--label-column", help="Label files: the column of labels.")]
LabelDelim = Annotated[
    str, typer.Option("--label-delim", help="Label files: what separates labels in one cell (default: whitespace).")
]
SkipBadRows = Annotated[
    bool,
    typer.Option(
        "--skip-bad-rows",
        help="Label files: leave out bad rows (missing files, unknown labels, ...), counted in the log.",
    ),
]


def label_options(image_root: str, path_column: str, label_column: str, label_delim: str, skip: bool) -> LabelSpec:
    """The label-file options of a command (the file itself is filled in where it is known)."""
    from cnnctl.data.labelfile import LabelSpec

    return LabelSpec("", image_root, path_column, label_column, label_delim, skip)
