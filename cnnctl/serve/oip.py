"""The Open Inference Protocol (KServe V2, Triton's HTTP/REST API) on `cnnctl serve`.

    GET  /v2                                    server metadata (name, version, extensions)
    GET  /v2/health/live  | /v2/health/ready    liveness; readiness = model loaded and warmed
    GET  /v2/models/{name}[/versions/1]         model metadata: inputs, outputs, datatypes, shapes
    GET  /v2/models/{name}[/versions/1]/ready
    POST /v2/models/{name}[/versions/1]/infer   tensors in, tensors out

`infer` takes the model's own input tensor, `input`: FP32 [N, C, H, W] normalised, or UINT8
pixels [N, H, W, C] (or NCHW) for a raw-pixel export. Outputs: `logits` and `probabilities`
(FP32 [N, classes]); `parameters.classification: K` on an output returns Triton's
classification strings "value:index:label" (BYTES [N, K]). Tensor data travels as JSON or with
the binary tensor data extension (`Inference-Header-Content-Length`, `binary_data_size`,
`binary_data`), which is what `tritonclient` sends by default. The codec is plain numpy.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cnnctl.serve.config import HTTPError

HEADER = "inference-header-content-length"
DATATYPES: dict[str, Any] = {
    "BOOL": np.bool_,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
}
OIP_NAME = {"float32": "FP32", "uint8": "UINT8", "float16": "FP16"}
OUTPUTS = ("logits", "probabilities")


@dataclass
class Requested:
    name: str
    binary: bool
    classification: int = 0


@dataclass
class InferRequest:
    id: str | None
    inputs: dict[str, np.ndarray]
    outputs: list[Requested] = field(default_factory=list)


def _bad(message: str) -> HTTPError:
    return HTTPError(400, message)


def _as_bool(value: Any) -> bool:
    return value is True or (isinstance(value, str) and value.lower() == "true")


def decode_request(body: bytes, header_length: str | None) -> InferRequest:
    """Parse an infer request (JSON, optionally followed by binary tensor data)."""
    if header_length is not None:
        if not header_length.isdigit() or int(header_length) > len(body):
            raise _bad(f"Inference-Header-Content-Length {header_length!r} does not fit the {len(body)}-byte body")
        head, blob = body[: int(header_length)], memoryview(body)[int(header_length) :]
    else:
        head, blob = body, memoryview(b"")
    try:
        req = json.loads(head)
    except (ValueError, UnicodeDecodeError):
        raise _bad(
            "the infer request is not JSON; see https://kserve.github.io/website/latest/modelserving/data_plane/v2_protocol/"
        ) from None
    if not isinstance(req, dict) or not isinstance(req.get("inputs"), list) or not req["inputs"]:
        raise _bad('the infer request needs "inputs": [{"name", "shape", "datatype", "data"}]')
    inputs: dict[str, np.ndarray] = {}
    offset = 0
    for spec in req["inputs"]:
        if not isinstance(spec, dict):
            raise _bad("each input must be an object with name, shape, datatype and data")
        name, shape, dtype = spec.get("name"), spec.get("shape"), spec.get("datatype")
        if (
            not isinstance(name, str)
            or not isinstance(shape, list)
            or not all(isinstance(d, int) and d >= 0 for d in shape)
        ):
            raise _bad(f"input {name!r}: needs a name and a shape of non-negative integers")
        if dtype not in DATATYPES:
            raise _bad(f"input {name!r}: datatype {dtype!r} is not a numeric tensor type ({', '.join(DATATYPES)})")
        count = int(np.prod(shape)) if shape else 1
        params = spec.get("parameters") or {}
        size = params.get("binary_data_size") if isinstance(params, dict) else None
        if size is not None:
            if not isinstance(size, int) or size < 0 or offset + size > len(blob):
                raise _bad(f"input {name!r}: binary_data_size {size!r} runs past the {len(blob)} bytes of binary data")
            if size != count * np.dtype(DATATYPES[dtype]).itemsize:
                raise _bad(
                    f"input {name!r}: {size} bytes of binary data for shape {shape} {dtype} "
                    f"(needs {count * np.dtype(DATATYPES[dtype]).itemsize})"
                )
            array = np.frombuffer(
                blob[offset : offset + size], dtype=np.dtype(DATATYPES[dtype]).newbyteorder("<")
            ).reshape(shape)
            offset += size
        else:
            if "data" not in spec:
                raise _bad(f'input {name!r}: no data (give "data" or parameters.binary_data_size)')
            try:
                array = np.asarray(spec["data"], dtype=DATATYPES[dtype])
            except (TypeError, ValueError, OverflowError):
                raise _bad(f"input {name!r}: data is not a list of {dtype} numbers") from None
            if array.size != count:
                raise _bad(f"input {name!r}: {array.size} values for shape {shape} (needs {count})")
            array = array.reshape(shape)
        if name in inputs:
            raise _bad(f"input {name!r} is given twice")
        inputs[name] = array
    if offset != len(blob):
        raise _bad(f"{len(blob) - offset} bytes of binary data follow the inputs that no input claims")
    default_binary = _as_bool((req.get("parameters") or {}).get("binary_data_output", False))
    outputs = []
    for spec in req.get("outputs") or []:
        if not isinstance(spec, dict) or spec.get("name") not in OUTPUTS:
            raise _bad(
                f"output {spec.get('name') if isinstance(spec, dict) else spec!r} is not one of this model's outputs: {', '.join(OUTPUTS)}"
            )
        params = spec.get("parameters") or {}
        k = params.get("classification", 0)
        if not isinstance(k, int) or k < 0:
            raise _bad(f"output {spec['name']!r}: classification must be a whole number of classes")
        outputs.append(Requested(spec["name"], _as_bool(params.get("binary_data", default_binary)), k))
    if not outputs:
        outputs = [Requested(name, default_binary) for name in OUTPUTS]
    request_id = req.get("id")
    return InferRequest(str(request_id) if request_id is not None else None, inputs, outputs)


def classification(values: np.ndarray, classes: list[str], k: int) -> np.ndarray:
    """Triton's classification extension: the top `k` of each row as "value:index:label" strings."""
    k = min(k, values.shape[1])
    order = np.argsort(-values, axis=1, kind="stable")[:, :k]
    return np.array([[f"{row[j]:.6g}:{j}:{classes[j]}" for j in idx] for row, idx in zip(values, order)], dtype=object)


