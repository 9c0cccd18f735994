"""The one epoch loop and the one evaluate(): `fit` calls `evaluate`; `cnnctl eval` calls it too.

zero_grad -> forward -> loss -> backward -> step, with the learning rate set per step from a
pure schedule function, optional AMP on CUDA, and checks that stop a diverging run at once.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from cnnctl.errors import TrainingError
from cnnctl.train.budget import BudgetProbe, Workload
from cnnctl.train.distributed import Dist
from cnnctl.train.ema import EMA, Lookahead
from cnnctl.train.schedule import Schedule


class Interrupted(Exception):
    """Raised inside an epoch when SIGINT/SIGTERM arrived; the partial epoch is discarded."""


class Reporter(Protocol):
    def start_epoch(self, epoch: int, epochs: int, batches: int) -> None: ...
    def batch(self, done: int, loss: float, images_per_s: float) -> None: ...
    def end_epoch(self, record: dict[str, Any], best: bool) -> None: ...
    def log(self, message: str) -> None: ...


def make_loss(
    kind: str,
    num_classes: int,
    label_smoothing: float = 0.0,
    weight: torch.Tensor | None = None,
    *,
    multilabel: bool = False,
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Cross-entropy (optionally weighted per class: --class-weights), or MSE between
    softmax(logits) and one-hot targets (the cats-vs-dogs tutorial); for a multi-label run, binary
    cross-entropy of each class's sigmoid, `weight` as each class's positive weight (pos_weight)
    and label smoothing pulling every target towards 1/2 (y (1 - e) + e / 2).

    Targets are class indices (N,) or, from --mixup/--cutmix, class probabilities (N, classes);
    multi-label targets are (N, classes) vectors in [0, 1].
    """
    if multilabel:

        def bce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            target = y.float() * (1 - label_smoothing) + label_smoothing / 2 if label_smoothing else y.float()
            w = weight.to(logits.device) if weight is not None else None
            return F.binary_cross_entropy_with_logits(logits.float(), target, pos_weight=w)

        return bce
    if kind == "mse":

        def mse(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            target = y if y.dim() == 2 else F.one_hot(y, num_classes).float()
            return F.mse_loss(logits.float().softmax(1), target)

        return mse

    def ce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        w = weight.to(logits.device) if weight is not None else None
        return F.cross_entropy(logits.float(), y, weight=w, label_smoothing=label_smoothing)

    return ce


def autocast(device: torch.device, amp: str):
    """bf16 or fp16 autocast on CUDA; bf16 on CPU (oneDNN's bf16 convolutions); else a no-op."""
    if amp == "none" or device.type not in ("cuda", "cpu") or (device.type == "cpu" and amp != "bf16"):
        return torch.autocast(device_type=device.type, enabled=False)
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


@dataclass
class EpochStats:
    loss: float
    acc: float
    images: int
    steps: int
    seconds: float
    truncated: bool


@dataclass
class Stepping:
    """What happens around each optimizer step: precision, gradient accumulation, clipping,
    lookahead, a weight average, and each parameter group's share of the scheduled rate."""

    accumulate: int = 1
    clip_grad: float = 0.0
    ema: EMA | None = None
    lookahead: Lookahead | None = None
    amp: str = "none"  # none | bf16 | fp16 (fp16 steps through `scaler`)
    scaler: Any = None
    lr_scales: Sequence[float] = ()  # per optimizer param group, in order; empty: all 1

    def set_lr(self, optimizer: torch.optim.Optimizer, lr: float) -> None:
        for i, group in enumerate(optimizer.param_groups):
            group["lr"] = lr * (self.lr_scales[i] if i < len(self.lr_scales) else 1.0)

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def step(self, optimizer: torch.optim.Optimizer, params: list[torch.Tensor], step: int) -> None:
        """One optimizer step on the accumulated gradients, then what follows it; `step` is the
        global step count after it. Clip (unscaled first with fp16), step, lookahead, average."""
        if self.clip_grad > 0:
            if self.scaler is not None:
                self.scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(params, self.clip_grad)
        if self.scaler is not None:
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            optimizer.step()
        if self.lookahead is not None:
            self.lookahead.after_step(step)
        if self.ema is not None:
            self.ema.update()


@dataclass
class Hooks:
    """How the loop talks to its caller: stop requests, progress, and the epoch boundaries."""

    should_stop: Callable[[], bool] = lambda: False
    reporter: Reporter | None = None
    on_epoch_start: Callable[[int], None] = lambda epoch: None
    on_epoch_end: Callable[[dict[str, Any], bool, LoopState, History], None] = lambda record, improved, state, history: (
        None
    )
    on_step: Callable[[int, torch.Tensor, float], None] | None = (
        None  # (step, loss tensor, lr) after each optimizer step
    )
    # After each epoch's record: True stops the run as "pruned" (a search's pruner; rank 0 decides).
    prune: Callable[[dict[str, Any]], bool] = lambda record: False


@dataclass(frozen=True)
class Until:
    """Where an epoch may end early: `end_step()`, the global step to stop at (asked after every
    step: a time budget fitted during the epoch can move it), and a wall-clock `deadline`."""

    end_step: Callable[[], int | None] | None = None
    deadline: float | None = None  # time.monotonic() seconds


class _Sums:
    """An epoch's running loss, hits and images; they stay on the model's device (no host sync
    per step on CUDA) until `reduce` sums them over the ranks."""

    def __init__(self, device: torch.device, multilabel: bool = False) -> None:
        self.loss = torch.zeros((), dtype=torch.float64, device=device)
        self.correct = torch.zeros((), dtype=torch.int64, device=device)
        self.labelled = torch.zeros((), dtype=torch.int64, device=device)
        self.seen = 0
        self.multilabel = multilabel

    def add(self, logits: torch.Tensor, y: torch.Tensor, loss: torch.Tensor) -> None:
        """One batch's loss and hits; rows labelled -1 (images only a distillation teacher labels,
        `cnnctl distill --unlabeled`) count towards the loss but not the accuracy."""
        n = y.shape[0]
        self.loss += loss.detach().double() * n
        if self.multilabel:  # label accuracy: (image, class) decisions at 1/2 that match, per image
            labelled = y[:, 0] >= 0
            hits = ((logits.detach() > 0) == (y > 0.5))[labelled].sum()
            self.correct += hits
            self.labelled += labelled.sum()
        else:
            labelled = (y.sum(1) >= 0) if y.dim() == 2 else (y >= 0)
            self.correct += ((logits.detach().argmax(1) == (y.argmax(1) if y.dim() == 2 else y)) & labelled).sum()
            self.labelled += labelled.sum()
        self.seen += n

    def reduce(self, dist: Dist, steps: int, seconds: float, truncated: bool, classes: int = 1) -> EpochStats:
        loss_sum, correct_sum, seen_sum, labelled_sum = dist.sum(
            [float(self.loss), float(self.correct), float(self.seen), float(self.labelled)]
        )
        seen, labelled = int(seen_sum), int(labelled_sum)
        per = classes if self.multilabel else 1
        return EpochStats(
            loss_sum / max(1, seen), correct_sum / max(1, labelled * per), seen, steps, seconds, truncated
        )


def train_one_epoch(
    loop: Loop,
    batches: Iterable[tuple[torch.Tensor, ...]],
    lr_fn: Callable[[int], float],
    step: int,
    *,
    stepping: Stepping | None = None,
    sizes: Sequence[int] | None = None,
    until: Until | None = None,
    hooks: Hooks | None = None,
    dist: Dist | None = None,
) -> tuple[EpochStats, int]:
    """One pass of `loop`'s model, optimizer and loss over `batches`; returns the stats (summed
    over all ranks) and the new global step. `fit` is its one caller in cnnctl.

    A step is one optimizer step (`Stepping.step`): with `stepping.accumulate` N, the gradients
    of N consecutive batches (global sizes in `sizes`) are summed, each batch's mean loss weighted
    by its share of the group, so N batches of B train exactly as one batch of N*B would
    (BatchNorm aside: it sees B images at a time). The epoch ends early where `until` says.

    Under torchrun every rank runs this on its slice of the same global batches; the stop checks
    after each step are agreed between ranks, so all of them leave the loop at the same step.
    """
    dist, stepping, hooks, until = dist or Dist(), stepping or Stepping(), hooks or Hooks(), until or Until()
    model, optimizer = loop.model, loop.optimizer
    accumulate, reporter = stepping.accumulate, hooks.reporter
    model.train()
    device = next(model.parameters()).device
    params = [p for group in optimizer.param_groups for p in group["params"]]
    count = len(sizes) if sizes is not None else None
    sums = _Sums(device, loop.multilabel)
    classes = 1
    step_loss = torch.zeros((), dtype=torch.float32, device=device)
    steps, truncated, lr = 0, False, 0.0
    start = time.perf_counter()
    soft: list[torch.Tensor]
    for i, (x, y, *soft) in enumerate(batches):
        position = i % accumulate  # within this step's group of batches
        last = position == accumulate - 1 or (count is not None and i == count - 1)
        if position == 0:
            lr = lr_fn(step)
            stepping.set_lr(optimizer, lr)
            optimizer.zero_grad(set_to_none=True)
            step_loss.zero_()
        weight = 1.0
        if accumulate > 1:
            group_sizes = sizes[i - position : i - position + accumulate] if sizes is not None else [1] * accumulate
            weight = (sizes[i] if sizes is not None else 1) / sum(group_sizes)
        logits, loss = _forward_backward(
            loop, (x, y, *soft), weight, sync=last, stepping=stepping, where=(step + 1, lr)
        )
        classes = logits.shape[1]
        sums.add(logits, y, loss)
        step_loss += loss.detach().float() * weight
        if not last:
            continue
        steps += 1
        step += 1
        stepping.step(optimizer, params, step)
        if hooks.on_step is not None:
            hooks.on_step(step, step_loss.clone(), lr)
        if reporter is not None and (device.type == "cpu" or steps % 20 == 0):  # float() syncs a GPU
            reporter.batch(i + 1, float(loss.detach()), sums.seen / max(1e-9, time.perf_counter() - start))
        stop, late = dist.any(hooks.should_stop(), until.deadline is not None and time.monotonic() >= until.deadline)
        if stop:
            raise Interrupted()
        end = until.end_step() if until.end_step is not None else None
        if late or (end is not None and step >= end):
            truncated = True
            break
    if stepping.lookahead is not None:
        stepping.lookahead.end_epoch()
    return sums.reduce(dist, steps, time.perf_counter() - start, truncated, classes), step


def _forward_backward(
    loop: Loop,
    batch: tuple[torch.Tensor, ...],
    weight: float,
    *,
    sync: bool,
    stepping: Stepping,
    where: tuple[int, float],
) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch's forward pass and backward of its loss (x `weight` within an accumulated step);
    under DDP the gradients are all-reduced only when `sync` (the group's last batch). A batch is
    (inputs, labels) or, from a distillation's batches, (inputs, labels, the teacher's logits of
    the same view): what follows the labels is handed to the loss as it is."""
    model = loop.model
    x, y, *soft = batch
    no_sync = getattr(model, "no_sync", None)
    with no_sync() if not sync and no_sync is not None else nullcontext():
        with autocast(x.device, stepping.amp):
            logits = model(x)
            loss = loop.loss_fn(logits, y, *soft)
        if not torch.isfinite(loss):
            step, lr = where
            raise TrainingError(
                f"the loss became {loss.item()} at step {step} (lr {lr:.3g}); training stopped. "
                f"Lower --lr or add --warmup; the last good epoch is kept in last.safetensors"
            )
        stepping.backward(loss * weight if weight != 1.0 else loss)
    return logits, loss


@dataclass
class EvalResult:
    """Loss and accuracy over a split, with all logits and targets for detailed reports. For
    multi-label targets ((N, classes) vectors) `acc` is the label accuracy at 1/2 (1 - Hamming loss)."""

    loss: float
    acc: float
    top5: float | None
    logits: torch.Tensor
    targets: torch.Tensor
    seconds: float

    @property
    def images_per_s(self) -> float:
        return len(self.targets) / max(1e-9, self.seconds)


def evaluate(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    *,
    amp: str = "none",
    tta_flip: bool = False,
    tta_shift: int = 0,
) -> EvalResult:
    """Run `model` over `batches` in inference mode, with test-time augmentation: `tta_flip`
    averages with mirrored inputs; `tta_shift` P puts half the weight on the inputs translated by
    (-P, -P) and (+P, +P) pixels (reflect-padded), as airbench's multi-crop evaluation."""
    model.eval()
    loss_fn = loss_fn or _default_loss
    all_logits, all_targets = [], []
    total_loss = 0.0
    start = time.perf_counter()
    with torch.inference_mode():
        for x, y in batches:
            with autocast(x.device, amp):
                logits = tta_logits(model, x, tta_flip, tta_shift)
            logits = logits.float()
            total_loss += float(loss_fn(logits, y)) * y.shape[0]
            all_logits.append(logits.cpu())
            all_targets.append(y.cpu())
    seconds = time.perf_counter() - start
    logits = torch.cat(all_logits) if all_logits else torch.zeros(0, 0)
    targets = torch.cat(all_targets) if all_targets else torch.zeros(0, dtype=torch.int64)
    n = max(1, len(targets))
    if targets.dim() == 2:  # multi-label
        acc = float(((logits > 0) == (targets > 0.5)).float().mean()) if len(targets) else 0.0
        return EvalResult(total_loss / n, acc, None, logits, targets, seconds)
    acc = float((logits.argmax(1) == targets).sum()) / n if len(targets) else 0.0
    top5 = None
    if logits.shape[1:] and logits.shape[1] > 5:
        top5 = float((logits.topk(5, dim=1).indices == targets[:, None]).any(1).sum()) / n
    return EvalResult(total_loss / n, acc, top5, logits, targets, seconds)


def _default_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of class indices; binary cross-entropy of multi-label vectors."""
    if y.dim() == 2:
        return F.binary_cross_entropy_with_logits(logits.float(), y.float())
    return F.cross_entropy(logits.float(), y)


def tta_logits(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, flip: bool, shift: int) -> torch.Tensor:
    """Logits of `x` averaged over its test-time views (see `evaluate`)."""

    def views(x: torch.Tensor) -> torch.Tensor:
        return (model(x) + model(x.flip(3))) / 2 if flip else model(x)

    logits = views(x)
    if shift:
        h, w = x.shape[-2:]
        padded = F.pad(x, (shift,) * 4, mode="reflect")
        moved = (views(padded[..., :h, :w]) + views(padded[..., 2 * shift :, 2 * shift :])) / 2
        logits = (logits + moved) / 2
    return logits


def is_better(value: float, best: float | None, monitor: str) -> bool:
    if best is None or math.isnan(best):
        return True
    return value < best if monitor == "val_loss" else value > best


@dataclass
class LoopState:
    """What the loop carries between epochs (saved in last.safetensors for resume)."""

    epoch: int = 0
    step: int = 0
    best: float | None = None
    best_epoch: int = 0
    bad_epochs: int = 0
    elapsed: float = 0.0

    def advance(self, epoch: int, step: int, seconds: float, metric: float, limits: Limits) -> bool:
        """Record a finished epoch; True when it is the new best. With monitor "last" every epoch
        replaces the saved weights (a schedule that anneals to zero ends on its best weights;
        1,000 validation images would pick among near-ties by noise)."""
        improved = limits.monitor == "last" or is_better(metric, self.best, limits.compared)
        self.epoch, self.step = epoch, step
        self.elapsed += seconds
        if improved:
            self.best, self.best_epoch, self.bad_epochs = metric, epoch, 0
        else:
            self.bad_epochs += 1
        return improved


@dataclass
class Limits:
    """When training stops: epochs, a step count, patience on the monitored metric, a time budget."""

    epochs: int
    max_steps: int | None = None
    patience: int = 0
    monitor: str = "val_acc"
    time_limit: float = 0.0

    @property
    def compared(self) -> str:
        """The metric that compares epochs and weights (monitor "last" keeps every epoch; val_loss picks EMA vs model)."""
        return "val_loss" if self.monitor == "last" else self.monitor


@dataclass
class History:
    """What fit() returns: every epoch's record (a resumed run's earlier ones first) and why it stopped."""

    epochs: list[dict[str, Any]] = field(default_factory=list)
    stopped: str = "completed"  # completed | iters | time-limit | early-stopped | pruned


@dataclass
class Loop:
    """What fit drives: the model (DDP-wrapped or compiled for training; `eval_model` the plain
    module to validate, when that differs), its optimizer and loss, and the batches."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    loss_fn: Callable[..., torch.Tensor]  # (logits, labels[, a teacher's logits]) -> loss
    train_batches: Any
    val_batches: Any | None = None
    eval_model: nn.Module | None = None
    multilabel: bool = False  # label-set targets: label accuracy, and mAP in validation


