"""The `cnnctl` command: a thin dispatcher over one module per subcommand.

Nothing here imports torch: each subcommand imports the library it needs inside its function,
so `cnnctl --help` and `cnnctl predict model.onnx ...` start in a fraction of a second.
"""

from __future__ import annotations

import sys

import typer

try:  # typer >= 0.20 vendors its own click; older typers use the click package
    from typer._click import exceptions as _cx
except ImportError:  # pragma: no cover - depends on the installed typer
    import click.exceptions as _cx

from cnnctl import __version__
from cnnctl.errors import CnnctlError

app = typer.Typer(
    name="cnnctl",
    help="Train, check and ship convolutional image classifiers (PyTorch -> safetensors -> ONNX).",
    no_args_is_help=True,
    add_completion=True,  # --install-completion / --show-completion (bash, zsh, fish); cli/completion.py
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        print(f"cnnctl {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Train, check and ship convolutional image classifiers (PyTorch -> safetensors -> ONNX)."""


def _register() -> None:
    from cnnctl.cli import (
        calibrate,
        check,
        distill,
        env,
        eval,
        explain,
        export,
        lrfind,
        models,
        plot,
        predict,
        recipes,
        review,
        serve,
        shapes,
        track,
        train,
        tune,
    )

    for module in (
        models,
        shapes,
        check,
        train,
        tune,
        distill,
        lrfind,
        eval,
        calibrate,
        explain,
        export,
        predict,
        serve,
        review,
        plot,
        track,
        env,
        recipes,
    ):
        module.register(app)


_register()


# click >= 8.2 raises this for a bare `cnnctl`; older clicks print the help themselves.
_NoArgsIsHelp: type[Exception] = getattr(_cx, "NoArgsIsHelpError", type("_Never", (Exception,), {}))


def fail(message: str, code: int = 2) -> None:
    """Print one line to stderr and exit: the only way a user error leaves cnnctl."""
    sys.stderr.write(f"cnnctl: error: {message}\n")
    sys.stderr.flush()
    raise SystemExit(code)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: turns every user error into one line and an exit code."""
    command = typer.main.get_command(app)
    try:
        code = command.main(args=argv, prog_name="cnnctl", standalone_mode=False)
    except CnnctlError as exc:
        if exc.quiet:
            # A torchrun rank other than 0, with an error rank 0 reports too: torchrun stops every
            # rank as soon as one exits, so give rank 0 the moment it needs to print its line.
            import time

            time.sleep(3.0)
            raise SystemExit(exc.exit_code) from None
        for line in exc.details:
            sys.stderr.write(line + "\n")
        fail(exc.message, exc.exit_code)
    except _NoArgsIsHelp:
        raise SystemExit(0) from None  # the help was already printed
    except _cx.UsageError as exc:
        where = (
            f"cnnctl {exc.ctx.command.name} --help" if exc.ctx and exc.ctx.command.name != "cnnctl" else "cnnctl --help"
        )
        fail(f"{exc.format_message()} (see `{where}`)", exc.exit_code)
    except typer.Exit as exc:
        raise SystemExit(exc.exit_code) from None
    except (typer.Abort, KeyboardInterrupt):
        fail("interrupted", 130)
    except _cx.ClickException as exc:
        fail(exc.format_message(), exc.exit_code)
    except BrokenPipeError:
        raise SystemExit(0) from None
    raise SystemExit(code if isinstance(code, int) else 0)
