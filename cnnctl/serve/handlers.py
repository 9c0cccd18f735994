"""The routes' handlers: plain functions of (request) with the server's state on the app."""

from __future__ import annotations

import asyncio
import io
from importlib import resources

import numpy as np
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response

from cnnctl import __version__
from cnnctl.errors import DataError
from cnnctl.runtime.classifier import probabilities
from cnnctl.runtime.inference import predictions
from cnnctl.runtime.preprocess import load_image
from cnnctl.serve import oip
from cnnctl.serve.body import read_body, uploads
from cnnctl.serve.config import HTTPError
from cnnctl.serve.state import ServeState


def state_of(request: Request) -> ServeState:
    state: ServeState = request.app.state.serve
    return state


# -- cnnctl's own routes -------------------------------------------------------------------------
async def predict(request: Request) -> Response:
    """POST /predict: image files in (raw body or multipart), top-k labels out, as `cnnctl predict --json`."""
    state = state_of(request)
    clf, batcher = state.model()
    classes = list(clf.meta.class_names)
    try:
        k = int(request.query_params.get("top_k", state.cfg.top_k))
    except ValueError:
        raise HTTPError(400, "top_k must be a whole number") from None
    k = max(1, min(k, len(classes)))
    files = await uploads(request, state.cfg.max_bytes)

    def decode(name: str, data: bytes) -> np.ndarray:
        if not data:
            raise HTTPError(400, f"{name}: empty upload; send the image file's bytes")
        try:
            image: np.ndarray = clf.from_pixels(load_image(io.BytesIO(data), clf.prep, name=name)[None])[0]
            return image
        except DataError as exc:
            raise HTTPError(400, exc.message) from None

    async def work() -> np.ndarray:
        loop = asyncio.get_running_loop()
        batcher.decoding += len(files)
        try:
            images = await asyncio.gather(*(loop.run_in_executor(state.decoder, decode, n, d) for n, d in files))
        finally:
            batcher.decoding -= len(files)
        return await state.classify(list(images))

    with state.admit(len(files)):
        logits = await state.within_timeout(work())
    probs = probabilities(logits, clf.meta)
    rows = [p.to_json() for p in predictions([name for name, _ in files], probs, clf.meta, k)]
    return JSONResponse({"predictions": rows, "model": clf.meta.model})


async def health(request: Request) -> Response:
    """GET /health: 200 once ready (503 while loading), with counters."""
    state = state_of(request)
    s = state.stats
    body = {
        "status": "ok" if state.ready else ("failed" if state.failed else "loading"),
        "model": state.metadata.get("model"),
        "name": state.name,
        "requests": s.requests,
        "images": s.images,
        "batches": s.batches,
        "largest_batch": s.largest_batch,
        "errors": s.errors,
        "queued": state.pending,
    }
    return JSONResponse(body, status_code=200 if state.ready else 503)


async def metadata(request: Request) -> Response:
    """GET /metadata: the model file's Metadata and how this server runs it."""
    state = state_of(request)
    state.model()
    return JSONResponse(
        {**state.metadata, "batch_sizes": {str(k): v for k, v in sorted(state.stats.batch_sizes.items())}}
    )


async def metrics(request: Request) -> Response:
    body, kind = state_of(request).metrics.render()
    return Response(body, media_type=kind)


PAGE = resources.files("cnnctl").joinpath("static/index.html")


async def index(request: Request) -> Response:
    return HTMLResponse(PAGE.read_text())


# -- Open Inference Protocol ---------------------------------------------------------------------
async def server_metadata(request: Request) -> Response:
    return JSONResponse(
        {"name": "cnnctl", "version": __version__, "extensions": ["binary_tensor_data", "classification"]}
    )


async def live(request: Request) -> Response:
    return JSONResponse({"live": True})


async def ready(request: Request) -> Response:
    state = state_of(request)
    return JSONResponse({"ready": state.ready}, status_code=200 if state.ready else 503)


