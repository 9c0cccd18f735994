"""`cnnctl tune MODEL [train options] --space SPACE.toml --trials N --out DIR`: a search on Optuna."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Optional

import typer

from cnnctl.cli.train import _FIXED, _START, config_signature

_TUNE = "Search"


def _option(typ: Any, *flags_and_help: str) -> tuple[Any, Any]:
    """A search option: its type, its flag(s), then its help, in the Search panel of --help."""
    *flags, help_text = flags_and_help
    return typ, typer.Option(*flags, help=help_text, rich_help_panel=_TUNE)


_OWN: dict[str, tuple[Any, Any]] = {
    "recipe": _FIXED["recipe"],
    "space": _option(
        Optional[str],
        "--space",
        "The search space, TOML: lr = { low = 1e-4, high = 1e-1, log = true }, batch_size = [64, 128] "
        "(default: the recipe's [tune.space] table; docs/tune.md).",
    ),
    "trials": _option(
        Optional[int],
        "--trials",
        "Finished trials (completed or pruned) the study should have; a rerun resumes to it (default 20).",
    ),
    "timeout": _option(
        Optional[float],
        "--timeout",
        "Seconds this worker may search; a trial that cannot finish inside them is not started "
        "(--time-limit is each trial's budget).",
    ),
    "metric": _option(
        Optional[str],
        "--metric",
        "What compares trials, on the validation split at the checkpoint each keeps: val_acc, val_loss, "
        "val_map (default: --monitor, else val_map for multi-label, val_acc).",
    ),
    "direction": _option(Optional[str], "--direction", "maximize or minimize (default: the metric's own)."),
    "search_sampler": _option(
        Optional[str],
        "--search-sampler",
        "Optuna's sampler: tpe, random or cmaes (default tpe; seeded by --seed). "
        "(--sampler is train's: how batches are drawn.)",
    ),
    "pruner": _option(
        Optional[str],
        "--pruner",
        "median, hyperband or none: stops trials whose epochs score below the others' (default median).",
    ),
    "storage": _option(
        Optional[str],
        "--storage",
        "Where the study lives: sqlite:///FILE, postgresql://USER@HOST/DB, or a journal file "
        "(journal:PATH) on a shared file system; default DIR/study.db. Workers naming one storage share the study.",
    ),
    "study": _option(Optional[str], "--study", "The study's name in the storage (default: DIR's name)."),
    "startup_trials": _option(
        Optional[int],
        "--startup-trials",
        "Trials drawn at random before the sampler models the results and before the pruner stops any (default 5).",
    ),
    "heartbeat": _option(
        Optional[int],
        "--heartbeat",
        "Seconds between a running trial's heartbeats (database storages); a worker silent for three is "
        "taken as dead and its trial marked failed (default 20).",
    ),
    "out": _option(
        Optional[str],
        "--out",
        "-o",
        "The study folder: a run directory per trial (DIR/trial-NNNN), best.toml, tune.png, study.db.",
    ),
    "show": _option(Optional[str], "--show", "Print the study in this folder and exit (no search)."),
    "json_": _option(bool, "--json", "Print the study as JSON on stdout."),
}
_DEFAULTS = {
    "trials": 20,
    "timeout": 0.0,
    "metric": "auto",
    "direction": "auto",
    "search_sampler": "tpe",
    "pruner": "median",
    "startup_trials": 5,
    "heartbeat": 20,
}


def tune_cmd(**kwargs: Any) -> None:
    """Search train options with Optuna: each trial an ordinary run directory, stopped early by the
    pruner when its epochs score below the others', the study resumable and shared by workers.

    Examples:

    $ cnnctl tune tiny --data photos/ --space space.toml --trials 30 --out tunes/tiny

    $ cnnctl tune --recipe catdog-imagenet --data PetImages --pretrained --space probe.toml --trials 40 --out tunes/probe

    $ cnnctl tune --show tunes/probe --json

    Started again, it resumes the study to --trials; started in N shells or on N machines with one
    --storage, it is N workers. The best trial is written as DIR/best.toml: cnnctl train --recipe DIR/best.toml.
    """
    from cnnctl.errors import UsageError

    model = kwargs.pop("model")
    own = {k: kwargs.pop(k) for k in list(_OWN)}
    if own["show"]:
        given = [k for k in ("space", "trials", "out") if own[k] is not None] + [
            k for k, v in kwargs.items() if v is not None
        ]
        if model or given:
            raise UsageError(f"--show reads a study; drop {'MODEL' if model else '--' + given[0].replace('_', '-')}")
        return _show(Path(own["show"]), own["storage"], own["study"], own["json_"])
    for k, v in _DEFAULTS.items():
        own[k] = v if own[k] is None else own[k]
    if not own["out"]:
        raise UsageError("give the study a folder: --out DIR (its trials' run directories, best.toml, study.db)")
    _search(model, own, kwargs)


def _search(model: str | None, own: dict[str, Any], flags: dict[str, Any]) -> None:
    from cnnctl.errors import CnnctlError
    from cnnctl.train.distributed import Dist
    from cnnctl.tune import report

    dist = Dist.from_env()
    try:
        outcome = _run_search(model, own, flags, dist)
    except CnnctlError as exc:
        raise dist.label(exc) from None  # under torchrun, rank 0 alone says what every rank hit
    if outcome is None:
        return  # a torchrun rank other than 0
    out, log = Path(own["out"]), _log
    info = report.summary(outcome.study, outcome.name)
    best = report.write_best(info, out)
    why = report.plot(info, out / report.PLOT_FILE)
    log(f"stopped: {outcome.stopped}; {outcome.trials_here} trial(s) trained by this worker")
    log(why or f"plot: {out / report.PLOT_FILE}")
    if best is not None:
        log(f"best recipe: {best}  (cnnctl train --recipe {best})")
    _print(info, own["json_"])


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _run_search(model: str | None, own: dict[str, Any], flags: dict[str, Any], dist: Any) -> Any:
    """The space, the config and the settings, checked; then this worker's part of the study."""
    from cnnctl.cli.reporter import QuietReporter, TrainReporter
    from cnnctl.errors import InterruptedRun, UsageError
    from cnnctl.train.trainer import RunInterrupted, resolve_run
    from cnnctl.tune.search import Settings, search
    from cnnctl.tune.space import load_space, recipe_space
    from cnnctl.tune.study import optuna_module

    optuna_module()  # not installed: said before any image is decoded
    space = load_space(own["space"]) if own["space"] else recipe_space(own["recipe"])
    searched = [k for k in space.names if flags.get(k) is not None]
    if searched:
        raise UsageError(f"--{searched[0].replace('_', '-')} is searched by the space ({space.source}); drop the flag")
    if own["trials"] < 1 or own["timeout"] < 0 or own["heartbeat"] < 1 or own["startup_trials"] < 0:
        raise UsageError(
            "--trials and --heartbeat must be at least 1; --timeout and --startup-trials cannot be negative"
        )
    cfg = resolve_run(model, own["recipe"], flags, None)
    space.check(cfg)
    settings = Settings(
        Path(own["out"]),
        own["trials"],
        own["timeout"],
        own["metric"],
        own["direction"],
        own["search_sampler"],
        own["pruner"],
        own["storage"],
        own["study"],
        own["heartbeat"],
        own["startup_trials"],
    )
    reporter = TrainReporter() if dist.is_main else QuietReporter()
    try:
        outcome = search(cfg, space, settings, reporter, dist)
    except (RunInterrupted, KeyboardInterrupt):
        raise InterruptedRun(
            f"interrupted; the study in {settings.out} keeps its finished trials: rerun the same command to resume it"
        ) from None
    finally:
        reporter.close()
    return outcome