def fit(
    loop: Loop,
    schedule: Schedule,
    stepping: Stepping,
    limits: Limits,
    hooks: Hooks,
    *,
    state: LoopState,
    history: History | None = None,
    seed: int = 0,
    dist: Dist | None = None,
) -> History:
    """Train from `state.epoch + 1` to `limits.epochs`; validate with `evaluate` after every epoch.

    Each epoch reseeds torch's global RNG from (seed, epoch) and draws its shuffle from the same,
    so a resumed run repeats exactly what an uninterrupted one would do. Records are appended to
    `history` (a resumed run's), which is returned with the reason training stopped. Under
    torchrun, `loop.model` is the DDP wrapper, `loop.eval_model` the plain module (validated on
    this rank's shard of the validation batches, metrics summed over ranks), and every decision
    is taken from numbers that are the same on all ranks.

    With a `time_limit`, the schedule is fitted to the budget from the speed of the first steps
    (budget.BudgetProbe), then again after every epoch from the measured seconds per step
    (validation included; the mean over ranks), so an annealing schedule finishes its decay
    inside the budget on a slower or busier machine.

    With an EMA (`stepping.ema`), both weights are validated; the record's "weights" says which
    scored better on `limits.monitor` (the EMA without a validation split): those are the best.
    """
    dist = dist or Dist()
    history = history if history is not None else History()
    eval_model = loop.eval_model if loop.eval_model is not None else loop.model  # a compiled module has no truth value
    deadline = time.monotonic() + (limits.time_limit - state.elapsed) if limits.time_limit else None
    probe = _budget_probe(
        schedule, deadline, limits, loop.train_batches, loop.val_batches, stepping, dist, hooks.reporter
    )
    epoch_hooks = dataclasses.replace(hooks, on_step=_with_probe(probe, hooks.on_step))
    history.stopped = "completed"
    for epoch in range(state.epoch + 1, limits.epochs + 1):
        torch.manual_seed(seed * 7919 + epoch + 104_729 * dist.rank)
        hooks.on_epoch_start(epoch)
        if hooks.reporter is not None:
            hooks.reporter.start_epoch(epoch, limits.epochs, len(loop.train_batches))
        epoch_start = time.monotonic()
        if stepping.lookahead is not None:
            stepping.lookahead.start_epoch(min([schedule.length, *_ends(limits, schedule)]))
        stats, step = train_one_epoch(
            loop,
            loop.train_batches.epoch(epoch),
            schedule.lr,
            state.step,
            stepping=stepping,
            sizes=loop.train_batches.sizes() if hasattr(loop.train_batches, "sizes") else None,
            until=Until(lambda: min(_ends(limits, schedule), default=None), deadline),
            hooks=epoch_hooks,
            dist=dist,
        )
        record = _epoch_record(epoch, stats, step, schedule)
        record.update(_validation(loop, eval_model, stepping, dist))
        metric = _score(record, limits, stepping.ema is not None)
        ended_plan = schedule.shortened and step >= schedule.planned_steps  # the fitted schedule has run its course
        if deadline is not None and schedule.total_steps and stats.steps and not ended_plan:
            if probe is not None:
                probe.done = True  # from now on the measured epochs, validation included, set the plan
            _refit(schedule, step, deadline, (time.monotonic() - epoch_start) / stats.steps, dist)
        if schedule.shortened:
            record["planned_steps"] = schedule.planned_steps
        improved = state.advance(epoch, step, stats.seconds, metric, limits)
        history.epochs.append(record)
        _end_epoch(hooks, record, improved, state, history)
        prune = hooks.prune(record) and epoch < limits.epochs  # asked every epoch: the search records each
        late, stop, pruned = dist.any(deadline is not None and time.monotonic() >= deadline, hooks.should_stop(), prune)
        reason = _stop_reason(limits, schedule, state, step, late) or ("pruned" if pruned else None)
        if reason:
            history.stopped = reason
            break
        if stop:
            raise Interrupted()
    return history


