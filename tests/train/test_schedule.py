"""Learning-rate schedules and fitting a schedule to a time budget (pure functions)."""

from __future__ import annotations

import pytest

from cnnctl.train.schedule import lr_at, steps_within_budget

pytestmark = pytest.mark.quick


def test_onecycle_warms_up_peaks_and_decays_to_its_floor():
    kw = dict(base_lr=0.2, kind="onecycle", total_steps=1000, steps_per_epoch=100, warmup_epochs=2)
    assert lr_at(0, **kw) == pytest.approx(0.2 / 25)
    assert lr_at(200, **kw) == pytest.approx(0.2)
    assert lr_at(600, **kw) == pytest.approx(0.2 + (0.2 / 1e4 - 0.2) * 0.5)
    assert lr_at(1000, **kw) == pytest.approx(0.2 / 1e4)


def test_a_shorter_plan_reaches_the_floor_sooner():
    kw = dict(base_lr=0.2, kind="onecycle", steps_per_epoch=100, warmup_epochs=2)
    assert lr_at(700, total_steps=700, **kw) == pytest.approx(0.2 / 1e4)
    assert lr_at(700, total_steps=1000, **kw) > 0.05


@pytest.mark.parametrize(
    "step, planned, remaining, per_step, expected",
    [
        (100, 1000, 112.5, 0.125, 1000),  # 900 more steps fit exactly: the plan stands
        (100, 1000, 500.0, 0.125, 1000),  # more time than needed: never longer than configured
        (100, 1000, 50.0, 0.125, 500),  # a slower machine: the schedule shrinks to what fits
        (100, 1000, -3.0, 0.125, 100),  # the budget is already spent: stop where we are
        (100, 1000, 50.0, 0.0, 1000),  # no measurement yet: keep the plan
    ],
)
def test_steps_within_budget(step, planned, remaining, per_step, expected):
    assert steps_within_budget(step, planned, remaining, per_step) == expected
