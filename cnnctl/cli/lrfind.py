"""`cnnctl lr-find MODEL [train options]`: the learning-rate range test; nothing is kept."""

from __future__ import annotations

from typing import Any, Optional

import typer

from cnnctl.cli.train import _FIXED, _RUN, _START, config_signature

_OWN = {
    "recipe": _FIXED["recipe"],
    "start_lr": (float, typer.Option("--start-lr", help="The first rate of the range.", rich_help_panel=_RUN)),
    "end_lr": (float, typer.Option("--end-lr", help="The last rate of the range.", rich_help_panel=_RUN)),
    "steps": (
        int,
        typer.Option(
            "--steps",
            help="Optimizer steps over the range (100 is usual; more for a smoother curve).",
            rich_help_panel=_RUN,
        ),
    ),
    "plot": (
        Optional[str],
        typer.Option("--plot", help="Draw the curve with the suggestions into this .png file.", rich_help_panel=_RUN),
    ),
    "output": (
        Optional[str],
        typer.Option("--output", help="Write the curve and suggestions as JSON to this file.", rich_help_panel=_RUN),
    ),
    "json_": (
        bool,
        typer.Option("--json", help="Print the curve and suggestions as JSON on stdout.", rich_help_panel=_RUN),
    ),
}
_DEFAULTS = {"start_lr": 1e-7, "end_lr": 10.0, "steps": 100}
# Train options lr-find has no use for: it sweeps the rate itself over --steps steps, validates
# nothing, keeps nothing, and runs every step through the model. Given on the command line, they
# are refused rather than ignored (a recipe's values for them are ignored: the recipe is for train).
IGNORED = {
    "lr": "the rate is swept from --start-lr to --end-lr",
    "epochs": "it runs --steps steps",
    "iters": "it runs --steps steps",
    "scheduler": "the rate is swept from --start-lr to --end-lr",
    "warmup": "the rate is swept from --start-lr to --end-lr",
    "step_size": "the rate is swept from --start-lr to --end-lr",
    "gamma": "the rate is swept from --start-lr to --end-lr",
    "patience": "it validates nothing",
    "monitor": "it validates nothing",
    "eval_batch_size": "it validates nothing",
    "time_limit": "it runs --steps steps",
    "log": "it writes no run directory (use --output and --plot)",
    "track": "it writes no run to track (use --output and --plot)",
    "tracking_uri": "it writes no run to track",
    "experiment": "it writes no run to track",
    "feature_cache": "every step runs through the model",
    "feature_views": "every step runs through the model",
    "unfreeze_at": "it runs one sweep of --steps steps",
}


def lr_find_cmd(**kwargs: Any) -> None:
    """Find a learning rate: train briefly while the rate grows from --start-lr to --end-lr,
    and read the loss curve. Takes train's options (the same model, data, optimizer, batch,
    augmentation). The schedule, stopping and logging options are refused (it sweeps the rate itself);
    a recipe's values for them are ignored. No run directory is made.

    Examples:

    $ cnnctl lr-find model-a --data mnist-mini --optimizer adamw --plot lr.png

    $ cnnctl lr-find --recipe cifar10-fast --data cifar10-jpg/ --json
    """
    from cnnctl.cli.common import out, print_json
    from cnnctl.cli.reporter import TrainReporter
    from cnnctl.errors import UsageError
    from cnnctl.train.lrfind import lr_find
    from cnnctl.train.trainer import resolve_run

    model = kwargs.pop("model")
    own = {k: kwargs.pop(k) for k in list(_OWN)}
    given = [k for k in IGNORED if kwargs.get(k) is not None]
    if given:
        flag = "--" + given[0].replace("_", "-")
        raise UsageError(f"lr-find does not use {flag} ({IGNORED[given[0]]}); drop it")
    for k, v in _DEFAULTS.items():
        own[k] = v if own[k] is None else own[k]
    cfg = resolve_run(model, own["recipe"], kwargs, None)
    curve = lr_find(cfg, TrainReporter(bars=False), start=own["start_lr"], end=own["end_lr"], steps=own["steps"])
    report = curve.to_dict()
    if own["output"]:
        from cnnctl.io import write_json

        write_json(own["output"], report)
    if own["plot"]:
        from cnnctl.evaluate.plots import plot_lr_curve

        plot_lr_curve(
            curve.points,
            {
                "suggested (steepest)": curve.steepest_lr,
                "valley (minimum / 10)": curve.valley_lr,
                "minimum": curve.min_loss_lr,
            },
            own["plot"],
            title=f"{curve.model} on {curve.data}, {curve.optimizer}",
        )
    if own["json_"]:
        print_json(report)
        return
    console = out()
    console.print(f"suggested lr {curve.suggested_lr:.3g} ({curve.rule})", highlight=False)
    console.print(
        f"  valley (minimum / 10) {curve.valley_lr:.3g}; smoothed loss lowest at {curve.min_loss_lr:.3g}; "
        f"{len(curve.points)} of {curve.steps_planned} steps ({curve.stopped})",
        highlight=False,
    )
    console.print(
        f"next: cnnctl train ... --lr {curve.suggested_lr:.2g}   (with --scheduler onecycle, --lr is the peak)",
        highlight=False,
    )


lr_find_cmd.__signature__ = config_signature(  # type: ignore[attr-defined]
    {k: ((float | None) if t is float else (int | None) if t is int else t, o) for k, (t, o) in _OWN.items()},
    {"recipe": _START, **{k: _RUN for k in _OWN if k != "recipe"}},
)
lr_find_cmd.__annotations__ = {p.name: p.annotation for p in lr_find_cmd.__signature__.parameters.values()}  # type: ignore[attr-defined]


def register(app: typer.Typer) -> None:
    app.command("lr-find")(lr_find_cmd)
