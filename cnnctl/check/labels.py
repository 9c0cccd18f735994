"""`cnnctl check DATA --labels`: rank the images most likely mislabelled.

Every image gets a predicted probability from a model that never trained on it (k-fold: each
fold is predicted by a model trained on the other folds), then confident learning (confident.py)
picks and ranks the suspects. Two ways to get the probabilities, both through cnnctl's own setup
(`plan.make_plan` / `trainer.prepare` / `trainer.fit_prepared`), so the data, preprocessing and start weights are
exactly what `cnnctl train` would use:
- from scratch (the default, offline): the small net trained k times with the one epoch loop
  (`engine.fit`): model-a at 28x28 grayscale for digit-like data, tiny at 32x32 otherwise;
- with start weights (`--pretrained`/`--weights`/`--init`): the frozen backbone's features are
  computed once for every image (the one `evaluate()`, with the head removed), and a
  multinomial logistic regression on them is fitted k times (L-BFGS, L2 0.3 on standardised
  features: the best of 1e-3..1 on 2,000 PetImages photos with 5% planted flips, docs/check.md),
  which takes seconds.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from cnnctl.check.confident import find_issues

if TYPE_CHECKING:  # torch-free at import: `cnnctl check` without --labels never loads torch
    from cnnctl.train.plan import Plan

Log = Callable[[str], None]


@dataclass
class LabelOptions:
    model: str = ""  # "" picks by data: model-a (grayscale) or tiny
    image_size: str = ""
    epochs: int = 0  # 0: 10 from scratch
    folds: int = 4
    pretrained: bool = False
    weights: str = ""
    init: str = ""
    batch_size: int = 64
    seed: int = 0
    limit: int = 0  # suspects listed (0: all)

    @property
    def probe(self) -> bool:
        return bool(self.pretrained or self.weights or self.init)


class _Quiet:
    """engine.Reporter: the loop's own lines go to `log` only when they matter."""

    def __init__(self, log: Log) -> None:
        self.log_fn = log

    def start_epoch(self, epoch: int, epochs: int, batches: int) -> None: ...

    def batch(self, done: int, loss: float, images_per_s: float) -> None: ...

    def end_epoch(self, record: dict[str, Any], best: bool) -> None: ...

    def log(self, message: str) -> None:
        if message.startswith(("skipped", "decoded", "--init", "--pretrained")):
            self.log_fn(message)


def _config(data: str, opts: LabelOptions, grayscale: bool) -> Any:
    from cnnctl.config import resolve

    model = opts.model or ("model-a" if grayscale else "tiny")
    size = opts.image_size or ("" if opts.probe else ("28" if grayscale else "32"))
    flags: dict[str, Any] = {
        "data": data,
        "val_split": 0.0,
        "epochs": opts.epochs or 10,
        "batch_size": opts.batch_size,
        "seed": opts.seed,
        "pretrained": opts.pretrained,
        "weights": opts.weights,
        "init": opts.init,
    }
    if size:
        flags["image_size"] = size
    if grayscale and not opts.probe:
        flags["grayscale"] = True
    if opts.probe:
        flags["freeze"] = "backbone"
    else:
        flags["augment"] = "shift" if grayscale else "flip-crop"
        flags["optimizer"], flags["lr"], flags["scheduler"] = "adamw", 2e-3, "onecycle"
    return resolve(model, None, flags)


def folds_of(n: int, k: int, seed: int) -> np.ndarray:
    """Fold index per image: a seeded shuffle cut into k near-equal parts."""
    order = np.random.default_rng(seed).permutation(n)
    fold = np.empty(n, dtype=np.int64)
    fold[order] = np.arange(n) % k
    return fold


def out_of_sample(
    data: str, opts: LabelOptions, grayscale: bool, log: Log
) -> tuple[np.ndarray, np.ndarray, list[str], list[str], str]:
    """(probabilities N x K, given labels, paths, class names, how) with each image's row from a
    model that did not train on it."""
    from cnnctl.errors import UsageError
    from cnnctl.train.plan import make_plan, pick_device

    if not 2 <= opts.folds <= 20:
        raise UsageError(f"--folds {opts.folds}: give 2 to 20 (4 or 5 is usual)")
    cfg = _config(data, opts, grayscale)
    reporter = _Quiet(log)
    plan = make_plan(cfg, reporter, pick_device(cfg.device))
    bundle = plan.data
    split = bundle.train
    n, k = len(split), len(bundle.classes)
    if n < 2 * opts.folds or k < 2:
        raise UsageError(f"--labels needs at least {2 * opts.folds} images in 2 or more classes; {data} has {n} in {k}")
    fold = folds_of(n, opts.folds, opts.seed)
    labels = split.y.numpy().astype(np.int64)
    if opts.probe:
        probs, how = _probe(plan, reporter, fold, opts, log)
    else:
        probs, how = _scratch(plan, reporter, fold, opts, log)
    return probs, labels, list(split.paths or [str(i) for i in range(n)]), list(bundle.classes), how


