"""`cnnctl predict MODEL INPUT...`: classify image files. An .onnx MODEL never imports torch."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer

from cnnctl.cli.common import out


def predict(
    model: Annotated[
        str,
        typer.Argument(
            help="An exported .onnx file (onnxruntime), a registered one (models:/NAME/VERSION or models:/NAME@ALIAS), or "
            "a .safetensors checkpoint / run directory (PyTorch)."
        ),
    ],
    inputs: Annotated[
        list[str], typer.Argument(help="Image files, folders (recursive), globs, or - to read paths from stdin.")
    ],
    top_k: Annotated[int, typer.Option("--top-k", "-k", min=1, help="Labels to show per image.")] = 1,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, max=65536, help="Images per inference batch.")] = 64,
    provider: Annotated[
        str,
        typer.Option(
            "--provider",
            metavar="[auto|cpu|cuda]",
            help="onnxruntime provider, or the PyTorch device for a checkpoint (auto: CUDA when available).",
        ),
    ] = "auto",
    threads: Annotated[
        int,
        typer.Option(
            "--threads",
            min=0,
            help="onnxruntime intra-op threads, or torch threads for a checkpoint (0 = the default).",
        ),
    ] = 0,
    json_: Annotated[
        bool,
        typer.Option(
            "--json",
            help="One JSON line per image: path and top-k labels with probabilities (multi-label models add "
            "labels, the predicted set, and probs, every class's probability).",
        ),
    ] = False,
) -> None:
    """Predict classes with the preprocessing stored in the model's metadata.

    Examples:

    $ cnnctl predict runs/pets/model.onnx photo.jpg

    $ cnnctl predict runs/pets/model.onnx photos/ 'more/*.png' --top-k 3 --json

    $ find photos -name '*.jpg' | cnnctl predict runs/pets/model.onnx -
    """
    from cnnctl.errors import PartialFailure
    from cnnctl.runtime.classifier import open_classifier
    from cnnctl.runtime.inference import expand_inputs, predict_paths

    clf = open_classifier(model, provider, threads)
    shown = f"{model} ({clf.path})" if model.startswith("models:/") else clf.path
    print(f"model {shown}: {clf.meta.model}, provider {clf.provider}", file=sys.stderr)
    paths = expand_inputs(inputs)
    results, errors = predict_paths(clf, paths, batch_size=batch_size, k=top_k)
    for message in errors:
        print(f"cnnctl: error: {message}", file=sys.stderr)
    if json_:
        for r in results:
            sys.stdout.write(json.dumps(r.to_json()) + "\n")
        sys.stdout.flush()
    else:
        from rich.markup import escape
        from rich.table import Table

        table = Table()
        table.add_column("path")
        if clf.meta.multilabel:  # the predicted set at the tuned thresholds, each with its probability
            table.add_column("labels (probability)")
            for r in results:
                probs = r.probs or {}
                shown = ", ".join(f"{label} {probs[label]:.3f}" for label in r.labels or []) or "(none)"
                table.add_row(escape(r.path), escape(shown))
            out().print(table)
        else:
            table.add_column("label")
            table.add_column("prob", justify="right")
            if top_k > 1:
                table.add_column("runners-up")
            for r in results:
                row = [escape(r.path), escape(r.top[0][0]), f"{r.top[0][1]:.4f}"]
                if top_k > 1:
                    row.append(escape(", ".join(f"{label} {p:.3f}" for label, p in r.top[1:])))
                table.add_row(*row)
            out().print(table)
    if errors:
        raise PartialFailure(
            f"{len(errors)} of {len(paths)} input(s) could not be read; the others were predicted"
        ) from None


def register(app: typer.Typer) -> None:
    app.command("predict")(predict)
