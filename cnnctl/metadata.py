"""The self-describing metadata carried by checkpoints and ONNX files. Torch-free.

Safetensors `__metadata__` and ONNX `metadata_props` are both string -> string maps: each key
holds a JSON document. The same keys, with the same values, are in both files, so eval, export
and predict need nothing but the one file. See docs/formats.md.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

from cnnctl.errors import CheckpointError
from cnnctl.preprocess import Preprocess

FORMAT = 1
REQUIRED = ("format", "model", "input_shape", "num_classes", "class_names", "preprocess")
MAX_HEADER = 100 * 1024 * 1024


def encode(meta: dict[str, Any]) -> dict[str, str]:
    """{key: python value} -> {key: JSON string}."""
    return {k: json.dumps(v, sort_keys=True) for k, v in meta.items()}


def decode(raw: dict[str, str] | None, source: str) -> dict[str, Any]:
    """{key: JSON string} -> validated {key: value}; anything wrong is a CheckpointError."""
    if not raw or "format" not in raw:
        raise CheckpointError(f"{source} has no cnnctl metadata; was it written by `cnnctl train` or `cnnctl export`?")
    meta: dict[str, Any] = {}
    for key, value in raw.items():
        try:
            meta[key] = json.loads(value)
        except (TypeError, ValueError):
            raise CheckpointError(f"{source}: metadata field {key!r} is not valid JSON; the file is damaged") from None
    missing = [k for k in REQUIRED if k not in meta]
    if missing:
        raise CheckpointError(f"{source}: metadata lacks {', '.join(missing)}; the file is damaged or not cnnctl's")
    if meta["format"] != FORMAT:
        raise CheckpointError(f"{source}: metadata format {meta['format']!r} is not supported (this cnnctl reads {FORMAT}); upgrade cnnctl")
    shape, classes, names = meta["input_shape"], meta["num_classes"], meta["class_names"]
    if not (isinstance(shape, list) and len(shape) == 3 and all(isinstance(s, int) and 0 < s <= 32768 for s in shape)):
        raise CheckpointError(f"{source}: metadata input_shape {shape!r} is not [C, H, W]")
    if not (isinstance(classes, int) and 0 < classes <= 1_000_000):
        raise CheckpointError(f"{source}: metadata num_classes {classes!r} is invalid")
    if not (isinstance(names, list) and len(names) == classes and all(isinstance(n, str) for n in names)):
        raise CheckpointError(f"{source}: metadata class_names does not list {classes} names")
    if not isinstance(meta["model"], str) or not isinstance(meta.get("model_kwargs", {}), dict):
        raise CheckpointError(f"{source}: metadata model/model_kwargs are malformed")
    if not isinstance(meta["preprocess"], dict):
        raise CheckpointError(f"{source}: metadata preprocess is malformed")
    try:
        prep = Preprocess.from_dict(meta["preprocess"])
    except Exception as exc:  # noqa: BLE001 - any malformed preprocessing is a damaged file
        raise CheckpointError(f"{source}: {getattr(exc, 'message', exc)}") from None
    if [prep.channels, *prep.size] != shape:
        raise CheckpointError(f"{source}: preprocess size does not match input_shape {shape}")
    return meta


def read_safetensors_header(path: str | Path) -> tuple[dict[str, Any], dict[str, str]]:
    """(tensor index, raw __metadata__) of a .safetensors file, parsed by hand (no torch)."""
    p = Path(path)
    try:
        with open(p, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise CheckpointError(f"{p} is too short to be a safetensors file")
            (n,) = struct.unpack("<Q", head)
            size = p.stat().st_size
            if n > MAX_HEADER or n > size - 8:
                raise CheckpointError(f"{p} is not a valid safetensors file (header length {n} out of range)")
            header = json.loads(fh.read(n))
    except FileNotFoundError:
        raise CheckpointError(f"{p}: no such file") from None
    except IsADirectoryError:
        raise CheckpointError(f"{p} is a directory; give a run directory with model.safetensors or a .safetensors file") from None
    except PermissionError:
        raise CheckpointError(f"{p}: permission denied") from None
    except (ValueError, UnicodeDecodeError):
        raise CheckpointError(f"{p} is not a valid safetensors file (its header is not JSON)") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{p} is not a valid safetensors file")
    raw = header.pop("__metadata__", None) or {}
    if not isinstance(raw, dict) or not all(isinstance(v, str) for v in raw.values()):
        raise CheckpointError(f"{p}: __metadata__ must map strings to strings")
    return header, raw


def read_checkpoint_metadata(path: str | Path) -> dict[str, Any]:
    """Validated cnnctl metadata of a .safetensors checkpoint."""
    _, raw = read_safetensors_header(path)
    return decode(raw, str(path))


def preprocess_of(meta: dict[str, Any]) -> Preprocess:
    return Preprocess.from_dict(meta["preprocess"])
