"""`cnnctl eval`: metrics of a checkpoint or an ONNX file on a data split, via engine.evaluate().

Preprocessing always comes from the file's own metadata; only the choice of images (data set,
split) can come from flags.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cnnctl.data.batches import Batches
from cnnctl.data.bundle import select_splits, split_off
from cnnctl.data.labelfile import LabelSpec, is_label_file, read_labels
from cnnctl.data.layout import DIGIT_SETS, NAMED_SETS, folder_layout
from cnnctl.data.manifest import Manifest, relative_to
from cnnctl.data.sources import (
    Source,
    Split,
    default_cache_dir,
    files_split,
    folder_split,
    label_targets,
    load_source,
    rows_split,
)
from cnnctl.errors import DataError, UsageError
from cnnctl.evaluate.metrics import calibration, confusion_matrix, nll, per_class
from cnnctl.machine import EvalBatch, eval_batch
from cnnctl.runtime.classifier import Classifier, decide, probabilities
from cnnctl.runtime.inference import OnnxClassifier
from cnnctl.runtime.metadata import DataInfo, Metadata
from cnnctl.runtime.preprocess import Preprocess
from cnnctl.train.engine import EvalResult, evaluate


class _OnnxModule(nn.Module):
    """Lets engine.evaluate() drive an onnxruntime session like any model (normalised batches in;
    a raw-pixel graph gets the exact uint8 pixels back, see OnnxClassifier.from_normalized)."""

    def __init__(self, clf: OnnxClassifier) -> None:
        super().__init__()
        self.clf = clf

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.clf.logits(self.clf.from_normalized(x.detach().cpu().numpy())))


class Target:
    """A model file to evaluate: its Classifier (runtime/classifier.py) as an nn.Module that
    engine.evaluate() drives with normalised batches, and the eval batch that fits the machine."""

    def __init__(self, path: str, provider: str = "auto", device: str = "cpu") -> None:
        from cnnctl.track.registry import local

        self.clf: Classifier
        self.module: nn.Module
        path, self.registered = local(path)  # a models:/ URI: the registered file, from the cache
        if str(path).endswith(".onnx"):
            onnx_clf = OnnxClassifier(path, provider)
            self.kind, self.clf, self.module = "onnx", onnx_clf, _OnnxModule(onnx_clf)
            self.device = torch.device("cpu")
        else:
            from cnnctl.models.checkpoint import TorchClassifier

            torch_clf = TorchClassifier(path, device)
            self.kind, self.clf, self.device = "pytorch", torch_clf, torch_clf.device
            self.module = torch_clf.model.to(memory_format=torch.channels_last)
        self.path, self.provider, self.meta, self.prep = self.clf.path, self.clf.provider, self.clf.meta, self.clf.prep
        self.frozen_run: dict | None = None  # the config of a run whose backbone stayed frozen (features.frozen_run)
        if self.kind == "pytorch":
            from cnnctl.train.features import frozen_run

            self.frozen_run = frozen_run(Path(self.path), self.meta.training.epoch if self.meta.training else None)

    def eval_batch(self, requested: int | str, views: int = 1) -> EvalBatch:
        """The inference batch (`cnnctl eval --batch-size`): `requested`, or the largest that fits the memory budget ("auto")."""
        m = self.meta
        return eval_batch(
            requested, m.model, m.input_shape, m.num_classes, self.device.type, views=views, flag="--batch-size"
        )

    def batches(self, split: Split, batch_size: int) -> Batches:
        return Batches(split, self.prep, batch_size, device=self.device, channels_last=self.kind == "pytorch")


def load_split(
    meta: Metadata,
    data: str | None,
    data_dir: str | None,
    split: str,
    log: Callable[[str], None] | None = None,
    recorded: Manifest | None = None,
    reading: LabelSpec | None = None,
) -> tuple[Split, str, list[str], str]:
    """The images of one split, decoded as the model's preprocessing says, labelled by class name.

    Returns (images, data name, the model's classes, the split actually read). A named data set
    must have exactly the model's classes. An image folder's class folders are matched to the
    model's classes by name (a folder with fewer classes is fine, one the model does not know is
    refused); a plain folder of class subfolders is evaluated whole ("all"), unless it is the very
    folder the model was trained on, whose "val" split is the one it was selected on.

    The train and val splits of the data a run was trained on are the ones it recorded (`recorded`,
    its split manifest), whatever the folder holds now; a run without one (older cnnctl) re-splits
    the folder, said in one line. A label file's labels are read from the file as it is now (the
    run's own file with the reading options it was trained with; another with `reading`'s).
    """
    info = meta.data
    name = data or (info.name if info is not None else None)
    if not name:
        raise UsageError("the model does not record its data set; pass --data")
    if split not in SPLITS:
        raise UsageError(f"--split must be one of {', '.join(SPLITS)}, got {split!r}")
    prep = meta.preprocess
    classes = list(meta.class_names)
    log = log or (lambda m: print(m, file=sys.stderr, flush=True))
    val_split = info.val_split if info is not None else 0.1
    own = info is not None and (
        name == info.name or (name not in NAMED_SETS and os.path.realpath(name) == os.path.realpath(info.name))
    )
    if is_label_file(name):
        spec = label_reading(name, meta, reading)
        return _label_split(spec, meta, split, val_split, own, recorded, log), name, classes, split
    if own and split in ("val", "train"):
        if recorded is not None and recorded.record(split) is not None:
            return _recorded_split(recorded, split, meta, name, data_dir, log), name, classes, split
        if recorded is None and info is not None:
            log(
                f"the model's run has no split manifest (written by an older cnnctl): its {split} split is drawn again from {name} as "
                f"it is now; images added or removed since training can move between train and val"
            )
    if name not in NAMED_SETS:
        return _folder_split(name, info, split, classes, prep, val_split, log)
    src = _named_source(name, meta, data_dir, log)
    if split == "all":
        raise UsageError(f"--split all is for image folders; {name} has test, val and train splits")
    if split == "test":
        if src.test is None:
            raise UsageError(f"{name} has no test split; use --split val")
        return src.test, name, classes, "test"
    train, val = select_splits(src, val_split)
    if split == "val":
        if val is None:
            raise UsageError(f"{name} has no validation split (trained with --val-split 0); use --split test")
        return val, name, classes, split
    return train, name, classes, split


SPLITS = ("test", "val", "train", "all")


def _named_source(name: str, meta: Metadata, data_dir: str | None, log: Callable[[str], None]) -> Source:
    """A named data set (mnist, cifar10, ...) decoded as the model's preprocessing says; refused
    in one line when its image size or classes are not the model's."""
    prep, classes, info = meta.preprocess, list(meta.class_names), meta.data
    where = data_dir or (info.data_dir if info is not None and info.data_dir else "./data")
    src = load_source(name, where, False, prep.size, prep.channels == 1, log=log)
    if (src.channels, tuple(src.size)) != (prep.channels, tuple(prep.size)):
        raise DataError(
            f"{name} gives {src.channels}x{src.size[0]}x{src.size[1]} images, "
            f"the model takes {prep.channels}x{prep.size[0]}x{prep.size[1]}"
        )
    if src.classes != classes:
        raise DataError(
            f"{name} has classes {src.classes[:5]}{'...' if len(src.classes) > 5 else ''} but the model was trained on "
            f"{classes[:5]}{'...' if len(classes) > 5 else ''}; evaluate on the data set it was trained for"
        )
    return src


