"""The HTTP API's routes: a Ray Serve deployment with a FastAPI ingress.

Each route checks the key, decodes its body (:mod:`actors.ingress.schemas`), asks a shard or
the local decider (:mod:`actors.ingress.shards`), the admin reports (:mod:`actors.ingress.admin`)
or the Segment ingestion (:mod:`actors.ingress.segment`), and answers. ``POST /v1/decide`` is
normally answered by :class:`~actors.ingress.middleware.HotPath` before routing, from the same
:meth:`Ingress.decide_bytes`; the gRPC service (:mod:`actors.ingress.grpc_service`) runs the same
``*_bytes`` paths.

When a shard does not answer within the deadline (starting, moving, down), ``/v1/decide``
answers with the catalog's default flow and says so in ``explain``, rather than failing.
"""

# No ``from __future__ import annotations`` here: Serve's class-based routes need the routes'
# annotations (``Request``) as objects, not strings, or FastAPI reads them as query parameters.
import asyncio
import contextlib
import gc
import logging
import time
import uuid
from importlib import resources
from typing import Annotated, Any

import msgspec
from fastapi import Path, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from nats.aio.client import Client as NATS
from nats.js.errors import NotFoundError
from prometheus_client import CONTENT_TYPE_LATEST
from ray import serve

from actors.ingress import admin, outage, shards
from actors.ingress.application import app, openapi_document
from actors.ingress.catalog_routes import CatalogRoutes
from actors.ingress.config import IngressConfig
from actors.ingress.cors import AllowedOrigins, CrossOrigin
from actors.ingress.errors import ApiError, shard_reply
from actors.ingress.grpc_service import DecisionService
from actors.ingress.live_catalog import CatalogView, LiveCatalog
from actors.ingress.live_keys import LiveKeys
from actors.ingress.middleware import HotPath
from actors.ingress.schemas import (
    ConsentAccepted,
    ConsentBody,
    DecideBody,
    EventsAccepted,
    EventsBody,
    RewardAccepted,
    RewardBody,
    ScaleBody,
    TutorialBody,
    decode,
    operation,
)
from actors.ingress.segment import CALLS as SEGMENT_CALLS
from actors.ingress.segment import MAX_SEGMENT_CALLS, SegmentIngest
from engine.decision import DecisionAnswer, TutorialAnswer
from engine.errors import InvalidEvent
from engine.events import unknown_type_message
from engine.keys import Pseudonymizer, partition_of
from engine.learning import RewardRecord, encode_record, user_key_of
from headstart.adapters.audit import audit
from headstart.adapters.broker import connect_nats
from headstart.adapters.control import AdminError, request_admin
from headstart.adapters.rpc import ShardClient, ShardError, ShardUnavailable
from headstart.adapters.streams import EventPublisher, publish_prepared
from headstart.adapters.topology import record_subjects
from headstart.privacy.access import export_user
from headstart.privacy.erasure import Eraser
from headstart.web.auth import (
    ADMIN,
    ANY_KEY,
    CONSENT,
    FOR_USER,
    PRODUCT,
    Access,
    Caller,
    RateLimits,
    bearer_from_basic,
)
from headstart.web.identity import (
    BatchRefused,
    IdentityRefused,
    IdentityVerifier,
    batch_user,
    verify_segment_call,
)
from headstart.web.metrics import IngressMetrics
from headstart.web.ruleset import public_jwk
from headstart.web.segment_api import CALL_TYPES as SEGMENT_CALL_TYPES
from headstart.web.segment_api import AliasStore

log = logging.getLogger(__name__)

READY_CACHE_S = 1.0
#: How long a starting replica waits for NATS (the live keys and catalog) before it serves.
CONNECT_AT_START_S = 10.0
GC_GEN0_THRESHOLD = 50_000

UserIdPath = Annotated[str, Path(min_length=1, max_length=256, description="the caller's raw user id")]


#: The files a page may load from /static/, with their media types.
CLIENT_FILES = {
    "headstart.js": "text/javascript; charset=utf-8",
    "headstart.mjs": "text/javascript; charset=utf-8",
    "headstart-react.js": "text/javascript; charset=utf-8",
    "headstart.d.ts": "application/typescript; charset=utf-8",
}


def _static(name: str) -> bytes:
    """A file of the demo page (package data of ``headstart``)."""
    return resources.files("headstart").joinpath("static", name).read_bytes()


def _json(body: bytes, status: int = 200) -> Response:
    return Response(body, status_code=status, media_type="application/json")


def _passthrough(reply: bytes) -> Response:
    """A shard's (or the supervisor's) JSON reply as it is, its errors as 400 or 503."""
    status, body = shard_reply(reply)
    return _json(body, status)


