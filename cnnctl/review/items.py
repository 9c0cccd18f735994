"""What the review page shows: the run's highest-loss images on the folder and, with `--labels`,
the suspects of `cnnctl check --labels --json`, merged per file, each with its probabilities."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cnnctl.errors import DataError, UsageError
from cnnctl.io import read_json


def _label_spec(target: str, data: str, reading: Any) -> Any:
    """How the label file `data` is read: as the model's run read it (its own file), else as asked."""
    from cnnctl.evaluate.report import label_reading
    from cnnctl.models.checkpoint import resolve_checkpoint
    from cnnctl.runtime.modelfile import read

    return label_reading(data, read(resolve_checkpoint(target)), reading)


def build_items(
    target: str,
    data: str,
    *,
    labels: str | None = None,
    top: int = 50,
    log: Callable[[str], None] = lambda m: None,
    reading: Any = None,
) -> tuple[list[dict[str, Any]], list[str], dict[str, str] | None]:
    """(items, class names, a label file's reading options or None). Each item: id, path, rel
    (path inside `data`, or the label file's image root), given, predicted, prob, true_prob, loss,
    sources ("top-loss", "label-issue"), suggested/score for suspects, and for a label file the
    given and predicted label sets (`labels`, `predicted_labels`)."""
    from cnnctl.data.labelfile import is_label_file
    from cnnctl.data.layout import folder_layout
    from cnnctl.evaluate.report import EvalOptions, run_eval

    spec = _label_spec(target, data, reading) if is_label_file(data) else None
    if spec is None and folder_layout(data).splits:
        raise UsageError(
            f"{data} has train/val/test folders; review one of them (e.g. --data {os.path.join(data, 'train')})"
        )
    split = "all" if spec is not None else "test"
    report = run_eval(target, EvalOptions(data=data, top_losses=top, split=split, reading=spec))
    classes = list(report["class_names"])
    root = spec.root if spec is not None else os.path.abspath(data)
    by_path: dict[str, dict[str, Any]] = {}
    for row in report["top_losses"]:
        by_path[os.path.abspath(row["path"])] = {**row, "sources": ["top-loss"]}
    if labels:
        again = "write it with cnnctl check DATA --labels --json > FILE"
        check = read_json(labels, UsageError, f"{labels}: no such file ({again})", again)
        suspects = (check.get("labels") or {}).get("suspects") if isinstance(check, dict) else None
        if suspects is None:
            raise DataError(f"{labels} holds no label suspects; write it with cnnctl check DATA --labels --json")
        for s in suspects[:top]:
            path = os.path.abspath(s["path"])
            item = by_path.setdefault(path, {"path": s["path"], "true": s["given"], "sources": []})
            item["sources"].append("label-issue")
            item.update(suggested=s["suggested"], score=s["score"])
    items = []
    for i, (path, item) in enumerate(sorted(by_path.items(), key=lambda kv: -kv[1].get("loss", kv[1].get("score", 0)))):
        rel = os.path.relpath(path, root)
        if rel.startswith(".."):
            raise DataError(f"{path} is not inside {root}; give the folder the suspects came from as --data")
        if spec is None and Path(rel).parts[0] != item["true"]:
            raise DataError(
                f"{path}: its class folder is not its label {item['true']!r}; the suspects file is from another folder layout"
            )
        items.append(
            {
                "id": i,
                "path": path,
                "rel": rel,
                "given": item["true"],
                "predicted": item.get("predicted"),
                "prob": item.get("prob"),
                "true_prob": item.get("true_prob"),
                "loss": item.get("loss"),
                "sources": item["sources"],
                "suggested": item.get("suggested"),
                "score": item.get("score"),
                **(
                    {"labels": item["true"].split(), "predicted_labels": (item.get("predicted") or "").split()}
                    if report.get("task") == "multilabel"
                    else {}
                ),
            }
        )
    score = f"mAP {report['map']:.3f}" if report.get("task") == "multilabel" else f"accuracy {report['top1']:.3f}"
    log(
        f"review: {len(items)} image(s): the {min(top, len(report['top_losses']))} highest losses of {report['images']} "
        f"({score})" + (f" and the suspects of {labels}" if labels else "")
    )
    return items, classes, spec.reading() if spec is not None else None
