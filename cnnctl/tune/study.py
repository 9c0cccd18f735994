"""The study on Optuna's storage: where it lives, what it searches, and what its trials say.

One study is shared by every worker that names the same storage and study name: an SQLite file
in the study folder by default, a PostgreSQL/MySQL URL (Optuna's RDB storage, through SQLAlchemy)
for several machines, or a journal file on a shared file system (`journal:PATH`, or a path ending
in .log). RDB storages run Optuna's heartbeat: a worker killed mid-trial stops beating, and the
next worker to look marks its trial failed. What the study searches (the space, the trials' shared
config, the metric and the data's fingerprint) is stored with it, and a worker that would search
something else is refused in one line: trials judged on other terms cannot be compared.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from cnnctl.errors import CnnctlError, UsageError

STUDY_FILE = "study.json"  # in the study folder: where its storage is (without a password)
ATTR = "cnnctl"  # the study's user attribute holding its terms
FINISHED = ("COMPLETE", "PRUNED")


class StudyError(CnnctlError):
    """A storage that cannot be reached, or a study that searches something else."""


def optuna_module() -> Any:
    """Optuna, or one line saying how to install it."""
    try:
        import optuna
    except ImportError:
        raise UsageError("cnnctl tune needs Optuna: pip install 'cnnctl[tune]'") from None
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # cnnctl says what happens, on stderr, once
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna


def storage_url(storage: str | None, out: Path) -> str:
    """--storage as given (a URL, journal:PATH or PATH.log), or the study folder's SQLite file."""
    if not storage:
        return f"sqlite:///{(out / 'study.db').resolve()}"
    if storage.startswith("journal:") or (storage.endswith(".log") and "://" not in storage):
        return "journal:" + str(Path(storage.removeprefix("journal:")).resolve())
    if "://" not in storage:
        raise UsageError(
            f"--storage {storage!r}: give a database URL (sqlite:///study.db, postgresql://user@host/db) "
            f"or a journal file (journal:PATH or PATH.log)"
        )
    return storage


def shown_url(url: str) -> str:
    """The URL without its password (for logs and study.json; libpq reads PGPASSWORD or ~/.pgpass)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", "@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def open_storage(url: str, heartbeat: int) -> Any:
    """Optuna's storage for `url`; RDB storages beat every `heartbeat` seconds (stale after 3)."""
    optuna = optuna_module()
    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend

        path = Path(url.removeprefix("journal:"))
        path.parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    engine: dict[str, Any] = {"pool_pre_ping": True}
    if url.startswith("sqlite:"):
        engine["connect_args"] = {"timeout": 60}  # workers on one file wait for each other's writes
    for attempt in range(5):
        try:
            return optuna.storages.RDBStorage(
                url, engine_kwargs=engine, heartbeat_interval=heartbeat, grace_period=3 * heartbeat
            )
        except ImportError:
            driver = (
                "pip install 'cnnctl[postgres]'" if url.startswith("postgresql") else "install its SQLAlchemy driver"
            )
            raise StudyError(f"--storage {shown_url(url)}: its database driver is not installed; {driver}") from None
        except Exception as exc:  # SQLAlchemy's: a server that is down, a wrong password, a bad URL
            if ("alembic_version" in str(exc) or "already exists" in str(exc)) and attempt < 4:
                time.sleep(0.5)  # another worker created the tables at the same moment: open them
                continue
            raise StudyError(f"--storage {shown_url(url)}: cannot open it ({_first_line(exc)})") from None
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class Terms:
    """What makes two trials comparable, stored with the study: the space, the config every trial
    shares, the metric and its direction, and the fingerprint of the images the trials see."""

    space: dict[str, Any]
    base: dict[str, Any]
    metric: str
    direction: str
    fingerprint: str = ""
    recipe: dict[str, Any] = field(default_factory=dict)  # the first worker's non-default options: best.toml's start

    def to_dict(self) -> dict[str, Any]:
        return {
            "space": self.space,
            "base": self.base,
            "metric": self.metric,
            "direction": self.direction,
            "fingerprint": self.fingerprint,
            "recipe": self.recipe,
        }


def create(storage: Any, name: str, terms: Terms, sampler: Any, pruner: Any) -> Any:
    """The study `name` (created, or joined with the same terms)."""
    optuna = optuna_module()
    study = optuna.create_study(
        storage=storage,
        study_name=name,
        direction=terms.direction,
        sampler=sampler,
        pruner=pruner,
        load_if_exists=True,
    )
    stored = study.user_attrs.get(ATTR)
    if stored is None:
        study.set_user_attr(ATTR, terms.to_dict())
        return study
    _compare(name, stored, terms.to_dict())
    if study.direction.name.lower() != terms.direction:
        raise StudyError(f"study {name!r} is {study.direction.name.lower()}d; drop --direction or start a new --study")
    return study


def _compare(name: str, stored: dict[str, Any], given: dict[str, Any]) -> None:
    for key in ("metric", "space"):
        if stored.get(key) != given[key]:
            raise StudyError(
                f"study {name!r} searches {key} {json.dumps(stored.get(key))}, not {json.dumps(given[key])}; "
                f"run it with the same --{key} or start a new study (--study NAME)"
            )
    base, theirs = given["base"], stored.get("base", {})
    for key in sorted(set(base) | set(theirs)):
        if base.get(key) != theirs.get(key):
            raise StudyError(
                f"study {name!r} trains its trials with {key} = {theirs.get(key)!r}, not {base.get(key)!r}; "
                f"give the study's options (cnnctl tune --show DIR lists them) or start a new study (--study NAME)"
            )


