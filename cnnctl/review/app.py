"""The review page's server: Starlette + uvicorn, serve's stack, bound to this machine by default.

Routes: `/` the page; `/api/items` what to review (with the decisions so far); `/image/{id}` a
file, by its id only (no path ever comes from the browser); `/cam/{id}.png` its Grad-CAM overlay,
computed on first request; `POST /api/decisions` one mark, written to the change log at once.
"""

from __future__ import annotations

import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cnnctl.io import write_json
from cnnctl.review.changes import mark, new_log, read_log

STATIC = Path(__file__).resolve().parents[1] / "static" / "review.html"
MEDIA = {
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".png": "image/png",
    ".gif": "image/gif",
    ".bmp": "image/bmp",
    ".webp": "image/webp",
}


class Review:
    """The items, the change log (on disk after every mark), and a lazily built explainer."""

    def __init__(
        self,
        target: str,
        data: str,
        items: list[dict[str, Any]],
        classes: list[str],
        log_path: str,
        reading: dict[str, str] | None = None,
    ) -> None:
        self.target, self.items, self.classes, self.log_path = target, items, classes, log_path
        self.label_file = reading is not None
        if Path(log_path).exists():  # carry on where a previous session stopped
            self.log = read_log(log_path)
            if self.log["data"] != str(Path(data).resolve()):
                from cnnctl.errors import UsageError

                raise UsageError(f"{log_path} is the change log of {self.log['data']}, not {data}; pass another --log")
        else:
            self.log = new_log(str(Path(data).resolve()), classes, reading)
        self.lock = threading.Lock()
        self.cams: dict[int, bytes] = {}
        self.explainer: Any = None

    def cam_png(self, item_id: int) -> bytes:
        with self.lock:  # one backward pass at a time through the one model
            if item_id not in self.cams:
                from cnnctl.evaluate.explain import Explainer, overlay_png

                if self.explainer is None:
                    self.explainer = Explainer(self.target)
                # Where the model looks for what it predicts: the evidence behind its disagreement.
                exp = self.explainer.explain(self.items[item_id]["path"])
                self.cams[item_id] = overlay_png(exp)
            return self.cams[item_id]

    def decide(self, item_id: int, action: str, to: str | None, labels: list[str] | None = None) -> dict[str, Any]:
        with self.lock:
            decision = mark(self.log, self.items[item_id]["rel"], action, to, labels)
            write_json(self.log_path, self.log)
            return decision


TOKEN_HEADER = "x-cnnctl-token"
LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")


def allowed_hosts(host: str, port: int) -> set[str]:
    """The Host headers the page may be reached by: the bound address (and, for a loopback
    address, its other loopback names). Anything else is a DNS-rebinding attempt or a mistake."""
    names = {"127.0.0.1", "localhost", "[::1]"} if host in LOOPBACK else {host}
    return {f"{name}:{port}" for name in names}


@dataclass(frozen=True)
class Guard:
    """Who may use the review page: requests naming an allowed Host (`hosts`; None: not checked,
    for in-process tests) read; a decision must also carry the per-session `token` the page was
    served with, in a header (which a cross-site form or a text/plain fetch cannot set without a
    CORS preflight this app never grants), as JSON, from no Origin but the page's own."""

    token: str
    hosts: set[str] | None = None

    def refused(self, request: Any, write: bool) -> Any:
        """None when `request` may go on, else the 403/415 response that answers it."""
        import hmac

        from starlette.responses import JSONResponse

        host = request.headers.get("host", "")
        if self.hosts is not None and host not in self.hosts:
            return JSONResponse({"error": f"host {host!r} is not this review page's"}, status_code=403)
        if not write:
            return None
        origin = request.headers.get("origin")
        if origin is not None and origin != f"http://{host}":
            return JSONResponse({"error": f"origin {origin!r} may not write here"}, status_code=403)
        if not hmac.compare_digest(request.headers.get(TOKEN_HEADER, ""), self.token):
            error = "missing or wrong session token: mark images from the review page"
            return JSONResponse({"error": error}, status_code=403)
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            return JSONResponse({"error": "send the decision as application/json"}, status_code=415)
        return None


