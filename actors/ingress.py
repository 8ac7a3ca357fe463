"""The HTTP API: a Ray Serve deployment with a FastAPI ingress.

The path from a request to the user's shard is one NATS request/reply to
``hs.rpc.<partition>.<method>``: NATS routes it to whichever shard owns the partition, the shard
answers from its event loop (so it reflects every event it has applied) and replies with the
JSON body, which is passed through as it is. A NATS round trip costs a fraction of a Ray actor
call (~1.1-1.4 ms and ~1.5 ms of CPU measured here), which keeps the ingress close to the
throughput of a no-op endpoint; see ``bench/decide.py``.

When a shard does not answer within the deadline (starting, moving, down), ``/v1/decide``
answers with the catalog's default flow and says so in ``explain``, rather than failing.
"""

import asyncio
import base64
import contextlib
import gc
import json
import logging
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Annotated, Any, Literal

import grpc
import msgspec
from fastapi import FastAPI, Header, Path, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from google.protobuf import json_format
from nats.aio.client import Client as NATS
from nats.js.api import KeyValueConfig, StorageType
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from ray import serve
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from engine.catalog import Catalog
from engine.decision import Decider
from engine.errors import InvalidEvent
from engine.keys import Pseudonymizer, partition_of
from engine.learning import RewardRecord, encode_record, user_key_of
from headstart import __version__
from headstart.adapters.audit import audit
from headstart.adapters.broker import NatsAuth, connect_nats
from headstart.adapters.control import AdminError, request_admin
from headstart.adapters.membership import read_cluster_model
from headstart.adapters.rpc import (
    DecideRequest,
    ExperimentMomentsRequest,
    FlagsRequest,
    LearnedRequest,
    SegmentSizesRequest,
    ShardClient,
    ShardError,
    ShardUnavailable,
    StatsRequest,
    TutorialRequest,
    UserRequest,
    context_of,
    is_error,
)
from headstart.adapters.rpc import Request as ShardRequest
from headstart.adapters.shard_stats import ShardStats
from headstart.adapters.status import STATUS_BUCKET, WEBHOOKS_STATUS_KEY
from headstart.adapters.streams import (
    DLQ_PREFIX,
    EVENTS_STREAM,
    EventPublisher,
    open_bucket,
    publish_prepared,
    record_subjects,
)
from headstart.privacy.access import export_user
from headstart.privacy.erasure import Eraser
from headstart.protos import headstart_pb2 as pb
from headstart.reports.experiments import experiment_report, report_cuts
from headstart.reports.segments import segment_report
from headstart.web.auth import Authenticator, RateLimits
from headstart.web.metrics import IngressMetrics, render
from headstart.web.ruleset import build_ruleset, public_jwk, sign_ruleset, signing_key
from headstart.web.segment_api import (
    ALIASES_BUCKET,
    AliasStore,
    SegmentMapper,
    SegmentPayloadError,
    decode_body,
    messages_of,
)
from headstart.web.segment_api import CALL_TYPES as SEGMENT_CALLS

log = logging.getLogger(__name__)

#: A decision waits this long for the shard before the default flow is served instead.
DECIDE_DEADLINE_S = 0.25
#: Request bodies larger than this are refused with 413 before they are read in full.
MAX_BODY_BYTES = 1024 * 1024
#: Events accepted in one ``/v1/events`` call.
MAX_EVENTS_PER_BATCH = 1000
READY_CACHE_S = 1.0
GC_GEN0_THRESHOLD = 50_000
#: Coalesce concurrent decisions for the same shard into one NATS message (HEADSTART_COALESCE=0: off).
COALESCE = os.environ.get("HEADSTART_COALESCE", "1") == "1"


