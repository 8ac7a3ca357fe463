"""A partition's JetStream pull consumer: its events, in stream order, exactly once.

One consumer per partition, with a single filter subject (``hs.events.<p>.*``): nats-server
slows down sharply for consumers with several filter subjects over a stream with many subjects
(one per user here): one consumer with 32 filters drained over an order of magnitude slower than
32 single-filter consumers on one connection (figures: bench/RESULTS.md, "Figures once quoted in
the code"). It also makes a partition the unit of resumption and of moves: its consumer restarts
after its own last applied sequence, wherever the partition lives.

Why not nats-py's ``fetch()``: it creates a task, a ``wait_for`` and a uuid per message, which
capped the rate well below this loop's (see bench/RESULTS.md). This loop subscribes one inbox
with a callback and keeps two pull requests' worth of credit in flight, so the next batch is
already on the wire while the current one is applied.

Why the consumer is re-created at ``position + 1`` on every (re)start rather than re-attached:
a re-attached durable consumer redelivers the unacked messages of the dead instance only after
``ack_wait``, *after* newer ones, and skipping "already applied" sequences then loses them.
A consumer created at a start sequence delivers in order; the same code path serves the first
start, a crash restart, a broker restart and a detected delivery gap.

Why no acks (``AckPolicy.NONE``): nothing here relies on a redelivery. What a partition applied
is its snapshot's last sequence, and every (re)start creates a consumer after it; acknowledging
only made the server keep every delivery pending until an ack-all and made this loop publish
the acks. Flow is bounded by the pull requests' credit, as before.

Why the connection is a :class:`~headstart.adapters.lean_nats.LeanClient` in a shard: nats-py
parses every delivered message's headers (``Nats-Msg-Id``, stored with each message for
JetStream's duplicate window) into a dict that this loop never reads; that client skips the
parse for everything but status messages (figures: bench/RESULTS.md, "lean consume path").

Each creation gets a name of its own (``hs-p<partition>-<token>``): creating a consumer that
cannot exist yet is one JetStream API call, and a create never finds an old consumer of the
same name (whose delivery state it would silently reuse when the configurations matched). The
previous consumer is deleted in the background, off the hand-over's path; one left behind by a
crash expires on its own (``inactive_threshold``) or is deleted by the partition's next owner.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections.abc import Callable, Iterable
from typing import Any

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from engine.batches import batch_items
from engine.errors import InvalidEvent, InvalidEvents
from engine.pii import DEFAULT_PII_FIELDS, scrub_pii
from headstart.adapters.topology import (
    EVENTS_STREAM,
    dead_letter_subject,
    partition_consumer_prefix,
    partition_subject,
)

log = logging.getLogger(__name__)
#: A dead letter's ``Hs-Detail`` at most (headers travel with every message of the DLQ).
MAX_DETAIL = 4000

#: Called with (stream sequence, user key, payload); raises InvalidEvent to dead-letter the
#: message, InvalidEvents to dead-letter some events of a batched one (the others applied).
Handler = Callable[[int, str, bytes], None]

#: The drain-rate bookkeeping (:attr:`PartitionConsumer.last_handled_at`) is brought up to date
#: at least this often within a burst, and whenever the delivered messages are all handled.
MARK_EVERY = 256
#: Messages handled between turns given to the rest of the event loop (~2 ms of a shard's work).
YIELD_EVERY = 64
#: Pull requests wait this long for messages before the server answers 408 and we re-pull.
PULL_EXPIRES_S = 10.0
#: While a pull waits the server sends a heartbeat this often; three missed ones mean the
#: broker or our consumer is gone and the consumer is re-created from our position.
HEARTBEAT_S = 2.0
#: How often the watchdog looks at the connection and at the time since the last delivery.
WATCH_EVERY_S = 0.25


def consumer_name(partition: int) -> str:
    """A new, unique consumer name for ``partition``."""
    return f"{partition_consumer_prefix(partition)}{secrets.token_hex(4)}"


async def delete_stale_consumers(js: Any, keep: dict[int, str], stream: str = EVENTS_STREAM) -> int:
    """Delete the consumers of ``keep``'s partitions other than the ones named there (left by a
    crash or an earlier owner); one listing for all. Best effort: stale ones also expire."""
    prefixes = {partition_consumer_prefix(p): name for p, name in keep.items()}
    deleted = 0
    with contextlib.suppress(Exception):
        for info in await js.consumers_info(stream):
            name = info.name or ""
            prefix = name[: name.rfind("-") + 1]
            if prefix in prefixes and prefixes[prefix] != name:
                with contextlib.suppress(Exception):
                    await js.delete_consumer(stream, name)
                    deleted += 1
    return deleted


class PartitionConsumer:
    """Consumes one partition of the events stream after a position and feeds ``handler``."""

    def __init__(
        self,
        nc: NATS,
        *,
        partition: int,
        handler: Handler,
        batch: int = 256,
        stream: str = EVENTS_STREAM,
        replicas: int = 1,
        control: NATS | None = None,
        pii_fields: Iterable[str] = DEFAULT_PII_FIELDS,
    ) -> None:
        self._nc = nc
        #: Redacted from dead letters (engine.pii.scrub_pii).
        self.pii_fields = tuple(pii_fields)
        # Consumer management, lag and dead letters may go over another connection: their
        # replies then do not queue behind the partition's message flow on this one.
        self._js = (control or nc).jetstream()
        self.partition = partition
        #: The current consumer's name (a new one at every (re)start, see the module docstring).
        self.name = ""
        self._handler = handler
        self._batch = batch
        self._stream = stream
        self._replicas = replicas
        self._pull_subject = ""
        #: Where the user key starts in a subject of this partition (``hs.events.<p>.``).
        self._key_at = len(partition_subject(partition)) - 1
        self._cleanup: set[asyncio.Task[None]] = set()
        self._pull_payload = json.dumps(
            {
                "batch": batch,
                "expires": int(PULL_EXPIRES_S * 1e9),
                "idle_heartbeat": int(HEARTBEAT_S * 1e9),
            }
        ).encode()
        #: Highest stream sequence handled: every message of the partition up to it is applied.
        self.position = 0
        self.handled = 0
        self.dead_lettered = 0
        self.restarts = 0
        #: Wall-clock times of the first handled message and of the latest mark (see
        #: :data:`MARK_EVERY`), for drain rates.
        self.first_handled_at = 0.0
        self.last_handled_at = 0.0
        #: Process CPU time at the same two moments (how much of a core the drain took).
        self.first_handled_cpu = 0.0
        self.last_handled_cpu = 0.0
        self._sub: Subscription | None = None
        self._inbox = ""
        self._generation = 0
        self._credit = 0
        self._next_dseq = 1
        self._unmarked = 0
        self._last_activity = time.monotonic()
        self._pulling = False
        self._since_yield = 0
        self._watchdog: asyncio.Task[None] | None = None
        self._restarting: asyncio.Task[None] | None = None
        self._stopped = False
        #: Cleared while held: deliveries wait (in order, nothing lost) until resumed.
        self._flowing = asyncio.Event()
        self._flowing.set()

    # ------------------------------------------------------------------ lifecycle

    async def start(self, position: int, pull: bool = True) -> None:
        """Start delivering the messages after ``position`` (0: from the beginning).

        With ``pull=False`` the consumer is created but asks for nothing until :meth:`pull`:
        a shard taking many partitions at once creates them all before any delivers.
        """
        self.position = position
        self._stopped = False
        await self._open(pull)
        self._watchdog = asyncio.create_task(self._watch(), name=f"{self.name}-watchdog")

    def bind(self, handler: Handler) -> None:
        """Set the handler (a consumer may be created before its partition's state is restored)."""
        self._handler = handler

    async def stop(self, delete: bool = False) -> None:
        self._stopped = True
        self._generation += 1
        for task in (self._watchdog, self._restarting):
            if task is not None and task is not asyncio.current_task():
                task.cancel()
        await self._close_subscription()
        if delete:
            await self.delete()

    async def delete(self) -> None:
        """Delete the current consumer on the server (best effort: it also expires when idle)."""
        with contextlib.suppress(Exception):
            await self._js.delete_consumer(self._stream, self.name)

    def _delete_later(self, names: list[str]) -> None:
        async def delete() -> None:
            for name in names:
                with contextlib.suppress(Exception):
                    await self._js.delete_consumer(self._stream, name)

        task = asyncio.create_task(delete())
        self._cleanup.add(task)  # a reference until done, or it may be collected
        task.add_done_callback(self._cleanup.discard)

    async def pull(self) -> None:
        self._pulling = True
        self._last_activity = time.monotonic()  # silence is counted from the first request
        await self._refill()

    def hold(self) -> None:
        """Stop handling deliveries for a moment (they queue, in order) to free the event loop.

        A shard taking partitions over holds the ones it has for the few steps that takes: on
        a saturated loop each step would otherwise wait behind thousands of queued events.
        """
        self._flowing.clear()

    def resume(self) -> None:
        self._flowing.set()

    async def _open(self, pull: bool = True) -> None:
        self._generation += 1
        generation = self._generation
        await self._close_subscription()
        previous, name = self.name, consumer_name(self.partition)
        await self._js.add_consumer(
            self._stream,
            ConsumerConfig(
                name=name,
                durable_name=name,
                deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                opt_start_seq=self.position + 1,
                ack_policy=AckPolicy.NONE,
                filter_subject=partition_subject(self.partition),
                # An abandoned consumer (its shard moved or gone) cleans itself up.
                inactive_threshold=3600.0,
                num_replicas=self._replicas,
            ),
        )
        self.name = name
        self._pull_subject = f"$JS.API.CONSUMER.MSG.NEXT.{self._stream}.{name}"
        if previous:
            self._delete_later([previous])
        self._inbox = self._nc.new_inbox()
        self._credit = 0
        self._next_dseq = 1
        self._unmarked = 0

        async def on_message(msg: Msg) -> None:
            if generation == self._generation:
                await self._on_message(msg)

        # The credit scheme bounds what is in flight, so the client-side limits never drop.
        self._sub = await self._nc.subscribe(
            self._inbox, cb=on_message, pending_msgs_limit=8 * self._batch + 1024, pending_bytes_limit=-1
        )
        self._last_activity = time.monotonic()
        self._pulling = pull
        if pull:
            await self._refill()

    async def _close_subscription(self) -> None:
        sub, self._sub = self._sub, None
        if sub is not None:
            # A closed connection has nothing left to unsubscribe.
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    def _restart(self, why: str) -> None:
        if self._stopped or (self._restarting is not None and not self._restarting.done()):
            return
        log.warning("consumer %s: %s; re-creating it after stream sequence %d", self.name, why, self.position)
        self._generation += 1  # ignore whatever the old subscription still delivers
        self.restarts += 1
        self._restarting = asyncio.create_task(self._reopen(), name=f"{self.name}-restart")

    async def _reopen(self) -> None:
        delay = 0.1
        while not self._stopped:
            try:
                await self._open()
                return
            except Exception as exc:  # noqa: BLE001 - broker down: keep trying, lose nothing
                log.warning("consumer %s: re-create failed (%s); retrying in %.1fs", self.name, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _watch(self) -> None:
        reconnects = self._nc.stats["reconnects"]
        while not self._stopped:
            await asyncio.sleep(WATCH_EVERY_S)
            if self._nc.stats["reconnects"] != reconnects and self._nc.is_connected:
                # Pull requests die with the old connection (and so might the consumer, if the
                # broker lost it): start over from our position rather than wait for silence.
                reconnects = self._nc.stats["reconnects"]
                self._restart("reconnected to the broker")
            elif self._pulling and time.monotonic() - self._last_activity > 3 * HEARTBEAT_S + 1:
                # (A consumer created ahead of its take-over asks for nothing: no heartbeats.)
                self._restart("no messages or heartbeats")

    # ------------------------------------------------------------------ delivery

    async def _refill(self) -> None:
        while self._credit <= self._batch:
            self._credit += self._batch
            await self._nc.publish(self._pull_subject, self._pull_payload, reply=self._inbox)

    async def _on_message(self, msg: Msg) -> None:
        if not self._flowing.is_set():
            await self._flowing.wait()
            if self._stopped:  # stopped while held (a release): the next owner applies it
                return
        self._last_activity = time.monotonic()
        reply = msg.reply
        if not reply:
            await self._on_status(msg)
            return
        tokens = reply.split(".")
        # $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<dseq>.<ts>.<pending>, or the form
        # with <domain>.<account hash> after ACK and a random token at the end.
        base = 4 if len(tokens) == 9 else 6
        dseq = int(tokens[base + 2])
        if dseq != self._next_dseq:
            self._restart(f"delivery gap (expected {self._next_dseq}, got {dseq})")
            return
        self._next_dseq = dseq + 1
        self._credit -= 1
        seq = int(tokens[base + 1])
        key = msg.subject[self._key_at :]  # hs.events.<partition>.<user key>
        if not self.handled:
            self.first_handled_at = time.time()
            self.first_handled_cpu = time.process_time()
        try:
            self._handler(seq, key, msg.data)
        except InvalidEvents as exc:
            items = batch_items(msg.data)
            for index, problem in exc.rejected:
                await self._dead_letter(msg, seq, problem, items[index], index)
        except InvalidEvent as exc:
            await self._dead_letter(msg, seq, exc)
        self.position = max(self.position, seq)
        self.handled += 1
        self._unmarked += 1
        sub = self._sub
        if self._unmarked >= MARK_EVERY or (sub is not None and sub.pending_msgs == 0):
            self._unmarked = 0
            self.last_handled_at = time.time()
            self.last_handled_cpu = time.process_time()
        self._since_yield += 1
        if self._since_yield >= YIELD_EVERY:
            # A subscription drains its queued messages without yielding to the event loop;
            # a turn now and then lets a shard's requests (decisions, a take-over) in between
            # instead of behind every partition's backlog.
            self._since_yield = 0
            await asyncio.sleep(0)
        if self._credit <= self._batch:
            await self._refill()

    async def _on_status(self, msg: Msg) -> None:
        headers = msg.headers or {}
        status = headers.get("Status")
        if status in ("408", "409"):
            # The pull ended (expired, or the server cut it short); what it did not deliver is
            # returned to us as credit.
            pending = int(headers.get("Nats-Pending-Messages", self._batch))
            self._credit = max(0, self._credit - pending)
            await self._refill()
        # 100 is an idle heartbeat: the activity timestamp was all it had to update.

    async def _dead_letter(
        self, msg: Msg, seq: int, exc: InvalidEvent, original: bytes | None = None, index: int | None = None
    ) -> None:
        """Store the original bytes (PII props redacted, :func:`engine.pii.scrub_pii`) and the
        reason; retry until stored, so nothing is lost. ``original`` and ``index``: one event of
        a batched message (its bytes, its place in the batch), the others applied."""
        original = msg.data if original is None else original
        payload = scrub_pii(original, self.pii_fields)
        headers = {
            "Nats-Msg-Id": f"dlq:{self._stream}:{seq}" + ("" if index is None else f":{index}"),
            "Hs-Reason": exc.reason,
            # Long enough for an unknown type's detail, which lists every declared type.
            "Hs-Detail": exc.detail[:MAX_DETAIL],
            "Hs-Source-Stream": self._stream,
            "Hs-Source-Seq": str(seq),
            "Hs-Source-Subject": msg.subject,
        }
        if index is not None:
            headers["Hs-Batch-Index"] = str(index)
        if payload is not original:
            headers["Hs-Redacted"] = "props"
        delay = 0.05
        while True:
            try:
                subject = dead_letter_subject("events", self.partition)
                await self._js.publish(subject, payload, headers=headers)
                self.dead_lettered += 1
                return
            except Exception as dlq_error:  # noqa: BLE001 - the broker may be restarting
                log.warning("dead-letter publish failed (%s); retrying", dlq_error)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    async def lag(self) -> int:
        """Messages of our partition in the stream not yet delivered to us."""
        info = await self._js.consumer_info(self._stream, self.name)
        return int(info.num_pending or 0)

    def stats(self) -> dict[str, Any]:
        return {
            "consumer": self.name,
            "position": self.position,
            "handled": self.handled,
            "dead_lettered": self.dead_lettered,
            "restarts": self.restarts,
            "first_handled_at": self.first_handled_at,
            "last_handled_at": self.last_handled_at,
            "first_handled_cpu": self.first_handled_cpu,
            "last_handled_cpu": self.last_handled_cpu,
        }