def _model(request: Request) -> ServeState:
    """The state, after checking the path's model name and version (404 naming what is served)."""
    state = state_of(request)
    name = request.path_params["name"]
    if name != state.name:
        raise HTTPError(404, f"unknown model {name!r}; this server serves {state.name!r} (GET /v2/models/{state.name})")
    version = request.path_params.get("version")
    if version is not None and version != state.cfg.version:
        raise HTTPError(404, f"model {name!r} has no version {version!r}; it has version {state.cfg.version}")
    return state


async def model_ready(request: Request) -> Response:
    state = _model(request)
    return JSONResponse({"name": state.name, "ready": state.ready}, status_code=200 if state.ready else 503)


async def model_metadata(request: Request) -> Response:
    state = _model(request)
    clf, _ = state.model()
    n = clf.meta.num_classes
    return JSONResponse(
        {
            "name": state.name,
            "versions": [state.cfg.version],
            "platform": "onnxruntime_onnx",
            "inputs": [{"name": "input", "datatype": oip.OIP_NAME[clf.input_dtype], "shape": [-1, *clf.input_shape]}],
            "outputs": [{"name": out, "datatype": "FP32", "shape": [-1, n]} for out in oip.OUTPUTS],
            "parameters": {
                "class_names": list(clf.meta.class_names),
                "input_layout": clf.input_layout,
                "model": clf.meta.model,
            },
        }
    )


def inflate(body: bytes, encoding: str, limit: int) -> bytes:
    """A gzip/deflate request body (tritonclient's request_compression_algorithm), inflated to at most `limit` bytes."""
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding not in ("gzip", "deflate"):
        raise HTTPError(415, f"Content-Encoding {encoding!r} is not accepted; send gzip, deflate or none")
    import zlib

    inflater = zlib.decompressobj(wbits=31 if encoding == "gzip" else 15)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise HTTPError(400, f"the {encoding} body does not inflate ({exc})") from None
    if len(out) > limit or inflater.unconsumed_tail:
        raise HTTPError(413, f"the inflated request body exceeds --max-bytes {limit:,}")
    return out


async def infer(request: Request) -> Response:
    """POST /v2/models/{name}/infer: the model's input tensor in, logits/probabilities out."""
    state = _model(request)
    clf, _ = state.model()
    body = inflate(
        await read_body(request, state.cfg.max_bytes), request.headers.get("content-encoding", ""), state.cfg.max_bytes
    )
    req = oip.decode_request(body, request.headers.get(oip.HEADER))
    want = f"'input' {oip.OIP_NAME[clf.input_dtype]} [N, {', '.join(map(str, clf.input_shape))}]"
    if set(req.inputs) != {"input"}:
        raise HTTPError(400, f"inputs {sorted(req.inputs)}: this model takes one input, {want}")
    x = req.inputs["input"]
    if x.dtype != clf.np_dtype:
        raise HTTPError(
            400,
            f"input datatype {oip.OIP_NAME.get(str(x.dtype), str(x.dtype).upper())}: this model takes {want}"
            + ("; export it with --input uint8 to send pixels" if x.dtype == np.uint8 else ""),
        )
    if x.ndim != 4 or tuple(x.shape[1:]) != clf.input_shape:
        raise HTTPError(400, f"input shape {list(x.shape)}: this model takes {want}")
    with state.admit(x.shape[0]):
        logits = await state.within_timeout(state.classify(list(x)))
    values = {"logits": logits.astype(np.float32), "probabilities": probabilities(logits, clf.meta).astype(np.float32)}
    classes = list(clf.meta.class_names)
    tensors = [
        (w, oip.classification(values[w.name], classes, w.classification) if w.classification else values[w.name])
        for w in req.outputs
    ]
    payload, headers = oip.encode_response(state.name, req.id, tensors, state.cfg.version)
    return Response(payload, headers=headers)
