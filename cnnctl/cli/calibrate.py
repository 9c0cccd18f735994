"""`cnnctl calibrate TARGET`: fit a temperature on held-out images and store it in the model file."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from cnnctl.cli.common import ImageRoot, LabelColumn, LabelDelim, PathColumn, SkipBadRows, emit, label_options, out


def calibrate_cmd(
    target: Annotated[
        str,
        typer.Argument(help="Run directory, .safetensors checkpoint, or .onnx file (rewritten with the temperature)."),
    ],
    data: Annotated[
        str | None,
        typer.Option(
            "--data", help="Data set name, image folder or label file (default: the one the model was trained on)."
        ),
    ] = None,
    image_root: ImageRoot = "",
    path_column: PathColumn = "",
    label_column: LabelColumn = "",
    label_delim: LabelDelim = "",
    skip_bad_rows: SkipBadRows = False,
    data_dir: Annotated[
        str | None, typer.Option("--data-dir", help="Where torchvision data sets live (default: as at training).")
    ] = None,
    split: Annotated[
        str,
        typer.Option(
            "--split",
            metavar="[val|test|all]",
            help="The held-out images the temperature is fitted on (never the training split).",
        ),
    ] = "val",
    check: Annotated[
        str, typer.Option("--check", metavar="[test|val|all]", help="Other held-out images the result is measured on.")
    ] = "test",
    provider: Annotated[
        str, typer.Option("--provider", metavar="[auto|cpu|cuda]", help="onnxruntime provider for .onnx files.")
    ] = "auto",
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Fit and report; write nothing.")] = False,
    json_: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Temperature scaling: make the probabilities `predict` and `serve` print mean what they say.

    Fits T so that softmax(logits / T) has the lowest log-loss on held-out images, checks the
    expected calibration error on other held-out images, and stores T in the file's metadata.
    Top-1 is unchanged. Multi-label models: one T for every class's sigmoid (binary
    cross-entropy), ECE per class; the stored thresholds move with T so no decision changes.

    Examples:

    $ cnnctl calibrate runs/pets && cnnctl export runs/pets

    $ cnnctl calibrate runs/pets/model.onnx --data more-photos/ --split all --check test
    """
    from cnnctl.errors import UsageError
    from cnnctl.evaluate.calibration import calibrate

    if split == "train":
        raise UsageError(
            "--split train: the model has seen those images; fit the temperature on held-out ones (val, test or all of a new folder)"
        )
    report = calibrate(
        target,
        data=data,
        data_dir=data_dir,
        split=split,
        check=check,
        provider=provider,
        dry_run=dry_run,
        reading=label_options(image_root, path_column, label_column, label_delim, skip_bad_rows),
    )
    emit(report, json_, _render)


def _render(r: dict[str, Any]) -> None:
    console = out()
    console.print(
        f"temperature {r['temperature']:.4f} fitted on {r['fit']['images']:,} {r['fit']['split']} images of {r['data']}",
        highlight=False,
    )
    for key in ("fit", "check"):
        part = r.get(key)
        if part:
            b, a = part["before"], part["after"]
            console.print(
                f"  {part['split']:>5} ({part['images']:,} images): ECE {b['ece']:.4f} -> {a['ece']:.4f}, "
                f"log-loss {b['nll']:.4f} -> {a['nll']:.4f}"
                + (f", top-1 {b['top1']:.4f} -> {a['top1']:.4f}" if "top1" in b else " (mean per-class ECE, BCE)"),
                highlight=False,
            )
    console.print(
        f"wrote the temperature into {r['written']}" if r["written"] else "dry run: nothing written", highlight=False
    )


def register(app: typer.Typer) -> None:
    app.command("calibrate")(calibrate_cmd)
