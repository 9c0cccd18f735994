"""The self-describing metadata carried by checkpoints and ONNX files. Torch-free.

Safetensors `__metadata__` and ONNX `metadata_props` are both string -> string maps: each key
holds a JSON document. The same keys, with the same values, are in both files, so eval, export,
predict and serve need nothing but the one file. `Metadata` is the one typed form: every writer
builds one, every reader gets one from `Metadata.from_json_map`, which validates. See
docs/formats.md.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from cnnctl.errors import CheckpointError
from cnnctl.runtime.preprocess import Preprocess

FORMAT = 1
REQUIRED = ("format", "model", "input_shape", "num_classes", "class_names", "preprocess")
KINDS = ("model", "last")  # model.safetensors (and exports of it), last.safetensors


@dataclass(frozen=True)
class DataInfo:
    """Where the model's images came from, so `cnnctl eval` finds them again."""

    name: str  # a named set (mnist, cifar10, ...), an absolute folder path, or an absolute label file
    data_dir: str = ""
    val_split: float = 0.1
    fingerprint: str = ""
    labels: dict[str, str] | None = None  # a label file's reading options (image_root, path/label column, delim)


@dataclass(frozen=True)
class TrainingInfo:
    """The epoch a checkpoint holds, its metrics, and which weights (the model or its --ema average)."""

    epoch: int
    metrics: dict[str, float] = field(default_factory=dict)
    weights: str = "model"


@dataclass(frozen=True)
class ExportInfo:
    """How an ONNX file was made from its checkpoint."""

    exporter: str
    opset: int
    source_sha256: str
    versions: dict[str, str] = field(default_factory=dict)  # cnnctl/torch/python at export time
    quantization: str | None = None
    input_dtype: str = "float32"  # "float32": normalised NCHW floats; "uint8": raw pixels, normalised inside the graph
    input_layout: str = "NCHW"  # "NHWC" or "NCHW" (uint8 inputs only may be NHWC)
    precision: str = "float32"  # the graph's weights and activations: "float32" or "float16"

    def __post_init__(self) -> None:
        if (
            self.input_dtype not in INPUT_DTYPES
            or self.input_layout not in ("NCHW", "NHWC")
            or self.precision not in PRECISIONS
        ):
            raise ValueError(f"input {self.input_dtype}/{self.input_layout}, precision {self.precision}")
        if self.input_dtype == "float32" and self.input_layout != "NCHW":
            raise ValueError("a float32 input is NCHW")


INPUT_DTYPES = ("float32", "uint8")
PRECISIONS = ("float32", "float16")


