"""`cnnctl train ... --dry-run`: what a run will cost on this machine, measured before it starts.

Setup runs for real (data, model, start weights, optimizer, batches), a few real optimizer steps
and validation batches are timed, and the plan is returned: images/s, time per epoch, the
epochs a --time-limit buys, the peak memory seen, and the hardware choices. Nothing is written
but the decoded-image cache, which the real run then reuses; no run directory is made.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch

from cnnctl.config import TrainConfig
from cnnctl.data.batches import Batches
from cnnctl.machine import PeakMemory
from cnnctl.train.engine import Hooks, Limits, Reporter, evaluate


@dataclass
class RunPlan:
    """The measured plan of a training run (`--dry-run`, `--json`: this as a JSON object)."""

    model: str
    data: dict[str, Any]
    hardware: dict[str, Any]
    batch_size: int
    steps_per_epoch: int
    epochs: int
    measured_steps: int
    warmup_steps: int
    train_images_per_s: float
    eval_images_per_s: float | None
    epoch_train_seconds: float
    epoch_eval_seconds: float
    epoch_seconds: float
    test_seconds: float
    total_seconds: float
    time_limit: float
    epochs_in_budget: float | None
    peak_memory_bytes: int
    peak_memory_kind: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def dry_run(cfg: TrainConfig, reporter: Reporter, *, steps: int = 10, warmup: int = 2) -> RunPlan:
    """Set the run up, time `steps` optimizer steps after `warmup` untimed ones, and plan."""
    from cnnctl.train.plan import make_plan, pick_device
    from cnnctl.train.trainer import fit_prepared, prepare

    device = pick_device(cfg.device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with PeakMemory() as peak:
        plan = make_plan(cfg, reporter, device)
        run = prepare(plan, reporter)
        steps = (
            max(1, min(steps, run.schedule.steps_per_epoch - warmup))
            if run.schedule.steps_per_epoch > warmup + 1
            else 1
        )
        warmup = min(warmup, max(0, run.schedule.steps_per_epoch - steps))
        stamps: list[float] = [_now(device)]
        reporter.log(f"dry run: timing {steps} training step(s) after {warmup} warm-up step(s)")
        fit_prepared(
            run,
            Hooks(on_step=lambda step, loss, lr: stamps.append(_now(device))),
            limits=Limits(epochs=1, max_steps=warmup + steps),
            validate=False,
        )
        per_step = (stamps[-1] - stamps[warmup]) / steps  # stamps[0] is the start, stamps[k] the end of step k
        eval_batches = run.val_batches
        if eval_batches is None and run.data.test is not None:
            eval_batches = Batches(
                run.data.test, run.data.prep, plan.eval_batch.size, device=device, channels_last=cfg.channels_last
            )
        eval_ips = _eval_speed(run.model, eval_batches) if eval_batches is not None else None
    peak_bytes, peak_kind = peak.peak, peak.kind
    if device.type == "cuda":  # what grows with activations there is device memory
        peak_bytes, peak_kind = int(torch.cuda.max_memory_allocated(device)), "CUDA max allocated"
    images_per_step = run.train_batches.batch_size * run.stepping.accumulate
    steps_per_epoch = run.schedule.steps_per_epoch
    n_train = len(run.data.train)
    epoch_train = steps_per_epoch * per_step
    passes = 2 if run.stepping.ema is not None else 1
    epoch_eval = passes * len(run.data.val) / eval_ips if (run.data.val and eval_ips) else 0.0
    test = len(run.data.test) / eval_ips if (run.data.test and eval_ips) else 0.0
    epochs = run.limits.epochs
    if run.limits.max_steps:
        epochs_exact = run.limits.max_steps / steps_per_epoch
    else:
        epochs_exact = float(epochs)
    epoch_total = epoch_train + epoch_eval
    in_budget = cfg.time_limit / epoch_total if cfg.time_limit and epoch_total > 0 else None
    planned = epochs_exact * epoch_total
    total = (min(planned, cfg.time_limit) if cfg.time_limit else planned) + test
    return RunPlan(
        model=cfg.model,
        data=run.data.describe(),
        hardware=plan.hardware_dict(),
        batch_size=run.train_batches.batch_size,
        steps_per_epoch=steps_per_epoch,
        epochs=epochs,
        measured_steps=steps,
        warmup_steps=warmup,
        train_images_per_s=round(min(images_per_step, n_train) / per_step, 1),
        eval_images_per_s=round(eval_ips, 1) if eval_ips else None,
        epoch_train_seconds=round(epoch_train, 2),
        epoch_eval_seconds=round(epoch_eval, 2),
        epoch_seconds=round(epoch_total, 2),
        test_seconds=round(test, 2),
        total_seconds=round(total, 1),
        time_limit=cfg.time_limit,
        epochs_in_budget=round(in_budget, 2) if in_budget is not None else None,
        peak_memory_bytes=peak_bytes,
        peak_memory_kind=peak_kind,
    )


def _now(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def _eval_speed(model: torch.nn.Module, batches: Batches, max_batches: int = 3) -> float:
    """Images/s of validation inference (float32, as validation runs), timed on up to
    `max_batches` batches after one warm-up batch."""
    it = iter(batches)
    if len(batches) > 1:
        evaluate(model, itertools.islice(it, 1))
    return evaluate(model, itertools.islice(it, max_batches)).images_per_s
