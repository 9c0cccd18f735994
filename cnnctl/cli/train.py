"""`cnnctl train MODEL ...`: its flags are generated from `cnnctl.config.TrainConfig`."""

from __future__ import annotations

import inspect
from typing import Annotated, Any, Optional

import typer

from cnnctl.cli.completion import choices, complete_model, complete_recipe
from cnnctl.config import CHOICES, FIELDS, PANEL_OF, PANELS

_START, _RUN = "Model & start", "Run & output"
_FIXED = {
    "recipe": (
        Optional[str],
        typer.Option(
            "--recipe",
            "-r",
            help="A shipped recipe's name (`cnnctl recipes`) or a TOML file; flags given here override it.",
            rich_help_panel=_START,
            autocompletion=complete_recipe,
        ),
    ),
    "resume": (
        Optional[str],
        typer.Option(
            "--resume",
            help="Continue the run in this directory (a larger --epochs extends it).",
            rich_help_panel=_START,
        ),
    ),
    "accept_data_change": (
        bool,
        typer.Option(
            "--accept-data-change",
            help="With --resume: go on although the data folder's files "
            "changed since the run recorded its splits (recorded files keep their split; new ones are dealt "
            "to train/val by a hash of their path; the change is recorded).",
            rich_help_panel=_START,
        ),
    ),
    "out": (
        Optional[str],
        typer.Option("--out", "-o", help="Run directory (default: runs/MODEL-DATA-TIME).", rich_help_panel=_RUN),
    ),
    "overwrite": (
        bool,
        typer.Option("--overwrite", help="Replace the files of an existing --out.", rich_help_panel=_RUN),
    ),
    "json_": (
        bool,
        typer.Option(
            "--json", help="Print one JSON record per epoch and a JSON summary on stdout.", rich_help_panel=_RUN
        ),
    ),
    "dry_run": (
        bool,
        typer.Option(
            "--dry-run",
            help="Set the run up, time a few real steps, print the plan (img/s, time per epoch, epochs "
            "the --time-limit buys, peak memory, hardware choices) and exit; no run directory.",
            rich_help_panel=_RUN,
        ),
    ),
}


def _option(name: str) -> Any:
    """A typer option from a TrainConfig field: its panel, its choices, and one default."""
    f = FIELDS[name]
    flag = "--" + name.replace("_", "-")
    default = f.default
    help_text = f.metadata["help"]
    panel = PANEL_OF[name]
    if "default" not in help_text.lower():  # a help text that explains its default keeps just that
        shown = ("on" if default else "off") if isinstance(default, bool) else (default if default != "" else "auto")
        help_text += f" (default: {shown})"
    if isinstance(default, bool):
        return Optional[bool], typer.Option(
            f"{flag}/--no-{flag[2:]}", help=help_text, show_default=False, rich_help_panel=panel
        )
    metavar = "[" + "|".join(CHOICES[name]) + "]" if name in CHOICES else None
    complete = choices(*CHOICES[name]) if name in CHOICES else None
    return Optional[type(default)], typer.Option(
        flag, help=help_text, show_default=False, metavar=metavar, rich_help_panel=panel, autocompletion=complete
    )


def train(**kwargs: Any) -> None:
    """Train a model: data -> epoch loop -> run directory (safetensors + JSON history).

    Examples:

    $ cnnctl train model-a --data mnist-mini --epochs 3 --out runs/digits

    $ cnnctl train tiny --data photos/ --image-size 64 --augment flip-crop --scheduler onecycle

    $ cnnctl train --recipe cifar10-fast --data cifar10-jpg/

    --batch-size is the batch per optimizer step. Under torchrun (`torchrun --nproc-per-node N
    -m cnnctl train ...`) it is the global batch, split evenly over the N processes; rank 0
    writes the run directory and prints (docs/distributed.md).
    """
    from cnnctl.cli.common import print_json
    from cnnctl.train.distributed import Dist

    model = kwargs.pop("model")
    fixed = {k: kwargs.pop(k) for k in list(_FIXED)}
    dist = Dist.from_env()
    if fixed["dry_run"]:
        return _dry_run(model, fixed, kwargs, dist)
    summary = run_command("train", model, fixed, kwargs, dist)
    if summary is None:
        return
    if fixed["json_"]:
        print_json({"summary": summary})
        return
    _render(summary, summary.pop("records"))


