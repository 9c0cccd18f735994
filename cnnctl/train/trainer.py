"""A training run end to end: run directory, data, model, optimizer, resume, checkpoints.

`train(...)` is what `cnnctl train` calls: it resolves the config (resumed run <- recipe <- flags)
and hands it to `run(cfg, ...)`, which owns the run directory. Tools that train without a run
directory (lr-find, the dry run, `check --labels`, and tune and distill to come) use the public
seam: `plan.make_plan` -> `prepare` -> `fit_prepared`. Every file it writes is atomic, and after each epoch
the run directory holds a consistent `last.safetensors` + `history.json` to resume from.
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from cnnctl.config import DataConfig, TrainConfig, resolve
from cnnctl.data.batches import Augmentation, Batches, Order, shard
from cnnctl.data.bundle import DataBundle
from cnnctl.data.layout import NAMED_SETS
from cnnctl.data.manifest import Manifest
from cnnctl.data.policies import BatchMix, PolicyAugment
from cnnctl.data.sources import Split
from cnnctl.errors import CnnctlError, RunDirError, UsageError
from cnnctl.io import RunLock, write_json
from cnnctl.models import create
from cnnctl.models.checkpoint import load_last, save_last, save_model, versions
from cnnctl.models.layers import init_from_data
from cnnctl.runtime.classifier import probabilities
from cnnctl.runtime.metadata import DataInfo, Metadata, TrainingInfo
from cnnctl.track import client as tracking
from cnnctl.track import record as track_record
from cnnctl.track import tracker
from cnnctl.track.tracker import Tracker
from cnnctl.train import history as history_file
from cnnctl.train.distributed import Dist, is_comm_error
from cnnctl.train.ema import EMA, Lookahead
from cnnctl.train.engine import (
    History,
    Hooks,
    Interrupted,
    Limits,
    Loop,
    LoopState,
    Reporter,
    Stepping,
    evaluate,
    fit,
    make_loss,
)
from cnnctl.train.freezing import Freezer, ParamGroup, param_groups, set_batchnorm_momentum
from cnnctl.train.plan import Plan, make_plan, pick_device
from cnnctl.train.runlog import RunLog
from cnnctl.train.schedule import Schedule
from cnnctl.train.weights import InitReport, init_from, load_pretrained


@dataclass(frozen=True)
class Host:
    """What a tool that trains many runs (`cnnctl tune`) adds to each of them: a pruner asked after
    every epoch (True stops the run as "pruned"), the data bundles its runs share (keyed by their
    DataConfig, so every trial trains and is judged on the same split, decoded once), and whether
    the test split is measured (a search never looks at it); `track_tags` go on the run's MLflow
    run (a search's study and trial)."""

    prune: Callable[[dict[str, Any]], bool] | None = None
    bundles: dict[DataConfig, DataBundle] | None = None
    test: bool = True
    student: Student | None = None
    track_tags: dict[str, str] | None = None


LossFn = Callable[..., torch.Tensor]


@dataclass(frozen=True)
class Student:
    """What makes a run a distillation (`cnnctl distill`, cnnctl/distill/run.py): `batches` turns the
    run's training batches into batches that also carry the teacher's answers for the same views
    (before the schedule counts them), `loss` wraps the run's loss, `record` is what the student's
    Metadata says of its teacher and `config` what config.json records (to resume it)."""

    batches: Callable[[Plan, Batches, Dist], Any]
    loss: Callable[[LossFn, Plan], LossFn]
    record: dict[str, Any]
    config: dict[str, Any]


@dataclass
class RunResult:
    run_dir: Path
    reason: str
    epochs: list[dict[str, Any]]
    best_epoch: int
    best: float | None
    test: dict[str, Any] | None


def make_optimizer(cfg: TrainConfig, groups: list[ParamGroup]) -> torch.optim.Optimizer:
    """The optimizer over typed parameter groups: each group's `wd_scale` applied here to the
    weight decay; its `lr_scale` is the epoch loop's (Stepping.lr_scales), per step."""
    params = [{"params": g.params, "name": g.name, "weight_decay": cfg.weight_decay * g.wd_scale} for g in groups]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            params,
            lr=cfg.lr,
            momentum=cfg.momentum,
            nesterov=cfg.nesterov and cfg.momentum > 0,
            weight_decay=cfg.weight_decay,
        )
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def default_run_dir(cfg: TrainConfig) -> Path:
    data = Path(cfg.data).name if os.sep in cfg.data or Path(cfg.data).exists() else cfg.data
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{cfg.model.replace(':', '_')}-{data}-{stamp}"


