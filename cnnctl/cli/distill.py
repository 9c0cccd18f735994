"""`cnnctl distill --teacher RUN|MODEL.onnx --student MODEL --data ... [train options]`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Optional

import typer

from cnnctl.cli.train import _FIXED, _RUN, _START, config_signature

_KD = "Distillation"


def _option(typ: Any, *flags_and_help: str) -> tuple[Any, Any]:
    *flags, help_text = flags_and_help
    return typ, typer.Option(*flags, help=help_text, rich_help_panel=_KD)


_OWN: dict[str, tuple[Any, Any]] = {
    **_FIXED,
    "teacher": _option(
        Optional[str], "--teacher", "The teacher: a run directory, its checkpoint, or an exported MODEL.onnx."
    ),
    "student": _option(
        Optional[str],
        "--student",
        "The student: a model, or candidates for --latency-budget-ms (comma-separated MODEL[@SIZE], "
        "wildcards allowed: 'tv:mobilenet_v2@96,tv:mobilenet_v2@128').",
    ),
    "alpha": _option(
        Optional[float],
        "--alpha",
        "The labels' share of the loss; the rest is the teacher's (default 0.5; 1: labels alone).",
    ),
    "temperature": _option(
        Optional[float], "--temperature", "Softens both models' logits in the divergence (default 4)."
    ),
    "unlabeled": _option(Optional[str], "--unlabeled", "A folder of images nobody labelled: the teacher labels them."),
    "latency_budget_ms": _option(
        Optional[float],
        "--latency-budget-ms",
        "Time the candidate students' ONNX exports here and train the largest whose p50 at --batch fits.",
    ),
    "batch": _option(Optional[int], "--batch", "The batch the latency budget is for (default 1)."),
    "report": _option(
        Optional[bool],
        "--report/--no-report",
        "After training: export both, score them on the test photos, time them (default on).",
    ),
}
_PANEL = {k: (_START if k in ("recipe", "resume", "accept_data_change") else _RUN) for k in _FIXED} | {
    k: _KD for k in _OWN if k not in _FIXED
}


def distill_cmd(**kwargs: Any) -> None:
    """Train a small, fast student on what an accurate teacher answers (knowledge distillation).

    Examples:

    $ cnnctl distill --teacher runs/probe --student tv:mobilenet_v2 --weights IMAGENET1K_V1 --image-size 96 --data photos/

    $ cnnctl distill --teacher big.onnx --latency-budget-ms 2 --data photos/ --dry-run

    $ cnnctl distill --teacher runs/probe --student resnet20 --data photos/ --unlabeled more-photos/ --image-size 64

    The loss is alpha * the task loss + (1 - alpha) * T^2 * KL(teacher || student); the teacher sees the
    very view the student learns from, in its own preprocessing. The student is an ordinary run
    directory whose metadata names its teacher (docs/distill.md).
    """
    from cnnctl.errors import UsageError

    model = kwargs.pop("model")
    own = {k: kwargs.pop(k) for k in list(_OWN)}
    if own["student"] and model:
        raise UsageError("name the student once: --student MODEL or the MODEL argument")
    student = own["student"] or model
    if own["resume"]:
        _resume(own, student, kwargs)
        return
    if not own["teacher"]:
        raise UsageError("give the teacher: --teacher RUN_DIR or --teacher MODEL.onnx")
    if own["batch"] is not None and own["batch"] < 1:
        raise UsageError("--batch must be at least 1")
    settings = _settings(
        own
    )  # --alpha, --temperature, --unlabeled, the recipe's [distill]: checked before anything is read
    if own["latency_budget_ms"] is not None:
        student = _choose(student, own, kwargs, settings)
    elif student and ("," in student or any(ch in student for ch in "*?[")):
        raise UsageError("several students named: add --latency-budget-ms MS to choose among them (or name one)")
    elif student and "@" in student:
        student, size = student.split("@", 1)
        kwargs["image_size"] = kwargs["image_size"] or size
    if own["dry_run"]:
        if own["latency_budget_ms"] is None:
            raise UsageError("--dry-run prints the latency table; add --latency-budget-ms MS")
        return
    _train(student, own, kwargs, settings)


def _settings(own: dict[str, Any]) -> Any:
    """--alpha and --temperature <- the recipe's [distill] table <- the defaults (0.5, 4)."""
    from cnnctl.distill.run import Settings, recipe_settings

    table = recipe_settings(own["recipe"])
    alpha = own["alpha"] if own["alpha"] is not None else table.get("alpha", 0.5)
    temperature = own["temperature"] if own["temperature"] is not None else table.get("temperature", 4.0)
    return Settings(own["teacher"], alpha, temperature, own["unlabeled"] or "").checked()