def _end_epoch(hooks: Hooks, record: dict[str, Any], improved: bool, state: LoopState, history: History) -> None:
    hooks.on_epoch_end(record, improved, state, history)
    if hooks.reporter is not None:
        hooks.reporter.end_epoch(record, improved)


def _epoch_record(epoch: int, stats: EpochStats, step: int, schedule: Schedule) -> dict[str, Any]:
    record: dict[str, Any] = {
        "epoch": epoch,
        "train_loss": stats.loss,
        "train_acc": stats.acc,
        "lr": schedule.lr(max(0, step - 1)),
        "seconds": round(stats.seconds, 3),
        "images_per_s": round(stats.images / max(1e-9, stats.seconds), 1),
        "steps": step,
    }
    if stats.truncated:
        record["truncated"] = True
    return record


def _score(record: dict[str, Any], limits: Limits, ema: bool) -> float:
    """The epoch's score on the monitored metric; with an EMA, the better weights' (recorded in
    record["weights"]), compared on val_loss for monitor "last"."""
    key = limits.compared
    if ema:
        mine, averaged = record.get(key), record.get(f"ema_{key}")
        use_ema = mine is None or (averaged is not None and is_better(averaged, mine, key) and averaged != mine)
        record["weights"] = "ema" if use_ema else "model"
    metric = kept_metric(record, key)
    return metric if metric is not None else record["train_loss"] if key == "val_loss" else record["train_acc"]


