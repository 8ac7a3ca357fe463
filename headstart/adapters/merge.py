"""Learning across shards: every shard publishes what its partitions learned and serves the sum.

The key-value bucket ``HS_LEARN`` holds one entry per partition (``c.<partition>``: the
partition's contribution to every policy, as of a stream sequence), written by the partition's
owner, and ``forgotten`` (what drifts made the policies forget). Each shard watches the bucket
and, every ``learning.merge_interval_s``, publishes its changed partitions and rebuilds its
policies from the sum (:meth:`engine.learning.Learner.rebuild`). A new or restarted shard reads
the bucket first, so it starts from the merged policy.

It also holds the registry of feature layouts (``layout.<id>``: the feature names of a context
vector layout, :class:`engine.features.FeatureLayout`): a logged decision names its layout by id
only, and whoever reads it (a shard replaying the stream after a catalog change, ``evaluate``,
the signal report) finds the names here. Every shard registers its catalog's layout before it
takes a partition, so every layout a decision was logged with is registered. The registry
lives beside the statistics, not in the events stream, because the stream's retention would
drop a layout's first record before the decisions that need it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping

import msgspec
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from engine.features import FeatureLayout
from engine.learning import Learner, PartitionLearning
from headstart.adapters.streams import file_bucket
from headstart.adapters.topology import LEARN_BUCKET

log = logging.getLogger(__name__)

FORGOTTEN_KEY = "forgotten"
LAYOUT_PREFIX = "layout."


def contribution_key(partition: int) -> str:
    return f"c.{partition}"


def layout_key(layout_id: str) -> str:
    return f"{LAYOUT_PREFIX}{layout_id}"


async def register_layout(kv: KeyValue, layout: FeatureLayout) -> None:
    """Record a layout's feature names under its id (the same value every time: idempotent)."""
    await kv.put(layout_key(layout.layout_id), msgspec.json.encode(layout.names))


async def known_layouts(kv: KeyValue) -> dict[str, tuple[str, ...]]:
    """Every registered layout: feature names by layout id."""
    layouts: dict[str, tuple[str, ...]] = {}
    # A watcher delivers every current value of the keys it watches, then None.
    watcher = await kv.watch(f"{LAYOUT_PREFIX}>", ignore_deletes=True)
    try:
        async for entry in watcher:
            if entry is None:
                break
            if entry.value:
                names = msgspec.json.decode(entry.value, type=list[str])
                layouts[entry.key.removeprefix(LAYOUT_PREFIX)] = tuple(names)
    finally:
        await watcher.stop()  # type: ignore[no-untyped-call]
    return layouts


async def learn_bucket(js: JetStreamContext, replicas: int = 1) -> KeyValue:
    description = "Headstart: each partition's contribution to the policies, and drifts forgotten"
    return await file_bucket(js, LEARN_BUCKET, description, replicas)


class PolicyMerger:
    """Drives one shard's :class:`Learner` through the ``HS_LEARN`` bucket.

    Example::

        merger = PolicyMerger(await learn_bucket(js), learner, owned=lambda: shard_partitions)
        await merger.start()          # loads every published contribution, then watches
        await merger.merge()          # publish ours, rebuild from the sum (also on a schedule)
    """

    def __init__(
        self,
        kv: KeyValue,
        learner: Learner,
        owned: Callable[[], Mapping[int, PartitionLearning]],
        listeners: Mapping[str, Callable[[bytes], None]] | None = None,
    ) -> None:
        self.kv = kv
        #: Other entries of the bucket someone wants (e.g. the cluster model), by key.
        self.listeners = dict(listeners or {})
        self.learner = learner
        self._owned = owned
        self._published: dict[int, int] = {}
        self._watcher: KeyValue.KeyWatcher | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._sharing: set[asyncio.Task[None]] = set()
        self.merges = 0
        self.drifts_shared = 0

    async def start(self, interval_s: float) -> None:
        # Before any decision is logged with it.
        await register_layout(self.kv, self.learner.layout)
        self._watcher = await self.kv.watchall()
        # The watcher first delivers every current value, then None, then updates.
        async for entry in self._watcher:
            if entry is None:
                break
            self._apply(entry)
        self.rebuild()
        self._tasks = [
            asyncio.create_task(self._watch(), name="learn-watch"),
            asyncio.create_task(self._merge_forever(interval_s), name="learn-merge"),
        ]

    def _apply(self, entry: KeyValue.Entry) -> None:
        if entry.value is None or entry.operation is not None:
            return  # deleted or purged
        try:
            if entry.key in self.listeners:
                self.listeners[entry.key](entry.value)
            elif entry.key == FORGOTTEN_KEY:
                self.learner.load_forgotten(entry.value)
            elif entry.key.startswith("c."):
                self.learner.set_view(int(entry.key[2:]), entry.value)
            elif entry.key.startswith(LAYOUT_PREFIX):
                self.learner.register_layout(msgspec.json.decode(entry.value, type=list[str]))
        except (ValueError, KeyError, msgspec.DecodeError) as exc:
            log.warning("ignoring unreadable %s entry %s: %s", LEARN_BUCKET, entry.key, exc)

    async def _watch(self) -> None:
        assert self._watcher is not None
        async for entry in self._watcher:
            if entry is not None:
                self._apply(entry)

    async def _merge_forever(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.merge()
            except Exception:
                log.exception("policy merge failed; retrying at the next interval")

    async def publish(self, learnings: Mapping[int, PartitionLearning] | None = None) -> int:
        """Publish the contributions that changed since last published: of ``learnings`` (e.g.
        partitions being handed over), by default of every partition we own."""
        written = 0
        for p, learning in (learnings if learnings is not None else self._owned()).items():
            if self._published.get(p) == learning.seq:
                continue
            seq = learning.seq
            await self.kv.put(contribution_key(p), learning.published(p))
            self._published[p] = seq
            written += 1
        return written

    def rebuild(self) -> None:
        """Serve the sum of all contributions; share a drift this shard's policies detected."""
        owned = self._owned()
        record = self.learner.take_drifts(owned)
        if record is not None:
            self.drifts_shared += 1
            task = asyncio.create_task(self._share(record))
            self._sharing.add(task)  # a reference until done, or it may be collected
            task.add_done_callback(self._sharing.discard)
        self.learner.rebuild(owned)

    async def _share(self, record: bytes) -> None:
        with contextlib.suppress(Exception):
            await self.kv.put(FORGOTTEN_KEY, record)

    async def merge(self) -> None:
        await self.publish()
        self.rebuild()
        self.merges += 1

    def forget_partitions(self, partitions: list[int]) -> None:
        for p in partitions:
            self._published.pop(p, None)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self._watcher is not None:
            with contextlib.suppress(Exception):
                await self._watcher.stop()  # type: ignore[no-untyped-call]
