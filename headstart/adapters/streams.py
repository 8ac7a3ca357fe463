"""JetStream streams' configurations, and the publishing helper for Python producers.

Their names and subjects are in :mod:`headstart.adapters.topology`;
:func:`headstart.adapters.provision.ensure_streams` creates them.

Producers publish to ``hs.ingest.<user_key>``; the stream maps that, inside the server, to
``hs.events.<partition>.<user_key>`` with ``partition()`` (FNV-1a of the key). The user key is
in the subject so that one user's events can be found and purged.

The learning loop's records go to the same partition, in the same last token:
``hs.events.<partition>.<user_key>-decision`` (logged by the shard that decided) and
``...-reward`` (``POST /v1/rewards``). Being in the partition's stream is what makes reward
attribution exactly-once (see :mod:`engine.learning`). One token, not a fifth one, because the
partition's consumer then keeps its ``hs.events.<p>.*`` filter: with ``hs.events.<p>.>`` the
same drain was markedly slower (figures: bench/RESULTS.md, "Figures once quoted in the code").
The same records are also published to ``HS_DECISIONS`` (``hs.decisions.<partition>.<user_key>``)
and ``HS_REWARDS`` (``hs.rewards...``), the logs for whoever reads decisions and rewards.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import msgspec
from nats.js import JetStreamContext
from nats.js.api import (
    DiscardPolicy,
    KeyValueConfig,
    PubAck,
    RetentionPolicy,
    StorageType,
    StreamConfig,
    SubjectTransform,
)
from nats.js.errors import BucketNotFoundError, NotFoundError
from nats.js.kv import KeyValue

from engine.batches import MAX_EVENTS_PER_MESSAGE, batch_message_id, join_encoded
from engine.datamap import Retention
from engine.errors import InvalidEvent
from engine.events import Event, encode_event
from engine.keys import Pseudonymizer
from engine.schema import BUILTIN_SCHEMA, EventSchema

# Re-exported (``X as X``) while actors/ still imports them from here; their home is topology.
from headstart.adapters.topology import (
    AUDIT_PREFIX,
    AUDIT_STREAM,
    DLQ_PREFIX,
    DLQ_STREAM,
    EVENTS_PREFIX,
    EVENTS_STREAM,
    INGEST_PREFIX,
    RECORD_KINDS,
    ingest_subject,
)

#: A publish retried within this window with the same event id is stored once (Nats-Msg-Id).
DUPLICATE_WINDOW_S = 10 * 60

#: One message as published: (subject, payload, headers).
Prepared = tuple[str, bytes, dict[str, str]]


async def open_bucket(js: JetStreamContext, config: KeyValueConfig) -> KeyValue:
    """The key-value bucket ``config.bucket``, created with ``config`` if it does not exist."""
    try:
        return await js.key_value(config.bucket)  # type: ignore[arg-type]
    except (BucketNotFoundError, NotFoundError):
        return await js.create_key_value(config)


async def file_bucket(
    js: JetStreamContext, name: str, description: str, replicas: int = 1, history: int = 1
) -> KeyValue:
    """A key-value bucket on disk (replicated ``replicas`` times), created if missing."""
    config = KeyValueConfig(
        bucket=name, description=description, history=history, storage=StorageType.FILE, replicas=replicas
    )
    return await open_bucket(js, config)


async def bucket_keys(js: JetStreamContext, bucket: str) -> list[str]:
    """The keys that hold a value in ``bucket`` now (deleted or purged ones left out).

    Read from the bucket stream's per-subject state and each key's last entry, not with
    ``KeyValue.keys()``: nats-py's watcher can signal "no more keys" before it received the
    messages the server already sent (consumer info says nothing pending, none delivered
    yet), and then answers that a bucket with keys has none.
    """
    stream = f"KV_{bucket}"
    info = await js.stream_info(stream, subjects_filter=f"$KV.{bucket}.>")
    subjects = info.state.subjects or {}
    keys = []
    for subject in sorted(subjects):
        try:
            last = await js.get_last_msg(stream, subject)
        except NotFoundError:
            continue  # purged meanwhile
        operation = (last.headers or {}).get("KV-Operation")
        if operation not in ("DEL", "PURGE"):
            keys.append(subject[len(f"$KV.{bucket}.") :])
    return keys


def events_stream_config(partitions: int, retention_days: float, replicas: int = 1) -> StreamConfig:
    return StreamConfig(
        name=EVENTS_STREAM,
        description="Headstart events, partitioned by user key",
        # Events come in through the mapping; the learning loop's records straight to their
        # partition (hs.events.<p>.<key>-<kind>).
        subjects=[f"{INGEST_PREFIX}.*", f"{EVENTS_PREFIX}.*.*"],
        subject_transform=SubjectTransform(
            src=f"{INGEST_PREFIX}.*",
            dest=f"{EVENTS_PREFIX}.{{{{partition({partitions},1)}}}}.{{{{wildcard(1)}}}}",
        ),
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        discard=DiscardPolicy.OLD,
        max_age=retention_days * 86400,
        duplicate_window=DUPLICATE_WINDOW_S,
        num_replicas=replicas,
        allow_direct=True,
    )


def log_stream_config(
    name: str, description: str, prefix: str, max_age_s: float, replicas: int = 1
) -> StreamConfig:
    """An append-only log on ``<prefix>.>``, kept ``max_age_s``, deduplicating retried publishes."""
    return StreamConfig(
        name=name,
        description=description,
        subjects=[f"{prefix}.>"],
        duplicate_window=DUPLICATE_WINDOW_S,
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        max_age=max_age_s,
        num_replicas=replicas,
    )


def record_stream_config(kind: str, retention: Retention, replicas: int = 1) -> StreamConfig:
    """The log of ``kind`` records (``hs.decisions.>``, ``hs.rewards.>``, ``hs.exposures.>``)."""
    name, prefix = RECORD_KINDS[kind]
    max_age = retention.seconds("decisions_days")
    return log_stream_config(name, f"Headstart's {kind} log", prefix, max_age, replicas)


def dlq_stream_config(retention: Retention, replicas: int = 1) -> StreamConfig:
    description = "Messages Headstart could not apply: original bytes plus the reason"
    max_age = retention.seconds("dead_letters_days")
    return log_stream_config(DLQ_STREAM, description, DLQ_PREFIX, max_age, replicas)


def audit_stream_config(retention: Retention, replicas: int = 1) -> StreamConfig:
    description = "Headstart's audit log: who did what, when"
    max_age = retention.seconds("audit_days")
    return log_stream_config(AUDIT_STREAM, description, AUDIT_PREFIX, max_age, replicas)


class EventPublisher:
    """Publishes events for Python producers: pseudonymizes, validates, encodes, deduplicates.

    The raw ``user_id`` is replaced by its key before anything leaves the process. A user's
    events that arrive together go as one message (a batch, :mod:`engine.batches`): all of
    :meth:`publish_many`'s, and those given to :meth:`publish` within ``linger_s`` of each
    other (5 ms by default; 0 publishes each at once), up to ``max_events`` a message. A lone
    event goes as a single-event message whose ``Nats-Msg-Id`` is its ``event_id``, a batch
    under an id derived from its events' ids: a retried publish is stored once. Events are
    validated against ``schema``: the built-in types only by default; a producer that sends
    the product's own types passes its catalog's (``load_catalog(path).event_schema``), so an
    event of an undeclared type, or with a wrong prop, is refused here rather than
    dead-lettered by the shard.

    Example::

        schema = load_catalog("catalog.yaml").event_schema
        publisher = EventPublisher(js, Pseudonymizer(secret), schema)
        await publisher.publish({"event_id": "e1", "user_id": "alice", "type": "created_board",
                                 "ts": 1700000000, "props": {"template": "kanban"}})
    """

    #: How many publishes may await their JetStream ack at once in :meth:`publish_many`.
    WINDOW = 2000
    #: How long :meth:`publish` holds an event for more of its user's to join it: ~ one
    #: network round trip, so a caller awaiting each publish is not slowed much more than
    #: by the ack it waits for anyway.
    LINGER_S = 0.005

    def __init__(
        self,
        js: JetStreamContext,
        pseudonymizer: Pseudonymizer,
        schema: EventSchema = BUILTIN_SCHEMA,
        linger_s: float = LINGER_S,
        max_events: int = MAX_EVENTS_PER_MESSAGE,
    ) -> None:
        self._js = js
        self._pseudonymizer = pseudonymizer
        self.schema = schema
        self.linger_s = linger_s
        self.max_events = max(1, min(max_events, MAX_EVENTS_PER_MESSAGE))
        #: Events held by :meth:`publish` for the next flush, each with its caller's future.
        self._held: list[tuple[Prepared, asyncio.Future[PubAck]]] = []
        self._flush_timer: asyncio.TimerHandle | None = None
        self._flushing: set[asyncio.Task[None]] = set()

    def prepare(
        self, event: Mapping[str, Any] | Event, user_key: str | None = None, strict: bool = False
    ) -> Prepared:
        """Validate one event and return (subject, payload, headers). Raises InvalidEvent.
        ``user_key``: the user's key when the caller already has it (an alias resolved to
        its user), instead of pseudonymizing the event's ``user_id``. ``strict``: as the HTTP
        API documents events (no lax conversions, see :meth:`EventSchema.from_object`)."""
        if user_key is not None and not isinstance(event, Event):
            typed = self.schema.from_object({**event, "user_id": user_key}, strict)
        elif isinstance(event, Event):
            typed = msgspec.structs.replace(event, user_id=self._pseudonymizer.key(event.user_id))
        else:
            raw_id = event.get("user_id")
            if not isinstance(raw_id, str) or not raw_id:
                raise InvalidEvent("missing_field", "user_id must be a non-empty string")
            typed = self.schema.from_object({**event, "user_id": self._pseudonymizer.key(raw_id)}, strict)
        return (
            ingest_subject(typed.user_id),
            encode_event(typed),
            {"Nats-Msg-Id": typed.event_id},
        )

    async def publish(self, event: Mapping[str, Any] | Event) -> PubAck:
        """Publish one event; return once JetStream stored it (retrying, see :data:`RETRY_FOR_S`)
        with the ack of the message that carried it. Validated at once (InvalidEvent); held up
        to ``linger_s`` for more of its user's events."""
        prepared = self.prepare(event)
        if self.linger_s <= 0:
            return (await publish_prepared(self._js, [prepared]))[0]
        future: asyncio.Future[PubAck] = asyncio.get_running_loop().create_future()
        self._held.append((prepared, future))
        if self._flush_timer is None:
            self._flush_timer = asyncio.get_running_loop().call_later(self.linger_s, self._flush_held)
        return await future

    def _flush_held(self) -> None:
        self._flush_timer = None
        held, self._held = self._held, []
        if held:
            task = asyncio.create_task(self._publish_held(held))
            self._flushing.add(task)  # a reference until done, or it may be collected
            task.add_done_callback(self._flushing.discard)

    async def _publish_held(self, held: list[tuple[Prepared, asyncio.Future[PubAck]]]) -> None:
        messages, carried_by = batch_messages([prepared for prepared, _ in held], self.max_events)
        results = await publish_each(self._js, messages, self.WINDOW)
        for (_, future), message in zip(held, carried_by, strict=True):
            if future.done():  # the caller gave up waiting
                continue
            result = results[message]
            if isinstance(result, PubAck):
                future.set_result(result)
            else:
                future.set_exception(result)

    async def flush(self) -> None:
        """Publish what :meth:`publish` holds now, and wait for every flush under way."""
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_held()
        if self._flushing:
            await asyncio.gather(*self._flushing, return_exceptions=True)

    async def publish_many(self, events: Iterable[Mapping[str, Any] | Event]) -> list[PubAck]:
        """Publish events that arrived together, each user's as few messages as
        ``max_events`` allows, pipelined; return once JetStream has stored every event (one
        ack per event: its message's)."""
        prepared = [self.prepare(event) for event in events]
        return await publish_events(self._js, prepared, self.WINDOW, max_events=self.max_events)