def kept_metric(record: dict[str, Any], key: str) -> float | None:
    """An epoch's `key` metric of the weights it kept: the --ema average where the record says so."""
    if record.get("weights") == "ema" and f"ema_{key}" in record:
        return float(record[f"ema_{key}"])
    return record.get(key)


def _refit(schedule: Schedule, step: int, deadline: float, per_step: float, dist: Dist) -> None:
    """Fit the schedule's length to the time left at the measured seconds per step (validation
    included); every rank follows the mean of their estimates."""
    fits = schedule.budget_steps(step, deadline - time.monotonic(), per_step)
    schedule.planned_steps = int(dist.sum([float(fits)])[0] / dist.world_size)


def _stop_reason(limits: Limits, schedule: Schedule, state: LoopState, step: int, late: bool) -> str | None:
    if limits.max_steps is not None and step >= limits.max_steps:
        return "iters"
    if late or (schedule.shortened and step >= schedule.planned_steps):
        return "time-limit"
    if limits.patience and state.bad_epochs >= limits.patience:
        return "early-stopped"
    return None


def _with_probe(
    probe: BudgetProbe | None, on_step: Callable[[int, torch.Tensor, float], None] | None
) -> Callable[[int, torch.Tensor, float], None] | None:
    if probe is None:
        return on_step

    def both(step: int, loss: torch.Tensor, lr: float) -> None:
        probe.after_step(step)
        if on_step is not None:
            on_step(step, loss, lr)

    return both


