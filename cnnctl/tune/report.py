"""What a study says to a person and to a script: the ranked table's rows, the JSON summary,
best.toml (a recipe that reproduces the best trial), and a picture of its history and importances."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from cnnctl.tune import study as studies

BEST_FILE = "best.toml"
PLOT_FILE = "tune.png"


def summary(study: Any, name: str) -> dict[str, Any]:
    """`cnnctl tune --json`: {"study", "metric", "direction", "best", "finished", "trials",
    "importances"}; what best.toml and the plot are made from."""
    terms = study.user_attrs.get(studies.ATTR, {})
    rows = studies.ranked(study, studies.rows(study))
    best = rows[0] if rows and rows[0].state == "COMPLETE" else None
    found, why = studies.importances(study)
    return {
        "study": name,
        "metric": terms.get("metric"),
        "direction": study.direction.name.lower(),
        "best": best.to_dict() if best else None,
        "finished": sum(1 for r in rows if r.state in studies.FINISHED),
        "trials": [r.to_dict() for r in rows],
        "importances": found,
        **({"importances_note": why} if why else {}),
        "space": terms.get("space", {}),
        "recipe": terms.get("recipe", {}),
    }


def best_recipe(info: dict[str, Any]) -> str | None:
    """best.toml's text: the study's options, then the best trial's values (None before one completed)."""
    best, name = info["best"], info["study"]
    if best is None:
        return None
    values = {**info["recipe"], **best["params"]}
    lines = [
        f"# The best trial of study {name!r}: trial {best['number']}, {info['metric']} {best['value']:.4f} on the "
        f"validation split ({info['finished']} finished trials).",
        f"# Measured here: {info['metric']} {best['value']:.4f} (trial {best['number']}, {best['run_dir']}).",
        "# Made by `cnnctl tune`; run: cnnctl train --recipe best.toml (this file), then cnnctl eval RUN --split test.",
        f"# Searched: {', '.join(info['space'])}.",
    ]
    lines += [f"{k} = {_toml(v)}" for k, v in values.items()]
    return "\n".join(lines) + "\n"


def write_best(info: dict[str, Any], out: Path) -> Path | None:
    from cnnctl.io import write_bytes

    text = best_recipe(info)
    if text is None:
        return None
    write_bytes(out / BEST_FILE, text.encode())
    return out / BEST_FILE


def _toml(value: Any) -> str:
    """A recipe's scalar as TOML (strings as JSON strings are TOML basic strings)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else json.dumps(str(value))
    if isinstance(value, int):
        return str(value)
    return json.dumps(str(value))


def plot(info: dict[str, Any], path: Path) -> str:
    """The optimisation history and the importances as one PNG (evaluate/plots.py); returns why
    not where matplotlib (the `plot` extra) is missing or no trial has a value yet."""
    from cnnctl.errors import UsageError
    from cnnctl.evaluate.plots import plot_study

    trials = sorted((r for r in info["trials"] if r["value"] is not None), key=lambda r: r["number"])
    if not trials:
        return "no plot: no trial has a value yet"
    try:
        maximize = info["direction"] == "maximize"
        plot_study(trials, info["importances"] or {}, info["metric"], maximize, path, info["study"])
    except UsageError as exc:
        return f"no plot: {exc.message}"
    return ""
