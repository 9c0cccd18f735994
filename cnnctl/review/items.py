"""What the review page shows: the run's highest-loss images on the folder and, with `--labels`,
the suspects of `cnnctl check --labels --json`, merged per file, each with its probabilities."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cnnctl.errors import DataError, UsageError
from cnnctl.io import read_json


def build_items(
    target: str, data: str, *, labels: str | None = None, top: int = 50, log: Callable[[str], None] = lambda m: None
) -> tuple[list[dict[str, Any]], list[str]]:
    """(items, class names). Each item: id, path, rel (path inside `data`), given, predicted, prob,
    true_prob, loss, sources ("top-loss", "label-issue"), and suggested/score for suspects."""
    from cnnctl.data.layout import folder_layout
    from cnnctl.evaluate.report import EvalOptions, run_eval

    if folder_layout(data).splits:
        raise UsageError(
            f"{data} has train/val/test folders; review one of them (e.g. --data {os.path.join(data, 'train')})"
        )
    report = run_eval(target, EvalOptions(data=data, top_losses=top))
    classes = list(report["class_names"])
    root = os.path.abspath(data)
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
        if Path(rel).parts[0] != item["true"]:
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
            }
        )
    log(
        f"review: {len(items)} image(s): the {min(top, len(report['top_losses']))} highest losses of {report['images']} "
        f"(accuracy {report['top1']:.3f})" + (f" and the suspects of {labels}" if labels else "")
    )
    return items, classes