def _ends(limits: Limits, schedule: Schedule) -> list[int]:
    """The global steps training must stop at: --iters, and the length a time budget allows."""
    return [s for s in (limits.max_steps, schedule.planned_steps) if s]


def _budget_probe(
    schedule: Schedule,
    deadline: float | None,
    limits: Limits,
    train_batches: Any,
    val_batches: Any | None,
    stepping: Stepping,
    dist: Dist,
    reporter: Reporter | None,
) -> BudgetProbe | None:
    """With a time limit: a probe that fits the schedule after the first measured steps (see budget.py)."""
    if deadline is None or not schedule.total_steps:
        return None
    per_rank_batch = math.ceil(getattr(train_batches, "batch_size", 1) / dist.world_size)
    eval_images = len(val_batches.split) if val_batches is not None and hasattr(val_batches, "split") else 0
    steps_per_epoch = max(1, schedule.steps_per_epoch)
    measure = max(2, min(10, steps_per_epoch // 3))
    return BudgetProbe(
        schedule,
        deadline,
        epochs=limits.epochs,
        work=Workload(
            per_rank_batch * stepping.accumulate, eval_images, 2 if stepping.ema is not None else 1, dist.world_size
        ),
        warmup=2,
        measure=measure,
        agree=lambda v: dist.sum([v])[0] / dist.world_size,
        log=reporter.log if reporter is not None else None,
    )


def _validation(loop: Loop, eval_model: nn.Module, stepping: Stepping, dist: Dist) -> dict[str, float]:
    """The epoch's validation metrics (none without validation batches): the model's, and its
    --ema average's as ema_* keys."""
    if loop.val_batches is None:
        return {}
    dist.sync_buffers(eval_model)
    record = _validate(eval_model, loop.val_batches, loop.loss_fn, dist)
    if stepping.ema is not None:
        ema = _validate(stepping.ema.module, loop.val_batches, loop.loss_fn, dist)
        record.update({f"ema_{k}": v for k, v in ema.items()})
    return record


def _validate(model: nn.Module, batches: Any, loss_fn: Callable[..., torch.Tensor], dist: Dist) -> dict[str, float]:
    """Validation metrics over the whole split: this rank's shard, summed over ranks. In float32
    whatever the training precision, as the test pass and `cnnctl eval` measure."""
    val = evaluate(model, batches, loss_fn)
    n = len(val.targets)
    top5 = val.top5 if val.top5 is not None else 0.0
    correct = val.acc * n if val.targets.dim() == 2 else round(val.acc * n)
    loss_sum, correct, top5_hits, total = dist.sum([val.loss * n, correct, round(top5 * n), n])
    total = max(1.0, total)
    record = {"val_loss": loss_sum / total, "val_acc": correct / total}
    if val.top5 is not None:
        record["val_top5"] = top5_hits / total
    if val.targets.dim() == 2:  # multi-label: the mean average precision over the whole split
        from cnnctl.evaluate.metrics import mean_average_precision

        scores, targets = dist.gather(val.logits), dist.gather(val.targets)
        value = mean_average_precision(scores.numpy(), targets.numpy())
        record["val_map"] = 0.0 if math.isnan(value) else value
    return record