def _recorded_split(
    recorded: Manifest, split: str, meta: Metadata, name: str, data_dir: str | None, log: Callable[[str], None]
) -> Split:
    """The `split` a run recorded: its files that are still there unchanged (one line says what
    is missing, changed, or new in the folder and left out), or its rows of a named set."""
    rec = recorded.splits[split]
    prep = meta.preprocess
    if rec.rows is not None:
        src = _named_source(name, meta, data_dir, log)
        if rec.rows and max(rec.rows) >= len(src.train):
            raise DataError(
                f"{name} has {len(src.train)} training images but the run recorded row {max(rec.rows)}; is it the same data set?"
            )
        return src.train.take(torch.tensor(rec.rows, dtype=torch.int64))
    state = recorded.files(split)
    new = 0
    if os.path.isdir(recorded.data):
        from cnnctl.data.sources import training_files

        known = recorded.all_paths()
        relative = relative_to(recorded.data)
        new = sum(1 for f in training_files(recorded.data) if relative(f)[1] not in known)
    if state.missing or state.changed or new:
        gone = state.missing + state.changed
        left = f"{len(state.missing)} missing and {len(state.changed)} changed since training are left out (e.g. {', '.join(gone[:3])})"
        log(
            f"{split}: the {len(rec)} images the run recorded for this split; {left if gone else 'all still there'}; "
            f"{new} file(s) added to {recorded.data} since are ignored"
        )
    if not state.present:
        raise DataError(
            f"none of the {len(rec)} images the run recorded for its {split} split is left in {recorded.data}; "
            f"evaluate on other images with --data FOLDER --split all"
        )
    files = [f for f, _ in state.present]
    labels = [label for _, label in state.present]
    return files_split(files, labels, prep, default_cache_dir(), log, recorded.data)