def _show(folder: Path, storage: str | None, name: str | None, as_json: bool) -> None:
    from cnnctl.tune import study as studies
    from cnnctl.tune.report import summary

    url, stored_name = (
        studies.read_pointer(folder) if (folder / studies.STUDY_FILE).exists() or not storage else ("", "")
    )
    url = studies.storage_url(storage, folder) if storage else url
    study = studies.load(studies.open_storage(url, 20), name or stored_name or folder.resolve().name)
    _print(summary(study, study.study_name), as_json)


def _print(info: dict[str, Any], as_json: bool) -> None:
    from rich.table import Table

    from cnnctl.cli.common import out, print_json

    if as_json:
        print_json(info)
        return
    table = Table(title=f"study {info['study']}: {info['metric']} ({info['direction']}), {info['finished']} finished")
    for column in ("rank", "trial", "parameters", info["metric"], "epochs", "state", "time"):
        table.add_column(column, justify="right" if column in ("rank", "trial", "epochs", "time") else "left")
    for rank, r in enumerate(info["trials"], 1):
        params = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in r["params"].items())
        value = f"{r['value']:.4f}" if r["value"] is not None else "-"
        state = r["state"] + (f" ({r['note']})" if r.get("note") else "")
        seconds = f"{r['seconds']:.0f} s" if r["seconds"] is not None else "-"
        shown_rank = str(rank) if r["state"] == "complete" else ""
        table.add_row(shown_rank, str(r["number"]), params, value, str(r["epochs"]), state, seconds)
    console = out()
    console.print(table)
    if info["importances"]:
        shown = ", ".join(f"{k} {v:.2f}" for k, v in info["importances"].items())
        console.print(f"importances: {shown}", highlight=False)
    if info["best"]:
        console.print(f"best: trial {info['best']['number']}  {info['best']['run_dir']}", highlight=False)


tune_cmd.__signature__ = config_signature(  # type: ignore[attr-defined]
    _OWN, {"recipe": _START, **{k: _TUNE for k in _OWN if k != "recipe"}}
)
tune_cmd.__annotations__ = {p.name: p.annotation for p in tune_cmd.__signature__.parameters.values()}  # type: ignore[attr-defined]


def register(app: typer.Typer) -> None:
    app.command("tune")(tune_cmd)
