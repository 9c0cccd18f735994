"""`cnnctl lr-find`: the learning-rate range test (Smith 2017; fastai's `lr_find`).

The run is set up exactly as `cnnctl train` would (same options, same data, model, start weights,
optimizer, batches and loop), in a temporary directory, then trained for up to `steps` optimizer
steps while the rate grows exponentially from `start` to `end`. The test stops once the loss,
as a bias-corrected exponential moving average (beta 0.98, fastai's), passes `diverge` times its
minimum, or the loss is not finite. The curve the rules read is smoothed with a centred moving
average over 5% of the steps instead: an exponential average lags (at beta 0.98 by ~50 steps,
a factor of ~10,000 in the rate over a 100-step test from 1e-7 to 10), which moves every
suggestion to rates where the raw loss is already rising. Nothing is kept: the
model's weights are thrown away (only the decoded-image cache stays, which a real run reuses).

Two rules read the curve, both reported; the suggestion is `steepest`, the rule that lands
nearest the shipped recipes' tuned rates (docs/train.md has the measurements):
- valley: the rate at the minimum of the smoothed loss divided by 10 (Smith's and fastai v1's
  "an order of magnitude before the minimum");
- steepest: where the smoothed loss falls fastest against log(rate), between the first tenth of
  the curve and its minimum (Lightning's `suggestion()`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from cnnctl.config import TrainConfig
from cnnctl.errors import TrainingError, UsageError
from cnnctl.train.engine import Hooks, Interrupted, Limits, Reporter

BETA = 0.98


@dataclass
class LrCurve:
    model: str
    data: str
    optimizer: str
    start_lr: float
    end_lr: float
    steps_planned: int
    stopped: str  # "end", "diverged" or "non-finite loss"
    points: list[dict[str, float]]
    min_loss_lr: float
    valley_lr: float
    steepest_lr: float
    suggested_lr: float
    rule: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def centred_average(values: np.ndarray, window: int) -> np.ndarray:
    """Mean over `window` points centred on each (fewer at the ends): smoothing without lag."""
    half = window // 2
    sums = np.concatenate([[0.0], np.cumsum(values)])
    idx = np.arange(len(values))
    lo, hi = np.maximum(0, idx - half), np.minimum(len(values), idx + half + 1)
    return (sums[hi] - sums[lo]) / (hi - lo)


def suggestions(lrs: np.ndarray, smoothed: np.ndarray) -> tuple[float, float, float]:
    """(rate at the smoothed minimum, that / 10, rate of the steepest descent before the minimum)."""
    best = int(np.argmin(smoothed))
    min_lr = float(lrs[best])
    first = max(1, len(lrs) // 10)
    if best - first >= 2:
        grad = np.gradient(smoothed[first : best + 1], np.log(lrs[first : best + 1]))
        steepest = float(lrs[first + int(np.argmin(grad))])
    else:
        steepest = min_lr / 10
    return min_lr, min_lr / 10, steepest


def lr_find(
    cfg: TrainConfig,
    reporter: Reporter,
    *,
    start: float = 1e-7,
    end: float = 10.0,
    steps: int = 100,
    diverge: float = 4.0,
) -> LrCurve:
    if not 0 < start < end:
        raise UsageError(f"--start-lr {start:g} must be positive and below --end-lr {end:g}")
    if not 10 <= steps <= 10_000:
        raise UsageError(f"--steps {steps} must be between 10 and 10,000 (a hundred or a few hundred is usual)")
    from cnnctl.train.plan import make_plan, pick_device
    from cnnctl.train.schedule import Schedule
    from cnnctl.train.trainer import fit_prepared, prepare

    device = pick_device(cfg.device)
    points: list[dict[str, float]] = []
    state: dict[str, Any] = {"avg": 0.0, "best": math.inf, "stop": ""}

    def on_step(step: int, loss: Any, lr: float) -> None:
        raw = float(loss)
        state["avg"] = BETA * state["avg"] + (1 - BETA) * raw
        smooth = state["avg"] / (1 - BETA ** (len(points) + 1))
        points.append({"lr": float(lr), "loss": raw, "ema": smooth})
        state["best"] = min(state["best"], smooth)
        if len(points) > 5 and smooth > diverge * state["best"]:
            state["stop"] = "diverged"

    run = prepare(make_plan(cfg, reporter, device), reporter)
    reporter.log(
        f"lr-find: {steps} steps from {start:g} to {end:g} (x{(end / start) ** (1 / (steps - 1)):.3f} a step), "
        f"{run.train_batches.batch_size} images a step, stopping once the smoothed loss passes {diverge:g}x its minimum"
    )
    sweep = Schedule(
        base_lr=start, end_lr=end, kind="range", total_steps=steps, steps_per_epoch=run.schedule.steps_per_epoch
    )
    hooks = Hooks(on_step=on_step, should_stop=lambda: bool(state["stop"]))
    try:
        fit_prepared(run, hooks, schedule=sweep, limits=Limits(epochs=steps, max_steps=steps), validate=False)
        state["stop"] = state["stop"] or "end"
    except Interrupted:
        pass
    except TrainingError:
        state["stop"] = "non-finite loss"
    if len(points) < 10:
        raise TrainingError(
            f"the loss diverged after {len(points)} steps (at lr {points[-1]['lr'] if points else start:.3g}); start lower (--start-lr)"
        )
    lrs = np.array([p["lr"] for p in points])
    smoothed = centred_average(np.array([p["loss"] for p in points]), max(3, (steps // 20) | 1))
    for p, v in zip(points, smoothed):
        p["smoothed"] = float(v)
    min_lr, valley, steepest = suggestions(lrs, smoothed)
    return LrCurve(
        cfg.model,
        cfg.data,
        cfg.optimizer,
        start,
        end,
        steps,
        state["stop"],
        points,
        min_lr,
        valley,
        steepest,
        steepest,
        "steepest: where the smoothed loss falls fastest against log(lr), before its minimum",
    )
