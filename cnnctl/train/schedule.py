"""Learning-rate schedules as pure functions of the global step. Torch-free.

A schedule with no hidden state resumes exactly: the step counter is all there is to save.
"""

from __future__ import annotations

import math


def lr_at(
    step: int,
    *,
    base_lr: float,
    kind: str,
    total_steps: int,
    steps_per_epoch: int,
    warmup_epochs: float = 0.0,
    step_size: int = 5,
    gamma: float = 0.1,
    end_lr: float = 0.0,
) -> float:
    """Learning rate for optimizer step `step` (0-based) of `total_steps`. "range" is lr-find's
    exponential sweep from `base_lr` to `end_lr` over the steps."""
    total = max(1, total_steps)
    if kind == "range":
        return base_lr * (end_lr / base_lr) ** (min(step, total - 1) / max(1, total - 1))
    if kind == "onecycle":
        warm = warmup_epochs * steps_per_epoch if warmup_epochs else 0.3 * total
        warm = max(1.0, min(warm, total - 1.0))
        start, end = base_lr / 25.0, base_lr / 1e4
        if step < warm:
            return start + (base_lr - start) * step / warm
        frac = min(1.0, (step - warm) / max(1.0, total - warm))
        return base_lr + (end - base_lr) * frac  # linear decay, as the CIFAR-10 speed runs use
    warm = warmup_epochs * steps_per_epoch
    factor = (step + 1) / warm if warm and step < warm else 1.0
    if kind == "none":
        return base_lr * factor
    if kind == "step":
        return base_lr * factor * gamma ** (step // max(1, step_size * steps_per_epoch))
    if kind == "cosine":
        frac = min(1.0, max(0.0, (step - warm) / max(1.0, total - warm)))
        return base_lr * factor * 0.5 * (1.0 + math.cos(math.pi * frac))
    raise ValueError(f"unknown schedule {kind!r}")


def steps_within_budget(step: int, planned: int, remaining_s: float, seconds_per_step: float) -> int:
    """How many steps the schedule should span so that it ends when the time budget does.

    `step` steps are done, each costing `seconds_per_step` (validation included); the result never
    exceeds `planned` (the configured length) and never falls below `step` (it cannot undo steps).
    Schedules that anneal (onecycle, cosine) then reach their final learning rate as the time
    runs out instead of being cut off halfway down.
    """
    if seconds_per_step <= 0:
        return planned
    return max(step, min(planned, step + int(max(0.0, remaining_s) / seconds_per_step)))


class Schedule:
    """The run's learning rate per global step, and the number of steps it is planned to span.

    The schedule owns its own length: `--iters`/`--epochs` give `total_steps`; under a time
    budget, the loop sets `planned_steps` from `budget_steps` (after the first measured steps,
    budget.BudgetProbe, then after every epoch) so that annealing schedules end their decay when
    the time does. `state_dict()` goes into last.safetensors, so a resumed run continues on
    the same plan.
    """

    def __init__(
        self,
        *,
        base_lr: float,
        kind: str,
        total_steps: int,
        steps_per_epoch: int,
        warmup_epochs: float = 0.0,
        step_size: int = 5,
        gamma: float = 0.1,
        end_lr: float = 0.0,
    ) -> None:
        self.base_lr, self.kind, self.total_steps, self.steps_per_epoch = base_lr, kind, total_steps, steps_per_epoch
        self.warmup_epochs, self.step_size, self.gamma, self.end_lr = warmup_epochs, step_size, gamma, end_lr
        self.planned_steps = 0  # 0: as configured

    @property
    def length(self) -> int:
        return self.planned_steps or self.total_steps

    @property
    def shortened(self) -> bool:
        """True when a time budget has cut the plan below the configured length."""
        return 0 < self.planned_steps < self.total_steps

    def lr(self, step: int) -> float:
        return lr_at(
            step,
            base_lr=self.base_lr,
            kind=self.kind,
            total_steps=self.length,
            steps_per_epoch=self.steps_per_epoch,
            warmup_epochs=self.warmup_epochs,
            step_size=self.step_size,
            gamma=self.gamma,
            end_lr=self.end_lr,
        )

    def budget_steps(self, step: int, remaining_s: float, seconds_per_step: float) -> int:
        """How long the plan should be for the time left (see steps_within_budget)."""
        return steps_within_budget(step, self.total_steps, remaining_s, seconds_per_step)

    def state_dict(self) -> dict[str, int]:
        return {"planned_steps": self.planned_steps}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.planned_steps = int(state.get("planned_steps", 0))
