"""Reading and writing the `Metadata` of a model file, whichever its kind. Torch-free.

A cnnctl model file is a `.safetensors` checkpoint (the metadata in its header's `__metadata__`)
or an `.onnx` export (the metadata in `metadata_props`); both hold the same string -> JSON-string
map (runtime/metadata.py). This module is the one place that knows where each kind keeps it:
`read` for any file, `write` to replace it in place, atomically, leaving the tensors untouched.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any

from cnnctl.errors import CheckpointError
from cnnctl.io import atomic_path
from cnnctl.runtime.metadata import Metadata

MAX_HEADER = 100 * 1024 * 1024

ONNX_SUFFIX = ".onnx"


def read(path: str | os.PathLike[str]) -> Metadata:
    """The validated metadata of a `.safetensors` or `.onnx` model file."""
    p = Path(path)
    if p.suffix == ONNX_SUFFIX:
        return Metadata.from_json_map(_onnx_props(p), str(p))
    _, raw = safetensors_header(p)
    return Metadata.from_json_map(raw, str(p))


def write(path: str | os.PathLike[str], meta: Metadata) -> None:
    """Replace the metadata of a model file with `meta`, atomically; weights stay byte for byte.

    A checkpoint keeps the keys of its own that `meta` does not describe (last.safetensors' loop
    and optimizer state); an ONNX file gets exactly `meta`.
    """
    p = Path(path)
    if p.suffix == ONNX_SUFFIX:
        import onnx

        model = onnx.load(str(p))
        set_onnx_metadata(model, meta)
        with atomic_path(p) as tmp:
            onnx.save(model, str(tmp))
    else:
        _write_safetensors(p, meta)


def safetensors_header(path: str | Path) -> tuple[dict[str, Any], dict[str, str]]:
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
        raise CheckpointError(
            f"{p} is a directory; give a run directory with model.safetensors or a .safetensors file"
        ) from None
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


def from_session(session: Any, source: str) -> Metadata:
    """The metadata of an ONNX file already open in onnxruntime (its custom metadata map),
    validated, with the graph's input and output names checked."""
    meta = Metadata.from_json_map(dict(session.get_modelmeta().custom_metadata_map), source)
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if [i.name for i in inputs] != ["input"] or "logits" not in [o.name for o in outputs]:
        raise CheckpointError(f"{source}: expected input 'input' and output 'logits'; re-export it with cnnctl export")
    return meta


def _onnx_props(path: Path) -> dict[str, str]:
    import onnx

    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - protobuf raises its own types for damaged files
        raise CheckpointError(
            f"{path} is not a loadable ONNX model ({str(exc).strip()[:200] or type(exc).__name__})"
        ) from None
    return {prop.key: prop.value for prop in model.metadata_props}


def set_onnx_metadata(model: Any, meta: Metadata) -> None:
    """Put `meta` into a loaded ONNX ModelProto's metadata_props (replacing what was there) and
    name the model in its doc string; the export writes the proto after onnx.checker passes."""
    del model.metadata_props[:]
    for key, value in meta.to_json_map().items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    model.doc_string = f"cnnctl export of {meta.model} ({', '.join(meta.class_names[:10])})"


def _write_safetensors(path: Path, meta: Metadata) -> None:
    """Rewrite the header of a safetensors file: [8-byte length][JSON header, space-padded to 8
    bytes][tensor bytes]. The tensor offsets are relative to the end of the header, so the bytes
    after it are copied as they are."""
    index, raw = safetensors_header(path)
    raw = {**raw, **meta.to_json_map()}
    with open(path, "rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        fh.seek(8 + n)
        body = fh.read()
    header: dict[str, Any] = {"__metadata__": raw, **index}
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as out:
            out.write(struct.pack("<Q", len(encoded)))
            out.write(encoded)
            out.write(body)
