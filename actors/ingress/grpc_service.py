"""The gRPC decision service (``headstart/protos/headstart.proto``) over the HTTP API's paths.

Each method turns its request into the HTTP body, runs the same path the HTTP route runs (same
auth, answer and errors), and turns the answer back into the reply message; an HTTP error
becomes the matching gRPC status with the HTTP API's message.

>>> grpc_event({"type": "consent_updated", "props": {"analytics": "true", "personalization": "no"}})
{'type': 'consent_updated', 'props': {'analytics': True, 'personalization': False}}
>>> without_nulls({"a": None, "b": [{"c": None, "d": 1}]})
{'b': [{'d': 1}]}
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import msgspec
from google.protobuf import json_format

from actors.ingress.errors import ApiError, error_body
from headstart.protos import headstart_pb2 as pb

#: HTTP statuses as gRPC status codes (the same errors on both APIs).
GRPC_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    503: grpc.StatusCode.UNAVAILABLE,
}

#: An HTTP path from the raw Authorization header and body to the status and JSON body.
Handler = Callable[[str | None, bytes], Awaitable[tuple[int, bytes]]]


def without_nulls(value: Any) -> Any:
    """JSON nulls dropped (an unset message field in protobuf)."""
    if isinstance(value, dict):
        return {k: without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [without_nulls(v) for v in value]
    return value


def grpc_event(event: dict[str, Any]) -> dict[str, Any]:
    """An event of ``SendEventsRequest`` as the HTTP API's JSON: consent props as booleans."""
    props = event.get("props")
    if props and event.get("type") == "consent_updated":
        event["props"] = {k: v == "true" for k, v in props.items()}
    return event


class DecisionService:
    """The ``DecisionService`` methods, mixed into the ingress deployment (Serve's gRPC proxy
    calls them on it by name); the HTTP paths they run are the ingress's ``*_bytes`` methods."""

    decide_bytes: Handler
    tutorial_bytes: Handler
    events_bytes: Handler
    rewards_bytes: Handler

    async def Decide(self, request: Any, grpc_context: Any) -> Any:
        """``DecisionService.Decide``: ``/v1/decide`` over gRPC (same auth, answer and errors)."""
        return await call(grpc_context, pb.DecideReply, self.decide_bytes, request)

    async def SelectTutorial(self, request: Any, grpc_context: Any) -> Any:
        """``DecisionService.SelectTutorial``: ``/v1/tutorials/select`` over gRPC."""
        return await call(grpc_context, pb.SelectTutorialReply, self.tutorial_bytes, request)

    async def SendEvents(self, request: Any, grpc_context: Any) -> Any:
        """``DecisionService.SendEvents``: ``/v1/events`` over gRPC."""

        async def send(authorization: str | None, raw: bytes) -> tuple[int, bytes]:
            events = [grpc_event(e) for e in msgspec.json.decode(raw).get("events", [])]
            return await self.events_bytes(authorization, msgspec.json.encode({"events": events}))

        return await call(grpc_context, pb.SendEventsReply, send, request)

    async def Reward(self, request: Any, grpc_context: Any) -> Any:
        """``DecisionService.Reward``: ``/v1/rewards`` over gRPC."""
        return await call(grpc_context, pb.RewardReply, self.rewards_bytes, request)


async def call(grpc_context: Any, reply_type: Any, handle: Handler, request: Any) -> Any:
    """Run the HTTP path with the request as its JSON body; its errors as status codes."""
    metadata = dict(grpc_context.invocation_metadata()) if grpc_context is not None else {}
    raw = json.dumps(json_format.MessageToDict(request, preserving_proto_field_name=True)).encode()
    try:
        status, body = await handle(metadata.get("authorization"), raw)
    except ApiError as exc:
        status, body = exc.status, error_body(exc.code, exc.message, exc.details)
    if status >= 400:
        error = msgspec.json.decode(body).get("error", {})
        grpc_context.set_code(GRPC_CODES.get(status, grpc.StatusCode.INTERNAL))
        grpc_context.set_details(str(error.get("message", "")))
        return reply_type()
    return json_format.ParseDict(
        without_nulls(msgspec.json.decode(body)), reply_type(), ignore_unknown_fields=True
    )
