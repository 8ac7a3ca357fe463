"""Live segment membership on a shard: publishing changes, sweeping time, training clusters.

The logic is :mod:`engine.segments` and :mod:`engine.clusters`; this module moves its results
over NATS, off the event path:

- :class:`ChangePublisher` sends each partition's queued enter/exit changes to the
  ``HS_SEGMENTS`` stream, in order, in batches (``hs.segments.<partition>``, a msgpack list of
  enters and exits in the order they happened);
- :func:`sweep_partition` re-evaluates the time-based segments of a partition's users in chunks,
  yielding to the event loop between chunks (the shard stores the partition's snapshot before
  publishing what a sweep changed: a replay cannot make a sweep's changes again);
- :class:`ClusterTrainer` (on one shard) learns River's k-means from sampled users and
  publishes the model to the ``HS_LEARN`` bucket (key ``clusters``), from where every shard
  assigns its users.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from nats.js import JetStreamContext
from nats.js.api import StreamConfig
from nats.js.kv import KeyValue

from engine.catalog import Clusters
from engine.clusters import ClusterModel, behaviour
from engine.partition import CheckpointMark, PartitionState
from engine.segments import ChangeRow, PartitionSegments, change_encoder, change_id
from headstart.adapters.streams import log_stream_config, publish_prepared
from headstart.adapters.topology import LEARN_BUCKET, SEGMENTS_PREFIX, SEGMENTS_STREAM, changes_subject

log = logging.getLogger(__name__)

T = TypeVar("T")

#: The key of the published cluster model in the ``HS_LEARN`` bucket.
CLUSTERS_KEY = "clusters"
#: Users re-evaluated per chunk of a sweep before the event loop gets a turn (~2 µs each).
SWEEP_CHUNK = 2000


def segments_stream_config(retention_days: float, replicas: int = 1) -> StreamConfig:
    description = "Headstart: users entering and leaving segments"
    return log_stream_config(SEGMENTS_STREAM, description, SEGMENTS_PREFIX, retention_days * 86400, replicas)


#: Changes per published message at most (a row is at most ~150 bytes: well within 1 MiB).
ROWS_PER_MESSAGE = 4000


class PublishHolds:
    """Partitions whose segment changes wait for a stored snapshot, and for which one.

    A sweep's or an expiry's changes cannot be made again by replaying the stream, so they are
    published only once a stored snapshot holds them (see ``ShardActor._store_before_publishing``).
    A hold names the :meth:`~engine.partition.PartitionState.checkpoint_mark` the partition had
    after those changes; marks only grow, so a snapshot stored at that mark or past it was taken
    after them and releases the hold. While a sweep runs the mark is not known yet: the hold
    has none and no snapshot releases it.

    >>> holds = PublishHolds()
    >>> holds.begin(3)       # a sweep of partition 3 starts
    False
    >>> holds.stored(3, (10, 0, 1)); 3 in holds   # a checkpoint in the middle of it
    True
    >>> holds.until(3, (10, 0, 2))   # the sweep is done: its changes are in mark (10, 0, 2)
    >>> holds.stored(3, (10, 0, 1)); 3 in holds   # a snapshot taken before the sweep ended
    True
    >>> holds.stored(3, (12, 0, 2)); 3 in holds   # one taken after (events applied since)
    False
    >>> sorted(holds.publishable({3: "p3", 4: "p4"}))
    [3, 4]
    """

    def __init__(self) -> None:
        self._needed: dict[int, CheckpointMark | None] = {}

    def __contains__(self, partition: int) -> bool:
        return partition in self._needed

    def begin(self, partition: int) -> bool:
        """Hold ``partition`` with no mark yet (a sweep starts); whether it was held already."""
        was_held = partition in self._needed
        self._needed[partition] = None
        return was_held

    def until(self, partition: int, mark: CheckpointMark) -> None:
        """Hold ``partition`` until a snapshot at ``mark`` or past it is stored."""
        self._needed[partition] = mark

    def stored(self, partition: int, mark: CheckpointMark) -> None:
        """A snapshot of ``partition`` at ``mark`` is stored (or the stored one is still current)."""
        if partition not in self._needed:
            return
        needed = self._needed[partition]
        if needed is not None and all(m >= n for m, n in zip(mark, needed, strict=True)):
            del self._needed[partition]

    def at_least(self, partition: int, mark: CheckpointMark) -> None:
        """Hold ``partition`` until a snapshot at ``mark`` (its current one) or past it is stored
        (changes made outside a sweep, by a new catalog version); a sweep running keeps its
        hold, whose end names a later mark.

        >>> holds = PublishHolds()
        >>> holds.begin(3)
        False
        >>> holds.at_least(3, (5, 0, 1)); holds.stored(3, (5, 0, 1)); 3 in holds
        True
        """
        if partition in self._needed and self._needed[partition] is None:
            return
        self._needed[partition] = mark

    def drop(self, partition: int) -> None:
        """Nothing to hold: ``partition`` was handed over, or restored from a stored snapshot."""
        self._needed.pop(partition, None)

    def publishable(self, partitions: Mapping[int, T]) -> dict[int, T]:
        """``partitions`` without the held ones."""
        needed = self._needed
        return {p: part for p, part in partitions.items() if p not in needed}


class ChangePublisher:
    """Publishes the segment changes queued in partitions' outboxes, oldest first.

    Batched, because a change is small and many and a new user alone enters half a dozen
    segments: one message per partition's batch, all segments together. A message per segment
    and batch (``hs.segments.<segment>``) costs the shard about ten times the CPU per change of
    one message per partition's batch, since an acknowledged publish costs far more than a
    change (bench/RESULTS.md has the figures). Consumers that want some segments filter
    the rows (the webhooks do). A partition's subject keeps each user's changes in the order
    they happened. Each change carries its :attr:`SegmentChange.id`. A partition's batch stays
    "in flight" (in its snapshot) until acknowledged and is retried unchanged, with message ids
    from its changes, so JetStream stores it once even when a publish is retried, or repeated
    by the partition's next owner after a hand-over or a crash (within the duplicate window).
    Snapshots never wait for a publish.

    A partition's changes wait while more keep coming, up to ``max_wait_s`` or until
    ``min_batch`` are queued, and go as soon as a flush finds none added since the one before
    (the partition is quiet: nothing to batch with, so no reason to wait). Publishing on a
    fixed short period sent batches of two or three changes per segment under ingest load (far
    too many publishes); waiting a fixed 1 s instead held the last changes of a burst for that
    second.
    """

    def __init__(
        self, js: JetStreamContext, batch: int = 5000, max_wait_s: float = 2.0, min_batch: int = 2500
    ) -> None:
        self.js = js
        self.batch = batch
        self.max_wait_s = max_wait_s
        self.min_batch = min_batch
        #: When each partition's changes were last published (monotonic clock).
        self._last: dict[int, float] = {}
        #: Each partition's queue length at the previous flush: unchanged means quiet.
        self._queued: dict[int, int] = {}
        self.published = 0
        self.failures = 0
        #: When the last batch was stored (wall clock).
        self.last_published_at = 0.0

    def due(self, partition: int, segments: PartitionSegments, now: float) -> bool:
        """Whether a partition's queued changes should be published at this flush (``now``:
        monotonic): a batch to retry, enough queued, quiet since the last flush, or waited long.

        >>> from engine.catalog import DEFAULT_CATALOG, load_catalog
        >>> from engine.segments import SegmentIndex
        >>> part = PartitionSegments(SegmentIndex(load_catalog(DEFAULT_CATALOG)), 0)
        >>> publisher = ChangePublisher(js=None)  # type: ignore[arg-type]  # deciding only
        >>> for n in range(10):
        ...     _ = part.record_change(f"k{n}", 0, 0b11, 0.0, n)  # entered two segments
        >>> publisher.due(0, part, now=0.1)  # more may come: wait
        False
        >>> part.record_change("k", 0, 1, 0.0, 10); publisher.due(0, part, now=0.2)
        1
        False
        >>> publisher.due(0, part, now=0.3)  # nothing new since the last flush: quiet
        True
        >>> busy = [(part.record_change("k", 0, 1, 0.0, t), publisher.due(0, part, now=t / 10))
        ...         for t in range(4, 40)]
        >>> [t / 10 for t, (_, due) in zip(range(4, 40), busy) if due][:1]  # busy: at most max_wait_s
        [2.1]
        """
        queued = segments.queued
        quiet = queued == self._queued.get(partition)
        self._queued[partition] = queued
        return (
            segments.in_flight is not None
            or queued >= self.min_batch
            or quiet
            or now - self._last.setdefault(partition, now) >= self.max_wait_s
        )

    async def flush(self, partitions: Callable[[], Mapping[int, PartitionState]], force: bool = False) -> int:
        """Publish one batch (up to :attr:`batch` changes) of each partition whose changes
        waited long enough or are many (``force``: of every partition); the rest next time."""
        sent = 0
        now = time.monotonic()
        for p, part in list(partitions().items()):
            segments = part.segments
            if segments is None or not (segments.in_flight or segments.outbox):
                continue
            if not (self.due(p, segments, now) or force):
                continue
            self._last[p] = now
            if p not in partitions():
                continue  # handed over meanwhile: its queued changes went with its snapshot
            rows = segments.next_batch(self.batch)
            try:
                await publish_prepared(self.js, encode_batches(rows), retry_for=5.0)
            except Exception as exc:  # noqa: BLE001 - kept in flight and retried at the next flush
                self.failures += 1
                log.warning("segment changes not published yet (%s); kept", type(exc).__name__)
                return sent
            if segments.in_flight is rows:  # not handed over (and replaced) meanwhile
                segments.published()
            self._queued[p] = segments.queued
            sent += len(rows)
            self.published += len(rows)
            self.last_published_at = time.time()
        return sent


def encode_batches(rows: list[ChangeRow]) -> list[tuple[str, bytes, dict[str, str]]]:
    """(subject, payload, headers) of one partition's batch: messages of up to
    :data:`ROWS_PER_MESSAGE` changes, in the changes' order."""
    out = []
    for start in range(0, len(rows), ROWS_PER_MESSAGE):
        chunk = rows[start : start + ROWS_PER_MESSAGE]
        # The same changes make the same id (a batch retried after a lost ack is stored once):
        # the first change's id, the last one's origin, user and segment, and the count.
        first, last = chunk[0], chunk[-1]
        msg_id = (
            f"{change_id(first[5], first[4], first[0], first[1], first[2])}|{last[4]}|{last[0]}|{last[1]}"
            f"|{len(chunk)}"
        )
        out.append((changes_subject(first[5]), change_encoder.encode(chunk), {"Nats-Msg-Id": msg_id}))
    return out


