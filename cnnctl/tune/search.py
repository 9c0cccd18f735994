"""`cnnctl tune`: a worker of a study. It asks Optuna for a trial, trains it as an ordinary run
directory (trainer.run, with the pruner asked after every epoch), and tells Optuna the metric,
until the study has `trials` finished trials (completed or pruned), the `timeout` cannot fit
another, or it is stopped. Rerun, it resumes; started N times, it is N workers on one study.

Every trial trains on the same data bundle (decoded once per worker, its fingerprint checked
against the study's), and with a frozen backbone on the same cached features: a probe trial costs
its head's epochs. Under torchrun, rank 0 talks to Optuna and the other ranks train each trial with
it data-parallel (the params and each decision broadcast).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cnnctl.config import TrainConfig
from cnnctl.errors import CnnctlError, UsageError
from cnnctl.train.distributed import Dist
from cnnctl.train.engine import Reporter, kept_metric
from cnnctl.train.trainer import RunInterrupted
from cnnctl.tune import study as studies
from cnnctl.tune.space import Space

METRICS = ("val_acc", "val_loss", "val_map")
MAX_FAILED_IN_A_ROW = 5


@dataclass(frozen=True)
class Settings:
    """The study's own options (`cnnctl tune --help`); the trials' are the TrainConfig."""

    out: Path
    trials: int
    timeout: float = 0.0
    metric: str = "auto"
    direction: str = "auto"
    sampler: str = "tpe"
    pruner: str = "median"
    storage: str | None = None
    study: str | None = None
    heartbeat: int = 20
    startup_trials: int = 5

    @property
    def name(self) -> str:
        return self.study or self.out.resolve().name


@dataclass
class Outcome:
    """What a worker leaves: the study (for the table and best.toml), why it stopped, and how many
    trials it trained itself."""

    study: Any
    name: str
    stopped: str
    trials_here: int


class TrialFailed(Exception):
    """A trial that could not train (its options together refused, the loss went NaN): failed, the
    study goes on. Not a CnnctlError: it never reaches the user as the command's error."""


class Surplus(Exception):
    """A trial asked at the same moment as the study's last one: told failed and hidden."""


def metric_and_direction(cfg: TrainConfig, settings: Settings, multilabel: bool) -> tuple[str, str]:
    """--metric (auto: the run's --monitor, else val_map for multi-label, val_acc) and its direction."""
    metric = {"map": "val_map", "acc": "val_acc", "loss": "val_loss"}.get(settings.metric, settings.metric)
    if metric == "auto":
        metric = cfg.monitor if cfg.monitor in METRICS else ("val_map" if multilabel else "val_acc")
    if metric not in METRICS:
        raise UsageError(f"--metric {settings.metric!r} is not one of {', '.join(METRICS)} (or auto)")
    if metric == "val_map" and not multilabel:
        raise UsageError("--metric val_map is the multi-label mean average precision; use val_acc or val_loss here")
    natural = "minimize" if metric == "val_loss" else "maximize"
    if settings.direction not in ("auto", natural):
        raise UsageError(
            f"--direction {settings.direction}: {metric} is better {'lower' if natural == 'minimize' else 'higher'}; drop --direction"
        )
    return metric, natural


def metric_of(record: dict[str, Any], metric: str) -> float:
    """An epoch's metric of the weights it kept (engine.kept_metric); a search always validates."""
    value = kept_metric(record, metric)
    return float(value if value is not None else record[metric])


def make_sampler(name: str, seed: int, startup: int) -> Any:
    optuna = studies.optuna_module()
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "cmaes":
        try:
            import cmaes  # noqa: F401
        except ImportError:
            raise UsageError("--search-sampler cmaes needs the cmaes package: pip install 'cnnctl[tune]'") from None
        return optuna.samplers.CmaEsSampler(seed=seed, n_startup_trials=startup)
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup)
    raise UsageError(f"--search-sampler {name!r} is not one of tpe, random, cmaes")


def make_pruner(name: str, epochs: tuple[int, int], startup: int) -> Any:
    """The pruner; it judges no trial before a quarter of the fewest epochs a trial may have
    (`epochs`: fewest, most): the first epochs of schedules of other lengths say little of their ends."""
    optuna = studies.optuna_module()
    warmup = max(1, epochs[0] // 4)
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=startup, n_warmup_steps=warmup)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=warmup, max_resource=max(epochs[1], warmup), reduction_factor=3
        )
    if name == "none":
        return optuna.pruners.NopPruner()
    raise UsageError(f"--pruner {name!r} is not one of median, hyperband, none")


class _Prefixed:
    """The trial's progress, its log lines prefixed with the trial's number."""

    def __init__(self, reporter: Reporter, number: int) -> None:
        self.reporter, self.prefix = reporter, f"trial {number}: "

    def start_epoch(self, epoch: int, epochs: int, batches: int) -> None:
        self.reporter.start_epoch(epoch, epochs, batches)

    def batch(self, done: int, loss: float, images_per_s: float) -> None:
        self.reporter.batch(done, loss, images_per_s)

    def end_epoch(self, record: dict[str, Any], best: bool) -> None:
        self.reporter.end_epoch(record, best)

    def log(self, message: str) -> None:
        self.reporter.log(self.prefix + message)


