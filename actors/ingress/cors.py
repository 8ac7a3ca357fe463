"""CORS: which other origins' pages may call the API from a browser.

Hand-written pure ASGI middleware, not Starlette's ``CORSMiddleware``: it sits on every
request's path (the benchmarked ``/v1/decide`` included), where a request without an ``Origin``
costs one scan of its headers and nothing else; the contract gives a refused origin no CORS
header at all (Starlette's answers a refused preflight with the allowed methods and headers) and
counts refusals in ``/metrics`` (Starlette's cannot count).
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import Counter
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from actors.ingress.errors import error_body

#: What a page may call with; the API's every method.
ALLOWED_METHODS = b"GET, POST, PUT, DELETE, OPTIONS"
#: What a page may send: the key, JSON bodies (gzip for Segment batches) and a catalog's version.
ALLOWED_HEADERS = b"Authorization, Content-Type, Content-Encoding, If-Match"
#: Answer headers a page may read beyond the safelisted ones: a catalog's version, when to retry
#: after 429/503, the methods a 405 names, and Serve's request id (to quote in a support request).
EXPOSED_HEADERS = b"ETag, Retry-After, Allow, X-Request-Id"
#: How long a browser keeps a preflight's answer (seconds). Chromium caps it at 7200 and keeps it
#: per URL and method; ten minutes spares a page almost every preflight (a page asks for decisions
#: on one URL) while a changed header list or a dropped origin reaches open pages soon.
PREFLIGHT_MAX_AGE = b"600"

_REFUSED_PREFLIGHT = error_body(
    "origin_not_allowed",
    "this origin may not call the API from a browser: add it to HEADSTART_CORS_ORIGINS",
)


class AllowedOrigins:
    """The origins whose pages may call the API (``*``: any), and the count of those refused.

    >>> allowed = AllowedOrigins(["https://App.example.com"])
    >>> allowed.allows("https://app.example.com"), allowed.allows("https://evil.example")
    (True, False)
    >>> AllowedOrigins(["*"]).allows("https://anyone.example")
    True
    """

    def __init__(self, origins: Iterable[str] = (), refused: Counter | None = None) -> None:
        # Origins are case-insensitive in scheme and host; browsers send them lowercase.
        self.origins = frozenset(origin.lower().rstrip("/") for origin in origins)
        self.any = "*" in self.origins
        self._refused = (
            {kind: refused.labels(kind) for kind in ("preflight", "request")} if refused is not None else {}
        )

    def allows(self, origin: str) -> bool:
        return self.any or origin in self.origins

    def refuse(self, kind: str) -> None:
        counter = self._refused.get(kind)
        if counter is not None:
            counter.inc()


class CrossOrigin:
    """Pure ASGI middleware: CORS for every path, answered before anything else.

    A request from an allowed origin gets ``Access-Control-Allow-Origin`` (its origin),
    ``Vary: Origin`` and the exposed headers; its preflight is answered here with 204. A request
    from another origin gets no CORS header (its preflight a 403) and is counted; a same-origin
    request (the demo page) is left alone.
    """

    #: The replica's allowed origins (set by the ingress when it starts; none: same origin only).
    allowed = AllowedOrigins()

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            # The one header scan a request without an Origin costs.
            for name, value in scope["headers"]:
                if name == b"origin":
                    await self._cross_origin(scope, receive, send, value)
                    return
        await self.app(scope, receive, send)

    async def _cross_origin(self, scope: Scope, receive: Receive, send: Send, origin: bytes) -> None:
        host = requested_method = None
        for name, value in scope["headers"]:
            if name == b"host":
                host = value
            elif name == b"access-control-request-method":
                requested_method = value
        preflight = scope["method"] == "OPTIONS" and requested_method is not None
        ours = same_origin(origin, host)
        if ours and not preflight:
            await self.app(scope, receive, send)
            return
        allowed = CrossOrigin.allowed
        if not ours and not allowed.allows(origin.decode("latin-1").lower()):
            allowed.refuse("preflight" if preflight else "request")
            if preflight:
                await _answer(send, 403, _REFUSED_PREFLIGHT, [(b"content-type", b"application/json")])
            else:
                await self.app(scope, receive, send)  # answered, but the browser keeps it from the page
            return
        if preflight:
            await _answer(
                send,
                204,
                b"",
                [
                    (b"access-control-allow-origin", origin),
                    (b"access-control-allow-methods", ALLOWED_METHODS),
                    (b"access-control-allow-headers", ALLOWED_HEADERS),
                    (b"access-control-max-age", PREFLIGHT_MAX_AGE),
                    (b"vary", b"Origin"),
                ],
            )
            return
        cors_headers = [
            (b"access-control-allow-origin", origin),
            (b"access-control-expose-headers", EXPOSED_HEADERS),
            (b"vary", b"Origin"),
        ]

        async def decorated(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), *cors_headers]}
            await send(message)

        await self.app(scope, receive, decorated)


def same_origin(origin: bytes, host: bytes | None) -> bool:
    """Whether ``Origin`` names the host the request was sent to.

    The scheme is not compared: TLS is often ended before the ingress, which then sees ``http``
    for a page served over ``https`` from this very host. Only counting depends on it: a
    same-origin request needs no CORS header, and one wrongly taken for it gets none.

    >>> same_origin(b"https://hs.example.com", b"hs.example.com"), same_origin(b"http://a:1", b"a:2")
    (True, False)
    """
    return host is not None and origin.partition(b"://")[2] == host.lower()


async def _answer(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    headers = [*headers, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