async def sweep_partition(part: PartitionState, now: float) -> int:
    """Re-evaluate the time-based segments of every user of ``part`` as of ``now``."""
    segments = part.segments
    if segments is None:
        return 0
    # Clusters are assigned again only with a model newer than the last sweep's: between
    # models a user's cluster moves with their sessions (assigned at each session start).
    assigner = segments.index.assigner
    version = assigner.version if assigner is not None else -1
    reassign = version != segments.swept_version
    keys = list(part.users)
    changes = 0
    for start in range(0, len(keys), SWEEP_CHUNK):
        changes += part.sweep_segments(now, keys[start : start + SWEEP_CHUNK], reassign)
        await asyncio.sleep(0)
    segments.swept_version = version
    return changes


class ClusterTrainer:
    """Learns the cluster model from sampled users and publishes it to every shard.

    Example::

        trainer = await ClusterTrainer.open(kv, catalog.clusters)
        trainer.train(partitions, budget=20)   # on a timer, off the event path
        await trainer.publish()                # every clusters.publish_interval_s
    """

    def __init__(self, kv: KeyValue, settings: Clusters, model: ClusterModel) -> None:
        self.kv = kv
        self.settings = settings
        self.model = model
        self._published_at_learned = model.learned

    @classmethod
    async def open(cls, kv: KeyValue, settings: Clusters) -> ClusterTrainer:
        """Resume the published model (after a restart), unless the catalog changed its shape."""
        model = ClusterModel(settings.k, settings.halflife, settings.seed)
        try:
            entry = await kv.get(CLUSTERS_KEY)
        except Exception:  # noqa: BLE001 - none yet (KeyNotFoundError) or unreadable: start fresh
            entry = None
        if entry is not None and entry.value:
            data = json.loads(entry.value)
            if (data.get("k"), data.get("halflife"), data.get("seed")) == (
                settings.k,
                settings.halflife,
                settings.seed,
            ):
                model = ClusterModel.restore(data)
        return cls(kv, settings, model)

    def train(self, partitions: Mapping[int, PartitionState], budget: int) -> int:
        """Learn up to ``budget`` sampled users (each as of its partition's clock)."""
        learned = 0
        for part in partitions.values():
            segments = part.segments
            if segments is None:
                continue
            samples = segments.samples
            while samples and learned < budget:
                user = part.users.get(samples.popleft())
                if user is not None:
                    self.model.learn(behaviour(user, segments.clock))
                    learned += 1
            if learned >= budget:
                break
        return learned

    async def publish(self) -> bool:
        """Publish the model if it learned enough and anything since the last time."""
        model = self.model
        if (
            not model.ready
            or model.learned < self.settings.min_samples
            or model.learned == self._published_at_learned
        ):
            return False
        model.version += 1
        await self.kv.put(CLUSTERS_KEY, json.dumps({**model.export(), "published_at": time.time()}).encode())
        self._published_at_learned = model.learned
        return True


def cluster_listener(apply: Callable[[dict[str, Any]], None]) -> Callable[[bytes], None]:
    """A ``HS_LEARN`` entry handler that hands a published cluster model to ``apply``."""

    def on_entry(value: bytes) -> None:
        try:
            apply(json.loads(value))
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring unreadable cluster model: %s", exc)

    return on_entry


async def read_cluster_model(js: JetStreamContext) -> dict[str, Any] | None:
    """The published cluster model (None before the first one)."""
    try:
        entry = await (await js.key_value(LEARN_BUCKET)).get(CLUSTERS_KEY)
    except Exception:  # noqa: BLE001 - no bucket or no model yet
        return None
    return json.loads(entry.value) if entry.value else None