def label_reading(name: str, meta: Metadata, given: LabelSpec | None) -> LabelSpec:
    """How to read the label file `name`: as the model's run read it when it is the run's own file
    (its Metadata says how), else as asked (`given`)."""
    info = meta.data
    skip = given.skip_bad_rows if given is not None else False
    if info is not None and info.labels and os.path.realpath(name) == os.path.realpath(info.name):
        return LabelSpec(name, skip_bad_rows=skip, **info.labels)
    return dataclasses.replace(given, file=name) if given is not None else LabelSpec(name)


def _label_split(
    spec: LabelSpec,
    meta: Metadata,
    split: str,
    val_split: float,
    own: bool,
    recorded: Manifest | None,
    log: Callable[[str], None],
) -> Split:
    """The rows of a label file that make `split`, labelled as the file says now, against the model's
    classes (another label is a bad row). The run's own file: its recorded val/train files that are
    still listed and unchanged; its test rows. Another file: its test rows, else all of them."""
    classes = list(meta.class_names)
    table = read_labels(spec, classes, task=meta.task)
    for note in table.notes:
        log(note)
    rows = list(range(len(table)))
    rec = recorded.record(split) if recorded is not None and own else None
    if rec is not None and recorded is not None:
        state = recorded.files(split)
        present = {path for path, _ in state.present}
        rows = [i for i, p in enumerate(table.paths) if p in present]
        gone = len(rec) - len(rows)
        if gone:
            log(
                f"{split}: {gone} of the {len(rec)} images the run recorded are missing, changed or no longer listed; left out"
            )
    elif split in ("val", "train") and own:
        log(f"the model's run has no split manifest: its {split} split is drawn again from {spec.file} as it is now")
        listed = [i for i, s in enumerate(table.splits) if s in ("", "train", "val")]
        named = [i for i in listed if table.splits[i] == split]
        rows = named or listed
        if not named:
            cut = split_off(
                Split(torch.zeros(len(listed), 1, 1, 1, dtype=torch.uint8), torch.tensor(listed)), val_split
            )
            chosen = cut[1] if split == "val" else cut[0]
            rows = chosen.y.tolist() if chosen is not None else []
    elif split in ("val", "train", "test"):
        named = [i for i, s in enumerate(table.splits) if s == split]
        if not named and (own or split != "test"):
            raise UsageError(
                f"{spec.file} has no {split} rows (a split column or a sibling {split} file); use --split all"
            )
        rows = named or rows
    if not rows:
        raise DataError(f"{spec.file}: no rows left for the {split} split")
    y = label_targets(table, classes, meta.multilabel)[rows]
    return rows_split(table, rows, y, meta.preprocess, default_cache_dir(), log, spec.skip_bad_rows)


