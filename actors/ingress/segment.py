"""The Segment-compatible tracking API's ingestion: Segment calls mapped to Headstart events
(:mod:`headstart.web.segment_api`), aliases resolved, events published, invalid calls
dead-lettered. The route (auth, the call's name) stays with the other routes.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType

from actors.ingress.errors import ApiError
from actors.ingress.outage import store, unavailable
from engine.errors import InvalidEvent
from engine.keys import Pseudonymizer
from headstart.adapters.streams import EventPublisher, open_bucket
from headstart.adapters.topology import ALIASES_BUCKET, DLQ_PREFIX
from headstart.web.metrics import IngressMetrics
from headstart.web.segment_api import CALL_TYPES as SEGMENT_CALLS
from headstart.web.segment_api import (
    AliasStore,
    SegmentMapper,
    SegmentPayloadError,
    dead_letter,
    decode_body,
    messages_of,
)

#: Calls per Segment request at most (Segment's own limit is 500 KB per batch).
MAX_SEGMENT_CALLS = 2500
#: The calls served under ``/segment/v1/``.
CALLS = ("batch", *SEGMENT_CALLS)


class SegmentIngest:
    """One replica's Segment API: the pseudonymizer and the alias store (opened on first use,
    entries kept as long as the events). Each request is mapped with the mapper of the catalog
    it is served from (tracks may map to its declared types, identify to its traits), and its
    events validated with that mapper's schema."""

    def __init__(self, pseudonymizer: Pseudonymizer, metrics: IngressMetrics, retention_days: float) -> None:
        self.pseudonymizer = pseudonymizer
        self.metrics = metrics
        self.retention_days = retention_days
        self._aliases: AliasStore | None = None

    async def ingest(
        self,
        js: JetStreamContext,
        mapper: SegmentMapper,
        call: str,
        raw: bytes,
        content_encoding: str | None,
        check: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        """Map, publish and count the calls of one request; returns once JetStream stored them.
        ``check`` sees every call first and refuses the request by raising (identity
        verification: nothing of a refused request is linked or stored). Raises
        :class:`ApiError` (400 not a Segment call, 503 not stored)."""
        try:
            body = decode_body(raw, content_encoding)
            messages = messages_of(call, json.loads(body))
        except (SegmentPayloadError, ValueError) as exc:
            raise ApiError(400, "invalid_request", f"not a Segment call: {exc}") from None
        if len(messages) > MAX_SEGMENT_CALLS:
            raise ApiError(
                400, "invalid_request", f"{len(messages)} calls: at most {MAX_SEGMENT_CALLS} per batch"
            )
        if check is not None:
            for message in messages:
                if isinstance(message, dict):
                    check(message)
        aliases = await self.aliases(js)
        publisher = EventPublisher(js, self.pseudonymizer, mapper.schema)
        prepared, dead, counted = [], [], []
        key_of = self.pseudonymizer.key
        for message in messages:
            mapped = mapper.map(message)
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
            acks = await store(js, [p for _, p in prepared])
            for message, reason in dead:
                payload, headers = dead_letter(message, reason, key_of)
                await js.publish(f"{DLQ_PREFIX}.segment", payload, headers=headers)
        except Exception as exc:
            raise unavailable(f"the event stream did not store the calls: {type(exc).__name__}") from exc
        for (kind, _), ack in zip(prepared, acks, strict=True):
            counted.append((kind, "duplicate" if ack.duplicate else "stored"))
        for kind, outcome in counted:
            self.metrics.segment_calls.labels(kind, outcome).inc()

    async def aliases(self, js: Any) -> AliasStore:
        """The alias store (anonymous id -> user), opened on first use; shared with the native
        API's links (``anonymous_id`` in an events batch) and anonymous ids' resolution."""
        if self._aliases is None:
            ttl = self.retention_days * 86400
            config = KeyValueConfig(bucket=ALIASES_BUCKET, history=1, ttl=ttl, storage=StorageType.FILE)
            self._aliases = AliasStore(await open_bucket(js, config))
        return self._aliases
