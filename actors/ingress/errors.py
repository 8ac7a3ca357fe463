"""The API's one error shape, ``{"error": {"code", "message", "details"?}}``, and its exception.

>>> error_body("not_found", "no such user")
b'{"error":{"code":"not_found","message":"no such user"}}'
>>> shard_reply(b'{"error":{"code":"bad_request","message":"no step x"}}')[0]
400
"""

from __future__ import annotations

from typing import Any

import msgspec
from fastapi.responses import Response

from headstart.adapters.rpc import is_error


class ApiError(Exception):
    """An answer with an error status; raised anywhere below a route, rendered by the app."""

    def __init__(
        self, status: int, code: str, message: str, details: Any = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.details = status, code, message, details
        self.headers = headers or {}


def error_body(code: str, message: str, details: Any = None) -> bytes:
    body: dict[str, Any] = {"code": code, "message": message}
    if details is not None:
        body["details"] = details
    return msgspec.json.encode({"error": body})


def error_response(
    status: int, code: str, message: str, details: Any = None, headers: dict[str, str] | None = None
) -> Response:
    body = error_body(code, message, details)
    return Response(body, status_code=status, media_type="application/json", headers=headers)


def shard_reply(reply: bytes) -> tuple[int, bytes]:
    """A shard's JSON reply as an HTTP status and body (errors: 400 for bad input, else 503)."""
    if is_error(reply):
        error = msgspec.json.decode(reply)["error"]
        return (400 if error["code"] == "bad_request" else 503), error_body(error["code"], error["message"])
    return 200, reply
