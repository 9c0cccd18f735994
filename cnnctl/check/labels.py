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
    reading: Any = None  # a label file's reading options (LabelSpec), when DATA is one
    backbone: bool = True  # without a model or weights: a frozen ImageNet backbone found in the local cache

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
    if opts.reading is not None:
        flags.update(
            image_root=opts.reading.image_root,
            path_column=opts.reading.path_column,
            label_column=opts.reading.label_column,
            label_delim=opts.reading.label_delim,
        )
    if grayscale and not opts.probe:
        flags["grayscale"] = True
    if opts.probe:
        flags["freeze"] = "backbone"
    else:
        flags["augment"] = "shift" if grayscale else "flip-crop"
        flags["optimizer"], flags["lr"], flags["scheduler"] = "adamw", 2e-3, "onecycle"
    return resolve(model, None, flags)


def with_backbone(opts: LabelOptions, log: Log) -> LabelOptions:
    """The options with a frozen ImageNet backbone filled in when none was asked for and one is in
    the local cache (confident learning is only as good as its out-of-sample probabilities)."""
    if opts.model or opts.probe or not opts.backbone:
        return opts
    from cnnctl.train.weights import cached_backbone

    found = cached_backbone()
    if found is None:
        return opts
    model, choice, file = found
    log(
        f"label issues: {model}'s ImageNet weights ({choice}) are in the local cache ({file}): its frozen features "
        f"score every image (--model tiny trains from scratch instead)"
    )
    return dataclasses.replace(opts, model=model, weights=choice if model.startswith("tv:") else "", pretrained=True)


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
    labels = split.y.numpy() if bundle.multilabel else split.y.numpy().astype(np.int64)
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
        logits = result.logits.double()
        probs[held_idx.numpy()] = (logits.sigmoid() if bundle.multilabel else logits.softmax(1)).numpy()
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

    from cnnctl.check.embed import features, headless
    from cnnctl.data.batches import Batches
    from cnnctl.train.trainer import prepare

    cfg, bundle = plan.cfg, plan.data
    run = prepare(plan, reporter)
    model = headless(run.model)
    batches = Batches(
        bundle.train, bundle.prep, plan.eval_batch.size, device=plan.device, channels_last=cfg.channels_last
    )
    result = features(model, batches)  # the head is gone: "logits" are the features
    feats = result.logits.double()
    log(
        f"features: {feats.shape[1]} per image from {cfg.model}'s frozen backbone, {len(feats)} images in {result.seconds:.1f}s"
    )
    labels = bundle.train.y
    probs = np.zeros((len(feats), len(bundle.classes)), dtype=np.float64)
    for f in range(opts.folds):
        tr, he = torch.from_numpy(fold != f), torch.from_numpy(fold == f)
        probs[he.numpy()] = fit_logistic(feats[tr], labels[tr], feats[he], len(bundle.classes))
    acc = accuracy(probs, labels.numpy())
    log(f"{opts.folds}-fold logistic regression on the features: out-of-sample accuracy {acc:.3f}")
    return (
        probs,
        f"{opts.folds}-fold logistic regression on {cfg.model}'s frozen features ({'x'.join(map(str, bundle.prep.size))})",
    )


