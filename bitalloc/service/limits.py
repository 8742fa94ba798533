"""Request size limits as pure ASGI middleware: refused before the body is read when Content-Length
says too much, and cut off while streaming when a chunked body grows past the limit."""

from __future__ import annotations

import json

from fastapi import HTTPException


class BodyLimit:
    """413 for bodies over ``default`` bytes, or over ``upload`` bytes on the ``upload_paths``."""

    def __init__(self, app, *, default: int, upload: int, upload_paths: tuple[str, ...]) -> None:
        self.app, self.default, self.upload, self.upload_paths = app, default, upload, upload_paths

    def limit_for(self, scope: dict) -> int:
        """The byte limit of the request ``scope`` describes."""
        return self.upload if scope.get("path", "") in self.upload_paths else self.default

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _refuse(send, _message(int(declared), limit, scope.get("path", "")))
            return
        seen = 0

        async def limited_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise HTTPException(413, _message(seen, limit, scope.get("path", "")))
            return message

        await self.app(scope, limited_receive, send)


def _message(size: int, limit: int, path: str) -> str:
    return (
        f"request body of {size} bytes (or more) is over the {limit}-byte limit of {path}; "
        "send less, or raise BITALLOC_MAX_REQUEST_BYTES / BITALLOC_MAX_UPLOAD_BYTES on the server"
    )


async def _refuse(send, detail: str) -> None:
    body = json.dumps({"error": "PayloadTooLarge", "detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
