"""A search space: which train options a study varies, and over what (torch-free, Optuna-free).

A space is TOML, a file of its own or the `[tune.space]` table of a recipe:

    lr = { low = 1e-4, high = 3e-2, log = true }   # a range (float or int; `step` for a grid)
    batch_size = [64, 128]                          # a choice
    augment = ["none", "flip-crop"]

Every key is a train option (config.py's TrainConfig) that may differ between the trials of one
study; each end of a range and each choice is checked with config.validate on the study's own
config, so a bad value is refused in one line before any trial starts, not found by trial 17.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cnnctl.config import FIELDS, DataConfig, TrainConfig, coerce, read_toml, validate
from cnnctl.errors import CnnctlError, UsageError

# Options the trials of one study must share, and why (said when a space names one).
# Decoding options may vary (the same images at another size are still the same images and split).
_DECODE = {"image_size", "grayscale", "mean", "std", "resize", "interpolation", "crop_pct"}
FIXED = {
    **dict.fromkeys(
        (f.name for f in dataclasses.fields(DataConfig) if f.name not in _DECODE),
        "every trial must train and be judged on the same images",
    ),
    "seed": "one seed for the whole study makes its trials comparable (and its suggestions repeatable): give --seed",
    "monitor": "trials are compared by --metric on the checkpoint each keeps; give --monitor to the study",
    "threshold_rule": "trials are compared on the validation scores, not on their thresholds",
    "time_limit": "--time-limit is each trial's budget; give it to the study",
    "log": "the logging of every trial is the study's: give --log",
    "track": "the tracking of every trial is the study's: give --track",
    "tracking_uri": "the tracking of every trial is the study's: give --tracking-uri",
    "experiment": "the tracking of every trial is the study's: give --experiment",
    "device": "the machine's settings are the study's: give them as flags",
    "threads": "the machine's settings are the study's: give them as flags",
    "deterministic": "the machine's settings are the study's: give them as flags",
    "eval_batch_size": "the inference batch changes speed, not results: give it as a flag",
}


@dataclass(frozen=True)
class Range:
    """A number between `low` and `high` (log-uniform with `log`; on a grid of `step`)."""

    name: str
    low: float | int
    high: float | int
    log: bool = False
    step: float | int | None = None

    @property
    def integer(self) -> bool:
        return type(FIELDS[self.name].default) is int

    def values(self) -> list[Any]:
        return [self.low, self.high]

    def holds(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not self.low <= value <= self.high:
            return False
        return self.step is None or abs((value - self.low) / self.step - round((value - self.low) / self.step)) < 1e-9

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"low": self.low, "high": self.high, "log": self.log}
        return {**d, "step": self.step} if self.step is not None else d


@dataclass(frozen=True)
class Choice:
    """One of a list of values (model names, augmentations, batch sizes, on/off)."""

    name: str
    choices: tuple[Any, ...]

    def values(self) -> list[Any]:
        return list(self.choices)

    def holds(self, value: Any) -> bool:
        return value in self.choices

    def to_dict(self) -> dict[str, Any]:
        return {"choices": list(self.choices)}


@dataclass(frozen=True)
class Space:
    """The options a study varies, in the order the file gives them; `source` names the file."""

    params: tuple[Range | Choice, ...]
    source: str

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.params]

    def to_dict(self) -> dict[str, Any]:
        return {p.name: p.to_dict() for p in self.params}

    def check(self, cfg: TrainConfig) -> None:
        """Every end of every range and every choice, validated on the study's config; a value that
        only another searched value makes valid (alternate_flip = true with augment = "flip-crop")
        passes, and a trial that draws it without that value fails, saying why."""
        for p in self.params:
            for value in p.values():
                problem = _problem(cfg, {p.name: value})
                if problem is None:
                    continue
                others = ({p.name: value, q.name: v} for q in self.params if q is not p for v in q.values())
                if not any(_problem(cfg, pair) is None for pair in others):
                    raise UsageError(f"space {self.source}: {p.name} = {value!r}: {problem}")

    def epochs(self, cfg: TrainConfig) -> tuple[int, int]:
        """The fewest and the most epochs a trial may train: --epochs, or the space's range of them."""
        found = next((p for p in self.params if p.name == "epochs"), None)
        return (int(min(found.values())), int(max(found.values()))) if found is not None else (cfg.epochs, cfg.epochs)

    def start(self, cfg: TrainConfig) -> dict[str, Any]:
        """The config's own values that lie inside the space: a new study's first trial, so that its
        best is never worse on the metric than the recipe it started from."""
        return {p.name: getattr(cfg, p.name) for p in self.params if p.holds(getattr(cfg, p.name))}

    def suggest(self, trial: Any) -> dict[str, Any]:
        """One trial's values, drawn through Optuna's trial API (`suggest_float/int/categorical`)."""
        values: dict[str, Any] = {}
        for p in self.params:
            if isinstance(p, Choice):
                values[p.name] = trial.suggest_categorical(p.name, list(p.choices))
            elif p.integer:
                values[p.name] = trial.suggest_int(p.name, int(p.low), int(p.high), step=int(p.step or 1), log=p.log)
            else:
                values[p.name] = trial.suggest_float(p.name, float(p.low), float(p.high), step=p.step, log=p.log)
        return values


