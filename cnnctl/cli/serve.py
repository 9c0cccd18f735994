"""`cnnctl serve MODEL.onnx`: HTTP inference with dynamic batching (docs/serve.md). No torch import."""

from __future__ import annotations

from typing import Annotated

import typer

from cnnctl.cli.completion import choices


def serve(
    model: Annotated[
        str,
        typer.Argument(
            help="An exported .onnx file (cnnctl export), float or int8, or a registered one: models:/NAME/VERSION or models:/NAME@ALIAS."
        ),
    ],
    host: Annotated[
        str,
        typer.Option(
            "--host", help="Address to bind; the default answers this machine only. 0.0.0.0 exposes it to the network."
        ),
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", "-p", min=0, max=65535, help="TCP port.")] = 8000,
    workers: Annotated[
        int, typer.Option("--workers", min=1, max=64, help="Server processes, each with its own onnxruntime session.")
    ] = 1,
    max_batch: Annotated[
        int, typer.Option("--max-batch", min=1, max=4096, help="Most images run together in one onnxruntime call.")
    ] = 32,
    max_wait_ms: Annotated[
        float, typer.Option("--max-wait-ms", min=0.0, max=10_000.0, help="Longest a request waits for a batch to fill.")
    ] = 5.0,
    max_bytes: Annotated[
        int, typer.Option("--max-bytes", min=1, help="Largest request body accepted (bytes); larger ones get 413.")
    ] = 10 << 20,
    top_k: Annotated[
        int, typer.Option("--top-k", "-k", min=1, help="Labels per image unless the request asks ?top_k=N.")
    ] = 5,
    provider: Annotated[
        str,
        typer.Option(
            "--provider",
            metavar="[auto|cpu|cuda]",
            autocompletion=choices("auto", "cpu", "cuda"),
            help="onnxruntime provider (auto: CUDA when available).",
        ),
    ] = "auto",
    threads: Annotated[
        int, typer.Option("--threads", min=0, help="onnxruntime intra-op threads per worker (0 = its default).")
    ] = 0,
    name: Annotated[
        str,
        typer.Option(
            "--name", help="The model's name on /v2/models/NAME (default: the run directory's or file's name)."
        ),
    ] = "",
    max_queue: Annotated[
        int,
        typer.Option(
            "--max-queue",
            min=1,
            help="Most images admitted and not yet answered; beyond it requests get 503 + Retry-After.",
        ),
    ] = 256,
    timeout: Annotated[
        float, typer.Option("--timeout", min=0.001, help="Seconds a request may take before it gets 504.")
    ] = 30.0,
    api_key_env: Annotated[
        str,
        typer.Option(
            "--api-key-env", metavar="VAR", help="Require 'Authorization: Bearer $VAR' (health probes and / stay open)."
        ),
    ] = "",
    no_auth: Annotated[
        bool,
        typer.Option(
            "--no-auth", help="Allow a --host beyond loopback without --api-key-env (something in front authenticates)."
        ),
    ] = False,
    log_format: Annotated[
        str,
        typer.Option(
            "--log-format",
            metavar="[text|json]",
            autocompletion=choices("text", "json"),
            help="One line per request on stderr: text, or a JSON object.",
        ),
    ] = "text",
) -> None:
    """Serve a model over HTTP: POST /predict, the Open Inference Protocol (/v2: Triton/KServe
    clients), GET /metrics (Prometheus), /health, /metadata, and a page at /.

    Images are preprocessed exactly as `cnnctl predict` does, from the model's own metadata.
    Concurrent requests are batched together. Readiness (GET /v2/health/ready) is true once the
    model is loaded and warmed up. Ctrl-C or SIGTERM finishes requests in flight.

    Examples:

    $ cnnctl serve runs/pets/model.onnx --port 8000

    $ curl -s --data-binary @cat.jpg -H 'content-type: image/jpeg' localhost:8000/predict

    $ curl -s -F file=@a.jpg -F file=@b.jpg 'localhost:8000/predict?top_k=3'

    $ CNNCTL_KEY=$(openssl rand -hex 24) cnnctl serve model.onnx --host 0.0.0.0 --api-key-env CNNCTL_KEY
    """
    try:
        import prometheus_client  # noqa: F401
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        from cnnctl.errors import UsageError

        raise UsageError(
            "cnnctl serve needs the serve extra: pip install 'cnnctl[serve]' (starlette, uvicorn, python-multipart, prometheus-client)"
        ) from None
    version, registered = "1", None
    if model.startswith("models:/"):  # resolved once, here: the workers serve the cached file
        from cnnctl.track.registry import resolve

        found = resolve(model)
        model, version, registered, name = found.path, found.version, found.to_dict(), name or found.name
    if not model.endswith(".onnx"):
        from cnnctl.errors import UsageError

        raise UsageError(f"{model}: cnnctl serve takes an exported .onnx file; run `cnnctl export` first")
    from cnnctl.serve import ServeConfig, run

    cfg = ServeConfig(
        model,
        provider,
        max_batch,
        max_wait_ms,
        max_bytes,
        top_k,
        threads,
        name=name,
        max_queue=max_queue,
        timeout_s=timeout,
        api_key_env=api_key_env,
        log_format=log_format,
        version=version,
        registered=registered,
    )
    run(cfg, host, port, workers, no_auth=no_auth)


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
