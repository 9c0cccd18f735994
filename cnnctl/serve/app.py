"""The ASGI application (Starlette routes on uvicorn), its front door, and `run`."""

from __future__ import annotations

import hmac
import json
import os
import re
import time
from collections.abc import MutableMapping
from contextlib import asynccontextmanager
from datetime import datetime, timezone
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from cnnctl.runtime.inference import OnnxClassifier
from cnnctl.serve import handlers as h
from cnnctl.serve.config import ENV, HTTPError, ServeConfig
from cnnctl.serve.state import ServeState, log

# (route label, pattern): the label names a route in metrics and logs without unbounded cardinality.
ROUTES = [
    ("GET", "/", h.index),
    ("POST", "/predict", h.predict),
    ("GET", "/health", h.health),
    ("GET", "/metadata", h.metadata),
    ("GET", "/metrics", h.metrics),
    ("GET", "/v2", h.server_metadata),
    ("GET", "/v2/health/live", h.live),
    ("GET", "/v2/health/ready", h.ready),
    ("GET", "/v2/models/{name}", h.model_metadata),
    ("GET", "/v2/models/{name}/versions/{version}", h.model_metadata),
    ("GET", "/v2/models/{name}/ready", h.model_ready),
    ("GET", "/v2/models/{name}/versions/{version}/ready", h.model_ready),
    ("POST", "/v2/models/{name}/infer", h.infer),
    ("POST", "/v2/models/{name}/versions/{version}/infer", h.infer),
]
# Probes answer without a key (orchestrators call them unauthenticated); the page is static HTML.
OPEN = {
    "/",
    "/health",
    "/v2/health/live",
    "/v2/health/ready",
    "/v2/models/{name}/ready",
    "/v2/models/{name}/versions/{version}/ready",
}
LABELS = [(re.compile("^" + re.sub(r"\{\w+\}", "[^/]+", path) + "$"), path) for _, path, _ in ROUTES]


def route_label(path: str) -> str:
    return next((label for pattern, label in LABELS if pattern.match(path)), "other")


async def user_error(request: Request, exc: Exception) -> Response:
    if isinstance(exc, HTTPError):
        return JSONResponse({"error": exc.message}, status_code=exc.status, headers=exc.headers)
    assert isinstance(exc, HTTPException)  # 404, 405 from routing
    routes = ", ".join(f"{m} {p}" for m, p, _ in ROUTES if "version" not in p)
    return JSONResponse(
        {"error": f"{exc.detail}: {request.method} {request.url.path}; routes: {routes}"}, status_code=exc.status_code
    )


async def bug(request: Request, exc: Exception) -> Response:  # logged by uvicorn with its traceback
    return JSONResponse({"error": f"internal error: {type(exc).__name__}: {exc}".splitlines()[0]}, status_code=500)


def create_app(cfg: ServeConfig, clf: OnnxClassifier | None = None) -> Any:
    """The ASGI application for one model. The model (loaded here unless given) is warmed up
    after start-up; until then readiness is false and inference answers 503."""
    state = ServeState(cfg, clf)

    @asynccontextmanager
    async def lifespan(app: Any):  # type: ignore[no-untyped-def]
        import asyncio

        loading = asyncio.get_running_loop().create_task(state.start())
        try:
            yield
        finally:
            loading.cancel()
            await state.stop()

    app = Starlette(
        routes=[Route(path, fn, methods=[method]) for method, path, fn in ROUTES],
        lifespan=lifespan,
        exception_handlers={HTTPError: user_error, HTTPException: user_error, Exception: bug},
    )
    app.state.serve = state
    return FrontDoor(app, state)