@contextmanager
def _signals() -> Iterator[list[int]]:
    """Turn SIGINT/SIGTERM into a flag the loop checks between batches."""
    caught: list[int] = []
    previous = {}

    def handler(signum: int, frame: Any) -> None:
        caught.append(signum)

    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            previous[sig] = signal.signal(sig, handler)
        except ValueError:  # not the main thread
            pass
    try:
        yield caught
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def checkpoint_metadata(cfg: TrainConfig, data: DataBundle) -> Metadata:
    """The self-describing part of every checkpoint (docs/formats.md)."""
    from cnnctl.data.sources import label_spec

    c, h, w = data.input_shape
    spec = label_spec(cfg.data_config())
    return Metadata(
        model=cfg.model,
        input_shape=(c, h, w),
        class_names=tuple(data.classes),
        preprocess=data.prep,
        versions=versions(),
        # Absolute paths, so `cnnctl eval` finds the data from any working directory.
        data=DataInfo(
            name=cfg.data if cfg.data in NAMED_SETS else os.path.abspath(cfg.data),
            data_dir=os.path.abspath(cfg.data_dir),
            val_split=cfg.val_split,
            fingerprint=data.fingerprint,
            labels=spec.reading() if spec is not None else None,
        ),
        task=data.task,
    )


def run(
    cfg: TrainConfig,
    *,
    out: str | None = None,
    resume: str | None = None,
    overwrite: bool = False,
    reporter: Reporter,
    dist: Dist | None = None,
    accept_data_change: bool = False,
    host: Host | None = None,
) -> RunResult:
    """Train `cfg` into a run directory (new, overwritten, or resumed): setup -> fit ->
    checkpointing, then the test pass on the best checkpoint.

    Under torchrun (`dist.enabled`) every rank calls this; rank 0 alone owns the run directory.
    The process group is joined here unless the caller (tune, for a whole study) already has.
    """
    dist = dist or Dist()
    host = host or Host()
    dist.check_batch(cfg.batch_size)
    device = pick_device(cfg.device, dist)
    owns_group = not dist.started
    if owns_group:
        dist.start(device.type)
    finished = False
    fresh = False  # a directory this run created: removed again if the run fails before writing to it
    try:
        try:
            fresh = dist.is_main and not resume and (out is None or not Path(out).exists())
            run_dir = _prepare_run_dir(cfg, out, resume, overwrite) if dist.is_main else Path(resume or out or "")
        except CnnctlError:
            dist.agree(False)
            raise
        dist.agree(True)
        try:
            with RunLock(run_dir) if dist.is_main else nullcontext():
                if overwrite and not resume and dist.is_main:
                    for name in (
                        "model.safetensors",
                        "last.safetensors",
                        "history.json",
                        "config.json",
                        "splits.json.gz",
                        "mlflow.json",
                    ):
                        (run_dir / name).unlink(missing_ok=True)
                dist.agree(True)  # the others read the run directory only after rank 0 holds it
                run = setup(cfg, run_dir, bool(resume), reporter, device, dist, accept_data_change, host)
                checkpoints = Checkpointer(run_dir, run, dist.is_main, reporter.log, host.track_tags)
                checkpoints.write_config(device, dist)
                try:
                    history = _fit(run, checkpoints, reporter, dist, run_dir, host.prune)
                    test = _test(run, run_dir, device, history, reporter.log, host.test) if dist.is_main else None
                except BaseException as exc:
                    checkpoints.abandon(interrupted=isinstance(exc, (RunInterrupted, KeyboardInterrupt)))
                    raise
                checkpoints.finish(history, test)
                result = RunResult(run_dir, history.stopped, history.epochs, run.state.best_epoch, run.state.best, test)
        except CnnctlError:
            if fresh and not (run_dir / "config.json").exists():
                shutil.rmtree(run_dir, ignore_errors=True)  # refused during setup: leave nothing behind
            raise
        finished = True
        return result
    finally:
        if owns_group:
            dist.stop(clean=finished)


def _prepare_run_dir(cfg: TrainConfig, out: str | None, resume: str | None, overwrite: bool) -> Path:
    if resume:
        run_dir = Path(resume)
        if not (run_dir / "config.json").is_file():
            raise RunDirError(f"{run_dir} is not a cnnctl run directory (no config.json); nothing to resume")
    else:
        run_dir = Path(out) if out else default_run_dir(cfg)
        if run_dir.exists() and not run_dir.is_dir():
            raise RunDirError(f"--out {run_dir} is a file; give a directory")
        if run_dir.is_dir() and any(p.name != ".lock" for p in run_dir.iterdir()) and not overwrite:
            raise RunDirError(
                f"--out {run_dir} is not empty; add --resume {run_dir} to continue it, --overwrite to replace it, or choose another --out"
            )
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunDirError(f"cannot create {run_dir}: {exc.strerror}") from None
    return run_dir