def _scratch(plan: Plan, reporter: Any, fold: np.ndarray, opts: LabelOptions, log: Log) -> tuple[np.ndarray, str]:
    import torch

    from cnnctl.data.batches import Batches
    from cnnctl.train.engine import evaluate
    from cnnctl.train.trainer import fit_prepared, prepare

    cfg, bundle = plan.cfg, plan.data
    split = bundle.train
    probs = np.zeros((len(split), len(bundle.classes)), dtype=np.float64)
    for f in range(opts.folds):
        train_idx, held_idx = torch.from_numpy(np.flatnonzero(fold != f)), torch.from_numpy(np.flatnonzero(fold == f))
        part = dataclasses.replace(bundle, train=split.take(train_idx), val=None, test=None)
        run = prepare(plan.with_data(part), reporter)
        history = fit_prepared(run)
        held = Batches(
            split.take(held_idx), bundle.prep, plan.eval_batch.size, device=plan.device, channels_last=cfg.channels_last
        )
        result = evaluate(run.model, held)
        probs[held_idx.numpy()] = result.logits.double().softmax(1).numpy()
        last = history.epochs[-1] if history.epochs else {}
        log(
            f"fold {f + 1}/{opts.folds}: trained {cfg.model} on {len(train_idx)} images for {len(history.epochs)} epochs "
            f"(train_acc {last.get('train_acc', 0):.3f}), held-out accuracy {result.acc:.3f} on {len(held_idx)}"
        )
    return (
        probs,
        f"{opts.folds}-fold {cfg.model} from scratch at {'x'.join(map(str, bundle.prep.size))}, {cfg.epochs} epochs",
    )


def _probe(plan: Plan, reporter: Any, fold: np.ndarray, opts: LabelOptions, log: Log) -> tuple[np.ndarray, str]:
    import torch
    from torch import nn

    from cnnctl.data.batches import Batches
    from cnnctl.train.engine import evaluate
    from cnnctl.train.freezing import head_of
    from cnnctl.train.trainer import prepare

    cfg, bundle = plan.cfg, plan.data
    run = prepare(plan, reporter)
    model = run.model
    name, _ = head_of(model)
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, nn.Identity())
    batches = Batches(
        bundle.train, bundle.prep, plan.eval_batch.size, device=plan.device, channels_last=cfg.channels_last
    )
    result = evaluate(model, batches, lambda out, y: out.new_zeros(()))  # the head is gone: "logits" are the features
    feats = result.logits.double()
    log(
        f"features: {feats.shape[1]} per image from {cfg.model}'s frozen backbone, {len(feats)} images in {result.seconds:.1f}s"
    )
    labels = bundle.train.y
    probs = np.zeros((len(feats), len(bundle.classes)), dtype=np.float64)
    for f in range(opts.folds):
        tr, he = torch.from_numpy(fold != f), torch.from_numpy(fold == f)
        probs[he.numpy()] = fit_logistic(feats[tr], labels[tr], feats[he], len(bundle.classes))
    acc = float((probs.argmax(1) == labels.numpy()).mean())
    log(f"{opts.folds}-fold logistic regression on the features: out-of-sample accuracy {acc:.3f}")
    return (
        probs,
        f"{opts.folds}-fold logistic regression on {cfg.model}'s frozen features ({'x'.join(map(str, bundle.prep.size))})",
    )


def fit_logistic(x: Any, y: Any, x_new: Any, classes: int, l2: float = 0.3) -> np.ndarray:
    """Softmax regression on standardised features (full-batch L-BFGS, L2 on the weights);
    returns the probabilities of `x_new`. Convex, so the result does not depend on a seed."""
    import torch

    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    xs, xn = (x - mean) / std, (x_new - mean) / std
    w = torch.zeros(x.shape[1], classes, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> Any:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(xs @ w + b, y) + l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return (xn @ w + b).softmax(1).numpy()


def label_issues(data: str, opts: LabelOptions, grayscale: bool, log: Log) -> dict[str, Any]:
    """The suspects, best first: path, given label, suggested label, score (1 - p(given label))."""
    probs, labels, paths, classes, how = out_of_sample(data, opts, grayscale, log)
    idx = find_issues(labels, probs)
    shown = idx[: opts.limit] if opts.limit else idx
    suspects = [
        {
            "path": paths[i],
            "given": classes[labels[i]],
            "suggested": classes[int(probs[i].argmax())],
            "score": round(1.0 - float(probs[i, labels[i]]), 6),
            "given_prob": round(float(probs[i, labels[i]]), 6),
            "suggested_prob": round(float(probs[i].max()), 6),
        }
        for i in shown
    ]
    acc = float((probs.argmax(1) == labels).mean())
    return {
        "method": how,
        "scoring": "confident learning (prune by noise rate), ranked by self-confidence",
        "images": len(labels),
        "out_of_sample_accuracy": round(acc, 4),
        "issues": int(len(idx)),
        "suspects": suspects,
    }