def batch_messages(
    prepared: Sequence[Prepared], max_events: int = MAX_EVENTS_PER_MESSAGE
) -> tuple[list[Prepared], list[int]]:
    """Single-event messages (:meth:`EventPublisher.prepare`) grouped into messages of one
    user's events each, at most ``max_events`` (in their order; a user's first event decides
    where the user's messages go): the messages, and for each event the index of its message.
    A group of one stays the single-event message it was.

    >>> from engine.events import encode_event
    >>> def single(event_id, key):
    ...     event = {"event_id": event_id, "user_id": key, "type": "session_started", "ts": 1}
    ...     return ingest_subject(key), encode_event(event), {"Nats-Msg-Id": event_id}
    >>> messages, carried_by = batch_messages([single("a1", "A"), single("b1", "B"), single("a2", "A")])
    >>> [(subject, headers["Nats-Msg-Id"][:6]) for subject, _, headers in messages], carried_by
    ([('hs.ingest.A', 'batch:'), ('hs.ingest.B', 'b1')], [0, 1, 0])
    """
    by_subject: dict[str, list[int]] = {}
    for i, (subject, _, _) in enumerate(prepared):
        by_subject.setdefault(subject, []).append(i)
    messages: list[Prepared] = []
    carried_by = [0] * len(prepared)
    for subject, indexes in by_subject.items():
        for start in range(0, len(indexes), max_events):
            chunk = indexes[start : start + max_events]
            for i in chunk:
                carried_by[i] = len(messages)
            if len(chunk) == 1:
                messages.append(prepared[chunk[0]])
                continue
            event_ids = [prepared[i][2]["Nats-Msg-Id"] for i in chunk]
            user_key = subject.rsplit(".", 1)[1]
            payload = join_encoded([prepared[i][1] for i in chunk])
            messages.append((subject, payload, {"Nats-Msg-Id": batch_message_id(user_key, event_ids)}))
    return messages, carried_by