@dataclass(frozen=True)
class Metadata:
    """The one self-describing record of a model file (checkpoint or ONNX); docs/formats.md.

    Written as a flat string -> JSON-string map (format 1, the layout every cnnctl file has had):
    the sections' fields are top-level keys (`epoch`, `metrics`, `weights`; `exporter`, `opset`,
    `source_sha256`, `quantization`; export versions under `versions.export`), so files written
    before this class existed load unchanged.
    """

    model: str
    input_shape: tuple[int, int, int]
    class_names: tuple[str, ...]
    preprocess: Preprocess
    data: DataInfo | None = None
    versions: dict[str, str] = field(default_factory=dict)  # cnnctl/torch/python at training time
    kind: str = "model"
    training: TrainingInfo | None = None
    export: ExportInfo | None = None
    temperature: float | None = None  # `cnnctl calibrate`: probabilities are softmax(logits / temperature)
    task: str = "single"  # "single": softmax, one class; "multilabel": a sigmoid per class, label sets
    thresholds: tuple[float, ...] | None = None  # multilabel: each class's decision threshold (tuned on val)
    # `cnnctl distill`: the teacher it learned from (model, file, sha256, alpha, temperature)
    teacher: dict[str, Any] | None = None
    # `--track mlflow`: the tracking run it came from (tracker, uri, experiment_id, run_id)
    tracking: dict[str, str] | None = None

    @property
    def multilabel(self) -> bool:
        return self.task == "multilabel"

    def decision_thresholds(self) -> tuple[float, ...]:
        """Each class's threshold on its probability (1/2 where none were tuned)."""
        return self.thresholds if self.thresholds is not None else (0.5,) * self.num_classes

    @property
    def scale(self) -> float:
        """What logits are divided by before the softmax (1 when not calibrated)."""
        return self.temperature or 1.0

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def replace(self, **changes: Any) -> Metadata:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """The flat JSON-ready dict (what `to_json_map` encodes; serve's `/metadata`)."""
        out: dict[str, Any] = {
            "format": FORMAT,
            "kind": self.kind,
            "model": self.model,
            "input_shape": list(self.input_shape),
            "num_classes": self.num_classes,
            "class_names": list(self.class_names),
            "preprocess": self.preprocess.to_dict(),
            "versions": dict(self.versions),
        }
        if self.data is not None:
            out["data"] = {k: v for k, v in dataclasses.asdict(self.data).items() if k != "labels" or v}
        if self.training is not None:
            out.update(epoch=self.training.epoch, metrics=dict(self.training.metrics), weights=self.training.weights)
        if self.export is not None:
            e = self.export
            out.update(exporter=e.exporter, opset=e.opset, source_sha256=e.source_sha256)
            out["versions"] = {**out["versions"], "export": dict(e.versions)}
            if e.quantization:
                out["quantization"] = e.quantization
            out.update(input_dtype=e.input_dtype, input_layout=e.input_layout, precision=e.precision)
        if self.temperature is not None:
            out["temperature"] = self.temperature
        if self.multilabel:
            out["task"] = self.task
        if self.thresholds is not None:
            out["thresholds"] = list(self.thresholds)
        if self.teacher is not None:
            out["teacher"] = dict(self.teacher)
        if self.tracking is not None:
            out["tracking"] = dict(self.tracking)
        return out

    def to_json_map(self, **extra: Any) -> dict[str, str]:
        """{key: JSON string} for safetensors `__metadata__` / ONNX `metadata_props`; `extra`
        adds keys of the file's own (last.safetensors' loop and optimizer state)."""
        return {k: json.dumps(v, sort_keys=True) for k, v in {**self.to_dict(), **extra}.items()}

    @classmethod
    def from_json_map(cls, raw: dict[str, str] | None, source: str) -> Metadata:
        """Parse and validate; anything wrong is one CheckpointError naming the file and the field."""
        return cls.from_dict(_parse(raw, source), source)

    @classmethod
    def from_dict(cls, meta: dict[str, Any], source: str) -> Metadata:
        missing = [k for k in REQUIRED if k not in meta]
        if missing:
            raise CheckpointError(f"{source}: metadata lacks {', '.join(missing)}; the file is damaged or not cnnctl's")
        if meta["format"] != FORMAT:
            raise CheckpointError(
                f"{source}: metadata format {meta['format']!r} is not supported (this cnnctl reads {FORMAT}); upgrade cnnctl"
            )
        shape, classes, names = meta["input_shape"], meta["num_classes"], meta["class_names"]
        if not (
            isinstance(shape, list) and len(shape) == 3 and all(isinstance(s, int) and 0 < s <= 32768 for s in shape)
        ):
            raise CheckpointError(f"{source}: metadata input_shape {shape!r} is not [C, H, W]")
        if not (isinstance(classes, int) and 0 < classes <= 1_000_000):
            raise CheckpointError(f"{source}: metadata num_classes {classes!r} is invalid")
        if not (isinstance(names, list) and len(names) == classes and all(isinstance(n, str) for n in names)):
            raise CheckpointError(f"{source}: metadata class_names does not list {classes} names")
        if not isinstance(meta["model"], str):
            raise CheckpointError(f"{source}: metadata model is malformed")
        if meta.get("model_kwargs"):  # files before 0.2 wrote {} here; no cnnctl ever wrote arguments
            raise CheckpointError(
                f"{source}: metadata model_kwargs {meta['model_kwargs']!r}: models with factory arguments are not supported"
            )
        if not isinstance(meta["preprocess"], dict):
            raise CheckpointError(f"{source}: metadata preprocess is malformed")
        try:
            prep = Preprocess.from_dict(meta["preprocess"])
        except Exception as exc:  # noqa: BLE001 - any malformed preprocessing is a damaged file
            raise CheckpointError(f"{source}: {getattr(exc, 'message', exc)}") from None
        if [prep.channels, *prep.size] != shape:
            raise CheckpointError(f"{source}: preprocess size does not match input_shape {shape}")
        try:
            versions = {str(k): v for k, v in (meta.get("versions") or {}).items()}
            export_versions = versions.pop("export", None)
            data_info, training, export = _sections(meta, dict(export_versions or {}))
        except (AttributeError, TypeError, ValueError) as exc:
            raise CheckpointError(
                f"{source}: metadata data/training/export fields are malformed ({exc}); the file is damaged"
            ) from None
        temperature = meta.get("temperature")
        if temperature is not None and not (isinstance(temperature, (int, float)) and 0.01 <= temperature <= 100):
            raise CheckpointError(
                f"{source}: metadata temperature {temperature!r} is not a number in [0.01, 100]; recalibrate (cnnctl calibrate)"
            )
        kind = meta.get("kind", "model")
        task, thresholds = _task(meta, classes, source)
        teacher = meta.get("teacher")
        if teacher is not None and not isinstance(teacher, dict):
            raise CheckpointError(f"{source}: metadata teacher {teacher!r} is not a record; the file is damaged")
        tracking = meta.get("tracking")
        if tracking is not None and not (
            isinstance(tracking, dict) and all(isinstance(v, str) for v in tracking.values())
        ):
            raise CheckpointError(f"{source}: metadata tracking {tracking!r} is not a record; the file is damaged")
        return cls(
            model=meta["model"],
            input_shape=(shape[0], shape[1], shape[2]),
            class_names=tuple(names),
            preprocess=prep,
            data=data_info,
            versions=versions,
            kind=kind if kind in KINDS else "model",
            training=training,
            export=export,
            temperature=float(temperature) if temperature is not None else None,
            task=task,
            thresholds=thresholds,
            teacher=dict(teacher) if teacher is not None else None,
            tracking={str(k): v for k, v in tracking.items()} if tracking is not None else None,
        )