def _problem(cfg: TrainConfig, values: dict[str, Any]) -> str | None:
    """What config.validate says of `cfg` with `values`, or None."""
    try:
        validate(dataclasses.replace(cfg, **values))
    except CnnctlError as exc:
        return exc.message
    return None


def load_space(path: str | Path) -> Space:
    """A space from a TOML file: its `[tune.space]` table if it has one (a recipe), else the file."""
    p = Path(path)
    raw = read_toml(p, "search space", "give the file of `--space` (docs/tune.md)")
    table = raw.get("tune", {}).get("space") if isinstance(raw.get("tune"), dict) else None
    return parse_space(table if table is not None else raw, str(p))


def recipe_space(recipe: str | None) -> Space:
    """The `[tune.space]` table of `--recipe` (a shipped name or a file), or one line asking for --space."""
    if recipe:
        from cnnctl.recipebook import locate

        path = locate(recipe)
        try:
            table = read_toml(path, "recipe", "`cnnctl recipes` lists the shipped ones").get("tune", {}).get("space")
        except AttributeError:
            table = None  # --recipe itself says what is wrong with the file, when it is read
        if table is not None:
            return parse_space(table, f"{path} [tune.space]")
    raise UsageError("give the search space: --space SPACE.toml (or a recipe with a [tune.space] table; docs/tune.md)")


def parse_space(table: dict[str, Any], source: str) -> Space:
    """A space from a TOML table (see the module docstring); every problem is one line."""
    if not isinstance(table, dict) or not table:
        raise UsageError(f"space {source}: no options to search; e.g. lr = {{ low = 1e-4, high = 1e-1, log = true }}")
    params = [_param(key.replace("-", "_"), value, source) for key, value in table.items()]
    return Space(tuple(params), source)


def _param(name: str, value: Any, source: str) -> Range | Choice:
    where = f"space {source}: {name}"
    if name not in FIELDS:
        close = difflib.get_close_matches(name, list(FIELDS), n=1)
        raise UsageError(f"{where} is not a train option{f' (did you mean {close[0]}?)' if close else ''}")
    if name in FIXED:
        raise UsageError(f"{where} cannot vary between trials: {FIXED[name]}")
    if isinstance(value, list):
        return _choice(name, value, where)
    if isinstance(value, dict):
        return _range(name, value, where)
    raise UsageError(
        f"{where} = {value!r} is one value: fixed values go on the command line or in the recipe; "
        f"give a list of choices or {{ low = ..., high = ... }}"
    )


def _choice(name: str, value: list[Any], where: str) -> Choice:
    if not value:
        raise UsageError(f"{where}: an empty list of choices")
    choices = tuple(coerce(name, v, where) if name != "model" else _text(v, where) for v in value)
    if len(set(choices)) != len(choices):
        raise UsageError(f"{where}: a choice is listed twice in {list(value)!r}")
    return Choice(name, choices)


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise UsageError(f"{where}: model names are strings, got {value!r}")
    return value


def _range(name: str, value: dict[str, Any], where: str) -> Range:
    kind = type(FIELDS[name].default)
    if kind not in (int, float):
        raise UsageError(f"{where} is not a number: give a list of choices instead of a range")
    unknown = sorted(set(value) - {"low", "high", "log", "step"})
    if unknown or "low" not in value or "high" not in value:
        raise UsageError(f"{where}: a range is {{ low = ..., high = ..., log = true|false, step = ... }}")
    low, high, step = (_number(value.get(k), kind, f"{where}.{k}") for k in ("low", "high", "step"))
    log = value.get("log", False)
    if not isinstance(log, bool):
        raise UsageError(f"{where}.log must be true or false, got {log!r}")
    if low is None or high is None or not low < high:
        raise UsageError(f"{where}: low must be below high, got low = {low!r}, high = {high!r}")
    if log and low <= 0:
        raise UsageError(f"{where}: a log range needs low > 0, got {low!r}")
    if log and step is not None:
        raise UsageError(f"{where}: a range is either log or on a grid of step, not both")
    if step is not None and step <= 0:
        raise UsageError(f"{where}.step must be positive, got {step!r}")
    return Range(name, low, high, log, step)


def _number(value: Any, kind: type, where: str) -> float | int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise UsageError(f"{where} must be a number, got {value!r}")
    if kind is int and not float(value).is_integer():
        raise UsageError(f"{where} must be a whole number for an integer option, got {value!r}")
    return int(value) if kind is int else float(value)