def _folder_split(
    name: str,
    info: DataInfo | None,
    split: str,
    classes: list[str],
    prep: Preprocess,
    val_split: float,
    log: Callable[[str], None],
) -> tuple[Split, str, list[str], str]:
    layout = folder_layout(name)
    cache = default_cache_dir()
    owner = "the model"

    def read(directory: Path) -> Split:
        return folder_split(directory, classes, prep, cache, log, owner)

    if layout.splits:
        if split in layout.splits:
            return read(layout.splits[split]), name, classes, split
        if split in ("val", "train") and "train" in layout.splits and "val" not in layout.splits:
            train, val = split_off(read(layout.splits["train"]), val_split)
            chosen = val if split == "val" else train
            if chosen is None:
                raise UsageError(f"{name} has no validation split (trained with --val-split 0); use --split test")
            return chosen, name, classes, split
        raise UsageError(f"{name} has no {split}/ folder; use --split {' or '.join(layout.splits)}")
    own = info is not None and os.path.realpath(name) == os.path.realpath(info.name)
    if split == "all" or (split == "test" and not own):
        return read(layout.root), name, classes, "all"
    if split == "test":
        raise UsageError(
            f"{name} is the folder this model was trained on and has no test split; use --split val "
            f"(the images it was selected on), or give --data a folder of images it never saw"
        )
    train, val = split_off(read(layout.root), val_split)
    if split == "val":
        if val is None:
            raise UsageError(
                f"{name}: the model was trained on all of it (--val-split 0); give --data a folder of images it never saw"
            )
        return val, name, classes, split
    return train, name, classes, split


@dataclass(frozen=True)
class EvalOptions:
    """What `cnnctl eval` is asked (docs/eval.md): which images, how to run the model, what to report."""

    data: str | None = None  # default: the data the model was trained on
    data_dir: str | None = None
    split: str = "test"
    batch_size: int | str = "auto"
    provider: str = "auto"  # onnxruntime provider (.onnx)
    device: str = "cpu"  # torch device (checkpoints)
    compare: str | None = None
    misclassified: int = 0
    tta_flip: bool = False
    tta_shift: int = 0
    limit: int = 0
    errors_csv: str | None = None
    predictions_csv: str | None = None
    top_losses: int = 10
    reading: LabelSpec | None = None  # how a label file given as `data` is read

    @property
    def views(self) -> int:
        """Forward passes per image (test-time augmentation)."""
        return (2 if self.tta_flip else 1) * (3 if self.tta_shift else 1)


def run_eval(target: str, opts: EvalOptions | None = None) -> dict[str, Any]:
    """The full report of `target` on one split (see docs/eval.md)."""
    opts = opts or EvalOptions()
    for flag, path in (("--errors", opts.errors_csv), ("--predictions", opts.predictions_csv)):
        if path and not path.lower().endswith(".csv"):  # before any image is decoded
            raise UsageError(f"{flag} {path}: writes CSV; give a name ending in .csv")
    model = Target(target, opts.provider, opts.device)
    if opts.tta_shift and min(model.prep.size) <= opts.tta_shift:  # refused before any image is decoded
        h, w = model.prep.size
        raise UsageError(
            f"--tta-shift {opts.tta_shift} must be smaller than the model's input ({h}x{w} px); try 1 or 2"
        )
    images, name, classes, split = load_split(
        model.meta, opts.data, opts.data_dir, opts.split, recorded=Manifest.beside(model.path), reading=opts.reading
    )
    if opts.limit:
        images = images.take(torch.arange(min(opts.limit, len(images))))
    if opts.tta_flip and name in DIGIT_SETS:
        raise UsageError(f"--tta-flip on {name}: a mirrored digit is not that digit; use --tta-shift alone")
    batch = model.eval_batch(opts.batch_size, views=opts.views)
    result = _forward(model, images, batch.size, opts)
    paths = images.paths or [f"{name}/{split}#{i}" for i in range(len(result.targets))]
    report: dict[str, Any] = {
        "target": model.registered.uri if model.registered is not None else model.path,
        "kind": model.kind,
        "provider": model.provider,
        "data": name,
        "split": split,
        **_scores(result, model.meta, classes, paths, opts),
        "batch_size": batch.size,
        "batch_size_reason": batch.reason,
        **({"registered": model.registered.to_dict()} if model.registered is not None else {}),
    }
    if opts.compare:
        report["compare"] = _compare(model, opts.compare, images, batch.size, result, opts)
    return report


def _forward(model: Target, images: Split, batch_size: int, opts: EvalOptions) -> EvalResult:
    """Logits of every image (with the asked test-time augmentation); a linear probe's head runs
    on its stored backbone features when there are no augmented views to compute."""
    module: nn.Module = model.module
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]] = model.batches(images, batch_size)
    if model.frozen_run is not None and opts.views == 1:
        from cnnctl.train.features import eval_batches

        log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
        cached = eval_batches(module, model.meta.model, images, batches, model.frozen_run, log)  # type: ignore[arg-type]
        if cached is not None:
            module, batches = cached
    return evaluate(module, batches, tta_flip=opts.tta_flip, tta_shift=opts.tta_shift)