@dataclass
class Start:
    """The model as training starts it: built for the data, its start weights, on the device."""

    model: torch.nn.Module
    init_report: InitReport | None


@dataclass
class Optimisation:
    """What trains the model: the frozen part, the optimizer over typed groups, loss and step."""

    freezer: Freezer | None
    optimizer: torch.optim.Optimizer
    loss_fn: LossFn
    stepping: Stepping


@dataclass
class Prepared:
    """What setup hands on: the plan (config, machine, data), the model and its start, the loop's
    parts, and where the loop starts (a resumed run's state and history)."""

    plan: Plan
    start: Start
    opt: Optimisation
    schedule: Schedule
    limits: Limits
    train_batches: Batches
    val_batches: Batches | None
    state: LoopState
    history: History
    student: Student | None = None

    @property
    def cfg(self) -> TrainConfig:
        return self.plan.cfg

    @property
    def data(self) -> DataBundle:
        return self.plan.data

    @property
    def model(self) -> torch.nn.Module:
        return self.start.model

    @property
    def stepping(self) -> Stepping:
        return self.opt.stepping


def setup(
    cfg: TrainConfig,
    run_dir: Path,
    resuming: bool,
    reporter: Reporter,
    device: torch.device,
    dist: Dist,
    accept_data_change: bool = False,
    host: Host | None = None,
) -> Prepared:
    """Everything before the first step: the plan (train/plan.py), then the model, optimisation,
    batches and schedule, and the saved state when resuming. A resumed run trains on the splits it
    recorded (cnnctl/data/manifest.py). `host`: the shared data bundles and the student's parts."""
    host = host or Host()
    resuming = resuming and (run_dir / "last.safetensors").exists()  # else: stopped before its first epoch
    recorded = None
    if resuming:
        recorded = Manifest.read(run_dir)
        if recorded is None:
            reporter.log(
                f"{run_dir} has no split manifest (written by an older cnnctl): the splits are drawn again from the data as it "
                f"is now; if files were added or removed since, images may move between train and val"
            )
    plan = make_plan(
        cfg, reporter, device, dist, recorded=recorded, accept_data_change=accept_data_change, bundles=host.bundles
    )
    run = prepare(plan, reporter, dist, resuming=resuming, student=host.student)
    if resuming:
        run.state, run.history = _resume(run_dir, run.model, run.opt, run.schedule, run.limits, reporter)
        if run.opt.freezer is not None:
            run.opt.freezer.apply(run.state.epoch + 1)  # before DDP wraps the model: it keeps the trainable set it sees
    elif (run_dir / "config.json").exists() and not (run_dir / "last.safetensors").exists():
        reporter.log(f"{run_dir} has no finished epoch yet; starting from epoch 1")
    return run


def prepare(
    plan: Plan, reporter: Reporter, dist: Dist | None = None, *, resuming: bool = False, student: Student | None = None
) -> Prepared:
    """The stages after the plan: the model and its start weights, optimisation, batches and
    schedule (a `student`'s batches and loss in place of the run's own). Part of the public seam
    for tools that train (`fit_prepared`)."""
    dist = dist or Dist()
    start = _start(plan, resuming, reporter)
    opt = _optimisation(plan, start.model, reporter.log)
    train_batches, val_batches = _batches(plan, dist)
    if student is not None:
        train_batches = student.batches(plan, train_batches, dist)
        opt.loss_fn = student.loss(opt.loss_fn, plan)
    schedule, limits = _schedule(plan.cfg, train_batches, plan.monitor)
    if opt.freezer is not None:
        opt.freezer.apply(1)  # the first epoch's trainable set (a resumed run's is applied after its state is loaded)
    return Prepared(
        plan, start, opt, schedule, limits, train_batches, val_batches, LoopState(), History(), student=student
    )


def fit_prepared(
    run: Prepared,
    hooks: Hooks | None = None,
    *,
    schedule: Schedule | None = None,
    limits: Limits | None = None,
    validate: bool = True,
    dist: Dist | None = None,
) -> History:
    """Train a prepared run with the one epoch loop (`engine.fit`), in this process, on images: the
    seam lr-find, the dry run and `check --labels` use (a `schedule` or `limits` of their own;
    `validate=False` skips the validation passes). No run directory is written."""
    loop = Loop(
        run.model,
        run.opt.optimizer,
        run.opt.loss_fn,
        run.train_batches,
        run.val_batches if validate else None,
        multilabel=run.data.multilabel,
    )
    return fit(
        loop,
        schedule or run.schedule,
        run.stepping,
        limits or run.limits,
        hooks or Hooks(),
        state=run.state,
        history=run.history,
        seed=run.cfg.seed,
        dist=dist,
    )


