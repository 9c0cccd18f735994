"""`cnnctl check DATA`: the data doctor (files, modes, sizes, classes, duplicates, leakage, labels)."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from cnnctl.cli.common import ImageRoot, LabelColumn, LabelDelim, PathColumn, emit, label_options, out


def check_cmd(
    data: Annotated[
        str,
        typer.Argument(
            help="Image folder (class subfolders, or train/val/test of them), a label file (.csv, .jsonl, .parquet, "
            "...), or a data set name (mnist, cifar10, ...)."
        ),
    ],
    image_root: ImageRoot = "",
    path_column: PathColumn = "",
    label_column: LabelColumn = "",
    label_delim: LabelDelim = "",
    against: Annotated[
        list[str] | None,
        typer.Option(
            "--against",
            help="Another folder (e.g. the test set or a holdout) to look for leaked duplicates in; repeatable.",
        ),
    ] = None,
    data_dir: Annotated[
        str,
        typer.Option(
            "--data-dir",
            help="Where torchvision data sets live (torchvision's layout), for DATA like mnist or cifar10.",
        ),
    ] = "./data",
    near: Annotated[
        int,
        typer.Option(
            "--near",
            min=-1,
            max=32,
            help="Near-duplicates: perceptual hashes within this many bits of 64 (-1: exact copies only).",
        ),
    ] = 6,
    strict: Annotated[
        bool,
        typer.Option(
            "--strict",
            help="Exit 1 when a finding is an error (unreadable files, leakage, duplicates with different labels).",
        ),
    ] = False,
    labels: Annotated[
        bool,
        typer.Option(
            "--labels", help="Also rank the images most likely mislabelled (k-fold predictions + confident learning)."
        ),
    ] = False,
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            help="--labels: the model (default: a frozen ImageNet backbone whose weights are in the local cache, "
            "else model-a for grayscale digits, tiny otherwise, from scratch).",
        ),
    ] = None,
    pretrained: Annotated[
        bool,
        typer.Option(
            "--pretrained",
            help="Near duplicates are also confirmed by the --model's ImageNet embeddings (copies cropped, resized and "
            "re-encoded); --labels: a head is fitted on its frozen features (fast, strong).",
        ),
    ] = False,
    weights: Annotated[
        str | None,
        typer.Option(
            "--weights", help="--labels: torchvision weights by name, e.g. IMAGENET1K_V1 (implies --pretrained)."
        ),
    ] = None,
    init: Annotated[
        str | None,
        typer.Option("--init", help="--labels: start weights from a run or checkpoint; its frozen features are used."),
    ] = None,
    image_size: Annotated[
        str | None,
        typer.Option(
            "--image-size",
            help="--labels: input size N or HxW (default: 28 for digits, 32 otherwise, the weights' own size with --pretrained).",
        ),
    ] = None,
    epochs: Annotated[int, typer.Option("--epochs", min=0, help="--labels from scratch: epochs per fold (0: 10).")] = 0,
    folds: Annotated[
        int, typer.Option("--folds", min=2, max=20, help="--labels: k of the k-fold cross-validation.")
    ] = 4,
    top: Annotated[int, typer.Option("--top", min=0, help="--labels: list at most N suspects (0: all).")] = 0,
    seed: Annotated[int, typer.Option("--seed", help="--labels: the fold split and training seed.")] = 0,
    workers: Annotated[
        int, typer.Option("--workers", min=0, help="Threads reading files (0: one per core, at most 8).")
    ] = 0,
    output: Annotated[
        str | None, typer.Option("--output", "-o", help="Also write the whole report as JSON to this file.")
    ] = None,
    json_: Annotated[bool, typer.Option("--json", help="Print the whole report as one JSON document.")] = False,
) -> None:
    """Check an image data set before training on it; never modifies the data.

    Reads every file once: unreadable, truncated, empty, non-image and huge files; modes (CMYK,
    palette, alpha, 16-bit) and EXIF rotations; sizes and aspect ratios; class counts and
    imbalance; exact and near-duplicates within a folder and across folders (leakage between
    train and test), and duplicates that carry different labels.

    Examples:

    $ cnnctl check photos/ --against holdout/ --strict

    $ cnnctl check photos/ --labels --json > suspects.json

    $ cnnctl check photos/ --labels --model tv:mobilenet_v2 --pretrained --top 20
    """
    from cnnctl.check.doctor import check
    from cnnctl.errors import GateError
    from cnnctl.io import write_json

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    reading = label_options(image_root, path_column, label_column, label_delim, False)
    named = bool(model and (pretrained or weights or init))
    report, roots, _ = check(
        data,
        against or [],
        near=near,
        workers=workers,
        data_dir=data_dir,
        log=log,
        reading=reading,
        backbone=(model or "", weights or "", init or "") if named else None,
    )
    if labels:
        from cnnctl.check.doctor import add_label_issues
        from cnnctl.check.labels import LabelOptions

        opts = LabelOptions(
            model=model or "",
            image_size=image_size or "",
            epochs=epochs,
            folds=folds,
            pretrained=pretrained,
            weights=weights or "",
            init=init or "",
            seed=seed,
            limit=top,
            reading=reading,
        )
        add_label_issues(report, roots[0], opts, log)
    if output:
        write_json(output, report)
    emit(report, json_, _render)
    if strict and report["errors"]:
        kinds = ", ".join(f["kind"] for f in report["findings"] if f["level"] == "error")
        raise GateError(f"check --strict: {report['errors']} error finding(s) ({kinds}); fix the data or drop --strict")


def _render(r: dict[str, Any]) -> None:
    from rich.table import Table

    console = out()
    for root in r["roots"]:
        classes = ", ".join(f"{c} {n:,}" for c, n in list(root["classes"].items())[:8]) + (
            " ..." if len(root["classes"]) > 8 else ""
        )
        console.print(
            f"{root['name']}: {root['images']:,} images of {root['files']:,} files, {len(root['classes'])} classes ({classes}); "
            f"imbalance {root['imbalance_ratio']:.2f}:1",
            highlight=False,
            emoji=False,
            markup=False,
        )
    for lf in r.get("label_files", []):
        per = lf["labels_per_image"]
        console.print(
            f"{lf['file']}: {lf['good_rows']:,} good rows of {lf['rows']:,}; {'multi-label' if lf['multilabel'] else 'single-label'}, "
            f"{per['mean']:.2f} labels per image (most {per['max']}, {per['zero']:,} with none); images under {lf['image_root']}",
            highlight=False,
        )
    sizes = r["sizes"]
    if sizes["width"]:
        w, h, a = sizes["width"], sizes["height"], sizes["aspect"]
        console.print(
            f"sizes: width {w['min']:.0f}-{w['max']:.0f} (median {w['median']:.0f}), height {h['min']:.0f}-{h['max']:.0f} "
            f"(median {h['median']:.0f}), aspect {a['p5']:.2f}-{a['p95']:.2f} (5th-95th percentile), {sizes['distinct']} distinct; "
            f"modes {', '.join(f'{k} {v:,}' for k, v in r['modes'].items())}",
            highlight=False,
        )
    if r["findings"]:
        table = Table(title=f"{r['errors']} error(s), {r['warnings']} warning(s)")
        for col in ("level", "finding", "count", "what", "for example"):
            table.add_column(col, overflow="fold")
        for f in r["findings"]:
            style = "red" if f["level"] == "error" else "yellow"
            table.add_row(
                f"[{style}]{f['level']}[/]",
                f["kind"],
                str(f["count"]),
                f["message"],
                f["examples"][0] if f["examples"] else "",
            )
        console.print(table)
    else:
        console.print("no findings", highlight=False)
    lab = r.get("labels")
    if lab:
        console.print(
            f"label issues: {lab['issues']} suspect(s) among {lab['images']:,} images ({lab['method']}; out-of-sample accuracy "
            f"{lab['out_of_sample_accuracy']:.3f}"
            + (f"; weak: {lab['candidates']} candidates, only the surest listed)" if lab["weak_evidence"] else ")"),
            highlight=False,
        )
        if lab["suspects"]:
            table = Table()
            for col in ("rank", "path", "given", "suggested", "score"):
                table.add_column(col, overflow="fold")
            for i, s in enumerate(lab["suspects"][:20], 1):
                table.add_row(
                    str(i), s["path"], s["given"], f"{s['suggested']} ({s['suggested_prob']:.2f})", f"{s['score']:.3f}"
                )
            console.print(table)


def register(app: typer.Typer) -> None:
    app.command("check")(check_cmd)
