"""Reading request bodies: size-limited, and image uploads (raw body or multipart)."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request

from cnnctl.serve.config import HTTPError


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The whole body, refused with 413 as soon as it exceeds `max_bytes` (declared or streamed)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise HTTPError(413, f"request body of {int(declared):,} bytes exceeds --max-bytes {max_bytes:,}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise HTTPError(413, f"request body exceeds --max-bytes {max_bytes:,}")
        chunks.append(chunk)
    return b"".join(chunks)


async def uploads(request: Request, max_bytes: int) -> list[tuple[str, bytes]]:
    """(name, bytes) of each uploaded image: a raw image body, or the file parts of a multipart form."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    body = await read_body(request, max_bytes)
    if kind.startswith("image/") or kind == "application/octet-stream":
        return [("body", body)]
    if kind == "multipart/form-data":

        async def replay() -> dict[str, Any]:
            return {"type": "http.request", "body": body, "more_body": False}

        try:
            form = await Request(request.scope, replay).form(max_files=256, max_fields=256, max_part_size=max_bytes)
        except Exception as exc:  # noqa: BLE001 - starlette/multipart parse errors
            raise HTTPError(
                400, f"malformed multipart body ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
            ) from None
        files = [(v.filename or k, await v.read()) for k, v in form.multi_items() if not isinstance(v, str)]
        await form.close()
        if not files:
            raise HTTPError(400, "the multipart body has no file parts; send images as files")
        return files
    raise HTTPError(
        415,
        f"content type {kind or '(none)'!r} is not accepted; send an image (image/*, application/octet-stream) or multipart/form-data",
    )