def _start(plan: Plan, resuming: bool, reporter: Reporter) -> Start:
    """The model built for the data, with its start weights (data-dependent init, --pretrained
    or --init; a resumed run takes its weights from last.safetensors instead), on the device."""
    cfg, data, weights = plan.cfg, plan.data, plan.weights
    torch.manual_seed(cfg.seed)
    model = create(cfg.model, data.input_shape, len(data.classes))
    if cfg.bn_momentum and not set_batchnorm_momentum(model, cfg.bn_momentum):
        raise UsageError(f"--bn-momentum: {cfg.model} has no BatchNorm layers")
    init_report = None
    if not resuming and weights is None and not cfg.init and any(hasattr(m, "init_from_data") for m in model.modules()):
        sample = _data_sample(data)
        names = init_from_data(model, sample)
        reporter.log(f"{', '.join(names)}: initialised from {len(sample)} training images (patch whitening)")
    if weights is not None and not resuming:
        init_report = load_pretrained(model, weights)
        given = f" from {weights.file}" if weights.given else ""
        reporter.log(
            init_report.summary().replace("--init ", "--pretrained ", 1).replace(":", f"{given}:", 1)
            + f"; {weights.trained_on}"
        )
    if cfg.init and not resuming and weights is None:
        init_report = init_from(model, cfg.init)
        reporter.log(init_report.summary())
    model = model.to(plan.device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return Start(model, init_report)


def _optimisation(plan: Plan, model: torch.nn.Module, log: Callable[[str], None]) -> Optimisation:
    cfg, data = plan.cfg, plan.data
    num_classes = len(data.classes)
    freezer = Freezer(model, cfg.freeze, cfg.unfreeze_at, cfg.keep_bn_stats) if cfg.freeze != "none" else None
    groups = param_groups(model, freezer, cfg.backbone_lr_scale, cfg.bn_bias_lr_scale)
    amp = plan.amp
    stepping = Stepping(
        accumulate=cfg.accumulate,
        clip_grad=cfg.clip_grad,
        ema=EMA(model, cfg.ema) if cfg.ema else None,
        lookahead=Lookahead(model, cfg.lookahead) if cfg.lookahead else None,
        amp=amp,
        scaler=torch.amp.GradScaler("cuda") if amp == "fp16" else None,
        lr_scales=[g.lr_scale for g in groups],
    )
    weights: torch.Tensor | None = None
    if cfg.class_weights != "none":
        from cnnctl.train.imbalance import class_counts, describe, loss_weights, pos_weights

        multilabel = data.multilabel
        counts = (data.train.y > 0.5).sum(0).double() if multilabel else class_counts(data.train.y, num_classes)
        per_class = (
            pos_weights(cfg.class_weights, data.train.y, list(data.classes))
            if multilabel
            else loss_weights(cfg.class_weights, counts, list(data.classes))
        )
        assert per_class is not None  # "none" was handled above
        shown = describe(per_class, counts, list(data.classes))
        weights = per_class
        what = "positive weight (BCE pos_weight)" if multilabel else "weight"
        log(f"class weights ({cfg.class_weights}; {what} (training images)): {shown}")
    loss = make_loss(cfg.loss, num_classes, cfg.label_smoothing, weights, multilabel=data.multilabel)
    return Optimisation(freezer, make_optimizer(cfg, groups), loss, stepping)


def _batches(plan: Plan, dist: Dist) -> tuple[Batches, Batches | None]:
    """Training batches (augmented, mixed, this rank's slice) and validation batches (this rank's shard)."""
    cfg, data, device = plan.cfg, plan.data, plan.device
    policy = (
        PolicyAugment(cfg.auto_augment, magnitude=cfg.aug_magnitude, group=cfg.aug_group)
        if cfg.auto_augment != "none"
        else None
    )
    mix = (
        BatchMix(len(data.classes), mixup=cfg.mixup, cutmix=cfg.cutmix, prob=cfg.mix_prob, multilabel=data.multilabel)
        if (cfg.mixup or cfg.cutmix)
        else None
    )
    draw = None
    if cfg.sampler == "balanced":  # the same global draw on every rank (seeded), which then takes its slice
        from cnnctl.train.imbalance import balanced_sample_weights, class_counts

        draw = balanced_sample_weights(data.train.y, class_counts(data.train.y, len(data.classes)))
    train = Batches(
        data.train,
        data.prep,
        cfg.batch_size,
        device=device,
        channels_last=cfg.channels_last,
        order=Order(shuffle=True, seed=cfg.seed, rank=dist.rank, world=dist.world_size, draw=draw),
        augmentation=Augmentation(augment=cfg.augment, policy=policy, mix=mix, alternate_flip=cfg.alternate_flip),
    )
    if len(train) == 0:
        raise UsageError(
            f"{len(data.train)} training image(s) cannot feed {dist.world_size} processes; use more data or fewer processes"
        )
    val = None
    if data.val:
        val = Batches(
            shard(data.val, dist.rank, dist.world_size),
            data.prep,
            plan.eval_batch.size,
            device=device,
            channels_last=cfg.channels_last,
        )
    return train, val


def _schedule(cfg: TrainConfig, train_batches: Batches, monitor: str) -> tuple[Schedule, Limits]:
    """The learning rate per step and the run's length: the schedule owns its step count."""
    steps_per_epoch = math.ceil(len(train_batches) / cfg.accumulate)  # optimizer steps
    epochs = math.ceil(cfg.iters / steps_per_epoch) if cfg.iters else cfg.epochs
    schedule = Schedule(
        base_lr=cfg.lr,
        kind=cfg.scheduler,
        total_steps=cfg.iters or epochs * steps_per_epoch,
        steps_per_epoch=steps_per_epoch,
        warmup_epochs=cfg.warmup,
        step_size=cfg.step_size,
        gamma=cfg.gamma,
    )
    limits = Limits(
        epochs=epochs,
        max_steps=cfg.iters or None,
        patience=cfg.patience,
        monitor=monitor,
        time_limit=cfg.time_limit,
    )
    return schedule, limits


def _resume(
    run_dir: Path, model: torch.nn.Module, opt: Optimisation, schedule: Schedule, limits: Limits, reporter: Reporter
) -> tuple[LoopState, History]:
    """Weights, optimizer, average, RNG, schedule plan, loop state and history from last.safetensors."""
    saved = load_last(run_dir / "last.safetensors", model, opt.optimizer, opt.stepping.ema)
    loop = dict(saved["loop"])
    schedule.load_state_dict(saved.get("schedule", {"planned_steps": loop.pop("planned_steps", 0)}))
    loop.pop("planned_steps", None)
    state = LoopState(**loop)
    if state.epoch >= limits.epochs:
        reporter.log(f"{run_dir} already finished {state.epoch} epoch(s); pass a larger --epochs to extend it")
    return state, History(list(saved["history"]))


def _data_sample(data: DataBundle, n: int = 5000) -> torch.Tensor:
    """Up to `n` training images (a fixed draw), cropped and normalised as the model sees them."""
    idx = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(0))[:n]
    x, _ = next(iter(Batches(data.train.take(idx), data.prep, n, channels_last=False)))
    return x