class ApiError(Exception):
    def __init__(
        self, status: int, code: str, message: str, details: Any = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.details = status, code, message, details
        self.headers = headers or {}


def _error_body(code: str, message: str, details: Any = None) -> bytes:
    body: dict[str, Any] = {"code": code, "message": message}
    if details is not None:
        body["details"] = details
    return msgspec.json.encode({"error": body})


def error_response(
    status: int, code: str, message: str, details: Any = None, headers: dict[str, str] | None = None
) -> Response:
    body = _error_body(code, message, details)
    return Response(body, status_code=status, media_type="application/json", headers=headers)


class BodyLimit:
    """Pure ASGI middleware: refuse bodies over the limit without reading them into memory."""

    def __init__(self, app: ASGIApp, limit: int = MAX_BODY_BYTES) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if _declared_length(scope) > self.limit:
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


def _declared_length(scope: Scope) -> int:
    for name, value in scope.get("headers", []):
        if name == b"content-length" and value.isdigit():
            return int(value)
    return 0


def _header(scope: Scope, wanted: bytes) -> str | None:
    for name, value in scope.get("headers", []):
        if name == wanted:
            return str(value.decode("latin-1"))
    return None


async def _read_body(receive: Receive, limit: int) -> bytes:
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


#: The Segment-compatible API's routes; another configured prefix is rewritten to this one.
SEGMENT_PREFIX = "/segment"


class HotPath:
    """Pure ASGI middleware that answers ``POST /v1/decide`` itself.

    Why: the ingress replica's single event loop is the bottleneck, and FastAPI's routing,
    exception middleware and dependency solving were about a fifth of its time per decision
    (py-spy, bench/RESULTS.md). The answer comes from the same :meth:`Ingress.decide_bytes` the
    FastAPI route uses, so both paths agree; the route stays for the OpenAPI document.
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
            if _declared_length(scope) > self.limit:
                raise ApiError(413, "body_too_large", f"body over {self.limit} bytes")
            authorization = _header(scope, b"authorization")
            status, body = await self._ingress.decide_bytes(
                authorization, await _read_body(receive, self.limit)
            )
            extra: list[tuple[bytes, bytes]] = []
        except ApiError as exc:
            status, body = exc.status, _error_body(exc.code, exc.message, exc.details)
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


# ---------------------------------------------------------------------- request bodies


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RequestContext(BaseModel):
    """Where the request comes from; fields beyond these are ignored."""

    model_config = ConfigDict(extra="ignore")
    device_type: str | None = Field(None, max_length=64)
    os: str | None = Field(None, max_length=64)
    locale: str | None = Field(None, max_length=32)
    country: str | None = Field(None, max_length=8)
    referrer: str | None = Field(None, max_length=256)
    app_version: str | None = Field(None, max_length=64)


UserId = Annotated[str, Field(min_length=1, max_length=256, description="the caller's raw user id")]
UserIdPath = Annotated[str, Path(min_length=1, max_length=256, description="the caller's raw user id")]


class DecideBody(_Body):
    user_id: UserId
    context: RequestContext = RequestContext()


class TutorialBody(_Body):
    user_id: UserId
    context: RequestContext = RequestContext()
    step: str | None = Field(None, max_length=64)
    feature: str | None = Field(None, max_length=64)


class _ContextStruct(msgspec.Struct, omit_defaults=True):
    device_type: Annotated[str, msgspec.Meta(max_length=64)] | None = None
    os: Annotated[str, msgspec.Meta(max_length=64)] | None = None
    locale: Annotated[str, msgspec.Meta(max_length=32)] | None = None
    country: Annotated[str, msgspec.Meta(max_length=8)] | None = None
    referrer: Annotated[str, msgspec.Meta(max_length=256)] | None = None
    app_version: Annotated[str, msgspec.Meta(max_length=64)] | None = None


_UserIdStruct = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
_NameStruct = Annotated[str, msgspec.Meta(max_length=64)]


class _DecideStruct(msgspec.Struct, forbid_unknown_fields=True):
    # The hot path's twin of DecideBody: msgspec validates straight from the bytes, which
    # costs a fraction of FastAPI's parse + pydantic + dependency solving. DecideBody stays
    # the documented schema (OpenAPI); a test keeps the two in step.
    user_id: _UserIdStruct
    context: _ContextStruct = msgspec.field(default_factory=_ContextStruct)


class _TutorialStruct(msgspec.Struct, forbid_unknown_fields=True):
    user_id: _UserIdStruct
    context: _ContextStruct = msgspec.field(default_factory=_ContextStruct)
    step: _NameStruct | None = None
    feature: _NameStruct | None = None


def _parse(decoder: msgspec.json.Decoder[Any], body: bytes) -> Any:
    try:
        return decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise ApiError(
            400, "invalid_request", "the request body is not valid", [{"problem": str(exc)}]
        ) from None
    except msgspec.DecodeError as exc:
        raise ApiError(
            400, "invalid_request", "the request body is not JSON", [{"problem": str(exc)}]
        ) from None


def _body_doc(model: type[BaseModel]) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": model.model_json_schema()}},
        }
    }


class EventsBody(_Body):
    events: list[dict[str, Any]] = Field(min_length=1, max_length=MAX_EVENTS_PER_BATCH)


class RewardBody(_Body):
    decision_id: str = Field(min_length=1, max_length=64, description="from a /v1/decide answer")
    reward: float = Field(ge=0.0, le=1.0, description="how well the decision worked, in [0, 1]")


class RewardAccepted(BaseModel):
    #: False when the decision made no learned choice (nothing to learn) or the same reward
    #: for it was already stored.
    accepted: bool
    detail: str


class ConsentBody(_Body):
    """Consent per purpose; a purpose left out keeps what was recorded."""

    analytics: bool | None = Field(None, description="keep the user's events and live state")
    personalization: bool | None = Field(None, description="personalize decisions and learn from them")


class ConsentAccepted(BaseModel):
    accepted: bool
    detail: str


class ScaleBody(_Body):
    shards: int = Field(ge=1, le=256, description="how many shards should own the partitions")


class EventsAccepted(BaseModel):
    accepted: int
    duplicates: int


#: Calls per Segment request at most (Segment's own limit is 500 KB per batch).
MAX_SEGMENT_CALLS = 2500


def _bearer_from_basic(authorization: str | None) -> str | None:
    """``Bearer <write key>`` from HTTP Basic (the Segment libraries' write key is the user, the
    password empty); a Bearer header is passed through."""
    if authorization is None or not authorization.lower().startswith("basic "):
        return authorization
    try:
        user = base64.b64decode(authorization[6:].strip(), validate=True).decode().split(":", 1)[0]
    except (ValueError, UnicodeDecodeError):
        return None
    return f"Bearer {user}" if user else None


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


def _without_nulls(value: Any) -> Any:
    """JSON nulls dropped (an unset message field in protobuf)."""
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


def grpc_event(event: dict[str, Any]) -> dict[str, Any]:
    """An event of ``SendEventsRequest`` as the HTTP API's JSON: consent props as booleans."""
    props = event.get("props")
    if props and event.get("type") == "consent_updated":
        event["props"] = {k: v == "true" for k, v in props.items()}
    return event


def _static(name: str) -> bytes:
    """A file of the demo page (package data of ``headstart``)."""
    return resources.files("headstart").joinpath("static", name).read_bytes()


class Decision(BaseModel):
    """The answer of ``/v1/decide`` (documented here; the shard encodes it)."""

    decision_id: str
    step: dict[str, Any] | None
    tutorial: dict[str, Any] | None
    message: str
    step_message: str
    flags: dict[str, bool]
    segments: list[str]
    experiments: dict[str, Any]
    completed_steps: list[str]
    personalized: bool
    explain: list[str]
    activation_probability: float | None = Field(
        None, description="the activation model's probability that this user activates (personalized only)"
    )
    recommended_features: list[str] = Field(
        default_factory=list, description="features this user has not tried, likeliest adopted first"
    )


class IngressConfig(BaseModel):
    """What the ingress needs; built by the runtime, passed to every replica."""

    nats_url: str
    partitions: int
    secret: bytes
    key_hashes: dict[str, list[str]]
    catalog: Catalog
    nats_auth: NatsAuth = NatsAuth()
    #: Requests per key of each role and replica, e.g. ``{"frontend": "20000/second"}``.
    rate_limits: dict[str, str] = {}
    #: Where the Segment-compatible tracking API is served.
    segment_prefix: str = SEGMENT_PREFIX
    #: How long aliases (anonymous id -> user) are kept: as long as the events.
    events_retention_days: float = 30.0


# ---------------------------------------------------------------------- the app

app = FastAPI(
    title="Headstart",
    version=__version__,
    description="Real-time personalization of user onboarding. Every endpoint but /healthz and /readyz "
    "needs `Authorization: Bearer <key>`, this schema at /openapi.json included.",
    # Served by a route below that asks for a key; no interactive docs page (it cannot send one).
    openapi_url=None,
    docs_url=None,
    redoc_url=None,
)
app.add_middleware(BodyLimit)
app.add_middleware(HotPath)  # outermost: it answers before BodyLimit and the router


@app.exception_handler(ApiError)
async def _api_error(_: Request, exc: ApiError) -> Response:
    return error_response(exc.status, exc.code, exc.message, exc.details, exc.headers)


@app.exception_handler(RequestValidationError)
async def _validation_error(_: Request, exc: RequestValidationError) -> Response:
    details = [
        {"field": ".".join(str(p) for p in err["loc"] if p != "body") or "(body)", "problem": err["msg"]}
        for err in exc.errors()
    ]
    return error_response(400, "invalid_request", "the request body is not valid", details)


@app.exception_handler(StarletteHTTPException)
async def _http_error(_: Request, exc: StarletteHTTPException) -> Response:
    return error_response(exc.status_code, "http_error", str(exc.detail))


# Everything the routes use is defined above this point: @serve.ingress pickles the app, and
# with it the routes' globals, when the class below is decorated.
def _shard_reply(reply: bytes) -> tuple[int, bytes]:
    """A shard's JSON reply as an HTTP status and body (errors: 400 for bad input, else 503)."""
    if is_error(reply):
        error = msgspec.json.decode(reply)["error"]
        return (400 if error["code"] == "bad_request" else 503), _error_body(error["code"], error["message"])
    return 200, reply


Authorization = Annotated[str | None, Header(description="Bearer <API key>")]


@serve.deployment(
    name="Ingress",
    # One replica's event loop is the bottleneck; many requests in flight keep it busy rather
    # than queued in the proxy (Serve's default of 5 collapsed under load here).
    max_ongoing_requests=2000,
    ray_actor_options={"num_cpus": 0},
    # Serve's access log writes each request's path, and paths carry raw user ids
    # (/v1/users/{id}): off in every serve mode. Requests are observed through /metrics.
    logging_config={"enable_access_log": False},
)
@serve.ingress(app)
class Ingress:
    def __init__(self, config: IngressConfig) -> None:
        self.config = config
        # Requests allocate many short-lived objects; collecting generation 0 every 700
        # allocations (CPython's default) spent a measurable share of the replica's loop.
        gc.set_threshold(GC_GEN0_THRESHOLD, 10, 10)
        self.auth = Authenticator(config.key_hashes)
        self.rate_limits = RateLimits(config.rate_limits)
        self.pseudonymizer = Pseudonymizer(config.secret)
        self.decider = Decider(config.catalog)
        self.nc: NATS | None = None
        self._shards: ShardClient | None = None
        # Built here, not at import: Serve pickles this class by value and decoders don't pickle.
        self._decide_decoder = msgspec.json.Decoder(_DecideStruct)
        self._tutorial_decoder = msgspec.json.Decoder(_TutorialStruct)
        self._connecting = asyncio.Lock()
        self._resuming: asyncio.Task[None] | None = None
        self._ready_at = 0.0
        self._ready_detail: dict[str, Any] = {}
        self.metrics = IngressMetrics()
        self._shard_decisions = self.metrics.decisions.labels("shard")
        self._fallback_decisions = self.metrics.decisions.labels("fallback")
        self._flag_descriptions = {flag.id: flag.description for flag in config.catalog.flags}
        HotPath.segment_prefix = config.segment_prefix
        self._segment_mapper = SegmentMapper(config.catalog.segment_api)
        self._aliases: AliasStore | None = None
        # The ruleset changes only with the catalog: signed once per replica.
        signer = signing_key(config.secret)
        self._ruleset = msgspec.json.encode(sign_ruleset(build_ruleset(config.catalog), signer))
        self._ruleset_key = msgspec.json.encode(public_jwk(signer.public_key()))

    def _require(self, authorization: str | None, role: Literal["frontend", "admin"] | None) -> str:
        """Who calls, for the audit log (``<role>:<key id>``, the key id a prefix of its hash), if
        the role is ``role`` (None: any) and the key is within its rate limit."""
        identity = self.auth.identify(authorization)
        if identity is None:
            raise ApiError(401, "unauthorized", "missing or unknown API key (Authorization: Bearer <key>)")
        granted, key_id = identity
        if role is not None and granted != role:
            raise ApiError(403, "forbidden", f"this endpoint needs the {role} role")
        wait = self.rate_limits.wait(granted, key_id)
        if wait is not None:
            limit = self.rate_limits.items[granted]
            raise ApiError(
                429,
                "rate_limited",
                f"this key is over its limit of {limit}; retry in {wait:.1f} s",
                headers={"Retry-After": RateLimits.retry_after(wait)},
            )
        return f"{granted}:{key_id[:12]}"

    async def _client(self) -> tuple[NATS, ShardClient]:
        if self.nc is None or self.nc.is_closed or self._shards is None:
            async with self._connecting:
                if self.nc is None or self.nc.is_closed or self._shards is None:
                    self.nc = await connect_nats(
                        self.config.nats_url,
                        self.config.nats_auth,
                        name="headstart-ingress",
                        max_reconnect_attempts=-1,
                    )
                    self._shards = ShardClient(self.nc, self.config.partitions)
                    self._shards.start_owner_refresh()
                    # Erasures a crash interrupted are finished in the background.
                    eraser = Eraser(self.nc.jetstream(), self._shards, self.config.partitions)
                    self._resuming = asyncio.create_task(self._resume_erasures(eraser))
        return self.nc, self._shards

    async def _resume_erasures(self, eraser: Eraser) -> None:
        try:
            finished = await eraser.resume()
            if finished:
                log.info("finished %d interrupted erasures", len(finished))
        except Exception as exc:  # noqa: BLE001 - retried at the next start; DELETE also resumes
            log.warning("resuming erasures failed: %s", type(exc).__name__)

    # ------------------------------------------------------------------ decisions

    @app.post(
        "/v1/decide",
        response_model=Decision,
        responses={400: {}, 401: {}, 403: {}},
        openapi_extra=_body_doc(DecideBody),
    )
    async def decide(self, request: Request) -> Response:
        """The next onboarding step, tutorial variant, message, flags and segments for a user."""
        # Normally answered by the HotPath middleware before routing; this route documents it
        # and answers the same way if the middleware is bypassed.
        status, body = await self.decide_bytes(request.headers.get("authorization"), await request.body())
        return Response(body, status_code=status, media_type="application/json")

    async def decide_bytes(self, authorization: str | None, raw_body: bytes) -> tuple[int, bytes]:
        """``/v1/decide`` from the raw header and body to the status and JSON body."""
        self._require(authorization, "frontend")
        started = time.perf_counter()
        body: _DecideStruct = _parse(self._decide_decoder, raw_body)
        key = self.pseudonymizer.key(body.user_id)
        context = body.context
        shards = self._shards or (await self._client())[1]
        try:
            request = DecideRequest(key=key, context=context_of(context))
            if COALESCE:
                reply = await shards.call_coalesced(request, DECIDE_DEADLINE_S)
            else:
                reply = await shards.call_raw(request, DECIDE_DEADLINE_S)
        except ShardUnavailable:
            fallback = self.decider.decide(
                key, None, None, msgspec.structs.asdict(context), time.time(), personalize=False
            ).answer
            fallback.personalized = False
            fallback.explain.insert(0, "shard unavailable within the deadline: safe default flow")
            self._fallback_decisions.inc()
            return 200, msgspec.json.encode(fallback)
        self._shard_decisions.inc()
        self.metrics.decide_seconds.observe(time.perf_counter() - started)
        return _shard_reply(reply)

    @app.post("/v1/flags", responses={400: {}, 401: {}, 403: {}}, openapi_extra=_body_doc(DecideBody))
    async def flags(self, request: Request) -> Response:
        """Every feature flag's value for a user, with why (``TARGETING_MATCH``, ``SPLIT`` or
        ``DEFAULT``, and the rule), and the user's segments; logs no decision. With the user's
        shard unavailable, the flags from the request's context alone, marked ``stale``."""
        self._require(request.headers.get("authorization"), "frontend")
        body: _DecideStruct = _parse(self._decide_decoder, await request.body())
        key = self.pseudonymizer.key(body.user_id)
        shards = self._shards or (await self._client())[1]
        try:
            reply = await shards.call(
                FlagsRequest(key=key, context=context_of(body.context)), DECIDE_DEADLINE_S
            )
            stale = False
        except (ShardUnavailable, ShardError):
            context = msgspec.structs.asdict(body.context)
            segments = self.decider.segments(None, context, time.time())
            reply = {"flags": self.decider.flags(key, segments), "segments": segments}
            stale = True
        for flag_id, entry in reply["flags"].items():
            entry["description"] = self._flag_descriptions.get(flag_id, "")
        return JSONResponse({**reply, "stale": stale})

    @app.post("/segment/v1/{call}", responses={400: {}, 401: {}, 403: {}, 404: {}, 413: {}, 503: {}})
    async def segment_call(self, call: str, request: Request) -> JSONResponse:
        """The Segment HTTP Tracking API (``batch``, ``track``, ``identify``, ``page``,
        ``screen``, ``alias``, ``group``): the write key is a frontend key as the Basic user,
        bodies may be gzip-encoded; calls are mapped to Headstart events by the catalog's
        ``segment_api``, unmapped ones counted and dropped, invalid ones dead-lettered (ids
        pseudonymized) with their reason. Answers 200 once JetStream stored the events."""
        if call not in ("batch", *SEGMENT_CALLS):
            raise ApiError(404, "not_found", f"no Segment call {call[:40]!r}")
        self._require(_bearer_from_basic(request.headers.get("authorization")), "frontend")
        try:
            body = decode_body(await request.body(), request.headers.get("content-encoding"))
            messages = messages_of(call, json.loads(body))
        except (SegmentPayloadError, ValueError) as exc:
            raise ApiError(400, "invalid_request", f"not a Segment call: {exc}") from None
        if len(messages) > MAX_SEGMENT_CALLS:
            raise ApiError(
                400, "invalid_request", f"{len(messages)} calls: at most {MAX_SEGMENT_CALLS} per batch"
            )
        nc, _ = await self._client()
        js = nc.jetstream()
        aliases = await self._alias_store(js)
        publisher = EventPublisher(js, self.pseudonymizer)
        prepared, dead, counted = [], [], []
        key_of = self.pseudonymizer.key
        for message in messages:
            mapped = self._segment_mapper.map(message)
            kind = str(message.get("type") if isinstance(message, dict) else "?")[:16]
            for anonymous_id, user_id in mapped.aliases:
                await aliases.link(key_of(anonymous_id), key_of(user_id))
            if mapped.event is None:
                outcome = "invalid" if mapped.invalid else "unmapped"
                counted.append((kind, outcome))
                if mapped.invalid:
                    dead.append((message, mapped.invalid))
                continue
            user_key = key_of(mapped.user_id) if mapped.user_id else None
            if user_key is None and mapped.anonymous_id:
                anonymous_key = key_of(mapped.anonymous_id)
                user_key = await aliases.resolve(anonymous_key) or anonymous_key
            try:
                prepared.append((kind, publisher.prepare(mapped.event, user_key=user_key)))
            except InvalidEvent as exc:
                counted.append((kind, "invalid"))
                dead.append((message, f"{exc.reason}: {exc.detail}"))
        try:
            acks = await publish_prepared(js, [p for _, p in prepared], retry_for=5.0)
            for message, reason in dead:
                await self._dead_letter_segment(js, message, reason)
        except Exception as exc:
            raise ApiError(
                503, "unavailable", f"the event stream did not store the calls: {type(exc).__name__}"
            ) from exc
        for (kind, _), ack in zip(prepared, acks, strict=True):
            counted.append((kind, "duplicate" if ack.duplicate else "stored"))
        for kind, outcome in counted:
            self.metrics.segment_calls.labels(kind, outcome).inc()
        return JSONResponse({"success": True})

    async def _alias_store(self, js: Any) -> AliasStore:
        if self._aliases is None:
            ttl = self.config.events_retention_days * 86400
            config = KeyValueConfig(bucket=ALIASES_BUCKET, history=1, ttl=ttl, storage=StorageType.FILE)
            self._aliases = AliasStore(await open_bucket(js, config))
        return self._aliases

    async def _dead_letter_segment(self, js: Any, message: Any, reason: str) -> None:
        """An invalid Segment call, kept for whoever fixes the sender: its ids pseudonymized,
        and its traits and properties left out (they may hold PII)."""
        kept: dict[str, Any] = {}
        if isinstance(message, dict):
            for name, value in message.items():
                if name in ("userId", "anonymousId", "previousId") and isinstance(value, str) and value:
                    kept[name] = self.pseudonymizer.key(value)
                elif name not in ("traits", "properties", "context"):
                    kept[name] = value
        payload = json.dumps(kept, default=str).encode()[:65536]
        headers = {
            "Hs-Reason": reason[:200],
            "Hs-Source": "segment",
            "Hs-Redacted": "traits,properties,context",
        }
        await js.publish(f"{DLQ_PREFIX}.segment", payload, headers=headers)

    @app.post("/v1/tutorials/select", responses={400: {}, 404: {}}, openapi_extra=_body_doc(TutorialBody))
    async def select_tutorial(self, request: Request) -> Response:
        """Which variant of the tutorial for a step (or a feature) this user should see."""
        status, body = await self.tutorial_bytes(request.headers.get("authorization"), await request.body())
        return Response(body, status_code=status, media_type="application/json")

    async def tutorial_bytes(self, authorization: str | None, raw_body: bytes) -> tuple[int, bytes]:
        """``/v1/tutorials/select`` from the raw header and body to the status and JSON body."""
        self._require(authorization, "frontend")
        body: _TutorialStruct = _parse(self._tutorial_decoder, raw_body)
        if (body.step is None) == (body.feature is None):
            raise ApiError(400, "invalid_request", "give exactly one of 'step' or 'feature'")
        key = self.pseudonymizer.key(body.user_id)
        context = body.context
        shards = self._shards or (await self._client())[1]
        try:
            request = TutorialRequest(
                key=key, context=context_of(context), step=body.step, feature=body.feature
            )
            reply = await shards.call_raw(request, DECIDE_DEADLINE_S)
        except ShardUnavailable:
            choice = self.decider.select_tutorial(
                None, msgspec.structs.asdict(context), time.time(), step=body.step, feature=body.feature
            )
            if choice is not None:
                choice.answer.explain.insert(0, "shard unavailable within the deadline: default variant")
            reply = msgspec.json.encode(choice.answer if choice is not None else None)
        if reply == b"null":
            raise ApiError(404, "not_found", "no tutorial for that step or feature in the catalog")
        return _shard_reply(reply)

    # ------------------------------------------------------------------ gRPC (headstart/protos)

    async def Decide(self, request: Any, grpc_context: Any) -> Any:
        """``DecisionService.Decide``: ``/v1/decide`` over gRPC (same auth, answer and errors)."""
        return await self._grpc(grpc_context, pb.DecideReply, self.decide_bytes, request)

    async def SelectTutorial(self, request: Any, grpc_context: Any) -> Any:
        """``DecisionService.SelectTutorial``: ``/v1/tutorials/select`` over gRPC."""
        return await self._grpc(grpc_context, pb.SelectTutorialReply, self.tutorial_bytes, request)

    async def SendEvents(self, request: Any, grpc_context: Any) -> Any:
        """``DecisionService.SendEvents``: ``/v1/events`` over gRPC."""

        async def send(authorization: str | None, raw: bytes) -> tuple[int, bytes]:
            events = [grpc_event(e) for e in msgspec.json.decode(raw)["events"]]
            try:
                body = EventsBody(events=events)
            except ValidationError as exc:
                raise ApiError(400, "invalid_request", str(exc.errors()[0]["msg"])) from None
            return 200, (await self.events(body, authorization)).model_dump_json().encode()

        return await self._grpc(grpc_context, pb.SendEventsReply, send, request)

    async def Reward(self, request: Any, grpc_context: Any) -> Any:
        """``DecisionService.Reward``: ``/v1/rewards`` over gRPC."""

        async def reward(authorization: str | None, raw: bytes) -> tuple[int, bytes]:
            try:
                body = RewardBody.model_validate_json(raw)
            except ValidationError as exc:
                raise ApiError(400, "invalid_request", str(exc.errors()[0]["msg"])) from None
            return 200, (await self.rewards(body, authorization)).model_dump_json().encode()

        return await self._grpc(grpc_context, pb.RewardReply, reward, request)

    async def _grpc(
        self,
        grpc_context: Any,
        reply_type: Any,
        handle: Callable[[str | None, bytes], Awaitable[tuple[int, bytes]]],
        request: Any,
    ) -> Any:
        """Run the HTTP path with the request as its JSON body; its errors as status codes."""
        metadata = dict(grpc_context.invocation_metadata()) if grpc_context is not None else {}
        raw = json.dumps(json_format.MessageToDict(request, preserving_proto_field_name=True)).encode()
        try:
            status, body = await handle(metadata.get("authorization"), raw)
        except ApiError as exc:
            status, body = exc.status, _error_body(exc.code, exc.message, exc.details)
        if status >= 400:
            error = msgspec.json.decode(body).get("error", {})
            grpc_context.set_code(GRPC_CODES.get(status, grpc.StatusCode.INTERNAL))
            grpc_context.set_details(str(error.get("message", "")))
            return reply_type()
        return json_format.ParseDict(
            _without_nulls(msgspec.json.decode(body)), reply_type(), ignore_unknown_fields=True
        )

    # ------------------------------------------------------------------ events and reads

    @app.post("/v1/events", response_model=EventsAccepted, responses={400: {}, 503: {}})
    async def events(self, body: EventsBody, authorization: Authorization = None) -> EventsAccepted:
        """Ingest a batch of events; answers once JetStream has stored all of them.

        The batch is validated first and refused whole if any event is invalid, so a client can
        fix and resend it: nothing of a refused batch is stored.
        """
        self._require(authorization, "frontend")
        nc, _ = await self._client()
        publisher = EventPublisher(nc.jetstream(), self.pseudonymizer)
        prepared, problems = [], []
        for i, event in enumerate(body.events):
            try:
                prepared.append(publisher.prepare(event))
            except InvalidEvent as exc:
                problems.append({"index": i, "reason": exc.reason, "problem": exc.detail})
        if problems:
            raise ApiError(
                400, "invalid_events", f"{len(problems)} of {len(body.events)} events are invalid", problems
            )
        try:
            acks = await publish_prepared(nc.jetstream(), prepared, retry_for=5.0)
        except Exception as exc:
            raise ApiError(
                503, "unavailable", f"the event stream did not store the batch: {type(exc).__name__}"
            ) from exc
        duplicates = sum(1 for ack in acks if ack.duplicate)
        self.metrics.events.labels("stored").inc(len(acks) - duplicates)
        self.metrics.events.labels("duplicate").inc(duplicates)
        return EventsAccepted(accepted=len(acks) - duplicates, duplicates=duplicates)

    @app.post(
        "/v1/rewards", status_code=202, response_model=RewardAccepted, responses={400: {}, 401: {}, 503: {}}
    )
    async def rewards(self, body: RewardBody, authorization: Authorization = None) -> RewardAccepted:
        """An explicit reward for a decision. Stored in the decision's partition and applied
        there in order with the user's events: once, to the policies that chose, if it arrives
        while the decision's reward window is open (later ones are counted as late)."""
        self._require(authorization, "frontend")
        key = user_key_of(body.decision_id)
        if key is None:
            if len(body.decision_id) == 32 and all(c in "0123456789abcdef" for c in body.decision_id):
                return RewardAccepted(accepted=False, detail="that decision made no learned choice")
            raise ApiError(400, "invalid_decision_id", "not a decision_id from a /v1/decide answer")
        record = RewardRecord(decision_id=body.decision_id, reward=body.reward, ts=time.time())
        subjects = record_subjects(partition_of(key, self.config.partitions), key, "reward")
        headers = {"Nats-Msg-Id": f"reward:{body.decision_id}"}
        data = encode_record(record)
        nc, _ = await self._client()
        try:
            # The decision's partition (where it is applied), then the rewards log.
            ack, _ = await publish_prepared(
                nc.jetstream(), [(subject, data, headers) for subject in subjects], retry_for=5.0
            )
        except Exception as exc:
            raise ApiError(503, "unavailable", f"the reward was not stored: {type(exc).__name__}") from exc
        self.metrics.rewards.labels("duplicate" if ack.duplicate else "stored").inc()
        if ack.duplicate:
            return RewardAccepted(accepted=False, detail="a reward for this decision was already stored")
        return RewardAccepted(accepted=True, detail="stored; applied with the user's events")

    @app.put(
        "/v1/users/{user_id}/consent",
        status_code=202,
        response_model=ConsentAccepted,
        responses={400: {}, 401: {}, 403: {}, 503: {}},
    )
    async def put_consent(
        self, user_id: UserIdPath, body: ConsentBody, authorization: Authorization = None
    ) -> ConsentAccepted:
        """Record consent per purpose (frontend or admin key). It travels as a
        ``consent_updated`` event in the user's partition, so it applies in stream order and
        takes effect on the next event and the next decision; answered once JetStream stored it."""
        role = self._require(authorization, None)
        props = body.model_dump(exclude_none=True)
        if not props:
            raise ApiError(400, "invalid_body", "give 'analytics', 'personalization' or both")
        nc, _ = await self._client()
        publisher = EventPublisher(nc.jetstream(), self.pseudonymizer)
        event = {
            "event_id": f"consent-{uuid.uuid4().hex}",
            "user_id": user_id,
            "type": "consent_updated",
            "ts": time.time(),
            "props": props,
        }
        try:
            await publish_prepared(nc.jetstream(), [publisher.prepare(event)], retry_for=5.0)
            key = self.pseudonymizer.key(user_id)
            await audit(nc.jetstream(), "consent", who=role, user_key=key, **props)
        except Exception as exc:
            raise ApiError(
                503, "unavailable", f"the event stream did not store it: {type(exc).__name__}"
            ) from exc
        return ConsentAccepted(accepted=True, detail="applies from the user's next event and decision")

    @app.get("/v1/users/{user_id}/export", responses={401: {}, 403: {}, 503: {}})
    async def export_user(self, user_id: UserIdPath, authorization: Authorization = None) -> JSONResponse:
        """Everything held on the user (data access request, admin key): live profile with
        segments and consent, and the decisions and rewards still retained; audited."""
        who = self._require(authorization, "admin")
        nc, shards = await self._client()
        try:
            report = await export_user(
                nc.jetstream(), shards, self.pseudonymizer.key(user_id), self.config.partitions, who=who
            )
        except ShardUnavailable as exc:
            raise ApiError(503, "unavailable", str(exc)) from exc
        return JSONResponse(report)

    @app.delete("/v1/users/{user_id}", responses={401: {}, 403: {}, 503: {}})
    async def delete_user(self, user_id: UserIdPath, authorization: Authorization = None) -> JSONResponse:
        """Erase the user everywhere (admin key): live state, snapshots, the events stream and
        the decisions and rewards logs; audited without the raw id. Idempotent; an erasure
        interrupted by a crash is finished when an ingress starts."""
        who = self._require(authorization, "admin")
        nc, shards = await self._client()
        eraser = Eraser(nc.jetstream(), shards, self.config.partitions)
        try:
            report = await eraser.erase(self.pseudonymizer.key(user_id), who=who)
        except (TimeoutError, ShardUnavailable) as exc:
            raise ApiError(503, "unavailable", f"erasure not finished, it resumes: {exc}") from exc
        return JSONResponse({"erased": True, **report})

    @app.get("/v1/users/{user_id}", responses={401: {}, 403: {}, 404: {}})
    async def get_user(self, user_id: str, authorization: Authorization = None) -> Response:
        """The live profile Headstart holds for a user (support and debugging; audited)."""
        who = self._require(authorization, "admin")
        key = self.pseudonymizer.key(user_id)
        nc, shards = await self._client()
        try:
            reply = await shards.call_raw(UserRequest(key=key))
        except ShardUnavailable as exc:
            raise ApiError(503, "unavailable", str(exc)) from exc
        with contextlib.suppress(Exception):  # reading changes nothing; its record is best effort
            await audit(nc.jetstream(), "profile_read", who=who, user_key=key)
        if reply == b"null":
            raise ApiError(404, "not_found", "no state for this user")
        return self._passthrough(reply)

    @app.get("/v1/segments", responses={401: {}, 403: {}})
    async def segments(self, authorization: Authorization = None) -> Response:
        """Every segment: built-in ones and the catalog's rule segments (with their rule), with
        their live size, share of users and mean engagement, counted by the shards now."""
        self._require(authorization, "admin")
        return JSONResponse(await self._segment_report())

    @app.get("/v1/segments/{segment_id}", responses={401: {}, 403: {}, 404: {}})
    async def segment(self, segment_id: str, authorization: Authorization = None) -> Response:
        """One segment (see ``GET /v1/segments``)."""
        self._require(authorization, "admin")
        report = await self._segment_report()
        found = next((s for s in report["segments"] if s["id"] == segment_id), None)
        if found is None:
            raise ApiError(404, "not_found", f"no segment {segment_id!r}")
        return JSONResponse({**found, "users": report["users"]})

    async def _segment_report(self) -> dict[str, Any]:
        answers, missing = await self._ask_each_shard(SegmentSizesRequest(key=""), timeout=10.0)
        nc, _ = await self._client()
        report = segment_report(answers, self.config.catalog, await read_cluster_model(nc.jetstream()))
        return {**report, "shards_missing": missing}

    @app.get("/v1/experiments/{experiment_id}/report", responses={401: {}, 403: {}, 404: {}})
    async def experiment(self, experiment_id: str, authorization: Authorization = None) -> Response:
        """An experiment's results: per arm the users exposed, conversions, rate, lift with its
        confidence interval and p-value (fixed horizon, after CUPED, and always-valid), the
        sample-ratio check, guardrails, the primary metric over time, and a verdict."""
        self._require(authorization, "admin")
        exp = self.decider.experiments.by_id.get(experiment_id)
        if exp is None:
            raise ApiError(404, "not_found", f"no experiment {experiment_id!r} in the catalog")
        spans, missing = await self._ask_each_shard(
            ExperimentMomentsRequest(key="", experiment=exp.id), timeout=10.0
        )
        cuts = report_cuts(spans, time.time())
        answers, missing = await self._ask_each_shard(
            ExperimentMomentsRequest(key="", experiment=exp.id, cuts=cuts), timeout=20.0
        )
        return JSONResponse({**experiment_report(exp, answers, cuts), "shards_missing": missing})

    async def _ask_each_shard(self, request: ShardRequest, timeout: float) -> tuple[list[Any], list[int]]:
        """``request`` asked of every shard once (through a partition it owns): the decoded
        answers, and the shards that did not answer."""
        _, shards = await self._client()
        each = await shards.ask_each_shard(request, timeout)
        return each.answers, each.missing

    @app.post("/v1/admin/scale", responses={400: {}, 401: {}, 403: {}, 503: {}})
    async def scale(self, body: ScaleBody, authorization: Authorization = None) -> Response:
        """Move partitions to ``shards`` shards, live (what `headstart scale` does); answers with
        the moves and their pauses once done."""
        who = self._require(authorization, "admin")
        nc, _ = await self._client()
        try:
            reply = await request_admin(nc, "scale", shards=body.shards)
        except AdminError as exc:
            raise ApiError(503, "unavailable", str(exc)) from exc
        with contextlib.suppress(Exception):  # the move is done; its audit record is best effort
            await audit(nc.jetstream(), "scale", who=who, shards=body.shards)
        return self._passthrough(reply)

    @app.get("/openapi.json", include_in_schema=False)
    async def openapi_document(self, authorization: Authorization = None) -> JSONResponse:
        """The OpenAPI schema, for any key."""
        self._require(authorization, None)
        return JSONResponse(app.openapi())

    # ------------------------------------------------------------------ health

    @app.get("/", include_in_schema=False)
    async def demo_page(self) -> Response:
        """The demo onboarding page (no key: it asks for one, kept in the URL's fragment)."""
        return Response(_static("index.html"), media_type="text/html; charset=utf-8")

    @app.get("/static/headstart.js", include_in_schema=False)
    async def javascript_client(self) -> Response:
        """The dependency-free JavaScript client the demo page uses."""
        return Response(
            _static("headstart.js"),
            media_type="text/javascript; charset=utf-8",
            headers={"Cache-Control": "max-age=300"},
        )

    @app.get("/v1/ruleset", responses={401: {}, 403: {}})
    async def ruleset(self, authorization: Authorization = None) -> Response:
        """Flags, tutorial targeting and welcome messages by segment, signed (ECDSA P-256): what
        a page evaluates itself from a user's last known segments when Headstart is slow."""
        self._require(authorization, "frontend")
        return Response(self._ruleset, media_type="application/json", headers={"Cache-Control": "max-age=60"})

    @app.get("/v1/ruleset/key")
    async def ruleset_key(self) -> Response:
        """The public key (JWK) rulesets are signed with: pin it in the page (no API key needed)."""
        return Response(self._ruleset_key, media_type="application/json")

    @app.get("/v1/admin/policies", responses={401: {}, 403: {}, 503: {}})
    async def policies(self, authorization: Authorization = None) -> Response:
        """What the served policy learned, per decision point and arm: decisions credited
        (weighted), their share, and the reward rate; from one shard (they all serve the same
        merged statistics, up to the last merge)."""
        self._require(authorization, "admin")
        answers, _ = await self._ask_each_shard(LearnedRequest(key=""), timeout=5.0)
        if not answers:
            raise ApiError(503, "unavailable", "no shard answered")
        points = {}
        for point, learned in answers[0].items():
            total = sum(learned["n"]) or 1.0
            points[point] = {
                arm: {
                    "share": n / total,
                    "rate": (reward / n) if n else None,
                    "n": n,
                }
                for arm, n, reward in zip(learned["arms"], learned["n"], learned["rewards"], strict=True)
            }
        return JSONResponse({"points": points})

    @app.get("/healthz")
    async def healthz(self) -> dict[str, str]:
        """Liveness: the ingress answers."""
        return {"status": "ok"}

    @app.get("/readyz", responses={503: {}})
    async def readyz(self) -> JSONResponse:
        """Readiness: NATS is connected and every partition's shard answers."""
        now = time.monotonic()
        if now - self._ready_at > READY_CACHE_S:
            self._ready_detail = await self._check_ready()
            self._ready_at = now
        detail = self._ready_detail
        return JSONResponse(detail, status_code=200 if detail["ready"] else 503)

    async def _check_ready(self) -> dict[str, Any]:
        try:
            nc, shards = await asyncio.wait_for(self._client(), 2.0)
        except Exception as exc:  # noqa: BLE001 - not ready is an answer, not an error
            return {"ready": False, "nats": False, "reason": type(exc).__name__}
        # The same pings that keep the coalescing owner map fresh: a partition is served when its
        # owner answered.
        await shards.refresh_owners()
        missing = [p for p, owner in enumerate(shards.owners) if owner is None]
        return {
            "ready": not missing and nc.is_connected,
            "nats": nc.is_connected,
            "partitions_without_shard": missing,
        }

    @app.get("/metrics", responses={401: {}, 403: {}})
    async def metrics_endpoint(self, request: Request) -> Response:
        """Prometheus text format (admin key; Prometheus sends it as a bearer token)."""
        self._require(request.headers.get("authorization"), "admin")
        nc, _ = await self._client()
        answers, _ = await self._ask_each_shard(StatsRequest(key=""), timeout=1.0)
        stats = [msgspec.convert(answer, ShardStats, strict=False) for answer in answers]
        lag: dict[int, int] = {}
        js = nc.jetstream()
        for shard_stats in stats:
            for partition, name in shard_stats.consumers.items():
                with contextlib.suppress(Exception):
                    info = await js.consumer_info(EVENTS_STREAM, name, timeout=1.0)
                    lag[partition] = int(info.num_pending or 0)
        webhooks: list[dict[str, Any]] = []
        with contextlib.suppress(Exception):  # no webhooks, or their actor not reporting yet
            entry = await (await js.key_value(STATUS_BUCKET)).get(WEBHOOKS_STATUS_KEY)
            webhooks = json.loads(entry.value or b"[]")
        return Response(render(self.metrics, stats, lag, webhooks), media_type=CONTENT_TYPE_LATEST)

    def _passthrough(self, reply: bytes) -> Response:
        status, body = _shard_reply(reply)
        return Response(body, status_code=status, media_type="application/json")
