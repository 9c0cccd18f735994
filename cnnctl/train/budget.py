"""Fitting a run to its time budget from the first steps' measured speed. Torch-free.

Without this, `--time-limit` learned the machine's speed at the end of the first epoch, which on
a slow machine can be the whole budget. `BudgetProbe` times a few optimizer steps after a short
warm-up (oneDNN and cuDNN pick their kernels in the first steps), adds an estimate of the
validation passes, and fits the schedule then; the loop refits at every epoch end from the full
measured epoch, validation included. When the budget buys less than a quarter of the planned
epochs, it says so in one line with the measured speed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from cnnctl.train.schedule import Schedule

# A forward pass costs about a third of a training step (forward + backward), per image.
EVAL_COST_SHARE = 1 / 3


@dataclass(frozen=True)
class Workload:
    """What one process does per optimizer step and per validation pass (this rank's shard)."""

    images_per_step: int
    eval_images: int
    eval_passes: int = 1  # 2 with --ema: the model and its average are both validated
    world_size: int = 1


class BudgetProbe:
    """Times steps `warmup+1 .. warmup+measure` of this process and fits `schedule` to the budget."""

    def __init__(
        self,
        schedule: Schedule,
        deadline: float,
        *,
        epochs: int,
        work: Workload,
        warmup: int = 2,
        measure: int = 10,
        agree: Callable[[float], float] = lambda v: v,
        log: Callable[[str], None] | None = None,
        label: str = "",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.schedule, self.deadline, self.epochs = schedule, deadline, epochs
        self.images_per_step, self.eval_images, self.eval_passes = (
            work.images_per_step,
            work.eval_images,
            work.eval_passes,
        )
        self.world_size = work.world_size
        self.warmup, self.measure = warmup, max(1, measure)
        self.agree, self.log, self.label, self.clock = agree, log, label, clock
        self.count = 0
        self.started = 0.0
        self.done = False
        self.images_per_s: float | None = None

    def after_step(self, step: int) -> None:
        """Call after every optimizer step; fits the schedule once, after the measured steps."""
        if self.done:
            return
        self.count += 1
        if self.count == self.warmup:
            self.started = self.clock()
        if self.count < self.warmup + self.measure:
            return
        self.done = True
        per_step = self.agree((self.clock() - self.started) / self.measure)  # the mean over ranks
        self.fit(step, per_step)

    def fit(self, step: int, train_seconds_per_step: float) -> None:
        """Plan the schedule's length from `train_seconds_per_step` plus the validation estimate."""
        s = self.schedule
        steps_per_epoch = max(1, s.steps_per_epoch)
        per_image = train_seconds_per_step / max(1, self.images_per_step)
        eval_per_epoch = self.eval_images * per_image * EVAL_COST_SHARE * self.eval_passes
        per_step = train_seconds_per_step + eval_per_epoch / steps_per_epoch
        self.images_per_s = self.world_size * self.images_per_step / max(1e-9, train_seconds_per_step)
        fits = s.budget_steps(step, self.deadline - self.clock(), per_step)
        s.planned_steps = fits
        bought = fits / steps_per_epoch
        message = (
            f"time budget: {self.images_per_s:,.0f} img/s measured over {self.measure} steps{self.label}; "
            f"the budget buys {bought:.1f} of {self.epochs} planned epoch(s), so the schedule spans {fits} steps"
        )
        if bought < self.epochs / 4:
            message += (
                " - less than a quarter of the plan: expect a weaker model; give a longer --time-limit, fewer --epochs, "
                "a smaller model or images, or check `cnnctl env` for --amp auto"
            )
        if self.log is not None:
            self.log(message)