class Checkpointer:
    """Owns the run directory's files during a run: config.json, then after every epoch
    last.safetensors (everything to resume), model.safetensors (when the monitored metric
    improves) and history.json; at the end the history with the test result. Rank 0 only."""

    def __init__(
        self,
        run_dir: Path,
        run: Prepared,
        writes: bool,
        say: Callable[[str], None],
        track_tags: dict[str, str] | None = None,
    ) -> None:
        self.run_dir, self.run, self.writes = run_dir, run, writes
        self.meta = checkpoint_metadata(run.cfg, run.data)
        if run.student is not None:
            self.meta = self.meta.replace(teacher=run.student.record)
        self.log = RunLog(run.cfg.log, run_dir, run.state.step) if writes and run.cfg.log != "none" else None
        self.tracker = _tracker(run, run_dir, say, track_tags or {}) if writes and run.cfg.track != "none" else None

    def write_config(self, device: torch.device, dist: Dist) -> None:
        if not self.writes:
            return
        run = self.run
        write_json(
            self.run_dir / "config.json",
            {
                **run.cfg.to_dict(),
                "init_report": run.start.init_report.to_dict() if run.start.init_report else None,
                "resolved_epochs": run.limits.epochs,
                "total_steps": run.schedule.total_steps,
                "device": str(device),
                "data_summary": run.data.describe(),
                "preprocess": run.data.prep.to_dict(),
                "versions": versions(),
                "torch_threads": torch.get_num_threads(),
                "world_size": dist.world_size,
                "hardware": run.plan.hardware_dict(),
                **({"distill": run.student.config} if run.student is not None else {}),
            },
        )
        run.data.manifest().write(self.run_dir)

    def epoch_end(self, record: dict[str, Any], improved: bool, state: LoopState, history: History) -> None:
        if not self.writes:
            return
        run = self.run
        metrics = {k: v for k, v in record.items() if k.startswith(("val_", "train_", "ema_"))}
        meta = self.meta.replace(
            training=TrainingInfo(epoch=record["epoch"], metrics=metrics, weights=record.get("weights", "model")),
            tracking=self.tracker.link() if self.tracker is not None else None,
        )
        ema = run.stepping.ema
        if improved:
            # With --ema, the better of the two weights on the monitored metric (record["weights"]).
            best = ema.module if ema is not None and record.get("weights") == "ema" else run.model
            save_model(self.run_dir / "model.safetensors", best, meta)
        save_last(
            self.run_dir / "last.safetensors",
            run.model,
            run.opt.optimizer,
            {"loop": state.__dict__.copy(), "schedule": run.schedule.state_dict(), "history": history.epochs},
            meta,
            ema,
        )
        history_file.save(self.run_dir / "history.json", history.epochs)
        if self.log is not None:
            self.log.epoch(record, history.epochs)
        if self.tracker is not None:
            self.tracker.epoch()

    def finish(self, history: History, test: dict[str, Any] | None) -> None:
        if self.log is not None:
            self.log.close()
        if self.writes:
            pruned = {"pruned_at_epoch": history.epochs[-1]["epoch"]} if history.stopped == "pruned" else {}
            history_file.save(
                self.run_dir / "history.json",
                history.epochs,
                **({"test": test} if test else {}),
                stopped=history.stopped,
                **pruned,
            )
        if self.tracker is not None:
            self.tracker.close("FINISHED")
            track_record.stamp(self.run_dir, self.tracker.record)

    def abandon(self, interrupted: bool) -> None:
        """The run stopped before its end (interrupted, or an error): its MLflow run says so."""
        if self.log is not None:
            self.log.close()
        if self.tracker is not None:
            self.tracker.close("KILLED" if interrupted else "FAILED")


