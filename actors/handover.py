"""Partition hand-over: a shard taking partitions (start, recovery, a move) and giving them up.

:meth:`HandOver.acquire` is the one path for a cold start, a recovery and a move: each
partition from its latest snapshot (or a handed one), consumed from the sequence after it.
A move, driven by :meth:`actors.cluster.ShardGroup.rescale`, is :meth:`~HandOver.prepare` on
the new owner, :meth:`~HandOver.release` on the old, :meth:`~HandOver.acquire` with the
released snapshots, then :meth:`~HandOver.forget` on the old owner.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from actors.durability import Durability
from actors.loops import Background
from actors.owned import OwnedPartitions
from engine.partition import PartitionState, snapshot_position
from headstart.adapters.checkpoints import CheckpointStore
from headstart.adapters.consumer import PartitionConsumer, delete_stale_consumers
from headstart.adapters.merge import PolicyMerger
from headstart.adapters.topology import rpc_subject
from headstart.settings import Settings


def _not_bound(seq: int, key: str, data: bytes) -> None:
    raise RuntimeError("a consumer delivered before its partition was restored")


class HandOver:
    """Which partitions a shard consumes, and the moves that change it, one at a time.

    ``build`` makes a partition's state from its snapshot (or ``None``); ``on_rpc`` answers the
    requests of a partition taken over; ``report`` publishes the shard's stats. The NATS
    connections, the checkpoint store and the merger are given by :meth:`connect`.

    Example::

        handover = HandOver(settings, owned, durability, background, build, on_rpc, report, ready)
        handover.connect(nc, ctl, checkpoints, merger)
        restored = await handover.acquire([0, 1])
    """

    def __init__(
        self,
        settings: Settings,
        owned: OwnedPartitions,
        durability: Durability,
        background: Background,
        build: Callable[[int, bytes | None], PartitionState],
        on_rpc: Callable[[Msg], Awaitable[None]],
        report: Callable[[], Coroutine[Any, Any, None]],
        ready: asyncio.Event,
    ) -> None:
        self.settings = settings
        self.owned = owned
        self.durability = durability
        self.background = background
        self._build = build
        self._on_rpc = on_rpc
        self._report = report
        self._ready = ready
        self.nc: NATS | None = None
        self.ctl: NATS | None = None
        self.checkpoints: CheckpointStore | None = None
        self.merger: PolicyMerger | None = None
        # acquire/release change which partitions this shard owns, one call at a time.
        self._ownership_lock = asyncio.Lock()
        self.consumers: dict[int, PartitionConsumer] = {}
        self.restored_seqs: dict[int, int] = {}
        self.acquire_timings: collections.deque[dict[str, Any]] = collections.deque(maxlen=64)
        #: Wall-clock instants of a move, per partition: when its consumer here stopped (old
        #: owner) and when its consumer here started pulling (new owner). Between the two, nobody
        #: consumed it: the pause a move costs, measured where it happens.
        self._stopped_at: dict[int, float] = {}
        self._consuming_since: dict[int, float] = {}
        self._rpc_subs: dict[int, Subscription] = {}
        #: Consumers created ahead of a hand-over to this shard (see :meth:`prepare`).
        self._prepared: dict[int, PartitionConsumer] = {}

    def connect(self, nc: NATS, ctl: NATS, checkpoints: CheckpointStore, merger: PolicyMerger) -> None:
        """``nc`` carries events only; requests, checkpoints and the rest go over ``ctl``."""
        self.nc, self.ctl, self.checkpoints, self.merger = nc, ctl, checkpoints, merger

    async def acquire(
        self, partitions: list[int], snapshots: dict[int, bytes] | None = None
    ) -> dict[int, int]:
        """Take partitions over; returns each new one's restored sequence. Idempotent.

        Cold start, recovery and a move are one path: each partition from its latest snapshot
        (or empty), consumed from the sequence after it, and answered for only once consuming.
        All partitions are restored and their consumers created before any of them pulls: the
        first partitions' events would otherwise slow the taking of the rest. ``snapshots``
        (from a hand-over) are used instead of the object store, and stored there afterwards.
        """
        handed = snapshots or {}
        state, released = self.owned.state, self.owned.released
        steps = {"entered_at": time.time()}
        clock = time.perf_counter()

        def step(name: str) -> None:
            nonlocal clock
            now = time.perf_counter()
            steps[name] = now - clock
            clock = now

        async with self._ownership_lock, self._held():
            step("lock_s")
            # A partition released here and never taken by another (an interrupted move) resumes
            # from its state in memory, which is exactly as of its last applied sequence; it
            # still answers requests, so it needs only its consumer back.
            back = [p for p in partitions if p in released]
            released.difference_update(back)
            new = [p for p in partitions if p not in state.partitions]
            loaded = await asyncio.gather(*(self._snapshot(p, handed.get(p)) for p in new))
            step("load_s")
            # Each partition resumes right after its own last applied sequence, which a snapshot
            # gives without being restored: the consumers are created on the broker while the
            # states are rebuilt here (both take a few hundred ms on a loaded machine).
            positions = [snapshot_position(snap) for snap in loaded]
            positions += [state.partitions[p].last_seq for p in back]
            consuming = new + back
            creating = asyncio.gather(
                *(self._prepared_or_new_consumer(p, at) for p, at in zip(consuming, positions, strict=True))
            )
            assert self.ctl is not None
            await self.ctl.flush()  # the create requests are on the broker before the CPU work
            step("consumers_requested_s")
            parts = [self._restore(p, snap) for p, snap in zip(new, loaded, strict=True)]
            step("restore_s")
            for part in parts:
                state.partitions[part.partition] = part
                # A handed-over snapshot is not in the object store yet: the next checkpoint writes it.
                self.durability.taken(part, handed=part.partition in handed)
            consumers = await creating
            step("consumers_s")
            for p, consumer in zip(consuming, consumers, strict=True):
                consumer.bind(state.partitions[p].apply_message)
                self.consumers[p] = consumer
            # After a start or a crash, consumers an earlier process left behind go (a move's old
            # owner deletes its own: no listing of every consumer on a loaded broker then).
            stale = {p: c.name for p, c in zip(consuming, consumers, strict=True) if p not in handed}
            if stale:
                self.background.spawn(delete_stale_consumers(self.ctl.jetstream(), stale))
            # Our own partitions live, instead of their published copies, before any applies.
            if self.merger is not None:
                self.merger.rebuild()
            step("rebuild_s")
            await asyncio.gather(*(consumer.pull() for consumer in consumers))
            step("pull_s")
            pulling_at = time.time()
            self._consuming_since.update(dict.fromkeys(consuming, pulling_at))
            assert self.ctl is not None
            subs = await asyncio.gather(
                *(self.ctl.subscribe(rpc_subject(p, "*"), cb=self._on_rpc) for p in new)
            )
            self._rpc_subs.update(zip(new, subs, strict=True))
            step("subscribe_s")
        if new:
            # Where a take-over's time goes (`headstart bench scale` reports them).
            self.acquire_timings.append({"partitions": new, **steps})
        if new and self._ready.is_set():
            self.background.spawn(self._report())  # not on the hand-over's critical path
        if handed.keys() & set(new):
            self.background.spawn(self.durability.checkpoint_logged())
        return {part.partition: part.last_seq for part in parts}

    @contextlib.asynccontextmanager
    async def _held(self) -> AsyncIterator[None]:
        """Hold the partitions already consumed here while new ones are taken over.

        Their events wait the few milliseconds this takes (in order, nothing lost) rather than
        every step of the take-over waiting behind their events: on a shard draining a backlog
        the take-over took 0.5-1.5 s without this.
        """
        held = list(self.consumers.values())
        for consumer in held:
            consumer.hold()
        try:
            yield
        finally:
            for consumer in held:
                consumer.resume()

    async def _snapshot(self, partition: int, handed: bytes | None) -> bytes | None:
        assert self.checkpoints is not None
        return handed if handed is not None else await self.checkpoints.load(partition)

    def _restore(self, partition: int, snapshot: bytes | None) -> PartitionState:
        part = self._build(partition, snapshot)
        if snapshot:
            self.restored_seqs[partition] = part.last_seq
        return part

    async def _create_consumer(self, partition: int, position: int) -> PartitionConsumer:
        """A consumer of ``partition`` after ``position``, not pulling yet and without a handler
        until :meth:`PartitionConsumer.bind`; other consumers of the partition (an earlier
        owner's, a crashed one's) are deleted in the background."""
        assert self.nc is not None and self.ctl is not None
        consumer = PartitionConsumer(
            self.nc,
            partition=partition,
            handler=_not_bound,
            batch=self.settings.fetch_batch,
            replicas=self.settings.stream_replicas,
            control=self.ctl,
            pii_fields=self.settings.pii_fields,
        )
        await consumer.start(position, pull=False)
        return consumer

    def positions(self, partitions: list[int]) -> dict[int, int]:
        """The last applied sequence of each of ``partitions`` this shard consumes."""
        return {p: self.owned.state.partitions[p].last_seq for p in partitions if self.owned.consumes(p)}

    async def prepare(self, positions: dict[int, int]) -> list[int]:
        """Create consumers for the partitions about to be handed here, each starting after its
        entry in ``positions`` (its owner's last applied sequence now), so that the take-over finds
        them ready: on a saturated broker creating one took up to ~1 s, which is then no part
        of the move's pause. The messages between a position and the handed snapshot's
        sequence are delivered and skipped (applied already, by sequence). They ask for
        nothing until taken over. Returns the partitions prepared."""
        todo = [p for p in positions if not self.owned.holds(p) and p not in self._prepared]
        consumers = await asyncio.gather(*(self._create_consumer(p, positions[p]) for p in todo))
        self._prepared.update(zip(todo, consumers, strict=True))
        return todo

    async def _prepared_or_new_consumer(self, partition: int, position: int) -> PartitionConsumer:
        prepared = self._prepared.pop(partition, None)
        if prepared is not None:
            if prepared.position <= position:
                return prepared
            self.background.spawn(prepared.stop(delete=True))  # ahead of the snapshot: unusable
        return await self._create_consumer(partition, position)

    async def release(self, partitions: list[int]) -> dict[int, bytes]:
        """Stop consuming partitions and snapshot them, for a hand-over to another shard.

        Returns each released partition's snapshot, which records its last applied sequence:
        the next owner restores it and consumes from the sequence after, so nothing is lost or
        applied twice. Until :meth:`forget`, the released partitions keep answering reads from
        their state as of that sequence, so decisions do not wait for the move. Partitions this
        shard does not own (or already released) are ignored.
        """
        state = self.owned.state
        # The shard's other partitions wait meanwhile (as in acquire): on a saturated shard each
        # step would otherwise wait behind every partition's backlog (up to 1.5 s per release).
        async with self._ownership_lock, self._held():
            owned = [p for p in partitions if self.owned.consumes(p)]
            stopping = [self.consumers.pop(p) for p in owned]
            await asyncio.gather(*(consumer.stop() for consumer in stopping))
            self._stopped_at.update(dict.fromkeys(owned, time.time()))
            for p, consumer in zip(owned, stopping, strict=True):
                # Deleted on the broker while the next owner takes over (not on the hand-over's
                # path: its own consumer has a new name).
                self.background.spawn(consumer.delete())
                self.owned.released.add(p)
            # After every consumer stopped: each snapshot is final, and taken in one step.
            snapshots = {p: state.partitions[p].snapshot() for p in owned}
            if self.merger is not None:
                # What they learned, as of the hand-over: every shard (the next owner too) sees it.
                handed = {p: state.partitions[p].learning for p in owned}
                await self.merger.publish({p: lp for p, lp in handed.items() if lp is not None})
        if owned:
            self.background.spawn(self._report())
        return snapshots

    async def forget(self, partitions: list[int]) -> dict[int, float]:
        """Drop released partitions once their new owner consumes them; returns when each one's
        consumer here had stopped (wall clock)."""
        stopped = {p: self._stopped_at.pop(p) for p in partitions if p in self._stopped_at}
        async with self._ownership_lock:
            for p in [p for p in partitions if p in self.owned.released]:
                # Drain, not unsubscribe: requests already delivered to us are answered.
                await self._rpc_subs.pop(p).drain()  # type: ignore[no-untyped-call]
                del self.owned.state.partitions[p]
                self.owned.released.discard(p)
                self.durability.forget(p)
                self.restored_seqs.pop(p, None)
            if self.merger is not None:
                self.merger.forget_partitions(partitions)
                self.merger.rebuild()
        await self._report()
        return stopped

    def consuming_since(self, partitions: list[int]) -> dict[int, float]:
        """When this shard's consumer of each partition started pulling (wall clock)."""
        return {p: self._consuming_since[p] for p in partitions if p in self._consuming_since}

    async def lag(self) -> int:
        """Events stored in the consumed partitions and not yet delivered here."""
        return sum(await asyncio.gather(*(c.lag() for c in self.consumers.values())))

    async def stop(self) -> None:
        """Stop answering and consuming (the consumers stay on the broker for a restart)."""
        for sub in self._rpc_subs.values():
            await sub.unsubscribe()
        self._rpc_subs = {}
        for consumer in self.consumers.values():
            await consumer.stop()
        for consumer in self._prepared.values():  # a hand-over that never came
            await consumer.stop(delete=True)
        self._prepared = {}