@dataclass
class Worker:
    """One worker's part of the study: the shared config, the space, the data its trials share."""

    cfg: TrainConfig
    space: Space
    settings: Settings
    reporter: Reporter
    dist: Dist
    metric: str = "val_acc"
    bundles: dict[Any, Any] = dataclasses.field(default_factory=dict)
    durations: list[float] = dataclasses.field(default_factory=list)

    def train(self, number: int, params: dict[str, Any], prune: Callable[[dict[str, Any]], bool]) -> tuple[float, bool]:
        """Trial `number` as a run directory: its metric at the checkpoint it keeps, and whether the
        pruner stopped it."""
        from cnnctl.config import validate
        from cnnctl.train.trainer import Host, run

        cfg = dataclasses.replace(self.cfg, **params)
        run_dir = self.settings.out / studies.run_dir_name(number)
        started = time.monotonic()
        try:
            validate(cfg)  # values that pass alone may not together (rrc-flip with --resize stretch)
            result = run(
                cfg,
                out=str(run_dir),
                overwrite=True,
                reporter=_Prefixed(self.reporter, number),
                dist=self.dist,
                host=Host(
                    prune=prune,
                    bundles=self.bundles,
                    test=False,
                    track_tags={"cnnctl.study": self.settings.name, "cnnctl.trial": str(number)},
                ),
            )
        except CnnctlError as exc:
            raise TrialFailed(exc.message) from None
        self.durations.append(time.monotonic() - started)
        best = next((r for r in result.epochs if r["epoch"] == result.best_epoch), result.epochs[-1])
        return metric_of(best, self.metric), result.reason == "pruned"


# Options that may differ between the workers of one study: where the data and caches are on each
# machine (the data's fingerprint is compared instead) and how each machine runs.
PER_MACHINE = frozenset(
    (
        "data",
        "data_dir",
        "cache_dir",
        "image_root",
        "device",
        "threads",
        "eval_batch_size",
        "log",
        "track",
        "tracking_uri",
        "experiment",
        "compile",
        "channels_last",
        "amp",
    )
)


def study_terms(cfg: TrainConfig, space: Space, metric: str, direction: str) -> studies.Terms:
    """The terms every worker must share (PER_MACHINE aside), and the recipe best.toml starts from."""
    values = cfg.to_dict()
    base = {k: v for k, v in values.items() if k not in PER_MACHINE and k not in space.names}
    return studies.Terms(space.to_dict(), base, metric, direction, recipe=recipe_values(cfg))


def recipe_values(cfg: TrainConfig) -> dict[str, Any]:
    """The config's options that differ from their defaults (what a recipe needs to say)."""
    from cnnctl.config import FIELDS

    return {k: v for k, v in cfg.to_dict().items() if k in FIELDS and v != FIELDS[k].default}


def search(
    cfg: TrainConfig, space: Space, settings: Settings, reporter: Reporter, dist: Dist | None = None
) -> Outcome | None:
    """Run this worker until the study is done (see the module docstring). Rank 0 returns the
    outcome; the other ranks of a torchrun job follow it and return None."""
    from cnnctl.models import get_entry
    from cnnctl.train.plan import make_plan, pick_device

    dist = dist or Dist()
    _check_folder(settings)  # before any image is decoded
    for name in next((p.values() for p in space.params if p.name == "model"), []):
        try:
            get_entry(name)  # an unknown model (or timm not installed) is refused before trial 17 meets it
        except CnnctlError as exc:
            raise UsageError(f"space {space.source}: model = {name!r}: {exc.message}") from None
    dist.check_batch(cfg.batch_size)
    device = pick_device(cfg.device, dist)
    dist.start(device.type)
    finished = False
    try:
        worker = Worker(cfg, space, settings, reporter, dist)
        plan = make_plan(cfg, reporter, device, dist, bundles=worker.bundles)  # the data, decoded once
        if plan.data.val is None:
            raise UsageError("a search compares its trials on the validation split; give --val-split above 0")
        worker.metric, direction = metric_and_direction(cfg, settings, plan.multilabel)
        if dist.is_main:
            outcome = _lead(worker, direction, plan.data.fingerprint)
        else:
            outcome = None
            _follow(worker)
        finished = True
        return outcome
    finally:
        dist.stop(clean=finished)


def _check_folder(s: Settings) -> None:
    """--out is a folder for this study: not a file, not a training run, not another study's."""
    if s.out.exists() and not s.out.is_dir():
        raise UsageError(f"--out {s.out} is a file; give the study a folder")
    if (s.out / "config.json").is_file():
        raise UsageError(f"--out {s.out} is a training run's directory; give the study a folder of its own")
    studies.check_pointer(s.out, studies.storage_url(s.storage, s.out), s.name)