#: The Segment call body (mapped field by field; anything else in it is ignored).
SEGMENT_CALL = {"type": "object", "description": "one Segment call (track, identify, page, ...)"}
SEGMENT_BATCH = {
    "type": "object",
    "required": ["batch"],
    "properties": {"batch": {"type": "array", "maxItems": MAX_SEGMENT_CALLS, "items": {}}},
}
SEGMENT_ANSWER = {"type": "object", "properties": {"success": {"type": "boolean"}}, "required": ["success"]}
ANY_OBJECT: dict[str, Any] = {"type": "object"}


def _segment_doc(body: dict[str, Any], errors: tuple[int, ...] = ()) -> dict[str, Any]:
    doc = operation(answer=SEGMENT_ANSWER, errors=(400, 413, 503, *errors), access=PRODUCT, basic=True)
    doc["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    return doc


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
class Ingress(DecisionService, CatalogRoutes):
    # Serve awaits an async constructor before the replica takes requests (Ray actors allow it).
    async def __init__(self, config: IngressConfig) -> None:  # type: ignore[misc]
        self.config = config
        # Requests allocate many short-lived objects; collecting generation 0 every 700
        # allocations (CPython's default) spent a measurable share of the replica's loop.
        gc.set_threshold(GC_GEN0_THRESHOLD, 10, 10)
        self.keys = LiveKeys(config.key_hashes, config.stream_replicas, config.key_expiries)
        self.rate_limits = RateLimits(config.rate_limits)
        self.pseudonymizer = Pseudonymizer(config.secret)
        self.identity = IdentityVerifier(
            config.identity_verification, config.identity_secret, config.anonymous_prefix
        )
        # Everything derived from the catalog, as one view swapped whole when a new version is
        # stored (see actors/ingress/live_catalog.py). Built here, not at import: Serve pickles
        # this class by value and decoders don't pickle.
        self.live = LiveCatalog(config.catalog, config.catalog_version, config.secret, config.stream_replicas)
        self._openapi: tuple[CatalogView, dict[str, Any]] | None = None
        self.nc: NATS | None = None
        self._shards: ShardClient | None = None
        self._events_decoder = msgspec.json.Decoder(EventsBody)
        self._reward_decoder = msgspec.json.Decoder(RewardBody)
        self._consent_decoder = msgspec.json.Decoder(ConsentBody)
        self._scale_decoder = msgspec.json.Decoder(ScaleBody)
        self._connecting = asyncio.Lock()
        self._resuming: asyncio.Task[None] | None = None
        self._ready_at = 0.0
        self._ready_detail: dict[str, Any] = {}
        self.metrics = IngressMetrics()
        self._shard_decisions = self.metrics.decisions.labels("shard")
        self._fallback_decisions = self.metrics.decisions.labels("fallback")
        HotPath.segment_prefix = config.segment_prefix
        CrossOrigin.allowed = AllowedOrigins(config.cors_origins, self.metrics.cors_refused)
        self._segment = SegmentIngest(self.pseudonymizer, self.metrics, config.events_retention_days)
        self._ruleset_key = msgspec.json.encode(public_jwk(self.live.signer.public_key()))
        # Connected before the first request, so a replica started after keys were revoked (or
        # a catalog stored) never serves one request from the keys and catalog it was deployed
        # with. Bounded: with NATS down the replica still starts, and answers the default flow.
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._client(), CONNECT_AT_START_S)

    def _require(self, authorization: str | None, access: Access) -> Caller:
        """Who calls (``.who`` names them in audit records), if their key's role may call a route
        with ``access`` and the key is within its rate limit."""
        identity = self.keys.authenticator.identify(authorization)
        if identity is None:
            raise ApiError(401, "unauthorized", "missing or unknown API key (Authorization: Bearer <key>)")
        caller = Caller(*identity)
        granted, key_id = caller
        self.keys.used(key_id)
        if granted not in access.roles:
            message = f"this endpoint takes a {access.describe()} key, not a {granted} key"
            raise ApiError(403, "forbidden", message)
        wait = self.rate_limits.wait(granted, key_id)
        if wait is not None:
            limit = self.rate_limits.items[granted]
            raise ApiError(
                429,
                "rate_limited",
                f"this key is over its limit of {limit}; retry in {wait:.1f} s",
                headers={"Retry-After": RateLimits.retry_after(wait)},
            )
        return caller

    def _verify(self, caller: Caller, user_id: str, user_hash: str | None) -> None:
        """A frontend key acts only for the user its page was signed for: 403 saying what is
        missing, per the identity verification mode. Server and admin keys act for anyone."""
        if caller.role == "frontend" and self.identity.mode != "off":
            try:
                self.identity.verify(user_id, user_hash)
            except IdentityRefused as refused:
                raise self._refused(refused) from None

    def _refused(self, refused: IdentityRefused) -> ApiError:
        self.metrics.identity_refused.labels(refused.code).inc()
        return ApiError(403, refused.code, refused.message)

    async def _user_key(self, user_id: str) -> str:
        """The key a request for ``user_id`` acts on: its pseudonym, or for an anonymous id
        linked to a user (``anonymous_id`` in an events batch, Segment's identify and alias),
        that user's key."""
        key = self.pseudonymizer.key(user_id)
        if not self.identity.is_anonymous(user_id):
            return key
        try:
            aliases = await self._aliases()
            return await aliases.resolve(key) or key
        except Exception as exc:  # noqa: BLE001 - an unlinked visitor is still served as itself
            log.warning("resolving an anonymous id failed: %s", type(exc).__name__)
            return key

    async def _aliases(self) -> AliasStore:
        nc, _ = await self._client()
        return await self._segment.aliases(nc.jetstream())

    async def _client(self) -> tuple[NATS, ShardClient]:
        if self.nc is None or self.nc.is_closed or self._shards is None:
            async with self._connecting:
                if self.nc is None or self.nc.is_closed or self._shards is None:
                    try:
                        self.nc = await connect_nats(
                            self.config.nats_url,
                            self.config.nats_auth,
                            name="headstart-ingress",
                            max_reconnect_attempts=-1,
                        )
                        # Live: the store's latest version served before the first request that
                        # waited for this connection, and followed from here on.
                        await self.live.connected(self.nc.jetstream())
                        await self.keys.connected(self.nc.jetstream())
                    except Exception as exc:
                        # A replica started while the broker is down: a clear 503, never a 500
                        # (decisions fall back to the default flow, see _shard_client).
                        if self.nc is not None:
                            with contextlib.suppress(Exception):
                                await self.nc.close()
                            self.nc = None
                        raise ApiError(
                            503,
                            "unavailable",
                            f"the event broker is not reachable yet: {type(exc).__name__}",
                            headers={"Retry-After": "1"},
                        ) from exc
                    self._shards = ShardClient(self.nc, self.config.partitions)
                    self._shards.start_owner_refresh()
                    # Erasures a crash interrupted are finished in the background.
                    eraser = Eraser(self.nc.jetstream(), self._shards, self.config.partitions)
                    self._resuming = asyncio.create_task(self._resume_erasures(eraser))
        return self.nc, self._shards

    async def _shard_client(self) -> ShardClient | None:
        """The shard client, or None while the broker cannot be reached (the caller answers
        from the default flow)."""
        if self._shards is not None:  # the decision path: no await once connected
            return self._shards
        try:
            return (await self._client())[1]
        except ApiError:
            return None

    async def _resume_erasures(self, eraser: Eraser) -> None:
        try:
            finished = await eraser.resume()
            if finished:
                log.info("finished %d interrupted erasures", len(finished))
        except Exception as exc:  # noqa: BLE001 - retried at the next start; DELETE also resumes
            log.warning("resuming erasures failed: %s", type(exc).__name__)

    # ------------------------------------------------------------------ decisions

    @app.post("/v1/decide", openapi_extra=operation(answer=DecisionAnswer, body=DecideBody, access=FOR_USER))
    async def decide(self, request: Request) -> Response:
        """The next onboarding step, tutorial variant, message, flags and segments for a user."""
        # Normally answered by the HotPath middleware before routing; this route documents it
        # and answers the same way if the middleware is bypassed.
        status, body = await self.decide_bytes(request.headers.get("authorization"), await request.body())
        return _json(body, status)

    async def decide_bytes(
        self, authorization: str | None, raw_body: bytes, view: CatalogView | None = None
    ) -> tuple[int, bytes]:
        """``/v1/decide`` from the raw header and body to the status and JSON body, answered
        from ``view`` (None: the catalog served now)."""
        caller = self._require(authorization, FOR_USER)
        started = time.perf_counter()
        view = view or self.live.view
        body: DecideBody = decode(view.decide_decoder, raw_body)
        self._verify(caller, body.user_id, body.user_hash)
        key = await self._user_key(body.user_id)
        client = await self._shard_client()
        try:
            if client is None:
                raise ShardUnavailable("the event broker is not reachable")
            reply = await shards.decide(client, key, body.context)
        except ShardUnavailable:
            self._fallback_decisions.inc()
            return 200, shards.default_decision(view.decider, key, body.context)
        self._shard_decisions.inc()
        self.metrics.decide_seconds.observe(time.perf_counter() - started)
        return shard_reply(reply)

    @app.post("/v1/flags", openapi_extra=operation(answer=ANY_OBJECT, body=DecideBody, access=FOR_USER))
    async def flags(self, request: Request) -> Response:
        """Every feature flag's value for a user, with why (``TARGETING_MATCH``, ``SPLIT`` or
        ``DEFAULT``, and the rule), and the user's segments; logs no decision. With the user's
        shard unavailable, the flags from the request's context alone, marked ``stale``."""
        caller = self._require(request.headers.get("authorization"), FOR_USER)
        view = self.live.view
        body: DecideBody = decode(view.decide_decoder, await request.body())
        self._verify(caller, body.user_id, body.user_hash)
        key = await self._user_key(body.user_id)
        client = await self._shard_client()
        try:
            if client is None:
                raise ShardUnavailable("the event broker is not reachable")
            reply = await shards.flags(client, key, body.context)
            stale = False
        except (ShardUnavailable, ShardError):
            reply = shards.default_flags(view.decider, key, body.context)
            stale = True
        for flag_id, entry in reply["flags"].items():
            entry["description"] = view.flag_descriptions.get(flag_id, "")
        return JSONResponse({**reply, "stale": stale})

    @app.post(
        "/v1/tutorials/select",
        openapi_extra=operation(answer=TutorialAnswer, body=TutorialBody, errors=(404,), access=FOR_USER),
    )
    async def select_tutorial(self, request: Request) -> Response:
        """Which variant of the tutorial for a step (or a feature) this user should see."""
        status, body = await self.tutorial_bytes(request.headers.get("authorization"), await request.body())
        return _json(body, status)

    async def tutorial_bytes(
        self, authorization: str | None, raw_body: bytes, view: CatalogView | None = None
    ) -> tuple[int, bytes]:
        """``/v1/tutorials/select`` from the raw header and body to the status and JSON body."""
        caller = self._require(authorization, FOR_USER)
        view = view or self.live.view
        body: TutorialBody = decode(view.tutorial_decoder, raw_body)
        if (body.step is None) == (body.feature is None):
            raise ApiError(400, "invalid_request", "give exactly one of 'step' or 'feature'")
        self._verify(caller, body.user_id, body.user_hash)
        key = await self._user_key(body.user_id)
        client = await self._shard_client()
        try:
            if client is None:
                raise ShardUnavailable("the event broker is not reachable")
            reply = await shards.select_tutorial(client, key, body)
        except ShardUnavailable:
            reply = shards.default_tutorial(view.decider, body)
        if reply == b"null":
            raise ApiError(404, "not_found", "no tutorial for that step or feature in the catalog")
        return shard_reply(reply)

    # ------------------------------------------------------------------ Segment API

    @app.post("/segment/v1/batch", openapi_extra=_segment_doc(SEGMENT_BATCH))
    async def segment_batch(self, request: Request) -> Response:
        """The Segment HTTP Tracking API's ``batch`` (see ``/segment/v1/{call}``)."""
        return await self.segment_call("batch", request)

    @app.post("/segment/v1/{call}", openapi_extra=_segment_doc(SEGMENT_CALL, errors=(404,)))
    async def segment_call(
        self,
        call: Annotated[str, Path(json_schema_extra={"enum": list(SEGMENT_CALL_TYPES)})],
        request: Request,
    ) -> Response:
        """The Segment HTTP Tracking API (``batch``, ``track``, ``identify``, ``page``,
        ``screen``, ``alias``, ``group``): the write key is a frontend key as the Basic user,
        bodies may be gzip-encoded; calls are mapped to Headstart events by the catalog's
        ``segment_api``, unmapped ones counted and dropped, invalid ones dead-lettered (ids
        pseudonymized) with their reason. Answers 200 once JetStream stored the events."""
        if call not in SEGMENT_CALLS:
            raise ApiError(404, "not_found", f"no Segment call {call[:40]!r}")
        caller = self._require(bearer_from_basic(request.headers.get("authorization")), PRODUCT)
        raw = await request.body()
        nc, _ = await self._client()
        mapper = self.live.view.segment_mapper
        verify = caller.role == "frontend" and self.identity.mode != "off"
        await self._segment.ingest(
            nc.jetstream(),
            mapper,
            call,
            raw,
            request.headers.get("content-encoding"),
            check=self._verify_segment_call if verify else None,
        )
        return JSONResponse({"success": True})

    def _verify_segment_call(self, message: dict[str, Any]) -> None:
        try:
            verify_segment_call(self.identity, message)
        except BatchRefused as exc:
            raise ApiError(400, "invalid_request", str(exc)) from None
        except IdentityRefused as refused:
            raise self._refused(refused) from None

    # ------------------------------------------------------------------ events and reads

    @app.post(
        "/v1/events",
        openapi_extra=operation(answer=EventsAccepted, body=EventsBody, errors=(503,), access=FOR_USER),
    )
    async def events(self, request: Request) -> Response:
        """Ingest a batch of events; answers once JetStream has stored all of them.

        The batch is validated first and refused whole if any event is invalid, so a client can
        fix and resend it: nothing of a refused batch is stored.
        """
        status, body = await self.events_bytes(request.headers.get("authorization"), await request.body())
        return _json(body, status)

    async def events_bytes(
        self, authorization: str | None, raw_body: bytes, view: CatalogView | None = None
    ) -> tuple[int, bytes]:
        """``/v1/events`` from the raw header and body to the status and JSON body."""
        caller = self._require(authorization, FOR_USER)
        body: EventsBody = decode(self._events_decoder, raw_body)
        batch_user = self._verify_batch(caller, body)
        schema = (view or self.live.view).schema
        nc, _ = await self._client()
        publisher = EventPublisher(nc.jetstream(), self.pseudonymizer, schema)
        linked = await self._linked_keys(body.events)
        prepared, problems = [], []
        for i, event in enumerate(body.events):
            try:
                # Strict: the document's event model, no lax conversions ("ts": "1", true as 1).
                user_id = event.get("user_id")
                user_key = linked.get(user_id) if isinstance(user_id, str) else None
                prepared.append(publisher.prepare(event, user_key=user_key, strict=True))
            except InvalidEvent as exc:
                problems.append({"index": i, "reason": exc.reason, "problem": exc.detail})
        if problems:
            message = f"{len(problems)} of {len(body.events)} events are invalid"
            if any(p["reason"] == "unknown_type" for p in problems):
                message += f"; {unknown_type_message(schema.event_types)}"
            raise ApiError(400, "invalid_events", message, problems)
        try:
            outage.require_connected(nc)  # the broker is down: 503 now, not after waiting for it
            if body.anonymous_id is not None and batch_user is not None:
                aliases = await self._segment.aliases(nc.jetstream())
                key_of = self.pseudonymizer.key
                await aliases.link(key_of(body.anonymous_id), key_of(batch_user))
            acks = await outage.store(nc.jetstream(), prepared)
        except Exception as exc:
            message = f"the event stream did not store the batch: {type(exc).__name__}"
            raise outage.unavailable(message) from exc
        duplicates = sum(1 for ack in acks if ack.duplicate)
        self.metrics.events.labels("stored").inc(len(acks) - duplicates)
        self.metrics.events.labels("duplicate").inc(duplicates)
        return 200, msgspec.json.encode(
            EventsAccepted(accepted=len(acks) - duplicates, duplicates=duplicates)
        )

    def _verify_batch(self, caller: Caller, body: EventsBody) -> str | None:
        """The one user the batch is for, after identity verification
        (:func:`~headstart.web.identity.batch_user`)."""
        user_ids = [event.get("user_id") for event in body.events]
        verified = caller.role == "frontend"
        try:
            return batch_user(self.identity, verified, user_ids, body.user_hash, body.anonymous_id)
        except BatchRefused as exc:
            raise ApiError(400, "invalid_request", str(exc)) from None
        except IdentityRefused as refused:
            raise self._refused(refused) from None

    async def _linked_keys(self, events: list[dict[str, Any]]) -> dict[str, str]:
        """The user keys of the batch's anonymous ids that are linked to a user (the rest are
        pseudonymized as they are)."""
        linked = {}
        for user_id in {e.get("user_id") for e in events if isinstance(e.get("user_id"), str)}:
            if isinstance(user_id, str) and self.identity.is_anonymous(user_id):
                key = await self._user_key(user_id)
                if key != self.pseudonymizer.key(user_id):
                    linked[user_id] = key
        return linked

    @app.post(
        "/v1/rewards",
        openapi_extra=operation(
            ok=202, answer=RewardAccepted, body=RewardBody, errors=(503,), access=PRODUCT
        ),
    )
    async def rewards(self, request: Request) -> Response:
        """An explicit reward for a decision. Stored in the decision's partition and applied
        there in order with the user's events: once, to the policies that chose, if it arrives
        while the decision's reward window is open (later ones are counted as late)."""
        status, body = await self.rewards_bytes(request.headers.get("authorization"), await request.body())
        return _json(body, status)

    async def rewards_bytes(self, authorization: str | None, raw_body: bytes) -> tuple[int, bytes]:
        """``/v1/rewards`` from the raw header and body to the status and JSON body."""
        self._require(authorization, PRODUCT)
        body: RewardBody = decode(self._reward_decoder, raw_body)
        key = user_key_of(body.decision_id)
        if key is None:
            if len(body.decision_id) == 32 and all(c in "0123456789abcdef" for c in body.decision_id):
                return 202, msgspec.json.encode(
                    RewardAccepted(accepted=False, detail="that decision made no learned choice")
                )
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
            answer = RewardAccepted(accepted=False, detail="a reward for this decision was already stored")
        else:
            answer = RewardAccepted(accepted=True, detail="stored; applied with the user's events")
        return 202, msgspec.json.encode(answer)

    @app.put(
        "/v1/users/{user_id}/consent",
        openapi_extra=operation(
            ok=202, answer=ConsentAccepted, body=ConsentBody, errors=(503,), access=CONSENT
        ),
    )
    async def put_consent(self, user_id: UserIdPath, request: Request) -> Response:
        """Record consent per purpose (any key; a frontend key with the user's ``user_hash`` when
        identity verification is on). It travels as a ``consent_updated`` event in the user's
        partition, so it applies in stream order and takes effect on the next event and the next
        decision; answered once JetStream stored it."""
        caller = self._require(request.headers.get("authorization"), CONSENT)
        body: ConsentBody = decode(self._consent_decoder, await request.body())
        self._verify(caller, user_id, body.user_hash)
        purposes = {"analytics": body.analytics, "personalization": body.personalization}
        props: dict[str, Any] = {p: given for p, given in purposes.items() if given is not None}
        if not props:
            raise ApiError(400, "invalid_body", "give 'analytics', 'personalization' or both")
        nc, _ = await self._client()
        publisher = EventPublisher(nc.jetstream(), self.pseudonymizer, self.live.view.schema)
        event = {
            "event_id": f"consent-{uuid.uuid4().hex}",
            "user_id": user_id,
            "type": "consent_updated",
            "ts": time.time(),
            "props": props,
        }
        key = await self._user_key(user_id)
        try:
            await publish_prepared(nc.jetstream(), [publisher.prepare(event, user_key=key)], retry_for=5.0)
            await audit(nc.jetstream(), "consent", who=caller.who, user_key=key, **props)
        except Exception as exc:
            raise ApiError(
                503, "unavailable", f"the event stream did not store it: {type(exc).__name__}"
            ) from exc
        answer = ConsentAccepted(accepted=True, detail="applies from the user's next event and decision")
        return _json(msgspec.json.encode(answer), 202)

    @app.get(
        "/v1/users/{user_id}/export",
        openapi_extra=operation(answer=ANY_OBJECT, errors=(400, 503), access=ADMIN),
    )
    async def export_user(self, user_id: UserIdPath, request: Request) -> JSONResponse:
        """Everything held on the user (data access request, admin key): live profile with
        segments and consent, and the decisions and rewards still retained; audited."""
        who = self._require(request.headers.get("authorization"), ADMIN).who
        nc, client = await self._client()
        try:
            report = await export_user(
                nc.jetstream(), client, self.pseudonymizer.key(user_id), self.config.partitions, who=who
            )
        except ShardUnavailable as exc:
            raise ApiError(503, "unavailable", str(exc)) from exc
        return JSONResponse(report)

    @app.delete(
        "/v1/users/{user_id}", openapi_extra=operation(answer=ANY_OBJECT, errors=(400, 503), access=ADMIN)
    )
    async def delete_user(self, user_id: UserIdPath, request: Request) -> JSONResponse:
        """Erase the user everywhere (admin key): live state, snapshots, the events stream and
        the decisions and rewards logs; audited without the raw id. Idempotent; an erasure
        interrupted by a crash is finished when an ingress starts."""
        who = self._require(request.headers.get("authorization"), ADMIN).who
        nc, client = await self._client()
        eraser = Eraser(nc.jetstream(), client, self.config.partitions)
        try:
            report = await eraser.erase(self.pseudonymizer.key(user_id), who=who)
        except (TimeoutError, ShardUnavailable) as exc:
            raise ApiError(503, "unavailable", f"erasure not finished, it resumes: {exc}") from exc
        return JSONResponse({"erased": True, **report})

    @app.get(
        "/v1/users/{user_id}", openapi_extra=operation(answer=ANY_OBJECT, errors=(404, 503), access=ADMIN)
    )
    async def get_user(self, user_id: str, request: Request) -> Response:
        """The live profile Headstart holds for a user (support and debugging; audited)."""
        who = self._require(request.headers.get("authorization"), ADMIN).who
        key = self.pseudonymizer.key(user_id)
        nc, client = await self._client()
        try:
            reply = await shards.user(client, key)
        except ShardUnavailable as exc:
            raise ApiError(503, "unavailable", str(exc)) from exc
        with contextlib.suppress(Exception):  # reading changes nothing; its record is best effort
            await audit(nc.jetstream(), "profile_read", who=who, user_key=key)
        if reply == b"null":
            raise ApiError(404, "not_found", "no state for this user")
        return _passthrough(reply)

    # ------------------------------------------------------------------ admin reports

    @app.get("/v1/segments", openapi_extra=operation(answer=ANY_OBJECT, access=ADMIN))
    async def segments(self, request: Request) -> Response:
        """Every segment: built-in ones and the catalog's rule segments (with their rule), with
        their live size, share of users and mean engagement, counted by the shards now."""
        self._require(request.headers.get("authorization"), ADMIN)
        nc, client = await self._client()
        return JSONResponse(await admin.segments(nc.jetstream(), client, self.live.view.catalog))

    @app.get(
        "/v1/segments/{segment_id}", openapi_extra=operation(answer=ANY_OBJECT, errors=(404,), access=ADMIN)
    )
    async def segment(self, segment_id: str, request: Request) -> Response:
        """One segment (see ``GET /v1/segments``)."""
        self._require(request.headers.get("authorization"), ADMIN)
        nc, client = await self._client()
        report = await admin.segments(nc.jetstream(), client, self.live.view.catalog)
        found = next((s for s in report["segments"] if s["id"] == segment_id), None)
        if found is None:
            raise ApiError(404, "not_found", f"no segment {segment_id!r}")
        return JSONResponse({**found, "users": report["users"]})

    @app.get(
        "/v1/experiments/{experiment_id}/report",
        openapi_extra=operation(answer=ANY_OBJECT, errors=(404,), access=ADMIN),
    )
    async def experiment(self, experiment_id: str, request: Request) -> Response:
        """An experiment's results: per arm the users exposed, conversions, rate, lift with its
        confidence interval and p-value (fixed horizon, after CUPED, and always-valid), the
        sample-ratio check, guardrails, the primary metric over time, a verdict, and the stored
        catalog versions that declared it (``catalog_versions``: the versions it ran under). An
        experiment removed from the catalog is reported as the last version declaring it had it."""
        self._require(request.headers.get("authorization"), ADMIN)
        _, client = await self._client()
        exp = self.live.view.decider.experiments.by_id.get(experiment_id)
        versions: list[int] | None = None
        try:
            versions = await self.live.versions_with_experiment(experiment_id)
            if exp is None:  # removed from the catalog: reported as it was last declared
                exp = await self.live.removed_experiment(experiment_id)
        except Exception as exc:  # noqa: BLE001 - the results stand without the version list
            log.warning("catalog versions of experiment %s: %s", experiment_id, type(exc).__name__)
        if exp is None:
            raise ApiError(404, "not_found", f"no experiment {experiment_id!r} in the catalog")
        report = await admin.experiment(client, exp)
        if versions is not None:
            report["catalog_versions"] = versions
        return JSONResponse(report)

    @app.get("/v1/admin/policies", openapi_extra=operation(answer=ANY_OBJECT, errors=(503,), access=ADMIN))
    async def policies(self, request: Request) -> Response:
        """What the served policy learned, per decision point and arm: decisions credited
        (weighted), their share, and the reward rate; from one shard (they all serve the same
        merged statistics, up to the last merge)."""
        self._require(request.headers.get("authorization"), ADMIN)
        _, client = await self._client()
        points = await admin.learned(client)
        if points is None:
            raise ApiError(503, "unavailable", "no shard answered")
        return JSONResponse({"points": points})

    @app.get("/v1/admin/shadow", openapi_extra=operation(answer=ANY_OBJECT, errors=(503,), access=ADMIN))
    async def shadow(self, request: Request) -> Response:
        """The apprentice report: per decision point, how often the shadow policy agreed with the
        served one, its estimated value from the served decisions (SNIPS and doubly robust, with
        95% intervals) beside the served policy's observed value, and a verdict (``shadow
        better``, ``shadow worse``, ``not enough data``); ``ready_to_switch`` when it is better
        at every point. Replays the events stream: seconds on a large one."""
        self._require(request.headers.get("authorization"), ADMIN)
        nc, _ = await self._client()
        try:
            report = await admin.shadow(nc.jetstream(), self.live.view.catalog)
        except (TimeoutError, NotFoundError) as exc:
            raise ApiError(503, "unavailable", f"the events stream could not be read: {exc}") from exc
        return JSONResponse(report)

    @app.post(
        "/v1/admin/scale",
        openapi_extra=operation(answer=ANY_OBJECT, body=ScaleBody, errors=(503,), access=ADMIN),
    )
    async def scale(self, request: Request) -> Response:
        """Move partitions to ``shards`` shards, live (what `headstart scale` does); answers with
        the moves and their pauses once done."""
        who = self._require(request.headers.get("authorization"), ADMIN).who
        body: ScaleBody = decode(self._scale_decoder, await request.body())
        shards = int(body.shards)
        nc, _ = await self._client()
        try:
            reply = await request_admin(nc, "scale", shards=shards)
        except AdminError as exc:
            raise ApiError(503, "unavailable", str(exc)) from exc
        with contextlib.suppress(Exception):  # the move is done; its audit record is best effort
            await audit(nc.jetstream(), "scale", who=who, shards=shards)
        return _passthrough(reply)

    @app.get(
        "/metrics",
        response_class=PlainTextResponse,
        openapi_extra=operation(
            answer={"type": "string", "description": "Prometheus text format"},
            access=ADMIN,
            media_type="text/plain",
        ),
    )
    async def metrics_endpoint(self, request: Request) -> Response:
        """Prometheus text format (admin key; Prometheus sends it as a bearer token)."""
        self._require(request.headers.get("authorization"), ADMIN)
        nc, client = await self._client()
        text = await admin.scrape(nc.jetstream(), client, self.metrics)
        return Response(text, media_type=CONTENT_TYPE_LATEST)

    @app.get("/openapi.json", include_in_schema=False)
    async def openapi_route(self, request: Request) -> JSONResponse:
        """The OpenAPI schema, for any key."""
        self._require(request.headers.get("authorization"), ANY_KEY)
        view = self.live.view
        if self._openapi is None or self._openapi[0] is not view:
            shards = min(256, self.config.partitions)
            document = openapi_document(shards, view.schema, self.identity.anonymous_prefix)
            self._openapi = (view, document)
        return JSONResponse(self._openapi[1])

    # ------------------------------------------------------------------ pages and health

    @app.get("/", include_in_schema=False)
    async def demo_page(self) -> Response:
        """The demo onboarding page (no key: it asks for one, kept in the URL's fragment)."""
        return Response(_static("index.html"), media_type="text/html; charset=utf-8")

    @app.get("/static/{name}", include_in_schema=False)
    async def javascript_client(self, name: str) -> Response:
        """The dependency-free JavaScript client the demo page uses, its ES module, its
        TypeScript declarations and the React hook (docs/kit.md); nothing else."""
        if name not in CLIENT_FILES:
            return Response(status_code=404)
        return Response(
            _static(name), media_type=CLIENT_FILES[name], headers={"Cache-Control": "max-age=300"}
        )

    @app.get("/v1/ruleset", openapi_extra=operation(answer=ANY_OBJECT, access=PRODUCT))
    async def ruleset(self, request: Request) -> Response:
        """Flags, tutorial targeting and welcome messages by segment, signed (ECDSA P-256): what
        a page evaluates itself from a user's last known segments when Headstart is slow."""
        self._require(request.headers.get("authorization"), PRODUCT)
        ruleset = self.live.view.ruleset
        return Response(ruleset, media_type="application/json", headers={"Cache-Control": "max-age=60"})

    @app.get("/v1/ruleset/key", openapi_extra=operation(answer=ANY_OBJECT))
    async def ruleset_key(self) -> Response:
        """The public key (JWK) rulesets are signed with: pin it in the page (no API key needed)."""
        return Response(self._ruleset_key, media_type="application/json")

    @app.get("/healthz", openapi_extra=operation(answer=ANY_OBJECT))
    async def healthz(self) -> dict[str, str]:
        """Liveness: the ingress answers."""
        return {"status": "ok"}

    @app.get("/readyz", openapi_extra=operation(answer=ANY_OBJECT, errors=(503,)))
    async def readyz(self) -> JSONResponse:
        """Readiness: NATS is connected and every partition's shard answers; with the catalog
        version this replica serves."""
        now = time.monotonic()
        if now - self._ready_at > READY_CACHE_S:
            self._ready_detail = await self._check_ready()
            self._ready_at = now
        detail = self._ready_detail
        # Not cached: a switch to a new catalog version shows at once.
        answer = {**detail, "catalog_version": self.live.view.version}
        return JSONResponse(answer, status_code=200 if detail["ready"] else 503)

    async def _check_ready(self) -> dict[str, Any]:
        try:
            nc, client = await asyncio.wait_for(self._client(), 2.0)
        except Exception as exc:  # noqa: BLE001 - not ready is an answer, not an error
            return {"ready": False, "nats": False, "reason": type(exc).__name__}
        if not nc.is_connected:  # the broker is down or restarting: no shard can be asked
            return {"ready": False, "nats": False, "reason": "reconnecting to NATS"}
        # The same pings that keep the coalescing owner map fresh: a partition is served when its
        # owner answered.
        await client.refresh_owners()
        missing = [p for p, owner in enumerate(client.owners) if owner is None]
        return {
            "ready": not missing and nc.is_connected,
            "nats": nc.is_connected,
            "partitions_without_shard": missing,
        }
