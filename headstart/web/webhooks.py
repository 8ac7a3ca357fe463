"""Delivering segment enter/exit changes to webhooks, off the event path.

Each webhook of the catalog reads ``HS_SEGMENTS`` through its own durable JetStream consumer
(``hs-webhook-<id>``, filtered to its segments), so deliveries survive restarts and a slow or
failing endpoint delays only itself: shards publish changes and move on. A delivery is one
POST of up to ``batch`` changes as JSON::

    {"webhook": "crm", "delivery": "<id>", "changes": [{"id": ..., "user_id": <pseudonymized key>,
     "segment": "power_user", "change": "enter", "ts": 1767571200.0}, ...]}

signed like Stripe's webhooks: ``Headstart-Signature: t=<unix time>,v1=<hex HMAC-SHA256 of
"<t>.<body>" with the webhook's secret>``, so a receiver checks it came from Headstart and is
recent (:func:`verify`). A failed delivery (connection error, timeout, non-2xx) is retried with
exponential backoff (``RETRY_BASE_S`` doubling, up to ``RETRY_MAX_S``, with jitter) up to
``max_attempts``, then given up and counted; changes are acknowledged to JetStream only once
delivered or given up. The same changes can arrive twice (a retry after a lost response, a
redelivery after a restart): ``delivery`` and each change's ``id`` let the receiver drop repeats.

>>> body = b'{"changes": []}'
>>> header = signature_header(b"s3cret", body, timestamp=1700000000)
>>> header[:15], verify(b"s3cret", body, header, now=1700000010)
('t=1700000000,v1', True)
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import os
import random
import time
from collections import OrderedDict
from typing import Any

import httpx
import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeout
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from engine.catalog import Webhook
from engine.errors import ConfigError
from engine.segments import SegmentChange, batch_decoder
from headstart.adapters.topology import SEGMENTS_PREFIX, SEGMENTS_STREAM, webhook_consumer

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "Headstart-Signature"
#: A signature older than this is refused by :func:`verify` (replays of a captured request).
TOLERANCE_S = 300
RETRY_BASE_S = 0.5
RETRY_MAX_S = 60.0
#: Change ids remembered per webhook to skip a change JetStream delivers again.
SEEN_IDS = 100_000


def signature_header(secret: bytes, body: bytes, timestamp: int | None = None) -> str:
    t = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret, f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def verify(secret: bytes, body: bytes, header: str, now: float | None = None) -> bool:
    """Whether ``header`` signs ``body`` with ``secret`` within :data:`TOLERANCE_S` (for receivers)."""
    try:
        parts = dict(item.split("=", 1) for item in header.split(","))
        t = int(parts["t"])
    except (ValueError, KeyError):
        return False
    if abs((time.time() if now is None else now) - t) > TOLERANCE_S:
        return False
    expected = hmac.new(secret, f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, parts.get("v1", ""))


def webhook_secret(hook: Webhook) -> bytes:
    value = os.environ.get(hook.secret_env)
    if not value:
        raise ConfigError(
            f"webhooks[{hook.id}].secret_env: environment variable {hook.secret_env} is not set"
        )
    return value.encode()


class WebhookDelivery:
    """Delivers one webhook's changes from its JetStream consumer until stopped.

    Example::

        delivery = WebhookDelivery(nc, hook, secret=b"...")
        task = asyncio.create_task(delivery.run())
    """

    def __init__(
        self,
        nc: NATS,
        hook: Webhook,
        secret: bytes,
        client: httpx.AsyncClient | None = None,
        seen: OrderedDict[str, None] | None = None,
    ) -> None:
        self.nc = nc
        self.hook = hook
        self.secret = secret
        self.client = client or httpx.AsyncClient(timeout=hook.timeout_s)
        #: Change ids delivered lately (handed on when the webhook restarts with a new config).
        self.seen: OrderedDict[str, None] = seen if seen is not None else OrderedDict()
        self.delivered = 0  # changes
        self.deliveries = 0  # successful POSTs
        self.attempts_failed = 0
        self.given_up = 0  # changes
        self.last_error = ""
        self.last_delivered_at = 0.0

    def stats(self) -> dict[str, Any]:
        return {
            "webhook": self.hook.id,
            "delivered": self.delivered,
            "deliveries": self.deliveries,
            "attempts_failed": self.attempts_failed,
            "given_up": self.given_up,
            "last_error": self.last_error,
            "last_delivered_at": self.last_delivered_at,
        }

    async def _subscription(self) -> Any:
        js = self.nc.jetstream()
        # Batches hold every segment's changes of one partition: the wanted ones are picked out
        # of them (handle), not filtered by subject.
        config = ConsumerConfig(
            durable_name=webhook_consumer(self.hook.id),
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.NEW,
            # A delivery retried for minutes keeps its messages: they are only redelivered if
            # this process dies (in_progress() extends the wait on each attempt).
            ack_wait=RETRY_MAX_S * 2,
            max_ack_pending=1000,
            filter_subject=f"{SEGMENTS_PREFIX}.>",
        )
        try:
            await js.consumer_info(SEGMENTS_STREAM, config.durable_name)  # type: ignore[arg-type]
        except NotFoundError:
            await js.add_consumer(SEGMENTS_STREAM, config)
        return await js.pull_subscribe_bind(config.durable_name, stream=SEGMENTS_STREAM)  # type: ignore[arg-type]

    async def run(self) -> None:
        sub = await self._subscription()
        try:
            while True:
                try:
                    msgs = await sub.fetch(batch=50, timeout=1.0)
                except NatsTimeout:
                    continue
                try:
                    await self.handle(msgs)
                except asyncio.CancelledError:
                    # Stopped mid-batch (its webhook changed or was removed): the batch goes back
                    # to the consumer now rather than after ack_wait, for whoever reads it next.
                    for msg in msgs:
                        with contextlib.suppress(Exception):  # acked already, or disconnected
                            await msg.nak()
                    raise
        finally:
            # No interest left in a pull request still open: the server hands its messages to
            # the next reader of the consumer instead of this dead one.
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def handle(self, msgs: list[Msg]) -> None:
        """Deliver the wanted changes of ``msgs`` in POSTs of at most ``batch``; then ack them."""
        wanted = set(self.hook.changes)
        segments = set(self.hook.segments)
        changes: list[SegmentChange] = []
        for msg in msgs:
            try:
                batch = batch_decoder.decode(msg.data)
            except msgspec.DecodeError:
                continue  # not ours to fix; acked below so it does not block the webhook
            for change in batch:
                if (
                    change.change in wanted
                    and (not segments or change.segment in segments)
                    and change.id not in self.seen
                ):
                    changes.append(change)
        for start in range(0, len(changes), self.hook.batch):
            await self._deliver(changes[start : start + self.hook.batch], msgs)
        for msg in msgs:
            await msg.ack()

    async def _deliver(self, changes: list[SegmentChange], msgs: list[Msg]) -> None:
        ids = [c.id for c in changes]
        delivery = hashlib.blake2b("\n".join(ids).encode(), digest_size=12).hexdigest()
        body = json.dumps(
            {
                "webhook": self.hook.id,
                "delivery": delivery,
                "changes": [
                    {"id": c.id, "user_id": c.user_id, "segment": c.segment, "change": c.change, "ts": c.ts}
                    for c in changes
                ],
            },
            separators=(",", ":"),
        ).encode()
        for attempt in range(1, self.hook.max_attempts + 1):
            headers = {
                "Content-Type": "application/json",
                SIGNATURE_HEADER: signature_header(self.secret, body),
                "Headstart-Delivery": delivery,
                "Headstart-Attempt": str(attempt),
            }
            try:
                response = await self.client.post(self.hook.url, content=body, headers=headers)
                if 200 <= response.status_code < 300:
                    self.delivered += len(changes)
                    self.deliveries += 1
                    self.last_delivered_at = time.time()
                    self._remember(ids)
                    return
                self.last_error = f"HTTP {response.status_code}"
            except httpx.HTTPError as exc:
                self.last_error = type(exc).__name__
            self.attempts_failed += 1
            if attempt == self.hook.max_attempts:
                break
            delay = min(RETRY_MAX_S, RETRY_BASE_S * 2 ** (attempt - 1)) * random.uniform(0.8, 1.2)
            log.warning("webhook %s: %s; retry %d in %.1f s", self.hook.id, self.last_error, attempt, delay)
            for msg in msgs:
                await msg.in_progress()
            await asyncio.sleep(delay)
        self.given_up += len(changes)
        log.error("webhook %s: gave up on %d changes after %d attempts", self.hook.id, len(changes), attempt)

    def _remember(self, ids: list[str]) -> None:
        seen = self.seen
        for change_id in ids:
            seen[change_id] = None
        while len(seen) > SEEN_IDS:
            seen.popitem(last=False)
