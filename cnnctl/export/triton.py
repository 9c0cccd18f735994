"""`cnnctl export --format triton -o REPO`: a Triton Inference Server model repository.

    REPO/NAME/config.pbtxt      onnxruntime backend, max batch size, dynamic batching,
                                input/output names, types and dims read from the exported graph
    REPO/NAME/labels.txt        one class name per line (Triton's classification extension)
                                multi-label models: config.pbtxt's `parameters` add cnnctl_task
                                ("multilabel") and cnnctl_thresholds (one per class, labels.txt's
                                order): a client takes sigmoid(logits) >= threshold (docs/labels.md)
    REPO/NAME/1/model.onnx      the verified cnnctl export, metadata included

The config is written as protobuf text and parsed back with Triton's own model-config schema
(`model_config_pb2`, shipped in `tritonclient`) before anything is put in place; the model folder
is built beside REPO/NAME and renamed into place, so a failed export leaves REPO as it was.
Torch-free (the export itself is done by `cnnctl.export.onnx`).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from cnnctl.errors import ExportError, UsageError
from cnnctl.runtime import modelfile
from cnnctl.runtime.metadata import Metadata

TRITON_TYPES = {"float32": "TYPE_FP32", "uint8": "TYPE_UINT8", "float16": "TYPE_FP16"}
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def model_name(path: str | Path) -> str:
    """A model name for Triton and the Open Inference Protocol, from a run directory or file.

    `runs/pets/model.onnx` -> "pets"; `c10.onnx` -> "c10"; characters Triton's repository
    layout would trip on become "_".
    """
    p = Path(path)
    stem = (
        p.name
        if p.is_dir()
        else (p.parent.name if p.stem in ("model", "best", "last", "model.int8") and p.parent.name else p.stem)
    )
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", stem).lstrip("._-") or "model"
    return name[:128]


def config_text(
    name: str,
    *,
    input_dtype: str,
    input_dims: list[int],
    input_layout: str,
    classes: int,
    max_batch: int,
    max_queue_delay_us: int,
    instances: int,
    kind: str,
    thresholds: tuple[float, ...] | None = None,
) -> str:
    """config.pbtxt for the onnxruntime backend (dims exclude the batch axis, as max_batch_size > 0 requires)."""
    fmt = {"NHWC": "FORMAT_NHWC", "NCHW": "FORMAT_NCHW"}[input_layout]
    lines = [
        f'name: "{name}"',
        'backend: "onnxruntime"',
        f"max_batch_size: {max_batch}",
        "input [",
        "  {",
        '    name: "input"',
        f"    data_type: {TRITON_TYPES[input_dtype]}",
        f"    format: {fmt}",
        f"    dims: [ {', '.join(str(d) for d in input_dims)} ]",
        "  }",
        "]",
        "output [",
        "  {",
        '    name: "logits"',
        "    data_type: TYPE_FP32",
        f"    dims: [ {classes} ]",
        '    label_filename: "labels.txt"',
        "  }",
        "]",
        "dynamic_batching {",
        f"  max_queue_delay_microseconds: {max_queue_delay_us}",
        "}",
    ]
    if thresholds is not None:
        joined = ",".join(f"{t:.6g}" for t in thresholds)
        for key, value in (("cnnctl_task", "multilabel"), ("cnnctl_thresholds", joined)):
            lines += ["parameters {", f'  key: "{key}"', f'  value: {{ string_value: "{value}" }}', "}"]
    if kind != "auto":
        lines += [
            "instance_group [",
            "  {",
            f"    count: {instances}",
            f"    kind: {'KIND_GPU' if kind == 'gpu' else 'KIND_CPU'}",
            "  }",
            "]",
        ]
    return "\n".join(lines) + "\n"


def parse_config(text: str) -> Any:
    """Parse config.pbtxt with Triton's ModelConfig schema; ExportError naming the problem."""
    try:
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2
    except ImportError as exc:
        raise UsageError(
            f"checking a Triton config needs tritonclient (Triton's model-config schema): pip install tritonclient ({exc.name} missing)"
        ) from None
    try:
        return text_format.Parse(text, model_config_pb2.ModelConfig())
    except text_format.ParseError as exc:
        raise ExportError(f"the generated config.pbtxt does not parse with Triton's schema: {exc}") from None


def check_config(cfg: Any, *, name: str, classes: int, input_dims: list[int], input_dtype: str) -> None:
    """What Triton would check when it loads the model (names, types and dims against the graph)."""
    problems = []
    if cfg.name != name or cfg.backend != "onnxruntime" or cfg.max_batch_size < 1:
        problems.append("name/backend/max_batch_size")
    if [i.name for i in cfg.input] != ["input"] or list(cfg.input[0].dims) != input_dims:
        problems.append(f"input dims {list(cfg.input[0].dims) if cfg.input else None} != {input_dims}")
    from tritonclient.grpc import model_config_pb2

    if cfg.input and cfg.input[0].data_type != model_config_pb2.DataType.Value(TRITON_TYPES[input_dtype]):
        problems.append("input data_type")
    if [o.name for o in cfg.output] != ["logits"] or list(cfg.output[0].dims) != [classes]:
        problems.append("output logits dims")
    if problems:
        raise ExportError(f"the generated Triton config disagrees with the model ({'; '.join(problems)})")