def _resume(own: dict[str, Any], student: str | None, flags: dict[str, Any]) -> None:
    from cnnctl.distill.run import recorded_settings
    from cnnctl.errors import UsageError

    saved = recorded_settings(own["resume"])
    for name in ("teacher", "alpha", "temperature", "unlabeled", "latency_budget_ms"):
        if own[name] is not None and name in saved.to_dict() and own[name] != getattr(saved, name):
            raise UsageError(
                f"--resume {own['resume']} distils with --{name.replace('_', '-')} {getattr(saved, name)}; drop the flag"
            )
    _train(student, own, flags, saved.checked())


def _choose(student: str | None, own: dict[str, Any], flags: dict[str, Any], settings: Any) -> str:
    """Time the candidates (and the teacher) here, print the table, and return the pick (its size
    into flags' image_size)."""
    from cnnctl.distill import latency
    from cnnctl.distill.report import onnx_params
    from cnnctl.distill.teacher import load_teacher
    from cnnctl.specs import parse_image_size

    budget, batch = own["latency_budget_ms"], own["batch"] or 1
    threads = int(flags.get("threads") or 0)
    teacher = load_teacher(own["teacher"])
    candidates = latency.parse_candidates(student or ",".join(latency.SHORTLIST))
    c, h, w = teacher.meta.input_shape
    size = parse_image_size(flags["image_size"]) if flags.get("image_size") else (h, w)
    timings = []
    for cand in candidates:
        _log(f"latency: {cand.label} (export, then onnxruntime at batch {batch})")
        timings.append(
            latency.time_candidate(
                cand, c, size, len(teacher.meta.class_names), batch=batch, threads=threads, seconds=2.0
            )
        )
    chosen = latency.pick(candidates, timings, budget)
    teacher_timing = _teacher_timing(teacher, batch, threads, onnx_params)
    info = {
        "budget_ms": budget,
        "batch": batch,
        "teacher": teacher_timing.to_dict() if teacher_timing else None,
        "candidates": [t.to_dict() for t in timings],
        "chosen": chosen.label,
        "plan": _plan_line(chosen, size, settings),
    }
    # --dry-run: the table is the result (stdout); before training it is the plan (stderr)
    _print_candidates(info, own["json_"] and own["dry_run"], to_stdout=bool(own["dry_run"]))
    if chosen.size is not None:
        flags["image_size"] = f"{chosen.size[0]}x{chosen.size[1]}"
    return chosen.model


def _teacher_timing(teacher: Any, batch: int, threads: int, params_of: Any) -> Any:
    import tempfile

    from cnnctl.distill.latency import time_file
    from cnnctl.export.onnx import export

    _log(f"latency: the teacher {teacher.meta.model} (onnxruntime at batch {batch})")
    if teacher.kind == "onnx":
        return time_file(
            teacher.path,
            "teacher " + teacher.meta.model,
            params_of(teacher.path),
            batch=batch,
            threads=threads,
            seconds=2.0,
        )
    with tempfile.TemporaryDirectory(prefix="cnnctl-teacher-") as tmp:
        path = Path(export(str(teacher.path), str(Path(tmp) / "teacher.onnx"), log=lambda m: None)["output"])
        return time_file(
            path, "teacher " + teacher.meta.model, params_of(path), batch=batch, threads=threads, seconds=2.0
        )


def _plan_line(chosen: Any, size: tuple[int, int], settings: Any) -> str:
    h, w = chosen.size or size
    unlabeled = f", with the unlabeled images of {settings.unlabeled}" if settings.unlabeled else ""
    return (
        f"distill {settings.teacher} into {chosen.model} at {h}x{w}: alpha {settings.alpha:g}, "
        f"temperature {settings.temperature:g}{unlabeled}"
    )