def encode_response(
    model: str, request_id: str | None, tensors: list[tuple[Requested, np.ndarray]], version: str = "1"
) -> tuple[bytes, dict[str, str]]:
    """(body, headers) of an infer response; binary outputs follow the JSON header. `version`: the
    model's version (a registered model's, else 1)."""
    outputs, blobs = [], []
    for want, array in tensors:
        is_bytes = array.dtype == object
        entry: dict[str, Any] = {
            "name": want.name,
            "datatype": "BYTES" if is_bytes else "FP32",
            "shape": list(array.shape),
        }
        if want.binary:
            if is_bytes:
                raw = b"".join(struct.pack("<I", len(s.encode())) + s.encode() for s in array.reshape(-1))
            else:
                raw = np.ascontiguousarray(array, dtype="<f4").tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            entry["data"] = (
                [str(s) for s in array.reshape(-1)] if is_bytes else array.astype(np.float32).reshape(-1).tolist()
            )
        outputs.append(entry)
    response: dict[str, Any] = {"model_name": model, "model_version": version, "outputs": outputs}
    if request_id is not None:
        response["id"] = request_id
    head = json.dumps(response).encode()
    if not blobs:
        return head, {"content-type": "application/json"}
    return head + b"".join(blobs), {"content-type": "application/octet-stream", HEADER: str(len(head))}