def run_command(
    command: str, model: str | None, fixed: dict[str, Any], flags: dict[str, Any], dist: Any, host_for: Any = None
) -> dict[str, Any] | None:
    """Train through `trainer.train` with the CLI's reporter (`cnnctl train`, `cnnctl distill`):
    Ctrl-C becomes one line naming how to resume; returns the run's summary (with its epoch
    records under "records"), or None on a torchrun rank other than 0."""
    from cnnctl.cli.reporter import QuietReporter, TrainReporter
    from cnnctl.errors import InterruptedRun
    from cnnctl.train.trainer import RunInterrupted
    from cnnctl.train.trainer import train as run_training

    reporter = TrainReporter(json_lines=fixed["json_"]) if dist.is_main else QuietReporter()
    try:
        result = run_training(
            model,
            fixed["recipe"],
            flags,
            out=fixed["out"],
            resume=fixed["resume"],
            overwrite=fixed["overwrite"],
            reporter=reporter,
            dist=dist,
            accept_data_change=fixed["accept_data_change"],
            host_for=host_for,
        )
    except RunInterrupted as exc:
        reporter.close()
        how = (
            f"relaunch the same torchrun command with --resume {exc.run_dir}"
            if dist.enabled
            else f"Resume with: cnnctl {command} --resume {exc.run_dir}"
        )
        interrupted = InterruptedRun(f"interrupted; {exc.run_dir} is consistent at epoch {exc.epoch}. {how}")
        interrupted.quiet = not dist.is_main
        raise interrupted from None
    finally:
        reporter.close()
    if not dist.is_main:
        return None
    return {
        "run_dir": str(result.run_dir),
        "stopped": result.reason,
        "epochs": len(result.epochs),
        "best_epoch": result.best_epoch,
        "best": result.best,
        "test": result.test,
        "records": result.epochs,
    }


def _dry_run(model: str | None, fixed: dict[str, Any], flags: dict[str, Any], dist: Any) -> None:
    from cnnctl.cli.common import print_json
    from cnnctl.cli.reporter import TrainReporter
    from cnnctl.errors import UsageError
    from cnnctl.train.dryrun import dry_run
    from cnnctl.train.trainer import resolve_run

    if dist.enabled:
        raise UsageError(
            "--dry-run plans one process; run it without torchrun (it reports the per-process threads torchrun would get)"
        )
    cfg = resolve_run(model, fixed["recipe"], flags, fixed["resume"])
    plan = dry_run(cfg, TrainReporter(bars=False))
    if fixed["json_"]:
        print_json(plan.to_dict())
    else:
        _render_plan(plan)


def _render_plan(p: Any) -> None:
    from cnnctl.cli.common import out

    d, hw = p.data, p.hardware
    lines = [
        f"plan: {p.model} on {d['name']} ({d['train']:,} train / {d['val']:,} val / {d['test']:,} test images, {d['classes']} classes)",
        f"hardware: {hw['device']}, {hw['cpu']}",
        f"  amp {hw['amp']} ({hw['amp_reason']}); {hw['threads']} thread(s) ({hw['threads_reason']}); "
        f"{'channels_last' if hw['channels_last'] else 'NCHW'}; eval batch {hw['eval_batch_size']} ({hw['eval_batch_reason']})",
        f"speed: {p.train_images_per_s:,.0f} img/s training (batch {p.batch_size}, {p.measured_steps} timed "
        f"step(s) after {p.warmup_steps} warm-up)"
        + (f", {p.eval_images_per_s:,.0f} img/s validation" if p.eval_images_per_s else ""),
        f"epoch: {p.epoch_train_seconds:,.1f} s training ({p.steps_per_epoch} steps) + {p.epoch_eval_seconds:,.1f} s validation "
        f"= {p.epoch_seconds:,.1f} s",
    ]
    if p.time_limit:
        share = p.epochs_in_budget / p.epochs if p.epochs else 0
        warn = (
            "  - less than a quarter of the plan: a longer --time-limit, fewer --epochs or a smaller model"
            if share < 0.25
            else ""
        )
        lines.append(
            f"budget: --time-limit {p.time_limit:g} s buys {p.epochs_in_budget:.1f} epoch(s) of the {p.epochs} planned"
            f"{'; the schedule is fitted to it' if share < 1 else ''}{warn}"
        )
    lines.append(f"total: ~{p.total_seconds:,.0f} s for the run, test pass included")
    lines.append(
        f"peak memory: {p.peak_memory_bytes / 2**30:.2f} GiB ({p.peak_memory_kind}, measured over setup, the "
        "timed steps and validation batches)"
    )
    console = out()
    for line in lines:
        console.print(line, highlight=False, markup=False, soft_wrap=True)