def _tracker(run: Prepared, run_dir: Path, say: Callable[[str], None], tags: dict[str, str]) -> Tracker:
    """`--track mlflow`: the run's tracker (a resumed run goes on in its MLflow run)."""
    cfg = run.cfg
    uri = tracking.tracking_uri(cfg.tracking_uri)
    return tracker.start(uri, tracking.experiment_name(cfg.experiment, run.data.describe()["name"]), run_dir, tags, say)


@dataclass
class Phase:
    """A stretch of epochs trained one way: up to epoch `end`, the whole model on images, or (for a
    frozen backbone, `cached`) the head on the backbone's stored features."""

    end: int
    cached: bool = False


def _phases(run: Prepared, dist: Dist, log: Callable[[str], None]) -> list[Phase]:
    """The run's phases from the epoch it starts at. DDP fixes the set of trainable parameters when
    it wraps the model, so under torchrun an --unfreeze-at run re-wraps it in a second phase; the
    frozen epochs train on cached features where they can (cnnctl/train/features.py)."""
    from cnnctl.train.features import why_not_cached

    freezer, cfg, epochs = run.opt.freezer, run.cfg, run.limits.epochs
    first = run.state.epoch + 1
    unfreeze = cfg.unfreeze_at if freezer is not None else 0
    frozen_end = min(epochs, unfreeze - 1) if unfreeze else epochs
    if freezer is None or first > frozen_end:
        return [Phase(epochs)]
    reason = (
        "the teacher answers for images, not features"
        if run.student is not None
        else why_not_cached(
            mixing=bool(cfg.mixup or cfg.cutmix), ema=run.stepping.ema is not None, feature_cache=cfg.feature_cache
        )
    )
    if reason:
        log(f"features: not cached ({reason}); every frozen epoch runs the backbone")
    cached = reason is None
    if not cached and not (dist.enabled and unfreeze):
        return [Phase(epochs)]
    return [Phase(frozen_end, cached)] + ([Phase(epochs)] if frozen_end < epochs else [])


