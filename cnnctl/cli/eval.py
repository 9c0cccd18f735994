"""`cnnctl eval TARGET`: metrics of a run directory, checkpoint or ONNX file."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from cnnctl.cli.common import (
    ImageRoot,
    LabelColumn,
    LabelDelim,
    PathColumn,
    SkipBadRows,
    label_options,
    out,
    print_json,
)


def eval_cmd(
    target: Annotated[
        str,
        typer.Argument(
            help="Run directory, .safetensors checkpoint, .onnx file, or models:/NAME/VERSION | models:/NAME@ALIAS."
        ),
    ],
    data: Annotated[
        str | None,
        typer.Option(
            "--data",
            help="Data set name, image folder or label file (default: the one the model was trained on).",
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
            metavar="[test|val|train|all]",
            help="test, val, train, or all. A folder of class subfolders (no train/test inside) is evaluated whole.",
        ),
    ] = "test",
    batch_size: Annotated[
        str,
        typer.Option(
            "--batch-size",
            metavar="[auto|N]",
            help="Images per inference batch: N, or auto, the largest "
            "batch whose forward pass fits a memory budget (512 MiB of activations on a CPU; at most 1024).",
        ),
    ] = "auto",
    provider: Annotated[
        str, typer.Option("--provider", metavar="[auto|cpu|cuda]", help="onnxruntime provider for .onnx files.")
    ] = "auto",
    device: Annotated[
        str, typer.Option("--device", metavar="[cpu|cuda]", help="PyTorch device for checkpoints.")
    ] = "cpu",
    compare: Annotated[
        str | None,
        typer.Option("--compare", help="Evaluate another target on the same images and report agreement."),
    ] = None,
    misclassified: Annotated[
        int, typer.Option("--misclassified", min=0, help="List the N most confident mistakes.")
    ] = 0,
    min_accuracy: Annotated[
        float | None,
        typer.Option("--min-accuracy", min=0.0, max=1.0, help="Exit 1 when top-1 is below this (e.g. 0.98)."),
    ] = None,
    tta_flip: Annotated[
        bool,
        typer.Option("--tta-flip", help="Average logits with horizontally flipped images (test-time augmentation)."),
    ] = False,
    tta_shift: Annotated[
        int,
        typer.Option(
            "--tta-shift",
            min=0,
            metavar="PX",
            help="Also average over the images translated by PX pixels both ways (half the weight; airbench's multi-crop TTA, e.g. 1).",
        ),
    ] = 0,
    limit: Annotated[
        int, typer.Option("--limit", min=0, help="Evaluate only the first N images of the split (0 = all).")
    ] = 0,
    plot_confusion: Annotated[
        str | None, typer.Option("--plot-confusion", help="Draw the confusion matrix into this .png file.")
    ] = None,
    plot_calibration: Annotated[
        str | None,
        typer.Option(
            "--plot-calibration", help="Draw the reliability diagram (confidence vs accuracy, ECE) into this .png file."
        ),
    ] = None,
    errors: Annotated[
        str | None,
        typer.Option(
            "--errors",
            help="Write every misclassified image to this CSV: path, true, predicted, prob, true_prob, loss, rank.",
        ),
    ] = None,
    predictions: Annotated[
        str | None, typer.Option("--predictions", help="Write every image's row (as --errors) to this CSV.")
    ] = None,
    top_losses: Annotated[
        int, typer.Option("--top-losses", min=0, help="How many of the highest-loss images the report lists by path.")
    ] = 10,
    output: Annotated[
        str | None,
        typer.Option("--output", "-o", help="Write the report: JSON, or the per-class table as CSV for *.csv."),
    ] = None,
    json_: Annotated[bool, typer.Option("--json", help="Print the whole report as one JSON document.")] = False,
) -> None:
    """Loss, top-1/top-5, per-class precision/recall/F1 and the confusion matrix.

    Examples:

    $ cnnctl eval runs/digits --min-accuracy 0.98

    $ cnnctl eval runs/pets/model.onnx --data new-photos/ --misclassified 10

    $ cnnctl eval runs/c10 --tta-flip --tta-shift 1 --compare runs/c10/model.int8.onnx --json

    Preprocessing comes from the model's own metadata, never from flags.
    """
    from cnnctl.errors import GateError
    from cnnctl.evaluate.report import EvalOptions, run_eval, write_report

    opts = EvalOptions(
        data=data,
        data_dir=data_dir,
        split=split,
        batch_size=batch_size,
        provider=provider,
        device=device,
        compare=compare,
        misclassified=misclassified,
        tta_flip=tta_flip,
        tta_shift=tta_shift,
        limit=limit,
        errors_csv=errors,
        predictions_csv=predictions,
        top_losses=top_losses,
        reading=label_options(image_root, path_column, label_column, label_delim, skip_bad_rows),
    )
    report = run_eval(target, opts)
    if report.get("task") == "multilabel" and (plot_confusion or plot_calibration):
        from cnnctl.errors import UsageError

        raise UsageError(
            "--plot-confusion and --plot-calibration draw single-label reports; a multi-label model's per-class table "
            "and ECE are in the report (--json)"
        )
    if output:
        write_report(report, output)
    if plot_confusion:
        from cnnctl.evaluate.plots import plot_confusion as draw

        draw(report["confusion_matrix"], report["class_names"], plot_confusion)
    if plot_calibration:
        from cnnctl.evaluate.plots import plot_calibration as reliability

        reliability(
            report["calibration_bins"], report["ece"], plot_calibration, title=f"{report['data']} {report['split']}:"
        )
    if json_:
        print_json(report)
    elif report.get("task") == "multilabel":
        _render_multilabel(report)
    else:
        _render(report)
    if min_accuracy is not None and report.get("task") == "multilabel":
        if report["map"] is None or report["map"] < min_accuracy:
            raise GateError(
                f"mAP {report['map']} is below --min-accuracy {min_accuracy:.4f} (a multi-label model is gated on its "
                f"mean average precision; {report['images']} images)"
            )
    elif min_accuracy is not None and report["top1"] < min_accuracy:
        raise GateError(
            f"top-1 accuracy {report['top1']:.4f} is below --min-accuracy {min_accuracy:.4f} ({report['images']} images)"
        )


def _render(r: dict[str, Any]) -> None:
    from rich.markup import escape
    from rich.table import Table

    console = out()
    top5 = f"  top-5 {r['top5']:.4f}" if r["top5"] is not None else ""
    console.print(
        f"{escape(r['target'])} ({r['kind']}, {r['provider']}) on {escape(r['data'])} ({r['split']} split), {r['images']:,} images: "
        f"top-1 [bold]{r['top1']:.4f}[/bold]{top5}  loss {r['loss']:.4f}  ({r['images_per_s']:,.0f} img/s)"
    )
    t = r.get("temperature")
    calibrated = (
        f" (temperature {t:.3f}; uncalibrated {r['ece_uncalibrated']:.4f})"
        if t is not None
        else " (not calibrated: cnnctl calibrate)"
    )
    console.print(f"calibration: expected calibration error {r['ece']:.4f}{calibrated}", highlight=False)
    table = Table(title="per class")
    for col in ("class", "precision", "recall", "f1", "support"):
        table.add_column(col, justify="left" if col == "class" else "right")
    for row in r["per_class"]:
        table.add_row(
            escape(row["class"]),
            f"{row['precision']:.4f}",
            f"{row['recall']:.4f}",
            f"{row['f1']:.4f}",
            str(row["support"]),
        )
    for name, avg in r["averages"].items():
        table.add_row(
            f"[i]{name} avg[/i]",
            f"{avg['precision']:.4f}",
            f"{avg['recall']:.4f}",
            f"{avg['f1']:.4f}",
            str(avg["support"]),
        )
    console.print(table)
    if len(r["class_names"]) <= 20:
        cm = Table(title="confusion matrix (rows: true, columns: predicted)")
        cm.add_column("")
        for name in r["class_names"]:
            cm.add_column(name[:8], justify="right")
        for name, row in zip(r["class_names"], r["confusion_matrix"]):
            cm.add_row(name[:12], *[str(v) for v in row])
        console.print(cm)
    if r.get("misclassified"):
        mt = Table(title="most confident mistakes")
        for col in ("source", "true", "predicted", "probability"):
            mt.add_column(col)
        for m in r["misclassified"]:
            mt.add_row(escape(m["source"]), escape(m["true"]), escape(m["predicted"]), f"{m['probability']:.4f}")
        console.print(mt)
    if r.get("most_confused"):
        console.print(
            "most confused (true -> predicted): "
            + ", ".join(
                f"{escape(p['true'])} -> {escape(p['predicted'])} {p['count']}" for p in r["most_confused"][:5]
            ),
            highlight=False,
        )
    if r.get("top_losses"):
        lt = Table(title="highest losses")
        for col in ("path", "true", "predicted", "prob", "true prob", "loss"):
            lt.add_column(col)
        for m in r["top_losses"][:10]:
            lt.add_row(
                escape(m["path"]),
                escape(m["true"]),
                escape(m["predicted"]),
                f"{m['prob']:.4f}",
                f"{m['true_prob']:.4f}",
                f"{m['loss']:.3f}",
            )
        console.print(lt)
    if r.get("compare"):
        c = r["compare"]
        console.print(
            f"compare {c['target']} ({c['kind']}): top-1 {c['top1']:.4f}, agreement {c['agreement']:.4%}, max "
            f"|logit diff| {c['max_abs_logit_diff']:.3g}"
        )


def _render_multilabel(r: dict[str, Any]) -> None:
    from rich.markup import escape
    from rich.table import Table

    console = out()
    tuned = "tuned on val" if r["thresholds_tuned"] else "1/2: none tuned"
    console.print(
        f"{escape(r['target'])} ({r['kind']}, {r['provider']}) on {escape(r['data'])} ({r['split']} split), {r['images']:,} "
        f"images, multi-label: mAP [bold]{_num(r['map'])}[/bold]  micro mAP {_num(r['micro_map'])}  macro F1 "
        f"{r['macro_f1']:.4f}  micro F1 {r['micro_f1']:.4f}  subset acc {r['subset_accuracy']:.4f}  Hamming loss "
        f"{r['hamming_loss']:.4f}  (thresholds {tuned}; {r['images_per_s']:,.0f} img/s)"
    )
    console.print(f"calibration: mean per-class ECE {r['ece']:.4f}", highlight=False)
    table = Table(title="per class")
    for col in ("class", "AP", "precision", "recall", "f1", "support", "threshold"):
        table.add_column(col, justify="left" if col == "class" else "right")
    for row in r["per_class"]:
        table.add_row(
            escape(row["class"]),
            _num(row["ap"]),
            f"{row['precision']:.4f}",
            f"{row['recall']:.4f}",
            f"{row['f1']:.4f}",
            str(row["support"]),
            f"{row['threshold']:.3f}",
        )
    console.print(table)
    if r.get("top_losses"):
        lt = Table(title="highest losses")
        for col in ("path", "true", "predicted", "false +", "false -", "loss"):
            lt.add_column(col)
        for m in r["top_losses"][:10]:
            lt.add_row(
                *(escape(m[k]) for k in ("path", "true", "predicted", "false_positives", "false_negatives")),
                f"{m['loss']:.3f}",
            )
        console.print(lt)


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_cmd)
