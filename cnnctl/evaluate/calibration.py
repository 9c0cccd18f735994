"""`cnnctl calibrate`: temperature scaling fitted on held-out images, stored in the model file.

The fit uses the logits of a split the model was not trained on (the validation split it was
selected on, by default) and minimises the negative log-likelihood of softmax(logits / T) over
the one number T (`metrics.fit_temperature`). Top-1 cannot change (dividing by T > 0 keeps the
order). The result is checked on a second split when there is one (the test split by default),
images used neither for training nor for the fit. T goes into the file's metadata
(`temperature`), which `predict`, `serve` and `eval` apply; `export` carries it into ONNX files.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from cnnctl.data.labelfile import LabelSpec
from cnnctl.data.manifest import Manifest
from cnnctl.errors import CnnctlError, UsageError
from cnnctl.evaluate.metrics import binary_nll, calibration, fit_temperature, nll
from cnnctl.evaluate.report import Target, load_split
from cnnctl.runtime import modelfile
from cnnctl.runtime.classifier import sigmoid, softmax
from cnnctl.runtime.metadata import Metadata
from cnnctl.train.engine import evaluate


def _logits(
    model: Target, meta: Metadata, data: str | None, data_dir: str | None, split: str, reading: LabelSpec | None
) -> tuple[np.ndarray, np.ndarray, str, str]:
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    recorded = Manifest.beside(model.path)
    images, name, _, used = load_split(meta, data, data_dir, split, log=log, recorded=recorded, reading=reading)
    result = evaluate(model.module, model.batches(images, model.eval_batch("auto").size))
    return result.logits.numpy().astype(np.float64), result.targets.numpy(), name, used


def _scores(logits: np.ndarray, targets: np.ndarray, t: float) -> dict[str, float]:
    if targets.ndim == 2:  # multi-label: per-class calibration of sigmoid(logits / t)
        from cnnctl.evaluate.multilabel import binary_calibration

        probs = sigmoid(logits / t)
        per_class = [binary_calibration(probs[:, k], targets[:, k]) for k in range(targets.shape[1])]
        return {"ece": float(np.mean(per_class)), "nll": binary_nll(logits, targets, t)}
    probs = softmax(logits / t)
    return {
        "ece": calibration(probs, targets)["ece"],
        "nll": nll(logits, targets, t),
        "top1": float((probs.argmax(1) == targets).mean()),
    }


def calibrate(
    target: str,
    *,
    data: str | None = None,
    data_dir: str | None = None,
    split: str = "val",
    check: str = "test",
    provider: str = "auto",
    dry_run: bool = False,
    log: Callable[[str], None] | None = None,
    reading: LabelSpec | None = None,
) -> dict[str, Any]:
    """Fit, check, and (unless `dry_run`) store the temperature; returns the report (docs/eval.md)."""
    log = log or (lambda m: print(m, file=sys.stderr, flush=True))
    if split == check:
        raise UsageError(
            f"--split and --check are both {split!r}: check the temperature on images it was not fitted on"
        )
    model = Target(target, provider)
    meta = model.meta.replace(temperature=None)  # fitted on the raw logits, whatever is stored
    logits, targets, name, used = _logits(model, meta, data, data_dir, split, reading)
    if len(targets) < 50:
        raise UsageError(
            f"{len(targets)} images in the {used} split of {name} are too few to fit a temperature; give at least 50 (--data, --split)"
        )
    t = fit_temperature(logits, targets)
    report: dict[str, Any] = {
        "target": model.path,
        "data": name,
        "fit": {
            "split": used,
            "images": int(len(targets)),
            "before": _scores(logits, targets, 1.0),
            "after": _scores(logits, targets, t),
        },
        "temperature": t,
    }
    try:
        c_logits, c_targets, _, c_used = _logits(model, meta, data, data_dir, check, reading)
        report["check"] = {
            "split": c_used,
            "images": int(len(c_targets)),
            "before": _scores(c_logits, c_targets, 1.0),
            "after": _scores(c_logits, c_targets, t),
        }
    except (CnnctlError, OSError) as exc:
        report["check"] = None
        log(
            f"no check split ({getattr(exc, 'message', exc)}); the temperature was measured on the images it was fitted on only"
        )
    path = Path(model.path)
    report["written"] = None if dry_run else str(path)
    if not dry_run:
        stored = model.meta.replace(temperature=round(t, 6))
        if model.meta.multilabel and model.meta.thresholds is not None:
            stored = stored.replace(thresholds=moved_thresholds(model.meta, round(t, 6)))
            report["thresholds"] = dict(zip(model.meta.class_names, stored.thresholds or ()))
            log(
                "thresholds moved with the temperature, so every decision stays as it was (tune them anew by retraining)"
            )
        modelfile.write(path, stored)
        onnx_beside = path.with_name("model.onnx")
        if path.suffix != ".onnx" and onnx_beside.is_file():
            report["stale"] = str(onnx_beside)
            log(f"{onnx_beside} does not carry the temperature yet: re-export (cnnctl export {path.parent})")
    return report


def moved_thresholds(meta: Metadata, temperature: float) -> tuple[float, ...]:
    """A multi-label model's thresholds under a new temperature, such that every decision is the
    same: p >= t at the old temperature is z / T_old >= logit(t), i.e. z / T_new >= logit(t) T_old / T_new."""
    old = meta.scale
    out = []
    for t in meta.decision_thresholds():
        t = min(max(t, 1e-6), 1 - 1e-6)
        z = np.log(t / (1 - t)) * old / temperature
        out.append(round(float(1 / (1 + np.exp(-z))), 6))
    return tuple(out)