def _render(summary: dict[str, Any], epochs: list[dict[str, Any]]) -> None:
    from cnnctl.cli.common import out

    console = out()
    last = epochs[-1] if epochs else {}
    best = next((r for r in epochs if r["epoch"] == summary["best_epoch"]), last)
    lines = [f"run: {summary['run_dir']}  ({summary['epochs']} epoch(s), stopped: {summary['stopped']})"]
    if "val_acc" in best:
        ema = best.get("weights") == "ema"
        val_acc, val_loss = (best["ema_val_acc"], best["ema_val_loss"]) if ema else (best["val_acc"], best["val_loss"])
        lines.append(
            f"best epoch {best['epoch']}{' (the --ema average)' if ema else ''}: val_acc {val_acc:.4f}  val_loss {val_loss:.4f}  "
            f"train_acc {best['train_acc']:.4f}" + (f"  val_map {best['val_map']:.4f}" if "val_map" in best else "")
        )
        gap = best["train_acc"] - val_acc
        hint = (
            "overfitting" if gap > 0.05 else ("underfitting" if best["train_acc"] < 0.9 and gap < 0.02 else "good fit")
        )
        if "val_map" not in best:  # label accuracy of a multi-label run says little about fit
            lines.append(f"train - val accuracy gap: {gap:+.4f} ({hint})")
    if summary["test"]:
        t = summary["test"]
        multi = f"mAP {t['map']:.4f}  macro F1 {t['macro_f1']:.4f}  label acc" if "map" in t else "acc"
        lines.append(
            f"test: {multi} {t['acc']:.4f}  loss {t['loss']:.4f}  on {t['images']} images (best checkpoint, never used for selection)"
        )
    lines.append(f"next: cnnctl eval {summary['run_dir']}  |  cnnctl export {summary['run_dir']}")
    for line in lines:
        console.print(line, highlight=False)


def config_signature(fixed: dict[str, Any], fixed_panel: dict[str, str]) -> inspect.Signature:
    """MODEL, the command's own options (`fixed`, shown in `fixed_panel`) and every TrainConfig
    field as a flag: one definition for `train` and for the commands that take train's options."""
    params = [
        inspect.Parameter(
            "model",
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
            default=None,
            annotation=Annotated[
                str | None,
                typer.Argument(
                    help="Model name (`cnnctl models`); may come from --recipe or --resume.",
                    show_default=False,
                    autocompletion=complete_model,
                ),
            ],
        )
    ]
    own_panels = list(dict.fromkeys(p for p in fixed_panel.values() if p not in PANELS))  # a command's own, first
    for panel, names in [*((p, ()) for p in own_panels), *PANELS.items()]:  # the panels show in this order
        for name, (typ, opt) in fixed.items():
            if fixed_panel[name] == panel:
                default = False if typ is bool else None
                params.append(
                    inspect.Parameter(
                        name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=Annotated[typ, opt]
                    )
                )
        for name in names:
            if FIELDS[name].metadata["cli"]:
                typ, opt = _option(name)
                params.append(
                    inspect.Parameter(
                        name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[typ, opt]
                    )
                )
    return inspect.Signature(params)


train.__signature__ = config_signature(  # type: ignore[attr-defined]
    _FIXED,
    {
        "recipe": _START,
        "resume": _START,
        "accept_data_change": _START,
        "out": _RUN,
        "overwrite": _RUN,
        "json_": _RUN,
        "dry_run": _RUN,
    },
)
train.__annotations__ = {p.name: p.annotation for p in inspect.signature(train).parameters.values()}


def register(app: typer.Typer) -> None:
    app.command("train")(train)
