"""Teacher and student side by side, as they would be deployed: both exported to ONNX (the
student's verified export is RUN/model.onnx; a PyTorch teacher is exported to RUN/teacher.onnx),
scored by `cnnctl eval`'s evaluate() on the data's test photos (each decoded in its own
preprocessing), and timed in onnxruntime on this machine (batch-1 p50/p99, batch-32 throughput)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from cnnctl.errors import CnnctlError

Log = Callable[[str], None]
REPORT_FILE = "distill.json"


def onnx_params(path: Path) -> int:
    """Weights in an ONNX file: the elements of its initializers."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    total = 0
    for init in model.graph.initializer:
        n = 1
        for d in init.dims:
            n *= int(d)
        total += n
    return total


def _score(target: Path, data: str, reading: Any, log: Log) -> tuple[dict[str, Any] | None, str]:
    """(accuracy or mAP on the test split, None with the reason where there is none)."""
    from cnnctl.evaluate.report import EvalOptions, run_eval

    try:
        ev = run_eval(str(target), EvalOptions(data=data, split="test", provider="cpu", top_losses=0, reading=reading))
    except CnnctlError as exc:
        return None, str(getattr(exc, "message", exc))
    if "map" in ev:
        return {"metric": "map", "value": ev["map"], "images": ev["images"]}, ""
    return {"metric": "acc", "value": ev["top1"], "images": ev["images"]}, ""


def compare(
    student_run: Path, teacher: Any, data: str, reading: Any, *, threads: int, seconds: float, log: Log
) -> dict[str, Any]:
    """The report (also written to RUN/distill.json)."""
    from cnnctl import machine
    from cnnctl.distill.latency import time_file
    from cnnctl.export.onnx import export
    from cnnctl.io import write_json

    s_onnx = Path(export(str(student_run), log=log)["output"])
    t_onnx = (
        teacher.path
        if teacher.kind == "onnx"
        else Path(export(str(teacher.path), str(student_run / "teacher.onnx"), log=log)["output"])
    )
    rows: dict[str, Any] = {}
    for who, path in (("teacher", t_onnx), ("student", s_onnx)):
        from cnnctl.runtime import modelfile

        meta = modelfile.read(path)
        log(f"report: timing the {who} ({path}) in onnxruntime")
        timing = time_file(path, meta.model, onnx_params(path), batch=1, threads=threads, seconds=seconds)
        score, why = _score(path, data, reading, log)
        rows[who] = {
            "model": meta.model,
            "input": list(meta.input_shape),
            "onnx": str(path),
            "test": score,
            **({"test_missing": why} if score is None else {}),
            **timing.to_dict(),
        }
    t, s = rows["teacher"], rows["student"]
    report: dict[str, Any] = {
        **rows,
        "latency_ratio": s["p50_ms"] / t["p50_ms"] if t["p50_ms"] else None,
        "points": 100 * (s["test"]["value"] - t["test"]["value"]) if s["test"] and t["test"] else None,
        "machine": machine.cpu_info().describe(),
        "threads": threads or "onnxruntime default",
    }
    write_json(student_run / REPORT_FILE, report)
    return report
