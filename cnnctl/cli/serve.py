"""`cnnctl serve MODEL.onnx`: HTTP inference with dynamic batching (docs/serve.md). No torch import."""

from __future__ import annotations

from typing import Annotated

import typer


def serve(
    model: Annotated[str, typer.Argument(help="An exported .onnx file (cnnctl export), float or int8.")],
    host: Annotated[str, typer.Option("--host", help="Address to bind; the default answers this machine only. 0.0.0.0 exposes it to the network.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", "-p", min=0, max=65535, help="TCP port.")] = 8000,
    workers: Annotated[int, typer.Option("--workers", min=1, max=64, help="Server processes, each with its own onnxruntime session.")] = 1,
    max_batch: Annotated[int, typer.Option("--max-batch", min=1, max=4096, help="Most images run together in one onnxruntime call.")] = 32,
    max_wait_ms: Annotated[float, typer.Option("--max-wait-ms", min=0.0, max=10_000.0, help="Longest a request waits for a batch to fill.")] = 5.0,
    max_bytes: Annotated[int, typer.Option("--max-bytes", min=1, help="Largest request body accepted (bytes); larger ones get 413.")] = 10 << 20,
    top_k: Annotated[int, typer.Option("--top-k", "-k", min=1, help="Labels per image unless the request asks ?top_k=N.")] = 5,
    provider: Annotated[str, typer.Option("--provider", metavar="[auto|cpu|cuda]", help="onnxruntime provider (auto: CUDA when available).")] = "auto",
    threads: Annotated[int, typer.Option("--threads", min=0, help="onnxruntime intra-op threads per worker (0 = its default).")] = 0,
) -> None:
    """Serve a model over HTTP: POST /predict, GET /health, GET /metadata, and a page at /.

    Images are preprocessed exactly as `cnnctl predict` does, from the model's own metadata.
    Concurrent requests are batched together. Ctrl-C or SIGTERM finishes requests in flight.

    Examples:

    $ cnnctl serve runs/pets/model.onnx --port 8000

    $ curl -s --data-binary @cat.jpg -H 'content-type: image/jpeg' localhost:8000/predict

    $ curl -s -F file=@a.jpg -F file=@b.jpg 'localhost:8000/predict?top_k=3'
    """
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        from cnnctl.errors import UsageError

        raise UsageError("cnnctl serve needs the serve extra: pip install 'cnnctl[serve]' (starlette, uvicorn, python-multipart)") from None
    if not model.endswith(".onnx"):
        from cnnctl.errors import UsageError

        raise UsageError(f"{model}: cnnctl serve takes an exported .onnx file; run `cnnctl export` first")
    from cnnctl.serve import ServeConfig, run

    run(ServeConfig(model, provider, max_batch, max_wait_ms, max_bytes, top_k, threads), host, port, workers)


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
