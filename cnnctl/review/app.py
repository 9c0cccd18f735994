"""The review page's server: Starlette + uvicorn, serve's stack, bound to this machine by default.

Routes: `/` the page; `/api/items` what to review (with the decisions so far); `/image/{id}` a
file, by its id only (no path ever comes from the browser); `/cam/{id}.png` its Grad-CAM overlay,
computed on first request; `POST /api/decisions` one mark, written to the change log at once.
"""

from __future__ import annotations

import sys
import threading
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

    def __init__(self, target: str, data: str, items: list[dict[str, Any]], classes: list[str], log_path: str) -> None:
        self.target, self.items, self.classes, self.log_path = target, items, classes, log_path
        if Path(log_path).exists():  # carry on where a previous session stopped
            self.log = read_log(log_path)
            if self.log["data"] != str(Path(data).resolve()):
                from cnnctl.errors import UsageError

                raise UsageError(f"{log_path} is the change log of {self.log['data']}, not {data}; pass another --log")
        else:
            self.log = new_log(str(Path(data).resolve()), classes)
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

    def decide(self, item_id: int, action: str, to: str | None) -> dict[str, Any]:
        with self.lock:
            decision = mark(self.log, self.items[item_id]["rel"], action, to)
            write_json(self.log_path, self.log)
            return decision


def create_app(review: Review) -> Any:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import FileResponse, JSONResponse, Response
    from starlette.routing import Route

    from cnnctl.errors import CnnctlError

    def item_of(request: Request) -> dict[str, Any] | None:
        try:
            i = int(request.path_params["id"])
        except ValueError:
            return None
        return review.items[i] if 0 <= i < len(review.items) else None

    async def index(request: Request) -> Response:
        return FileResponse(STATIC, media_type="text/html")

    async def items(request: Request) -> Response:
        return JSONResponse(
            {
                "items": review.items,
                "classes": review.classes,
                "log": review.log_path,
                "decisions": review.log["decisions"],
            }
        )

    async def image(request: Request) -> Response:
        item = item_of(request)
        if item is None:
            return JSONResponse({"error": "no such item"}, status_code=404)
        return FileResponse(
            item["path"], media_type=MEDIA.get(Path(item["path"]).suffix.lower(), "application/octet-stream")
        )

    def cam(request: Request) -> Response:  # sync: runs in the thread pool, off the event loop
        item = item_of(request)
        if item is None:
            return JSONResponse({"error": "no such item"}, status_code=404)
        try:
            return Response(review.cam_png(item["id"]), media_type="image/png")
        except CnnctlError as exc:
            return JSONResponse({"error": exc.message}, status_code=422)

    async def decisions(request: Request) -> Response:
        try:
            body = await request.json()
            item_id, action, to = int(body["id"]), str(body["action"]), body.get("to")
        except (ValueError, KeyError, TypeError):
            return JSONResponse(
                {"error": 'send {"id": N, "action": "relabel"|"remove"|"fine", "to": CLASS}'}, status_code=400
            )
        if not 0 <= item_id < len(review.items):
            return JSONResponse({"error": "no such item"}, status_code=404)
        try:
            decision = review.decide(item_id, action, to)
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
    uvicorn.run(create_app(review), host=host, port=port, log_level="warning", access_log=False)