DECISION_FORM = 'send {"id": N, "action": "relabel"|"remove"|"fine"|"labels", "to": CLASS, "labels": [...]}'


def _decision(body: Any) -> tuple[int, str, str | None, list[str] | None]:
    """(item id, action, class to relabel to, label set) of a decision's JSON body; ValueError,
    KeyError or TypeError when it is not one."""
    labels = body.get("labels")
    if labels is not None and not (isinstance(labels, list) and all(isinstance(c, str) for c in labels)):
        raise TypeError("labels")
    to = body.get("to")
    return int(body["id"]), str(body["action"]), None if to is None else str(to), labels


def create_app(review: Review, *, token: str | None = None, hosts: set[str] | None = None) -> Any:
    """The review page's ASGI app; what may reach it is `Guard`'s to say."""
    import secrets

    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response
    from starlette.routing import Route

    from cnnctl.errors import CnnctlError

    guard = Guard(token or secrets.token_urlsafe(32), hosts)
    page = STATIC.read_text(encoding="utf-8").replace("__CNNCTL_TOKEN__", guard.token)
    refused = guard.refused

    def item_of(request: Request) -> dict[str, Any] | None:
        try:
            i = int(request.path_params["id"])
        except ValueError:
            return None
        return review.items[i] if 0 <= i < len(review.items) else None

    async def index(request: Request) -> Response:
        return refused(request, write=False) or HTMLResponse(page, headers={"Cache-Control": "no-store"})

    async def items(request: Request) -> Response:
        if (no := refused(request, write=False)) is not None:
            return no
        listing = {
            "items": review.items,
            "classes": review.classes,
            "log": review.log_path,
            "label_file": review.label_file,
        }
        return JSONResponse({**listing, "decisions": review.log["decisions"]})

    async def image(request: Request) -> Response:
        if (no := refused(request, write=False)) is not None:
            return no
        item = item_of(request)
        if item is None:
            return JSONResponse({"error": "no such item"}, status_code=404)
        return FileResponse(
            item["path"], media_type=MEDIA.get(Path(item["path"]).suffix.lower(), "application/octet-stream")
        )

    def cam(request: Request) -> Response:  # sync: runs in the thread pool, off the event loop
        if (no := refused(request, write=False)) is not None:
            return no
        item = item_of(request)
        if item is None:
            return JSONResponse({"error": "no such item"}, status_code=404)
        try:
            return Response(review.cam_png(item["id"]), media_type="image/png")
        except CnnctlError as exc:
            return JSONResponse({"error": exc.message}, status_code=422)

    async def decisions(request: Request) -> Response:
        if (no := refused(request, write=True)) is not None:
            return no
        try:
            item_id, action, to, labels = _decision(await request.json())
        except (ValueError, KeyError, TypeError):
            return JSONResponse({"error": DECISION_FORM}, status_code=400)
        if not 0 <= item_id < len(review.items):
            return JSONResponse({"error": "no such item"}, status_code=404)
        try:
            decision = review.decide(item_id, action, to, labels)
        except CnnctlError as exc:
            return JSONResponse({"error": exc.message}, status_code=400)
        return JSONResponse({"id": item_id, "rel": review.items[item_id]["rel"], **decision, "log": review.log_path})

    routes = [
        Route("/", index),
        Route("/api/items", items),
        Route("/image/{id}", image),
        Route("/cam/{id}.png", cam),
        Route("/api/decisions", decisions, methods=["POST"]),
    ]
    return Starlette(routes=routes)


def run(review: Review, host: str, port: int) -> None:
    import uvicorn

    print(
        f"cnnctl review: {len(review.items)} image(s) on http://{host}:{port}/ ; marks go to {review.log_path}; "
        f"then: cnnctl review --apply {review.log_path}",
        file=sys.stderr,
        flush=True,
    )
    app = create_app(review, hosts=allowed_hosts(host, port))
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