def _print_candidates(info: dict[str, Any], as_json: bool, to_stdout: bool) -> None:
    from rich.table import Table

    from cnnctl import machine
    from cnnctl.cli.common import err, out, print_json

    if as_json:
        print_json(info)
        return
    table = Table(title=f"students at batch {info['batch']} in onnxruntime, {machine.cpu_info().describe()}")
    for col in ("model", "params", "p50 ms", "p99 ms", "img/s @32", "MB", f"<= {info['budget_ms']:g} ms"):
        table.add_column(col, justify="left" if col == "model" else "right")
    rows = ([info["teacher"]] if info["teacher"] else []) + info["candidates"]
    for t in rows:
        fits = "" if t["fits"] is None else ("yes" if t["fits"] else "no")
        mark = "  <- chosen" if t["label"] == info["chosen"] else ""
        table.add_row(
            t["label"] + mark,
            f"{t['params'] / 1e6:.2f}M",
            f"{t['p50_ms']:.2f}",
            f"{t['p99_ms']:.2f}",
            f"{t['throughput']:.0f}",
            f"{t['bytes'] / 2**20:.1f}",
            fits,
        )
    console = out() if to_stdout else err()
    console.print(table)
    console.print(f"plan: {info['plan']}", highlight=False, markup=False)


def _train(student: str | None, own: dict[str, Any], flags: dict[str, Any], settings: Any) -> None:
    from cnnctl.cli.common import print_json
    from cnnctl.cli.train import _render, run_command
    from cnnctl.distill.run import host_for
    from cnnctl.train.distributed import Dist

    dist = Dist.from_env()
    log = _log if dist.is_main else (lambda message: None)  # under torchrun, rank 0 speaks for the job
    summary = run_command("distill", student, own, flags, dist, host_for(settings, log))
    if summary is None:
        return
    records = summary.pop("records")
    report = _report(Path(summary["run_dir"]), settings, flags) if own["report"] is not False else None
    if own["json_"]:
        print_json({"summary": summary, "report": report})
        return
    _render(summary, records)
    if report is not None:
        _print_report(report)


def _report(run_dir: Path, settings: Any, flags: dict[str, Any]) -> dict[str, Any]:
    from cnnctl.data.sources import label_spec
    from cnnctl.distill.report import compare
    from cnnctl.distill.teacher import load_teacher
    from cnnctl.train.trainer import resolve_run

    cfg = resolve_run(None, None, {}, str(run_dir))
    report = compare(
        run_dir,
        load_teacher(settings.teacher),
        cfg.data,
        label_spec(cfg.data_config()),
        threads=int(flags.get("threads") or 0),
        seconds=2.0,
        log=_log,
    )
    if cfg.track != "none":  # distill.json came after the run's tracker closed: send it too
        from cnnctl.errors import CnnctlError
        from cnnctl.track.sync import sync_run

        try:
            sync_run(str(run_dir))
        except CnnctlError as exc:
            _log(f"tracking: the report did not reach MLflow ({exc.message}); later: cnnctl track sync {run_dir}")
    return report


def _print_report(r: dict[str, Any]) -> None:
    from rich.table import Table

    from cnnctl.cli.common import out

    table = Table(title=f"teacher vs student (onnxruntime, batch 1 latency, {r['machine']})")
    for col in ("", "model", "input", "test", "p50 ms", "p99 ms", "img/s @32", "params", "MB"):
        table.add_column(col, justify="left" if col in ("", "model") else "right")
    for who in ("teacher", "student"):
        t = r[who]
        score = f"{t['test']['metric']} {t['test']['value']:.4f}" if t["test"] else "-"
        table.add_row(
            who,
            t["model"],
            "x".join(map(str, t["input"])),
            score,
            f"{t['p50_ms']:.2f}",
            f"{t['p99_ms']:.2f}",
            f"{t['throughput']:.0f}",
            f"{t['params'] / 1e6:.2f}M",
            f"{t['bytes'] / 2**20:.1f}",
        )
    console = out()
    console.print(table)
    parts = [f"latency {r['latency_ratio']:.2f}x the teacher's" if r["latency_ratio"] else ""]
    if r["points"] is not None:
        parts.append(f"{r['points']:+.2f} points")
    else:
        parts.append(f"no test photos to score on ({r['student'].get('test_missing', '')})")
    console.print("student: " + ", ".join(p for p in parts if p), highlight=False, markup=False)


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


distill_cmd.__signature__ = config_signature(_OWN, _PANEL)  # type: ignore[attr-defined]
distill_cmd.__annotations__ = {
    p.name: p.annotation for p in __import__("inspect").signature(distill_cmd).parameters.values()
}


def register(app: typer.Typer) -> None:
    app.command("distill")(distill_cmd)
