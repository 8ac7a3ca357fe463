"""The gRPC decision service (``headstart/protos/headstart.proto``) over the HTTP API's paths.

Each method turns its request into the HTTP body, runs the same path the HTTP route runs (same
auth, answer and errors), and turns the answer back into the reply message; an HTTP error
becomes the matching gRPC status with the HTTP API's message.

>>> grpc_event({"type": "consent_updated", "props": {"analytics": "true", "personalization": "no"}})
{'type': 'consent_updated', 'props': {'analytics': True, 'personalization': False}}

Props of a type the catalog declares, its traits and context fields come as strings and are
read as the catalog types them (``engine.schema``); what does not parse is left for the
event's validation to refuse:

>>> from engine.schema import EventSchema, SchemaSection
>>> schema = EventSchema(SchemaSection.model_validate({
...     "events": {"created_board": {"props": {"cards": {"type": "number"}}}},
...     "context": {"dark_mode": {"type": "boolean"}}}))
>>> grpc_event({"type": "created_board", "props": {"cards": "3"},
...             "context": {"locale": "de", "custom": {"dark_mode": "true"}}}, schema)
{'type': 'created_board', 'props': {'cards': 3.0}, 'context': {'locale': 'de', 'dark_mode': True}}
>>> without_nulls({"a": None, "b": [{"c": None, "d": 1}]})
{'b': [{'d': 1}]}
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc
import msgspec
from google.protobuf import json_format

from actors.ingress.errors import ApiError, error_body
from engine.schema import BUILTIN_SCHEMA, EventSchema
from headstart.protos import headstart_pb2 as pb

if TYPE_CHECKING:
    from actors.ingress.live_catalog import CatalogView, LiveCatalog

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
#: The same, answered from the given view of the catalog (None: the one served now).
ViewHandler = Callable[[str | None, bytes, "CatalogView | None"], Awaitable[tuple[int, bytes]]]


def without_nulls(value: Any) -> Any:
    """JSON nulls dropped (an unset message field in protobuf)."""
    if isinstance(value, dict):
        return {k: without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [without_nulls(v) for v in value]
    return value


def typed(value: str, kind: str | None) -> Any:
    """A string of a protobuf map as the catalog's ``kind`` (left as it is if it does not parse)."""
    if kind == "number":
        try:
            return float(value)
        except ValueError:
            return value
    if kind == "boolean" and value in ("true", "false"):
        return value == "true"
    return value


def grpc_event(event: dict[str, Any], schema: EventSchema = BUILTIN_SCHEMA) -> dict[str, Any]:
    """An event of ``SendEventsRequest`` as the HTTP API's JSON: consent props as booleans,
    declared props, traits and context fields as ``schema`` types them."""
    kind = event.get("type")
    props = event.get("props")
    if props and kind == "consent_updated":
        event["props"] = {k: v == "true" for k, v in props.items()}
    elif props and kind == "profile_updated":
        event["props"] = {k: typed(v, schema.field_type(k)) for k, v in props.items()}
    elif props and isinstance(kind, str) and kind in schema.custom_types:
        event["props"] = {k: typed(v, _prop_type(schema, kind, k)) for k, v in props.items()}
    context = event.get("context")
    if isinstance(context, dict) and "custom" in context:
        custom = context.pop("custom") or {}
        context.update({k: typed(v, schema.field_type(k)) for k, v in custom.items()})
    return event


def _prop_type(schema: EventSchema, event_type: str, prop: str) -> str | None:
    spec = schema.prop(event_type, prop)
    return spec.type if spec is not None else None


class DecisionService:
    """The ``DecisionService`` methods, mixed into the ingress deployment (Serve's gRPC proxy
    calls them on it by name); the HTTP paths they run are the ingress's ``*_bytes`` methods.
    Each call reads the served catalog view once: the map values are typed and the HTTP path
    answers from that one version."""

    decide_bytes: ViewHandler
    tutorial_bytes: ViewHandler
    events_bytes: ViewHandler
    rewards_bytes: Handler
    #: The catalog served (its view: events, traits and context fields type the map values).
    live: LiveCatalog

    async def Decide(self, request: Any, grpc_context: Any) -> Any:
        """``DecisionService.Decide``: ``/v1/decide`` over gRPC (same auth, answer and errors)."""
        return await call(grpc_context, pb.DecideReply, self._with_context(self.decide_bytes), request)

    async def SelectTutorial(self, request: Any, grpc_context: Any) -> Any:
        """``DecisionService.SelectTutorial``: ``/v1/tutorials/select`` over gRPC."""
        handle = self._with_context(self.tutorial_bytes)
        return await call(grpc_context, pb.SelectTutorialReply, handle, request)

    def _with_context(self, handle: ViewHandler) -> Handler:
        """``handle`` given the request's custom context fields as keys of its ``context``."""

        async def run(authorization: str | None, raw: bytes) -> tuple[int, bytes]:
            view = self.live.view
            if b'"custom"' in raw:  # rare: most requests skip the second decode
                body = msgspec.json.decode(raw)
                if isinstance(body.get("context"), dict):
                    body["context"] = grpc_event({"context": body["context"]}, view.schema)["context"]
                    raw = msgspec.json.encode(body)
            return await handle(authorization, raw, view)

        return run

    async def SendEvents(self, request: Any, grpc_context: Any) -> Any:
        """``DecisionService.SendEvents``: ``/v1/events`` over gRPC."""

        async def send(authorization: str | None, raw: bytes) -> tuple[int, bytes]:
            view = self.live.view
            body = msgspec.json.decode(raw)
            body["events"] = [grpc_event(e, view.schema) for e in body.get("events", [])]
            return await self.events_bytes(authorization, msgspec.json.encode(body), view)

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
