"""CORS at the ingress's ASGI front, as pure ASGI: allowed origins decorated, preflights answered
without reaching the app, refused origins given no CORS header and counted."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter

from actors.ingress.cors import AllowedOrigins, CrossOrigin

ALLOWED = "https://app.example.com"


class Downstream:
    """The app behind the middleware: records what reached it, answers 200 with an ETag."""

    def __init__(self) -> None:
        self.reached: list[str] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        self.reached.append(f"{scope['method']} {scope['path']}")
        await send({"type": "http.response.start", "status": 200, "headers": [(b"etag", b'"3"')]})
        await send({"type": "http.response.body", "body": b"{}"})


@pytest.fixture
def refused() -> Counter:
    return Counter("hs_cors_refused", "refused", ["kind"], registry=CollectorRegistry())


@pytest.fixture
def configured(refused: Counter) -> Iterator[None]:
    CrossOrigin.allowed = AllowedOrigins([ALLOWED], refused)
    try:
        yield
    finally:
        CrossOrigin.allowed = AllowedOrigins()


def call(
    app: Downstream, method: str, path: str, headers: dict[str, str]
) -> tuple[int, dict[bytes, bytes], bytes]:
    """One request through the middleware: the status, headers (lowercase names) and body."""
    scope = {
        "type": "http",
        "method": method,
        "path": path,
        "headers": [
            (k.lower().encode(), v.encode()) for k, v in {"Host": "hs.example.com", **headers}.items()
        ],
    }
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(CrossOrigin(app)(scope, receive, send))  # type: ignore[arg-type]
    start, body = sent
    return start["status"], dict(start["headers"]), body["body"]


def refusals(refused: Counter, kind: str) -> float:
    return refused.labels(kind)._value.get()  # type: ignore[no-any-return]


@pytest.mark.usefixtures("configured")
def test_an_allowed_origin_gets_its_origin_back_and_the_headers_a_page_may_read(refused: Counter) -> None:
    app = Downstream()
    status, headers, body = call(app, "POST", "/v1/decide", {"Origin": ALLOWED, "Authorization": "Bearer k"})
    assert status == 200 and body == b"{}" and app.reached == ["POST /v1/decide"]
    assert headers[b"access-control-allow-origin"] == ALLOWED.encode()
    assert headers[b"vary"] == b"Origin"
    exposed = headers[b"access-control-expose-headers"].decode().split(", ")
    assert {"ETag", "Retry-After"} <= set(exposed)
    assert headers[b"etag"] == b'"3"'  # the app's own headers kept
    assert refusals(refused, "request") == 0


@pytest.mark.usefixtures("configured")
@pytest.mark.parametrize(
    "path", ["/v1/decide", "/segment/v1/batch", "/v1/users/u1/consent", "/no/such/route"]
)
def test_a_preflight_from_an_allowed_origin_is_answered_without_the_app(path: str) -> None:
    app = Downstream()
    status, headers, body = call(
        app,
        "OPTIONS",
        path,
        {
            "Origin": ALLOWED,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type",
        },
    )
    assert status == 204 and body == b"" and app.reached == []  # no Authorization needed either
    assert headers[b"access-control-allow-origin"] == ALLOWED.encode()
    assert set(headers[b"access-control-allow-methods"].decode().split(", ")) == {
        "GET",
        "POST",
        "PUT",
        "DELETE",
        "OPTIONS",
    }
    allowed_headers = {h.lower() for h in headers[b"access-control-allow-headers"].decode().split(", ")}
    assert {"authorization", "content-type", "content-encoding", "if-match"} == allowed_headers
    assert int(headers[b"access-control-max-age"]) == 600
    assert headers[b"vary"] == b"Origin"


@pytest.mark.usefixtures("configured")
def test_a_refused_origin_gets_no_cors_header_and_is_counted(refused: Counter) -> None:
    app = Downstream()
    status, headers, body = call(
        app,
        "OPTIONS",
        "/v1/decide",
        {"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert status == 403 and app.reached == []
    assert json.loads(body)["error"]["code"] == "origin_not_allowed"
    assert not any(name.startswith(b"access-control-") for name in headers)
    assert refusals(refused, "preflight") == 1
    # A request without a preflight (the browser sends none for a simple GET) reaches the app,
    # and its answer carries nothing that would let the page read it.
    status, headers, _ = call(app, "GET", "/v1/ruleset/key", {"Origin": "https://evil.example"})
    assert status == 200 and app.reached == ["GET /v1/ruleset/key"]
    assert not any(name.startswith(b"access-control-") for name in headers) and b"vary" not in headers
    assert refusals(refused, "request") == 1


@pytest.mark.usefixtures("configured")
def test_same_origin_and_originless_requests_are_neither_decorated_nor_counted(refused: Counter) -> None:
    app = Downstream()
    for extra in ({}, {"Origin": "http://hs.example.com"}, {"Origin": "https://hs.example.com"}):
        status, headers, _ = call(app, "POST", "/v1/events", extra)
        assert status == 200 and not any(name.startswith(b"access-control-") for name in headers)
    assert app.reached == ["POST /v1/events"] * 3
    assert refusals(refused, "request") == refusals(refused, "preflight") == 0


def test_without_configured_origins_only_the_same_origin_works(refused: Counter) -> None:
    CrossOrigin.allowed = AllowedOrigins((), refused)
    try:
        status, headers, _ = call(
            Downstream(),
            "OPTIONS",
            "/v1/decide",
            {"Origin": ALLOWED, "Access-Control-Request-Method": "POST"},
        )
    finally:
        CrossOrigin.allowed = AllowedOrigins()
    assert status == 403 and b"access-control-allow-origin" not in headers
    assert refusals(refused, "preflight") == 1


def test_any_origin_is_allowed_with_a_star() -> None:
    CrossOrigin.allowed = AllowedOrigins(["*"])
    try:
        status, headers, _ = call(Downstream(), "POST", "/v1/decide", {"Origin": "http://localhost:5173"})
    finally:
        CrossOrigin.allowed = AllowedOrigins()
    assert status == 200 and headers[b"access-control-allow-origin"] == b"http://localhost:5173"


def test_other_scopes_pass_through() -> None:
    reached: list[str] = []

    async def lifespan_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        reached.append(scope["type"])

    asyncio.run(CrossOrigin(lifespan_app)({"type": "lifespan"}, None, None))  # type: ignore[arg-type]
    assert reached == ["lifespan"]
