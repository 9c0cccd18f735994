"""cnnctl.train.budget: the schedule fitted to a time budget from the first measured steps."""

from __future__ import annotations

import pytest

from cnnctl.train.budget import BudgetProbe, Workload
from cnnctl.train.schedule import Schedule

pytestmark = pytest.mark.quick


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _probe(deadline: float, clock: Clock, log: list[str], **kw) -> tuple[Schedule, BudgetProbe]:
    schedule = Schedule(base_lr=0.1, kind="onecycle", total_steps=1000, steps_per_epoch=100)
    probe = BudgetProbe(
        schedule,
        deadline,
        epochs=10,
        work=Workload(50, kw.pop("eval_images", 0), kw.pop("eval_passes", 1), kw.pop("world_size", 1)),
        warmup=2,
        measure=4,
        log=log.append,
        clock=clock,
        **kw,
    )
    return schedule, probe


def test_the_plan_is_fitted_after_the_measured_steps_not_the_warm_up():
    clock, log = Clock(), []
    schedule, probe = _probe(100.0, clock, log)
    for step, seconds in enumerate([5.0, 5.0, 0.5, 0.5, 0.5, 0.5], start=1):  # two slow warm-up steps
        clock.now += seconds
        probe.after_step(step)
        assert (schedule.planned_steps == 0) == (step < 6)
    # 0.5 s a step measured, 88 s left at step 6: 176 more steps.
    assert schedule.planned_steps == 6 + 176 and probe.images_per_s == 100.0
    assert len(log) == 1 and "100 img/s" in log[0] and "1.8 of 10 planned" in log[0] and "less than a quarter" in log[0]
    probe.after_step(7)
    assert schedule.planned_steps == 182 and len(log) == 1  # once


def test_validation_is_counted_and_a_budget_that_fits_is_not_cut():
    clock, log = Clock(), []
    schedule, probe = _probe(10_000.0, clock, log, eval_images=3000, eval_passes=2)
    probe.fit(step=6, train_seconds_per_step=0.5)
    # per image 0.01 s; validation 3000 x 0.01 / 3 x 2 passes = 20 s an epoch = 0.2 s a step.
    assert schedule.planned_steps == 1000 and "less than a quarter" not in log[0]
    clock.now = 9_700.0
    probe.fit(step=6, train_seconds_per_step=0.5)
    assert schedule.planned_steps == 6 + int(300 / 0.7)


def test_ranks_agree_on_one_measurement():
    clock, log = Clock(), []
    schedule, probe = _probe(100.0, clock, log, agree=lambda v: 1.0, world_size=2)  # the mean over ranks said 1 s
    for step in range(1, 7):
        clock.now += 0.1
        probe.after_step(step)
    assert schedule.planned_steps == 6 + int((100.0 - 0.6) / 1.0) and probe.images_per_s == 100.0