def _phase_loop(run: Prepared, phase: Phase, device: torch.device, dist: Dist, reporter: Reporter) -> Loop:
    """The loop one phase drives: the (DDP-wrapped, compiled) model on images, or its head on
    stored features (falling back to images when the model's output is not its head's)."""
    if phase.cached:
        from cnnctl.data.sources import default_cache_dir
        from cnnctl.train.features import Backbone, Store, cached_batches, head_module, views_for

        cfg = run.cfg
        freezer = run.opt.freezer
        assert freezer is not None
        policy = run.train_batches.policy
        views = views_for(cfg.augment, cfg.feature_views, cfg.seed, policy)
        if views.count == 1 and (cfg.augment != "none" or policy is not None):
            reporter.log(
                f"features: the frozen epochs train on the un-augmented images (--feature-views 1 by default); "
                f"--feature-views N adds N-1 views with --augment {cfg.augment}"
            )
        batches = cached_batches(
            Backbone(run.model, freezer.head_name, cfg.model),
            run.train_batches,
            run.val_batches,
            run.data.val,
            views,
            Store(default_cache_dir(cfg.cache_dir), run.plan.amp, reporter.log),
            eval_batch=run.plan.eval_batch.size,
            rank=dist.rank,
            world=dist.world_size,
        )
        if batches is not None:
            head = head_module(run.model, freezer.head_name)
            reporter.log(f"epochs up to {phase.end}: the head ({freezer.head_name}) trains on the stored features")
            return Loop(
                dist.wrap(head, device),
                run.opt.optimizer,
                run.opt.loss_fn,
                batches[0],
                batches[1],
                eval_model=head,
                multilabel=run.data.multilabel,
            )
    train_model = dist.wrap(run.model, device)
    train_model = cast(torch.nn.Module, torch.compile(train_model)) if run.cfg.compile else train_model
    return Loop(
        train_model,
        run.opt.optimizer,
        run.opt.loss_fn,
        run.train_batches,
        run.val_batches,
        eval_model=run.model if dist.enabled else train_model,
        multilabel=run.data.multilabel,
    )


def _fit(
    run: Prepared,
    checkpoints: Checkpointer,
    reporter: Reporter,
    dist: Dist,
    run_dir: Path,
    prune: Callable[[dict[str, Any]], bool] | None = None,
) -> History:
    """The epoch loop over the prepared run, phase by phase (`_phases`), with Ctrl-C/SIGTERM
    turned into a clean stop, and a search's pruner (`prune`) asked after every epoch."""
    freezer, device = run.opt.freezer, run.plan.device

    def on_epoch_start(epoch: int) -> None:
        if freezer is not None and freezer.apply(epoch):
            reporter.log(
                f"epoch {epoch}: the backbone {'is frozen' if freezer.frozen else 'trains from now on'} "
                f"(--unfreeze-at {run.cfg.unfreeze_at})"
            )

    history = run.history
    with _signals() as caught:
        hooks = Hooks(
            should_stop=lambda: bool(caught),
            reporter=reporter,
            on_epoch_start=on_epoch_start,
            on_epoch_end=checkpoints.epoch_end,
            on_step=checkpoints.log.step if checkpoints.log is not None else None,
            prune=prune or (lambda record: False),
        )
        try:
            for phase in _phases(run, dist, reporter.log):
                on_epoch_start(run.state.epoch + 1)  # before DDP wraps the model: it keeps the trainable set it sees
                loop = _phase_loop(run, phase, device, dist, reporter)
                history = fit(
                    loop,
                    run.schedule,
                    run.stepping,
                    dataclasses.replace(run.limits, epochs=phase.end),
                    hooks,
                    state=run.state,
                    history=history,
                    seed=run.cfg.seed,
                    dist=dist,
                )
                del loop
                if history.stopped != "completed":
                    break
        except Interrupted:
            raise RunInterrupted(run_dir, run.state.epoch) from None
        except Exception as exc:
            if dist.enabled and not isinstance(exc, CnnctlError) and is_comm_error(exc):
                raise dist.lost(exc) from None
            raise
    return history


CONFUSION_MAX_CLASSES = 50  # history.json keeps the test confusion matrix up to this many classes


def _test(
    run: Prepared,
    run_dir: Path,
    device: torch.device,
    history: History,
    log: Callable[[str], None],
    measure_test: bool = True,
) -> dict[str, Any] | None:
    """After training, with the best checkpoint: a multi-label run's thresholds tuned on the
    validation split (stored in model.safetensors), then the test split measured once (never used
    to select anything; not at all for a search's trials, `measure_test=False`)."""
    test_split = run.data.test if measure_test else None
    if not (run_dir / "model.safetensors").is_file() or (test_split is None and not run.data.multilabel):
        return None
    from cnnctl.models.checkpoint import load_model

    best, meta, path = load_model(run_dir, device)
    if run.cfg.channels_last:
        best = best.to(memory_format=torch.channels_last)

    def batches(split: Split) -> Batches:
        return Batches(
            split, run.data.prep, run.plan.eval_batch.size, device=device, channels_last=run.cfg.channels_last
        )

    if run.data.multilabel:
        meta = _thresholds(run, path, meta, best, batches, log)
    if test_split is None:
        return None
    result = evaluate(best, batches(test_split), run.opt.loss_fn)  # float32, as validation and `cnnctl eval`
    test: dict[str, Any] = {
        "loss": result.loss,
        "acc": result.acc,
        "images": len(result.targets),
        "epoch": run.state.best_epoch,
    }
    classes = list(run.data.classes)
    if not meta.multilabel and len(classes) <= CONFUSION_MAX_CLASSES:  # for the tracker's confusion picture
        from cnnctl.evaluate.metrics import confusion_matrix

        preds = result.logits.argmax(1).numpy()
        test.update(confusion=confusion_matrix(result.targets.numpy(), preds, len(classes)).tolist(), classes=classes)
    if meta.multilabel:
        from cnnctl.evaluate.metrics import multilabel_scores

        probs = probabilities(result.logits.numpy(), meta)
        thresholds = np.asarray(meta.decision_thresholds())
        scores = multilabel_scores(probs, result.targets.numpy(), thresholds, classes)
        test.update({k: scores[k] for k in ("map", "micro_map", "macro_f1", "micro_f1", "subset_accuracy")})
    if run.stepping.ema is not None:
        test["weights"] = next(
            (r.get("weights") for r in history.epochs if r["epoch"] == run.state.best_epoch), "model"
        )
    return test


