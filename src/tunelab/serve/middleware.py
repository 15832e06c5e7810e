"""The server's two ASGI middlewares, which act before FastAPI parses anything: the API key and the body size.

They sit below the routes so that a request without the key, or with a body over `--max-request-bytes`, costs
the server nothing: no JSON is parsed, no model is touched, and the answer is already OpenAI's error body.
"""

from __future__ import annotations

import asyncio
import hmac

from fastapi.responses import JSONResponse

from tunelab.serve.models import BIG_BYTES, release_heap
from tunelab.serve.protocol import error_body

OPEN_PATHS = ("/health",)


class BearerAuth:
    """ASGI middleware: every path but /health needs `Authorization: Bearer KEY` when a key is set (the scheme
    in any case, as RFC 7235 has it)."""

    def __init__(self, app, key: str):
        self.app, self.key = app, key

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"] not in OPEN_PATHS:
            headers = dict(scope.get("headers") or [])
            given = headers.get(b"authorization", b"").decode("latin-1")
            scheme, _, token = given.strip().partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode("latin-1"),
                                                                     self.key.encode("utf-8")):
                msg = "Incorrect API key provided." if given else "Missing API key: send 'Authorization: Bearer KEY'."
                await JSONResponse(error_body(msg, "invalid_request_error", None, "invalid_api_key"),
                                   status_code=401)(scope, receive, send)
                return
        await self.app(scope, receive, send)


class BodyLimit:
    """ASGI middleware: a request body over `limit` bytes gets 413 before anything parses it (a declared
    Content-Length is refused at once; a chunked body is counted as it arrives). The rest of an oversized body
    is read and dropped, up to a bound, so the client sees the 413 rather than a reset connection."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, int(limit)

    async def _refuse(self, scope, receive, send, more: bool) -> None:
        dropped = 0
        while more and dropped < 64 * self.limit:
            msg = await receive()
            if msg["type"] != "http.request":
                return
            dropped += len(msg.get("body", b""))
            more = msg.get("more_body", False)
        msg = f"The request body is larger than this server's limit of {self.limit} bytes (--max-request-bytes)."
        await JSONResponse(error_body(msg, "invalid_request_error", None, "request_too_large"),
                           status_code=413)(scope, receive, send)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            await self._refuse(scope, receive, send, True)
            return
        chunks, size, more = [], 0, True
        while more:
            msg = await receive()
            if msg["type"] != "http.request":
                return          # the client went away
            chunks.append(msg.get("body", b""))
            size += len(chunks[-1])
            more = msg.get("more_body", False)
            if size > self.limit:
                await self._refuse(scope, receive, send, more)
                return
        body, replayed = b"".join(chunks), False
        del chunks

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()
        try:
            await self.app(scope, replay, send)
        finally:
            if len(body) > BIG_BYTES:   # parsing it left freed heap behind: give it back, off the event loop
                del body
                await asyncio.to_thread(release_heap)