def graph_io(onnx_path: Path) -> tuple[Metadata, str, list[int], list[int]]:
    """(cnnctl metadata, input dtype, input dims without batch, output dims without batch), read
    from the ONNX file itself."""
    import onnx

    meta = modelfile.read(onnx_path)
    model = onnx.load(str(onnx_path), load_external_data=False)
    graph = model.graph
    names = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.UINT8: "uint8", onnx.TensorProto.FLOAT16: "float16"}

    def dims(value: Any) -> list[int]:
        return [d.dim_value if d.HasField("dim_value") else -1 for d in value.type.tensor_type.shape.dim]

    inp = next(v for v in graph.input if v.name == "input")
    out = next(v for v in graph.output if v.name == "logits")
    in_dims, out_dims = dims(inp), dims(out)
    if in_dims[0] != -1 or out_dims[0] != -1:
        raise UsageError(
            "a Triton model with dynamic batching needs a dynamic batch axis; export without --dynamic none"
        )
    return meta, names[inp.type.tensor_type.elem_type], in_dims[1:], out_dims[1:]


def write_repository(
    repo: str | Path,
    name: str | None,
    build: Any,
    *,
    max_batch: int = 32,
    max_queue_delay_us: int = 5000,
    instances: int = 1,
    kind: str = "auto",
) -> dict[str, Any]:
    """Lay out REPO/NAME with `build(path)` writing the verified model.onnx; returns the report.

    `build` is called with the path model.onnx must be written to (a staging folder) and
    returns export's report; what goes into config.pbtxt is read back from the written file.
    """
    repo = Path(repo)
    if repo.suffix == ".onnx":
        raise UsageError(f"-o {repo}: --format triton writes a model repository folder; give a folder name")
    if repo.exists() and not repo.is_dir():
        raise UsageError(f"-o {repo} exists and is not a folder")
    if not NAME_RE.match(name or ""):
        raise UsageError(f"--name {name!r}: a Triton model name is letters, digits, '_', '.', '-' (at most 128)")
    assert name is not None
    if not 1 <= max_batch <= 1 << 16:
        raise UsageError(f"--max-batch {max_batch} must be between 1 and 65536")
    if kind not in ("auto", "cpu", "gpu"):
        raise UsageError(f"--instance-kind must be auto, cpu or gpu, got {kind!r}")
    repo.mkdir(parents=True, exist_ok=True)
    final = repo / name
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".partial", dir=repo))
    try:
        (staging / "1").mkdir()
        report = build(staging / "1" / "model.onnx")
        meta, input_dtype, input_dims, output_dims = graph_io(staging / "1" / "model.onnx")
        assert meta.export is not None
        classes = len(meta.class_names)
        if output_dims != [classes]:
            raise ExportError(f"the graph's logits have dims {output_dims}, the model has {classes} classes")
        text = config_text(
            name,
            input_dtype=input_dtype,
            input_dims=input_dims,
            input_layout=meta.export.input_layout,
            classes=classes,
            max_batch=max_batch,
            max_queue_delay_us=max_queue_delay_us,
            instances=instances,
            kind=kind,
            thresholds=meta.decision_thresholds() if meta.multilabel else None,
        )
        parsed = parse_config(text)
        check_config(parsed, name=name, classes=classes, input_dims=input_dims, input_dtype=input_dtype)
        if meta.multilabel and len(parsed.parameters["cnnctl_thresholds"].string_value.split(",")) != classes:
            raise ExportError("the Triton config's cnnctl_thresholds do not list one threshold per class")
        (staging / "config.pbtxt").write_text(text)
        (staging / "labels.txt").write_text("".join(c.replace("\n", " ") + "\n" for c in meta.class_names))
        old = None
        if final.exists():
            old = repo / f".{name}.{os.getpid()}.old"
            os.replace(final, old)
        os.replace(staging, final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    onnx_path = final / "1" / "model.onnx"
    report.update(output=str(onnx_path), bytes=onnx_path.stat().st_size)
    report["triton"] = {
        "repository": str(repo),
        "name": name,
        "config": str(final / "config.pbtxt"),
        "labels": str(final / "labels.txt"),
        "max_batch_size": max_batch,
        "input": {"dtype": input_dtype, "dims": input_dims},
        "classes": classes,
        "task": meta.task,
        "validated_with": "tritonclient model_config_pb2 (protobuf text format)",
    }
    return report


def docker_line(repo: str | Path) -> str:
    return (
        f"docker run --rm -p 8000:8000 -p 8001:8001 -p 8002:8002 -v {Path(repo).resolve()}:/models "
        "nvcr.io/nvidia/tritonserver:<yy.mm>-py3 tritonserver --model-repository=/models"
    )