async def publish_events(
    js: JetStreamContext,
    prepared: Sequence[Prepared],
    window: int = 2000,
    retry_for: float | None = None,
    max_events: int = MAX_EVENTS_PER_MESSAGE,
) -> list[PubAck]:
    """Publish single-event messages (:meth:`EventPublisher.prepare`, e.g. a request's events)
    grouped by user (:func:`batch_messages`); return once every one is stored, one ack per
    event (its message's: ``ack.duplicate`` for an event whose batch was stored before).
    Raises as :func:`publish_prepared` does. The entry points (HTTP, gRPC, the Segment API)
    publish a request's events through this."""
    messages, carried_by = batch_messages(prepared, max_events)
    acks = await publish_prepared(js, messages, window, RETRY_FOR_S if retry_for is None else retry_for)
    return [acks[m] for m in carried_by]


#: How long a publish is retried (broker restarting, leader election) before giving up. Retries
#: are safe: the event id is the message id, so the stream stores a retried event once.
RETRY_FOR_S = 30.0
#: How long one attempt waits for JetStream's ack.
ACK_TIMEOUT_S = 2.0


async def publish_prepared(
    js: JetStreamContext,
    prepared: Sequence[Prepared],
    window: int = 2000,
    retry_for: float = RETRY_FOR_S,
) -> list[PubAck]:
    """Publish already-encoded messages with up to ``window`` acks outstanding.

    Messages whose ack does not come are published again until ``retry_for`` has passed;
    then the last error is raised and nothing acknowledged is reported as stored.
    """
    acks = []
    for result in await publish_each(js, prepared, window, retry_for):
        if not isinstance(result, PubAck):
            raise result
        acks.append(result)
    return acks