def _thresholds(
    run: Prepared,
    path: Path,
    meta: Metadata,
    best: torch.nn.Module,
    batches: Callable[[Split], Batches],
    log: Callable[[str], None],
) -> Metadata:
    """A multi-label run's per-class thresholds (`--threshold-rule` on the validation split),
    written into the best checkpoint's Metadata (returned); without a validation split, every class
    decides at 1/2 (the Metadata as it is)."""
    from cnnctl.evaluate.thresholds import tune_thresholds
    from cnnctl.runtime import modelfile

    classes = list(run.data.classes)
    if run.data.val is None:
        log("thresholds: no validation split to tune them on (--val-split 0); every class decides at 1/2")
        return meta
    result = evaluate(best, batches(run.data.val), run.opt.loss_fn)
    probs = probabilities(result.logits.numpy(), meta)
    tuned = tune_thresholds(probs, result.targets.numpy(), run.cfg.threshold_rule, classes)
    meta = meta.replace(thresholds=tuple(round(float(t), 6) for t in tuned.thresholds))
    modelfile.write(path, meta)
    shown = ", ".join(f"{c} {t:.3f}" for c, t in zip(classes[:8], tuned.thresholds))
    log(
        f"thresholds ({run.cfg.threshold_rule}, on {len(run.data.val)} validation images): {shown}{', ...' if len(classes) > 8 else ''}"
    )
    if tuned.defaulted:
        first = ", ".join(f"{c} ({why})" for c, why in list(tuned.defaulted.items())[:3])
        log(f"thresholds: {len(tuned.defaulted)} class(es) kept 1/2: {first}")
    return meta


class RunInterrupted(Exception):
    """SIGINT/SIGTERM stopped the run; the run directory is consistent at `epoch`."""

    def __init__(self, run_dir: Path, epoch: int) -> None:
        super().__init__(f"interrupted after epoch {epoch}")
        self.run_dir, self.epoch = run_dir, epoch


def train(
    model: str | None,
    recipe: str | None,
    flags: dict[str, Any],
    *,
    out: str | None,
    resume: str | None,
    overwrite: bool,
    reporter: Reporter,
    dist: Dist | None = None,
    accept_data_change: bool = False,
    host_for: Callable[[TrainConfig], tuple[TrainConfig, Host]] | None = None,
) -> RunResult:
    """What `cnnctl train` calls: resolve the config (resumed run's config <- recipe <- flags) and
    run it; under torchrun an error names the rank it happened on. `host_for` (`cnnctl distill`)
    turns the resolved config into the config and `Host` its run trains with."""
    dist = dist or Dist()
    try:
        cfg = resolve_run(model, recipe, flags, resume)
        if accept_data_change and not resume:
            raise UsageError("--accept-data-change goes with --resume RUN (a new run records the data as it is)")
        cfg, host = host_for(cfg) if host_for is not None else (cfg, Host())
        return run(
            cfg,
            out=out,
            resume=resume,
            overwrite=overwrite,
            reporter=reporter,
            dist=dist,
            accept_data_change=accept_data_change,
            host=host,
        )
    except CnnctlError as exc:
        raise dist.label(exc) from None


def resolve_run(model: str | None, recipe: str | None, flags: dict[str, Any], resume: str | None) -> TrainConfig:
    """The run's config: the resumed run's config.json <- recipe <- flags given on the command line."""
    base = None
    if resume:
        from cnnctl.config import FIELDS
        from cnnctl.io import read_json

        missing = f"{resume} is not a cnnctl run directory (no config.json); nothing to resume"
        saved = read_json(Path(resume) / "config.json", RunDirError, missing)

        base = {k: v for k, v in saved.items() if k in FIELDS}
        if model and model != base.get("model"):
            raise UsageError(f"--resume {resume} trained {base.get('model')}, not {model}; drop the model argument")
    return resolve(model, recipe, flags, base)