def fit_logistic(x: Any, y: Any, x_new: Any, classes: int, l2: float = 0.3) -> np.ndarray:
    """Softmax regression on standardised features (full-batch L-BFGS, L2 on the weights);
    returns the probabilities of `x_new`. Convex, so the result does not depend on a seed.
    Multi-label targets (N x K): one logistic regression per class (sigmoid, binary cross-entropy)."""
    import torch

    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    xs, xn = (x - mean) / std, (x_new - mean) / std
    w = torch.zeros(x.shape[1], classes, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> Any:
        opt.zero_grad()
        z = xs @ w + b
        fit = (
            torch.nn.functional.binary_cross_entropy_with_logits(z, y.double()) * classes
            if y.dim() == 2
            else torch.nn.functional.cross_entropy(z, y)
        )
        loss = fit + l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        z = xn @ w + b
        return (z.sigmoid() if y.dim() == 2 else z.softmax(1)).numpy()


def accuracy(probs: np.ndarray, labels: np.ndarray) -> float:
    """Out-of-sample accuracy; for multi-label targets the label accuracy at 1/2."""
    if labels.ndim == 2:
        return float(((probs >= 0.5) == (labels > 0.5)).mean())
    return float((probs.argmax(1) == labels).mean())


def skill(probs: np.ndarray, labels: np.ndarray, aside: np.ndarray | None = None) -> float:
    """How much of the way from always answering the most common label to perfect the out-of-sample
    predictions get (1 - error / the majority's error; per class for multi-label, averaged), on the
    images not set `aside` (those the predictions are sure are mislabelled: label noise would
    otherwise count against a model that is right about it)."""
    if aside is not None and (~aside).sum() >= 2:
        probs, labels = probs[~aside], labels[~aside]
    if labels.ndim == 2:
        y = labels > 0.5
        majority = np.maximum(y.mean(0), 1 - y.mean(0))
        acc = ((probs >= 0.5) == y).mean(0)
    else:
        majority = np.array([np.bincount(labels).max() / len(labels)])
        acc = np.array([accuracy(probs, labels)])
    return float(np.mean((acc - majority) / np.maximum(1 - majority, 1e-9)))


# Below this skill the model's own mistakes swamp the label errors (docs/check.md): only images
# whose given label it gives at most WEAK_PROB are listed, at most WEAK_SHARE of the images.
WEAK_SKILL = 0.7
WEAK_PROB = 0.1
WEAK_SHARE = 0.02


def find_multilabel_issues(labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One-vs-rest confident learning (as cleanlab's multilabel_classification.find_label_issues):
    each class's given yes/no against [1 - p, p]; an image is an issue when any class flags it.
    Returns (indices, least self-confident first; each image's worst class)."""
    y = (labels > 0.5).astype(np.int64)
    n, k = y.shape
    flagged = np.zeros(n, dtype=bool)
    for c in range(k):
        binary = np.stack([1 - probs[:, c], probs[:, c]], axis=1)
        if y[:, c].min() == y[:, c].max():
            continue  # a class every image has (or none has): nothing to contrast
        flagged[find_issues(y[:, c], binary)] = True
    given, worst = given_probability(probs, labels)
    idx = np.flatnonzero(flagged)
    return idx[np.argsort(given[idx], kind="stable")], worst


def given_probability(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(each image's out-of-sample probability of its given label, the class it is about): for
    multi-label images the given yes/no of the class it is least sure of (its worst class)."""
    rows = np.arange(len(labels))
    if labels.ndim == 2:
        given = np.where(labels > 0.5, probs, 1 - probs)
        worst = given.argmin(1)
        return given[rows, worst], worst
    return probs[rows, labels], labels


def label_issues(data: str, opts: LabelOptions, grayscale: bool, log: Log) -> dict[str, Any]:
    """The suspects, best first: path, given label, suggested label, score (1 - p(given label)).
    Out-of-sample predictions too weak to tell label errors from their own are said in one line,
    and only what they are very sure of is listed (`WEAK_SKILL`)."""
    opts = with_backbone(opts, log)
    probs, labels, paths, classes, how = out_of_sample(data, opts, grayscale, log)
    multilabel = labels.ndim == 2
    idx = find_multilabel_issues(labels, probs)[0] if multilabel else find_issues(labels, probs)
    given_p, worst = given_probability(probs, labels)
    acc, score = accuracy(probs, labels), skill(probs, labels, given_p <= WEAK_PROB)
    candidates = len(idx)
    weak = score < WEAK_SKILL
    if weak:
        cap = max(1, int(WEAK_SHARE * len(labels)))
        idx = idx[given_p[idx] <= WEAK_PROB][:cap]
        log(
            f"label issues: the out-of-sample predictions are weak (accuracy {acc:.1%}; skill {score:.2f} over always "
            f"answering the most common label): they cannot tell label errors from their own, so {len(idx)} of the "
            f"{candidates} confident-learning candidates are listed (those it is {1 - WEAK_PROB:.0%} sure of); for a "
            f"trustworthy search use ImageNet features: --model tv:mobilenet_v2 --pretrained"
        )
    shown = idx[: opts.limit] if opts.limit else idx
    suspects = [_suspect(i, probs, labels, paths, classes, worst if multilabel else None) for i in shown]
    return {
        "method": how,
        "scoring": (
            "one-vs-rest confident learning (prune by noise rate per class), ranked by the worst class's self-confidence"
            if multilabel
            else "confident learning (prune by noise rate), ranked by self-confidence"
        ),
        "images": len(labels),
        "out_of_sample_accuracy": round(acc, 4),
        "skill": round(score, 4),
        "weak_evidence": weak,
        "candidates": int(candidates),
        "issues": int(len(idx)),
        "suspects": suspects,
    }


def _suspect(
    i: int, probs: np.ndarray, labels: np.ndarray, paths: list[str], classes: list[str], worst: np.ndarray | None
) -> dict[str, Any]:
    if worst is None:
        return {
            "path": paths[i],
            "given": classes[labels[i]],
            "suggested": classes[int(probs[i].argmax())],
            "score": round(1.0 - float(probs[i, labels[i]]), 6),
            "given_prob": round(float(probs[i, labels[i]]), 6),
            "suggested_prob": round(float(probs[i].max()), 6),
        }
    c = int(worst[i])
    has = labels[i, c] > 0.5
    given = [classes[k] for k in np.flatnonzero(labels[i] > 0.5)]
    suggested = sorted(set(given) - {classes[c]}) if has else sorted({*given, classes[c]})
    p_given = float(probs[i, c] if has else 1 - probs[i, c])
    return {
        "path": paths[i],
        "given": " ".join(given),
        "suggested": " ".join(suggested),
        "class": classes[c],
        "change": f"remove {classes[c]}" if has else f"add {classes[c]}",
        "score": round(1.0 - p_given, 6),
        "given_prob": round(p_given, 6),
        "suggested_prob": round(1.0 - p_given, 6),
    }