async def publish_each(
    js: JetStreamContext,
    prepared: Sequence[Prepared],
    window: int = 2000,
    retry_for: float = RETRY_FOR_S,
) -> list[PubAck | BaseException]:
    """:func:`publish_prepared`, answering for each message: its ack, or the last error of its
    attempts (the others' acks are not lost to one message's failure)."""
    results: list[PubAck | BaseException] = [TimeoutError()] * len(prepared)
    todo = list(range(len(prepared)))
    deadline = time.monotonic() + retry_for
    delay = 0.05
    while True:
        failed: list[int] = []
        for start in range(0, len(todo), window):
            chunk = todo[start : start + window]
            futures = []
            for i in chunk:
                subject, payload, headers = prepared[i]
                futures.append(_attempt(js, subject, payload, headers))
            for i, result in zip(chunk, await asyncio.gather(*futures, return_exceptions=True), strict=False):
                results[i] = result
                if not isinstance(result, PubAck):
                    failed.append(i)
        if not failed or time.monotonic() + delay > deadline:
            return results
        await asyncio.sleep(delay)
        delay = min(delay * 2, 2.0)
        todo = failed


async def _attempt(js: JetStreamContext, subject: str, payload: bytes, headers: dict[str, str]) -> PubAck:
    future = await js.publish_async(subject, payload, headers=dict(headers))
    return await asyncio.wait_for(future, ACK_TIMEOUT_S)
