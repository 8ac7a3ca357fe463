"""The ingress's ASGI front: the body limit, and the fast path that answers ``/v1/decide``
before FastAPI's routing.

Both are plain ASGI middleware (no Starlette ``BaseHTTPMiddleware``, which would buffer every
body and cost a task switch per request).
"""

from __future__ import annotations

from typing import Any

from ray import serve
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from actors.ingress.errors import ApiError, error_body, error_response

#: Request bodies larger than this are refused with 413 before they are read in full.
MAX_BODY_BYTES = 1024 * 1024
#: The Segment-compatible API's routes; another configured prefix is rewritten to this one.
SEGMENT_PREFIX = "/segment"


class BodyLimit:
    """Pure ASGI middleware: refuse bodies over the limit without reading them into memory."""

    def __init__(self, app: ASGIApp, limit: int = MAX_BODY_BYTES) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if declared_length(scope) > self.limit:
            await error_response(413, "body_too_large", f"body over {self.limit} bytes")(scope, receive, send)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise ApiError(413, "body_too_large", f"body over {self.limit} bytes")
            return message

        await self.app(scope, limited, send)


def declared_length(scope: Scope) -> int:
    for name, value in scope.get("headers", []):
        if name == b"content-length" and value.isdigit():
            return int(value)
    return 0


def header(scope: Scope, wanted: bytes) -> str | None:
    for name, value in scope.get("headers", []):
        if name == wanted:
            return str(value.decode("latin-1"))
    return None


async def read_body(receive: Receive, limit: int) -> bytes:
    chunks = []
    seen = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ApiError(400, "invalid_request", "the client went away before sending the body")
        chunk = message.get("body", b"")
        seen += len(chunk)
        if seen > limit:
            raise ApiError(413, "body_too_large", f"body over {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


class HotPath:
    """Pure ASGI middleware that answers ``POST /v1/decide`` itself.

    Why: the ingress replica's single event loop is the bottleneck, and FastAPI's routing,
    exception middleware and dependency solving were a large share of its time per decision
    (py-spy, bench/RESULTS.md). The answer comes from the same ``Ingress.decide_bytes`` the
    FastAPI route uses, so both paths agree; the route stays for the OpenAPI document. It also
    rewrites a configured Segment API prefix to :data:`SEGMENT_PREFIX`.
    """

    def __init__(self, app: ASGIApp, limit: int = MAX_BODY_BYTES) -> None:
        self.app, self.limit = app, limit
        self._ingress: Any = None

    #: The replica's configured Segment API prefix (set by the ingress when it starts).
    segment_prefix = SEGMENT_PREFIX

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        prefix = HotPath.segment_prefix
        if prefix != SEGMENT_PREFIX and scope["type"] == "http" and scope["path"].startswith(prefix + "/"):
            scope = {**scope, "path": SEGMENT_PREFIX + scope["path"][len(prefix) :]}
        if scope["type"] != "http" or scope["method"] != "POST" or not scope["path"].endswith("/v1/decide"):
            await self.app(scope, receive, send)
            return
        if self._ingress is None:
            # The same lookup Serve's class-based FastAPI routes use to find their ``self``.
            self._ingress = serve.get_replica_context().servable_object
        try:
            if declared_length(scope) > self.limit:
                raise ApiError(413, "body_too_large", f"body over {self.limit} bytes")
            authorization = header(scope, b"authorization")
            status, body = await self._ingress.decide_bytes(
                authorization, await read_body(receive, self.limit)
            )
            extra: list[tuple[bytes, bytes]] = []
        except ApiError as exc:
            status, body = exc.status, error_body(exc.code, exc.message, exc.details)
            extra = [(k.lower().encode(), v.encode()) for k, v in exc.headers.items()]
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    *extra,
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