def _lead(worker: Worker, direction: str, fingerprint: str) -> Outcome:
    """Rank 0 (or the only process): the study's side of the loop."""
    s, log = worker.settings, worker.reporter.log
    s.out.mkdir(parents=True, exist_ok=True)
    url = studies.storage_url(s.storage, s.out)
    storage = studies.open_storage(url, s.heartbeat)
    terms = study_terms(worker.cfg, worker.space, worker.metric, direction)
    pruner = make_pruner(s.pruner, worker.space.epochs(worker.cfg), s.startup_trials)
    study = studies.create(storage, s.name, terms, make_sampler(s.sampler, worker.cfg.seed, s.startup_trials), pruner)
    studies.agree_on_data(study, s.name, fingerprint)
    studies.write_pointer(s.out, url, s.name)
    start = worker.space.start(worker.cfg)
    if start and not study.get_trials(deepcopy=False):
        study.enqueue_trial(start, skip_if_exists=True)
        log("the first trial starts from the config's own " + ", ".join(f"{k}={_short(v)}" for k, v in start.items()))
    log(
        f"study {s.name!r} on {studies.shown_url(url)}: {worker.metric} ({direction}), {s.sampler} sampler, {s.pruner} pruner"
    )
    try:
        stopped, here = _trials(worker, study)
    finally:
        worker.dist.broadcast(None)  # the followers' stop (also when this rank fails)
    return Outcome(study, s.name, stopped, here)


def _trials(worker: Worker, study: Any) -> tuple[str, int]:
    """Trials until the study has `trials` finished ones or the timeout cannot fit another."""
    s, log = worker.settings, worker.reporter.log
    started, here, failed_in_a_row, waiting = time.monotonic(), 0, 0, False
    objective = _Objective(worker, study)
    while True:
        studies.fail_stale(study)
        done, running = studies.counts(study)
        if done >= s.trials:
            return "done", here
        if done + running >= s.trials:  # the last trials run in other workers: wait, they may die
            if not waiting:
                log(f"waiting for {running} trial(s) running in other workers")
            waiting = True
            time.sleep(min(5.0, s.heartbeat))
            continue
        expected = worker.cfg.time_limit or max(worker.durations, default=0.0)
        if s.timeout and time.monotonic() - started + expected > s.timeout:
            log(f"--timeout {s.timeout:g} s: no time for another trial (~{expected:.0f} s each)")
            return "timeout", here
        # A sampler seeded by the trial's number: a seeded study draws the same values for trial k
        # whether it ran in one go, was resumed, or shared with other workers (who draw other values).
        study.sampler = make_sampler(
            s.sampler, worker.cfg.seed + len(study.get_trials(deepcopy=False)), s.startup_trials
        )
        study.optimize(objective, n_trials=1, catch=(TrialFailed, Surplus))
        here += objective.trained
        failed_in_a_row = failed_in_a_row + 1 if objective.failure else 0
        if failed_in_a_row >= MAX_FAILED_IN_A_ROW:
            raise UsageError(f"{failed_in_a_row} trials in a row failed; the last: {objective.failure}")


class _Objective:
    """What Optuna calls for one trial: draw its values, train it, report every epoch."""

    def __init__(self, worker: Worker, study: Any) -> None:
        self.worker, self.study = worker, study
        self.failure, self.trained = "", 0

    def __call__(self, trial: Any) -> float:
        w, s = self.worker, self.worker.settings
        self.failure, self.trained = "", 0
        if studies.ahead_of(self.study, trial.number) >= s.trials:
            trial.set_user_attr("surplus", True)
            raise Surplus()
        params = w.space.suggest(trial)
        trial.set_user_attr("run_dir", str((s.out / studies.run_dir_name(trial.number)).resolve()))
        done, _ = studies.counts(self.study)
        shown = ", ".join(f"{k}={_short(v)}" for k, v in params.items())
        w.reporter.log(f"trial {trial.number} ({done} of {s.trials} finished): {shown}")
        w.dist.broadcast({"number": trial.number, "params": params})
        pruning, epochs = s.pruner != "none", [0]

        def prune(record: dict[str, Any]) -> bool:
            trial.report(metric_of(record, w.metric), record["epoch"])
            epochs[0] = record["epoch"]
            return pruning and bool(trial.should_prune())

        self.trained = 1
        try:
            value, pruned = w.train(trial.number, params, prune)
        except RunInterrupted:
            trial.set_user_attr("error", "interrupted (Ctrl-C or SIGTERM)")
            raise
        except TrialFailed as exc:
            self.failure = str(exc)
            trial.set_user_attr("error", self.failure)
            w.reporter.log(f"trial {trial.number} failed: {self.failure}")
            raise
        if pruned:
            w.reporter.log(f"trial {trial.number}: pruned after epoch {epochs[0]} ({w.metric} {value:.4f})")
            raise studies.optuna_module().TrialPruned()
        w.reporter.log(f"trial {trial.number}: {w.metric} {value:.4f}")
        return value


def _follow(worker: Worker) -> None:
    """A torchrun rank other than 0: train each trial rank 0 broadcasts, until it says stop."""
    while True:
        message = worker.dist.broadcast(None)
        if message is None:
            return
        try:
            worker.train(int(message["number"]), dict(message["params"]), lambda record: False)  # rank 0 prunes
        except TrialFailed:
            pass


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