def _scores(
    result: EvalResult, meta: Metadata, classes: list[str], paths: list[str], opts: EvalOptions
) -> dict[str, Any]:
    """Accuracy, per-class table, confusion, calibration, the per-image rows and what the options
    ask of them (top losses, --errors/--predictions CSVs, the most confident mistakes)."""
    if meta.multilabel:
        return _multilabel_scores(result, meta, paths, opts)
    targets = result.targets.numpy()
    preds = result.logits.argmax(1).numpy()
    cm = confusion_matrix(targets, preds, len(classes))
    logits64 = result.logits.numpy().astype(np.float64)
    probs = probabilities(logits64, meta)  # calibrated when the file stores a temperature
    cal = calibration(probs, targets)
    out: dict[str, Any] = {
        "images": int(len(targets)),
        "loss": result.loss,
        "top1": result.acc,
        "top5": result.top5,
        **per_class(cm, classes),
        "class_names": classes,
        "confusion_matrix": cm.tolist(),
        "seconds": round(result.seconds, 3),
        "images_per_s": round(result.images_per_s, 1),
        "tta": {"tta_flip": opts.tta_flip, "tta_shift": opts.tta_shift},
        "ece": cal["ece"],
        "calibration_bins": cal["bins"],
        "temperature": meta.temperature,
    }
    if meta.temperature is not None:
        out["ece_uncalibrated"] = calibration(probabilities(logits64, meta, calibrated=False), targets)["ece"]
        out["loss_calibrated"] = nll(logits64, targets, meta.scale)
    rows = per_image(probs, targets, classes, paths)
    out["most_confused"] = most_confused(cm, classes)
    out["top_losses"] = sorted(rows, key=lambda r: -r["loss"])[: opts.top_losses]
    if opts.errors_csv:
        write_rows(opts.errors_csv, [r for r in rows if r["predicted"] != r["true"]])
    if opts.predictions_csv:
        write_rows(opts.predictions_csv, rows)
    if opts.misclassified:
        wrong = np.nonzero(preds != targets)[0]
        order = wrong[np.argsort(-probs[wrong, preds[wrong]], kind="stable")][: opts.misclassified]
        out["misclassified"] = [
            {
                "source": paths[i],
                "true": classes[targets[i]],
                "predicted": classes[preds[i]],
                "probability": float(probs[i, preds[i]]),
            }
            for i in order
        ]
    return out


def _multilabel_scores(result: EvalResult, meta: Metadata, paths: list[str], opts: EvalOptions) -> dict[str, Any]:
    """A multi-label model's report (evaluate/multilabel.py): mAP, F1s, per-class table at the
    file's thresholds; --errors lists the images with a false positive or negative, by path."""
    from cnnctl.evaluate import multilabel

    out = multilabel.scores(result.logits.numpy().astype(np.float64), result.targets.numpy(), meta, paths)
    rows = out.pop("rows")
    out.update(
        task="multilabel",
        images=len(rows),
        loss=result.loss,
        label_accuracy=result.acc,
        top1=None,
        top5=None,
        class_names=list(meta.class_names),
        seconds=round(result.seconds, 3),
        images_per_s=round(result.images_per_s, 1),
        tta={"tta_flip": opts.tta_flip, "tta_shift": opts.tta_shift},
        temperature=meta.temperature,
        top_losses=sorted(rows, key=lambda r: -r["loss"])[: opts.top_losses],
    )
    wrong = [r for r in rows if r["false_positives"] or r["false_negatives"]]
    out["images_with_errors"] = len(wrong)
    if opts.errors_csv:
        write_csv(opts.errors_csv, list(MULTILABEL_FIELDS), wrong)
    if opts.predictions_csv:
        write_csv(opts.predictions_csv, list(MULTILABEL_FIELDS), rows)
    if opts.misclassified:
        out["misclassified"] = sorted(wrong, key=lambda r: -r["loss"])[: opts.misclassified]
    return out


