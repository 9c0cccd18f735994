"""A training run end to end: run directory, data, model, optimizer, resume, checkpoints.

`run(cfg, ...)` is what `cnnctl train` calls. Every file it writes is atomic, and after each epoch
the run directory holds a consistent `last.safetensors` + `history.json` to resume from.
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import signal
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator

import torch

from cnnctl import history
from cnnctl.checkpoint import load_last, save_last, save_model, versions
from cnnctl.config import TrainConfig, resolve
from cnnctl.data import DataBundle, build
from cnnctl.data.batches import Batches, shard
from cnnctl.data.sources import NAMED_SETS
from cnnctl.distributed import Dist, is_comm_error
from cnnctl.engine import Interrupted, LoopState, Reporter, evaluate, fit, make_loss
from cnnctl.errors import CnnctlError, RunDirError, UsageError
from cnnctl.io import RunLock, write_json
from cnnctl.models import create
from cnnctl.schedule import lr_at
from cnnctl.start import Freezer, init_from, load_pretrained, param_groups, pretrained_weights


@dataclass
class RunResult:
    run_dir: Path
    reason: str
    epochs: list[dict[str, Any]]
    best_epoch: int
    best: float | None
    test: dict[str, Any] | None


def pick_device(name: str, dist: Dist | None = None) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available here; use --device cpu or auto")
    if dist is not None and dist.enabled and (name == "cuda" or (name == "auto" and torch.cuda.is_available())):
        if dist.local_rank >= torch.cuda.device_count():
            raise UsageError(f"LOCAL_RANK {dist.local_rank} but this node has {torch.cuda.device_count()} CUDA device(s); lower --nproc-per-node")
        torch.cuda.set_device(dist.local_rank)
        return torch.device("cuda", dist.local_rank)
    if dist is not None and dist.enabled and name == "auto":
        return torch.device("cpu")  # DDP runs on CUDA (NCCL) or CPU (Gloo), not MPS
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UsageError("--device mps: MPS is not available here; use --device cpu or auto")
    return torch.device(name)


def make_optimizer(cfg: TrainConfig, params: list[dict[str, Any]]) -> torch.optim.Optimizer:
    """The optimizer over parameter groups (each with an `lr_scale` the epoch loop applies)."""
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0, weight_decay=cfg.weight_decay)
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


def checkpoint_metadata(cfg: TrainConfig, data: DataBundle, model_name: str) -> dict[str, Any]:
    """The self-describing part of every checkpoint (docs/formats.md)."""
    return {
        "model": model_name,
        "model_kwargs": {},
        "input_shape": list(data.input_shape),
        "num_classes": len(data.classes),
        "class_names": data.classes,
        "preprocess": data.prep.to_dict(),
        "data": {
            # Absolute paths, so `cnnctl eval` finds the data from any working directory.
            "name": cfg.data if cfg.data in NAMED_SETS else os.path.abspath(cfg.data),
            "data_dir": os.path.abspath(cfg.data_dir),
            "val_split": cfg.val_split,
            "fingerprint": data.fingerprint,
        },
        "versions": versions(),
    }


def run(
    cfg: TrainConfig,
    *,
    out: str | None = None,
    resume: str | None = None,
    overwrite: bool = False,
    reporter: Reporter,
    dist: Dist | None = None,
) -> RunResult:
    """Train `cfg` into a run directory (new, overwritten, or resumed).

    Under torchrun (`dist.enabled`) every rank calls this; rank 0 alone owns the run directory.
    """
    dist = dist or Dist()
    dist.check_batch(cfg.batch_size)
    device = pick_device(cfg.device, dist)
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
                    for name in ("model.safetensors", "last.safetensors", "history.json", "config.json"):
                        (run_dir / name).unlink(missing_ok=True)
                dist.agree(True)  # the others read the run directory only after rank 0 holds it
                result = _run_locked(cfg, run_dir, bool(resume), reporter, device, dist)
        except CnnctlError:
            if fresh and not (run_dir / "config.json").exists():
                shutil.rmtree(run_dir, ignore_errors=True)  # refused during setup: leave nothing behind
            raise
        finished = True
        return result
    finally:
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
            raise RunDirError(f"--out {run_dir} is not empty; add --resume {run_dir} to continue it, --overwrite to replace it, or choose another --out")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunDirError(f"cannot create {run_dir}: {exc.strerror}") from None
    return run_dir


def _run_locked(cfg: TrainConfig, run_dir: Path, resuming: bool, reporter: Reporter, device: torch.device, dist: Dist) -> RunResult:
    if cfg.amp != "none" and device.type != "cuda":
        raise UsageError(f"--amp {cfg.amp} needs a CUDA device (this run is on {device.type}); drop --amp")
    torch.set_num_threads(dist.threads(cfg.threads))
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    # A resumed run takes its weights from last.safetensors; the start weights matter only once.
    fresh_start = not (resuming and (run_dir / "last.safetensors").exists())
    weights = pretrained_weights(cfg.model, cfg.weights or "DEFAULT") if (cfg.pretrained or cfg.weights) else None
    if weights is not None:
        # The weights' preprocessing becomes the run's (and so the checkpoint's, the export's and
        # predict's) wherever the flags leave it open: normalisation, crop, crop size.
        if not cfg.mean and not cfg.std:
            mean, std = weights.mean, weights.std
            if cfg.grayscale:
                mean, std = [sum(mean) / 3], [sum(std) / 3]
            cfg = dataclasses.replace(cfg, mean=",".join(map(str, mean)), std=",".join(map(str, std)))
        if cfg.resize == "auto" and cfg.data not in NAMED_SETS:
            cfg = dataclasses.replace(cfg, resize="crop", crop_pct=weights.crop_size / weights.resize_size,
                                      image_size=cfg.image_size or str(weights.crop_size))  # fmt: skip
    if cfg.resize == "auto":
        cfg = dataclasses.replace(cfg, resize="stretch")
    data = build(cfg, reporter.log)
    for note in data.notes:
        reporter.log(note)
    torch.manual_seed(cfg.seed)
    model = create(cfg.model, data.input_shape, len(data.classes))
    init_report = None
    if weights is not None and fresh_start:
        init_report = load_pretrained(model, weights)
        reporter.log(init_report.summary().replace("--init ", "--pretrained ", 1)
                     + f"; torchvision trained them on {weights.crop_size}x{weights.crop_size} crops of images resized to {weights.resize_size}")  # fmt: skip
    if cfg.init and fresh_start:
        init_report = init_from(model, cfg.init)
        reporter.log(init_report.summary())
    model = model.to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    freezer = Freezer(model, cfg.freeze, cfg.unfreeze_at) if cfg.freeze != "none" else None
    if freezer is not None and cfg.unfreeze_at and dist.enabled:
        raise UsageError("--unfreeze-at under torchrun is not supported yet (DDP fixes its trainable set at the start); train the probe and the fine-tune as two runs, the second with --init")
    optimizer = make_optimizer(cfg, param_groups(model, freezer, cfg.backbone_lr_scale))
    loss_fn = make_loss(cfg.loss, len(data.classes), cfg.label_smoothing)
    train_batches = Batches(data.train, data.prep, cfg.batch_size, shuffle=True, augment=cfg.augment, seed=cfg.seed,
                            device=device, channels_last=cfg.channels_last, rank=dist.rank, world=dist.world_size)  # fmt: skip
    if len(train_batches) == 0:
        raise UsageError(f"{len(data.train)} training image(s) cannot feed {dist.world_size} processes; use more data or fewer processes")
    val_batches = None
    if data.val:
        val_batches = Batches(shard(data.val, dist.rank, dist.world_size), data.prep, cfg.eval_batch_size, device=device, channels_last=cfg.channels_last)
    steps_per_epoch = len(train_batches)
    epochs = math.ceil(cfg.iters / steps_per_epoch) if cfg.iters else cfg.epochs
    total_steps = cfg.iters or epochs * steps_per_epoch

    def lr_fn(step: int) -> float:
        # A run with --time-limit may fit its schedule to the budget (fit() sets state.planned_steps).
        return lr_at(step, base_lr=cfg.lr, kind=cfg.scheduler, total_steps=state.planned_steps or total_steps, steps_per_epoch=steps_per_epoch,
                     warmup_epochs=cfg.warmup, step_size=cfg.step_size, gamma=cfg.gamma)  # fmt: skip

    state = LoopState()
    records: list[dict[str, Any]] = []
    if resuming and not (run_dir / "last.safetensors").exists():
        # Stopped before its first epoch finished: nothing to restore, start that epoch again.
        reporter.log(f"{run_dir} has no finished epoch yet; starting from epoch 1")
        resuming = False
    if resuming:
        saved = load_last(run_dir / "last.safetensors", model, optimizer)
        state = LoopState(**saved["loop"])
        records = saved["history"]
        if state.epoch >= epochs:
            reporter.log(f"{run_dir} already finished {state.epoch} epoch(s); pass a larger --epochs to extend it")
    meta = checkpoint_metadata(cfg, data, cfg.model)
    if freezer is not None:
        freezer.apply(state.epoch + 1)  # before DDP wraps the model: it keeps the trainable set it sees
    if dist.is_main:
        write_json(run_dir / "config.json", {
            **cfg.to_dict(), "init_report": init_report.to_dict() if init_report else None,
            "resolved_epochs": epochs, "total_steps": total_steps, "device": str(device),
            "data_summary": data.describe(), "preprocess": data.prep.to_dict(), "versions": versions(),
            "torch_threads": torch.get_num_threads(), "world_size": dist.world_size,
        })  # fmt: skip
    scaler = torch.amp.GradScaler("cuda") if cfg.amp == "fp16" else None
    train_model = dist.wrap(model, device)
    train_model = torch.compile(train_model) if cfg.compile else train_model

    def on_epoch_end(record: dict[str, Any], improved: bool, st: LoopState) -> None:
        records.append(record)
        if not dist.is_main:
            return
        metrics = {k: v for k, v in record.items() if k.startswith(("val_", "train_"))}
        if improved:
            save_model(run_dir / "model.safetensors", model, {**meta, "epoch": record["epoch"], "metrics": metrics})
        save_last(run_dir / "last.safetensors", model, optimizer,
                  {"loop": st.__dict__.copy(), "history": records}, {**meta, "epoch": record["epoch"], "metrics": metrics})  # fmt: skip
        history.save(run_dir / "history.json", records)

    def on_epoch_start(epoch: int) -> None:
        if freezer is not None and freezer.apply(epoch):
            reporter.log(f"epoch {epoch}: the backbone {'is frozen' if freezer.frozen else 'trains from now on'} (--unfreeze-at {cfg.unfreeze_at})")

    with _signals() as caught:
        try:
            reason = fit(
                train_model, train_batches, val_batches, optimizer, loss_fn, lr_fn, state,
                epochs=epochs, seed=cfg.seed, max_steps=cfg.iters or None, total_steps=total_steps, monitor=cfg.monitor,
                patience=cfg.patience, time_limit=cfg.time_limit, amp=cfg.amp, scaler=scaler,
                should_stop=lambda: bool(caught), reporter=reporter, on_epoch_end=on_epoch_end,
                dist=dist, eval_model=model if dist.enabled else train_model, on_epoch_start=on_epoch_start,
            )  # fmt: skip
        except Interrupted:
            raise RunInterrupted(run_dir, state.epoch) from None
        except Exception as exc:
            if dist.enabled and not isinstance(exc, CnnctlError) and is_comm_error(exc):
                raise dist.lost(exc) from None
            raise
    test = None
    if not dist.is_main:
        return RunResult(run_dir, reason, records, state.best_epoch, state.best, None)
    if data.test is not None and (run_dir / "model.safetensors").is_file():
        from cnnctl.checkpoint import load_model

        best, _, _ = load_model(run_dir, device)
        if cfg.channels_last:
            best = best.to(memory_format=torch.channels_last)
        result = evaluate(best, Batches(data.test, data.prep, cfg.eval_batch_size, device=device, channels_last=cfg.channels_last), loss_fn)
        test = {"loss": result.loss, "acc": result.acc, "images": len(result.targets), "epoch": state.best_epoch}
        history.save(run_dir / "history.json", records, test=test, stopped=reason)
    else:
        history.save(run_dir / "history.json", records, stopped=reason)
    return RunResult(run_dir, reason, records, state.best_epoch, state.best, test)


class RunInterrupted(Exception):
    """SIGINT/SIGTERM stopped the run; the run directory is consistent at `epoch`."""

    def __init__(self, run_dir: Path, epoch: int) -> None:
        super().__init__(f"interrupted after epoch {epoch}")
        self.run_dir, self.epoch = run_dir, epoch


def train(model: str | None, recipe: str | None, flags: dict[str, Any], *, out: str | None, resume: str | None,
          overwrite: bool, reporter: Reporter, dist: Dist | None = None) -> RunResult:
    """Resolve the config (resumed run's config <- recipe <- flags) and run it."""
    dist = dist or Dist()
    try:
        return _train(model, recipe, flags, out=out, resume=resume, overwrite=overwrite, reporter=reporter, dist=dist)
    except CnnctlError as exc:
        raise dist.label(exc) from None


def _train(model: str | None, recipe: str | None, flags: dict[str, Any], *, out: str | None, resume: str | None,
           overwrite: bool, reporter: Reporter, dist: Dist) -> RunResult:
    base = None
    if resume:
        from cnnctl.config import FIELDS
        from cnnctl.io import read_json

        missing = f"{resume} is not a cnnctl run directory (no config.json); nothing to resume"
        saved = read_json(Path(resume) / "config.json", RunDirError, missing)

        base = {k: v for k, v in saved.items() if k in FIELDS}
        if model and model != base.get("model"):
            raise UsageError(f"--resume {resume} trained {base.get('model')}, not {model}; drop the model argument")
    cfg = resolve(model, recipe, flags, base)
    return run(cfg, out=out, resume=resume, overwrite=overwrite, reporter=reporter, dist=dist)