def agree_on_data(study: Any, name: str, fingerprint: str) -> None:
    """The images this worker's trials would see are the study's (its first worker recorded them)."""
    terms = dict(study.user_attrs.get(ATTR, {}))
    if not terms.get("fingerprint"):
        terms["fingerprint"] = fingerprint
        study.set_user_attr(ATTR, terms)
    elif terms["fingerprint"] != fingerprint:
        raise StudyError(
            f"the data changed since study {name!r} began (its trials were trained and judged on other images "
            f"or another split); start a new study (--study NAME) on the data as it is now"
        )


def load(storage: Any, name: str) -> Any:
    optuna = optuna_module()
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
        raise StudyError(f"no study {name!r} in this storage (it holds: {', '.join(names) or 'none'})") from None


def counts(study: Any) -> tuple[int, int]:
    """(finished, running) trials: finished ones completed or were pruned."""
    finished = running = 0
    for t in study.get_trials(deepcopy=False):
        if t.state.name in FINISHED:
            finished += 1
        elif t.state.name == "RUNNING":
            running += 1
    return finished, running


def ahead_of(study: Any, number: int) -> int:
    """Trials before trial `number` that finished or still run: a trial with `trials` of those ahead
    of it would make one too many (workers that asked at the same moment)."""
    return sum(
        1 for t in study.get_trials(deepcopy=False) if t.number < number and t.state.name in (*FINISHED, "RUNNING")
    )


def fail_stale(study: Any) -> None:
    """Trials whose worker stopped beating (killed) marked failed (RDB storages; a no-op otherwise)."""
    optuna = optuna_module()
    optuna.storages.fail_stale_trials(study)


def check_pointer(out: Path, url: str, name: str) -> None:
    """A folder holds one study: another study's trials would overwrite its run directories (trial-NNNN)."""
    if (out / STUDY_FILE).is_file():
        storage, study = read_pointer(out)
        if (storage, study) != (shown_url(url), name):
            raise StudyError(
                f"{out} holds study {study!r} on {storage}, whose trials would be overwritten; "
                f"give this study another --out"
            )


def write_pointer(out: Path, url: str, name: str) -> None:
    """study.json: how `cnnctl tune --show DIR` (and the next worker) finds the study."""
    from cnnctl.io import write_json

    write_json(out / STUDY_FILE, {"storage": shown_url(url), "study": name})


def read_pointer(out: Path) -> tuple[str, str]:
    from cnnctl.io import read_json

    d = read_json(out / STUDY_FILE, UsageError, f"{out} is not a cnnctl tune folder (no {STUDY_FILE})")
    return str(d["storage"]), str(d["study"])


@dataclass(frozen=True)
class TrialRow:
    number: int
    state: str
    params: dict[str, Any]
    value: float | None
    run_dir: str | None
    epochs: int
    seconds: float | None
    note: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "state": self.state.lower(),
            "params": self.params,
            "value": self.value,
            "run_dir": self.run_dir,
            "epochs": self.epochs,
            "seconds": self.seconds,
            **({"note": self.note} if self.note else {}),
        }


def rows(study: Any) -> list[TrialRow]:
    """Every trial but the surplus ones (asked at the same moment as the last, never trained)."""
    out = []
    for t in study.get_trials(deepcopy=False):
        if t.user_attrs.get("surplus"):
            continue
        seconds = (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete else None
        value = t.value if t.value is not None and math.isfinite(t.value) else None
        note = t.user_attrs.get("error") or {
            "PRUNED": f"after epoch {max(t.intermediate_values, default=0)}",
            "FAIL": "its worker stopped without a word (killed, or lost its storage)",
        }.get(t.state.name, "")
        epochs = int(max(t.intermediate_values)) if t.intermediate_values else 0
        out.append(
            TrialRow(t.number, t.state.name, dict(t.params), value, t.user_attrs.get("run_dir"), epochs, seconds, note)
        )
    return out


def ranked(study: Any, trials: list[TrialRow]) -> list[TrialRow]:
    """Completed trials best first, then the pruned (by their last value), then the rest by number."""
    sign = -1.0 if study.direction.name == "MAXIMIZE" else 1.0

    def key(r: TrialRow) -> tuple[int, float, int]:
        group = {"COMPLETE": 0, "PRUNED": 1}.get(r.state, 2)
        return group, sign * r.value if r.value is not None else math.inf, r.number

    return sorted(trials, key=key)


def importances(study: Any) -> tuple[dict[str, float] | None, str]:
    """Optuna's parameter importances (its default evaluator) over the completed trials, or why not."""
    optuna = optuna_module()
    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    if len(complete) < 3:
        return None, f"parameter importances need 3 completed trials ({len(complete)} so far)"
    try:
        return {k: round(float(v), 4) for k, v in optuna.importance.get_param_importances(study).items()}, ""
    except (RuntimeError, ValueError) as exc:  # e.g. every completed trial took the same values
        return None, f"parameter importances: {_first_line(exc)}"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


def run_dir_name(number: int) -> str:
    return f"trial-{number:04d}"