MULTILABEL_FIELDS = ("path", "true", "predicted", "false_positives", "false_negatives", "loss")


def _compare(
    model: Target, other_path: str, images: Split, batch_size: int, mine: EvalResult, opts: EvalOptions
) -> dict[str, Any]:
    """--compare: another file of the same model on the same images and views (agreement compares like with like)."""
    other = Target(other_path, opts.provider, opts.device)
    if other.meta.class_names != model.meta.class_names or other.prep.to_dict() != model.prep.to_dict():
        raise UsageError(
            f"--compare {other_path} has other classes or preprocessing than {model.path}; compare exports of the same model"
        )
    start = time.perf_counter()
    theirs = evaluate(other.module, other.batches(images, batch_size), tta_flip=opts.tta_flip, tta_shift=opts.tta_shift)
    if model.meta.multilabel:  # the same label set at each file's thresholds
        a, b = (decide(probabilities(r.logits.numpy(), t.meta), t.meta) for r, t in ((mine, model), (theirs, other)))
        agreement = float((a == b).all(1).mean())
    else:
        agreement = float((theirs.logits.argmax(1) == mine.logits.argmax(1)).float().mean())
    return {
        "target": other.path,
        "kind": other.kind,
        "top1": theirs.acc,
        "agreement": agreement,
        "max_abs_logit_diff": float((theirs.logits - mine.logits).abs().max()),
        "seconds": round(time.perf_counter() - start, 3),
    }


ROW_FIELDS = ("path", "true", "predicted", "prob", "true_prob", "loss", "rank")


def per_image(probs: np.ndarray, targets: np.ndarray, classes: list[str], paths: list[str]) -> list[dict[str, Any]]:
    """One row per image: its file, true and predicted label, the predicted label's and the true
    label's probability, its loss (-log of the true label's probability) and the true label's
    rank among the classes (1 = the prediction)."""
    preds = probs.argmax(1)
    true_p = probs[np.arange(len(targets)), targets]
    rank = 1 + (probs > true_p[:, None]).sum(1)
    loss = -np.log(np.clip(true_p, 1e-12, None))
    return [
        {
            "path": paths[i],
            "true": classes[targets[i]],
            "predicted": classes[preds[i]],
            "prob": round(float(probs[i, preds[i]]), 6),
            "true_prob": round(float(true_p[i]), 6),
            "loss": round(float(loss[i]), 6),
            "rank": int(rank[i]),
        }
        for i in range(len(targets))
    ]


def most_confused(cm: np.ndarray, classes: list[str], n: int = 10) -> list[dict[str, Any]]:
    """The class pairs most often mistaken (true -> predicted), largest count first."""
    off = cm.copy()
    np.fill_diagonal(off, 0)
    order = np.argsort(-off, axis=None, kind="stable")[:n]
    pairs = [np.unravel_index(k, off.shape) for k in order]
    return [{"true": classes[i], "predicted": classes[j], "count": int(off[i, j])} for i, j in pairs if off[i, j] > 0]


def write_csv(path: str, fields: list[str], rows: list[dict[str, Any]]) -> None:
    """Rows as CSV with a header, written atomically (--errors, --predictions, --output *.csv)."""
    import csv
    import io

    from cnnctl.io import write_bytes

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    write_bytes(path, buf.getvalue().encode())


def write_rows(path: str, rows: list[dict[str, Any]]) -> None:
    """--errors / --predictions: the per-image rows (run_eval checked the .csv name before decoding)."""
    write_csv(path, list(ROW_FIELDS), rows)


def write_report(report: dict[str, Any], path: str) -> None:
    """--output: the whole report as JSON, or the per-class table as CSV for a .csv name."""
    from cnnctl.io import write_json

    if Path(path).suffix.lower() == ".csv" and report.get("task") == "multilabel":
        write_csv(path, ["class", "ap", "precision", "recall", "f1", "support", "threshold"], report["per_class"])
    elif Path(path).suffix.lower() == ".csv":
        averages = [{"class": f"{avg} avg", **values} for avg, values in report["averages"].items()]
        write_csv(path, ["class", "precision", "recall", "f1", "support"], report["per_class"] + averages)
    else:
        write_json(path, report)