class FrontDoor:
    """ASGI middleware in front of the routes: bearer-token check, request counters and
    Prometheus metrics, and one log line per request (text or JSON)."""

    def __init__(self, app: Any, state: ServeState) -> None:
        self.app, self.state = app, state

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state, start = self.state, time.perf_counter()
        status = [0]

        async def send_logged(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        state.stats.requests += 1
        label = route_label(scope["path"])  # once per request: auth, metrics and the log line use it
        try:
            if state.key is not None and label not in OPEN and not self._authorized(scope):
                await JSONResponse(
                    {
                        "error": "missing or wrong API key: send 'Authorization: Bearer <key>' (the value of --api-key-env)"
                    },
                    status_code=401,
                    headers={"WWW-Authenticate": 'Bearer realm="cnnctl"'},
                )(scope, receive, send_logged)
            else:
                await self.app(scope, receive, send_logged)
        finally:
            seconds = time.perf_counter() - start
            if status[0] >= 400:
                state.stats.errors += 1
            state.metrics.requests.labels(label, str(status[0])).inc()
            state.metrics.latency.labels(label).observe(seconds)
            self._log(scope, label, status[0], seconds)

    def _authorized(self, scope: dict[str, Any]) -> bool:
        assert self.state.key is not None
        for name, value in scope.get("headers", []):
            if name == b"authorization":
                scheme, _, token = value.partition(b" ")
                return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self.state.key)
        return False

    def _log(self, scope: dict[str, Any], label: str, status: int, seconds: float) -> None:
        client = (scope.get("client") or ("-", 0))[0]
        if self.state.cfg.log_format == "json":
            request_id = next(
                (v.decode(errors="replace") for k, v in scope.get("headers", []) if k == b"x-request-id"), None
            )
            line = {
                "time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
                "client": client,
                "method": scope["method"],
                "path": scope["path"],
                "route": label,
                "status": status,
                "ms": round(seconds * 1000, 2),
            }
            if request_id:
                line["request_id"] = request_id
            log(json.dumps(line))
        else:
            log(f"{client} {scope['method']} {scope['path']} {status} {seconds * 1000:.1f} ms")


def app_from_env() -> Any:
    """Factory for uvicorn's worker processes (`--workers N`): settings come from $CNNCTL_SERVE_CONFIG."""
    return create_app(ServeConfig(**json.loads(os.environ[ENV])))


def run(cfg: ServeConfig, host: str, port: int, workers: int, *, no_auth: bool = False) -> None:
    """Check the model and the exposure (one line on failure), then serve until SIGINT/SIGTERM; exit 0 after draining."""
    import shutil
    import signal
    import tempfile

    import uvicorn

    from cnnctl.serve.config import check_exposure

    check_exposure(cfg, host, no_auth)
    clf = OnnxClassifier(cfg.model, cfg.provider, cfg.threads)  # refuses a non-cnnctl file before binding
    common: dict[str, Any] = {
        "host": host,
        "port": port,
        "access_log": False,
        "log_level": "warning",
        "timeout_graceful_shutdown": 30,
    }
    # uvicorn drains requests in flight on SIGINT/SIGTERM, then re-sends the signal to the handler
    # that was installed before it: this one records it, so a requested stop exits 0, not by signal.
    stopped: list[int] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, frame: stopped.append(signum))
    auth = (
        f", bearer token from ${cfg.api_key_env}" if cfg.api_key_env else (", no auth (--no-auth)" if no_auth else "")
    )
    if workers > 1:
        from dataclasses import asdict

        os.environ[ENV] = json.dumps(asdict(cfg))
        own_dir = None
        if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):  # metrics aggregated over the workers
            own_dir = os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="cnnctl-metrics-")
        del clf
        log(f"cnnctl serve: {workers} worker processes on http://{host}:{port}{auth}")
        try:
            uvicorn.run("cnnctl.serve:app_from_env", factory=True, workers=workers, **common)
        finally:
            if own_dir:
                shutil.rmtree(own_dir, ignore_errors=True)
    else:
        log(f"cnnctl serve: http://{host}:{port}{auth}")
        uvicorn.run(create_app(cfg, clf), **common)
    log(
        f"cnnctl serve: stopped ({signal.Signals(stopped[0]).name if stopped else 'shutdown'}), requests in flight were answered"
    )