TASKS = ("single", "multilabel")


def _task(meta: dict[str, Any], classes: int, source: str) -> tuple[str, tuple[float, ...] | None]:
    """The file's task and, for multi-label, its per-class thresholds, validated."""
    task = meta.get("task", "single")
    if task not in TASKS:
        raise CheckpointError(f"{source}: metadata task {task!r} is not one of {', '.join(TASKS)}; upgrade cnnctl")
    raw = meta.get("thresholds")
    if raw is None:
        return task, None
    if not (
        isinstance(raw, list)
        and len(raw) == classes
        and all(isinstance(t, (int, float)) and not isinstance(t, bool) and 0 <= t <= 1 for t in raw)
    ):
        raise CheckpointError(f"{source}: metadata thresholds must be {classes} numbers in [0, 1]; the file is damaged")
    return task, tuple(float(t) for t in raw)


def _sections(
    meta: dict[str, Any], export_versions: dict[str, str]
) -> tuple[DataInfo | None, TrainingInfo | None, ExportInfo | None]:
    """The optional sections of a flat metadata dict; malformed values raise TypeError/ValueError."""
    data = meta.get("data")
    data_info = None
    if isinstance(data, dict) and data.get("name"):
        data_info = DataInfo(
            name=str(data["name"]),
            data_dir=str(data.get("data_dir", "")),
            val_split=float(data.get("val_split", 0.1)),
            fingerprint=str(data.get("fingerprint", "")),
            labels={str(k): str(v) for k, v in data["labels"].items()} if data.get("labels") else None,
        )
    training = None
    if "epoch" in meta:
        training = TrainingInfo(
            epoch=int(meta["epoch"]),
            metrics={str(k): v for k, v in (meta.get("metrics") or {}).items()},
            weights=str(meta.get("weights", "model")),
        )
    export = None
    if "exporter" in meta:
        export = ExportInfo(
            exporter=str(meta["exporter"]),
            opset=int(meta.get("opset", 0)),
            source_sha256=str(meta.get("source_sha256", "")),
            versions=export_versions,
            quantization=meta.get("quantization"),
            input_dtype=str(meta.get("input_dtype", "float32")),
            input_layout=str(meta.get("input_layout", "NCHW")),
            precision=str(meta.get("precision", "float32")),
        )
    return data_info, training, export


def _parse(raw: dict[str, str] | None, source: str) -> dict[str, Any]:
    """{key: JSON string} -> {key: value}."""
    if not raw or "format" not in raw:
        raise CheckpointError(f"{source} has no cnnctl metadata; was it written by `cnnctl train` or `cnnctl export`?")
    meta: dict[str, Any] = {}
    for key, value in raw.items():
        try:
            meta[key] = json.loads(value)
        except (TypeError, ValueError):
            raise CheckpointError(f"{source}: metadata field {key!r} is not valid JSON; the file is damaged") from None
    return meta
