"""A shard's durability protocol: checkpoints, and segment changes published only once stored.

Checkpoints snapshot the partitions that changed since their last one. A sweep's or an
expiry's segment changes are not made again by replaying events after a crash, so they are
held (:class:`headstart.adapters.membership.PublishHolds`) until a stored snapshot holds them;
see :meth:`Durability._store_before_publishing`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from actors.owned import OwnedPartitions
from engine.catalog import Membership
from engine.partition import CheckpointMark, PartitionState
from headstart.adapters.checkpoints import CheckpointStore
from headstart.adapters.membership import PublishHolds, sweep_partition

log = logging.getLogger(__name__)

#: The checkpoint mark of a partition with no snapshot stored (a handed-over one, until the
#: next checkpoint writes it): below every real mark.
NOT_STORED: CheckpointMark = (-1, 0, 0)


class Durability:
    """Stores the snapshots of a shard's partitions and holds what must wait for one.

    ``store`` is given by :meth:`open` once the shard is connected; until then nothing is
    stored (a sweep's changes are then not held).

    Example::

        durability = Durability(owned, catalog.membership, retention_days=365)
        durability.open(await NatsCheckpointStore.open(js))
        await durability.checkpoint()
    """

    def __init__(self, owned: OwnedPartitions, membership: Membership, retention_days: float) -> None:
        self.owned = owned
        self.membership = membership
        self.retention_days = retention_days
        self.store: CheckpointStore | None = None
        #: Per partition, its :meth:`~engine.partition.PartitionState.checkpoint_mark` when last
        #: stored (last sequence first): a checkpoint skips a partition whose mark is the same.
        self._checkpointed: dict[int, CheckpointMark] = {}
        self.checkpoint_count = 0
        self.checkpoint_max_pause_s = 0.0
        self.last_checkpoint_at = 0.0
        self._checkpoint_lock = asyncio.Lock()
        #: Partitions whose segment changes wait for a stored snapshot (see
        #: :meth:`_store_before_publishing`).
        self.holds = PublishHolds()
        #: One sweep at a time (the timer's, or one asked for): a partition's sweep is one step
        #: for the snapshot that holds its changes.
        self._sweep_lock = asyncio.Lock()
        self.sweeps = 0
        self.sweep_changes = 0
        self.last_sweep_s = 0.0
        self.expired_profiles = 0

    def open(self, store: CheckpointStore) -> None:
        self.store = store

    # ------------------------------------------------------------------ hand-over

    def taken(self, part: PartitionState, handed: bool) -> None:
        """``part`` was just restored here; ``handed`` if from a hand-over's snapshot, which is
        not in the store yet (the next checkpoint writes it)."""
        segments = part.segments
        if segments is not None and segments.revision:
            # Restored under a catalog version with segments new or changed since the snapshot:
            # they were just evaluated for every user, changes the stream cannot replay. Held
            # until a snapshot holds them, like a sweep's (the next checkpoint writes it).
            self._checkpointed[part.partition] = NOT_STORED
            self.holds.until(part.partition, part.checkpoint_mark())
            return
        self._checkpointed[part.partition] = NOT_STORED if handed else part.checkpoint_mark()
        self.holds.drop(part.partition)  # restored: nothing to hold

    def forget(self, partition: int) -> None:
        """``partition`` went to another shard, with its snapshot."""
        self._checkpointed.pop(partition, None)
        self.holds.drop(partition)  # its snapshot went to the new owner

    # ------------------------------------------------------------------ checkpoints

    async def checkpoint(self) -> dict[str, Any]:
        """Snapshot every partition that changed since its last checkpoint; return what was done.

        Each snapshot is taken in one synchronous step on the event loop, so it is consistent
        with the sequence it records; events wait only for that step (the measured pause), not
        for the upload.
        """
        assert self.store is not None
        written, pauses = 0, []
        async with self._checkpoint_lock:
            for partition, part in list(self.owned.state.partitions.items()):
                if partition in self.owned.released:
                    continue  # handed over: its new owner writes it
                stored = self._checkpointed.get(partition)
                if stored is not None and part.checkpoint_mark() == stored:
                    self.holds.stored(partition, stored)  # what is held is stored
                    continue
                pauses.append(await self._save(part))
                written += 1
        if pauses:
            self.checkpoint_max_pause_s = max(self.checkpoint_max_pause_s, *pauses)
        self.checkpoint_count += written
        self.last_checkpoint_at = time.time()
        return {"written": written, "max_pause_s": max(pauses, default=0.0)}

    async def checkpoint_logged(self) -> None:
        try:
            await self.checkpoint()
        except Exception:
            log.exception("checkpoint failed")

    async def snapshot_through(self, part: PartitionState, seq: int) -> bool:
        """Whether the stored snapshot of ``part`` is past ``seq``; writes one if it is applied
        but not yet snapshotted (an erasure waits for this)."""
        if part.last_seq < seq:
            return False
        if self._checkpointed.get(part.partition, NOT_STORED)[0] < seq:
            await self._save(part)
        return True

    async def _save(self, part: PartitionState) -> float:
        """Store a snapshot of ``part``; returns how long taking it paused the event loop."""
        assert self.store is not None
        started = time.perf_counter()
        mark, data, last_seq = part.checkpoint_mark(), part.snapshot(), part.last_seq
        pause = time.perf_counter() - started
        await self.store.save(part.partition, data, last_seq)
        self._checkpointed[part.partition] = mark
        self.holds.stored(part.partition, mark)
        return pause

    # ------------------------------------------------------------------ publishing after storing

    def publishable(self) -> dict[int, PartitionState]:
        """The consumed partitions whose queued segment changes may go out now."""
        return self.holds.publishable(self.owned.consumed())

    async def sweep_segments(self, now: float | None = None) -> int:
        """Re-evaluate every user's time-based segments (as of ``now``: by default the wall
        clock, or each partition's newest event time with ``membership.clock: event``)."""
        async with self._sweep_lock:
            started = time.perf_counter()
            changes = 0
            for part in list(self.owned.consumed().values()):
                at = (
                    now
                    if now is not None
                    else (time.time() if self.membership.clock == "wall" else part.watermark)
                )
                changes += await self._sweep_durably(part, at)
        self.sweeps += 1
        self.sweep_changes += changes
        self.last_sweep_s = time.perf_counter() - started
        return changes

    async def _sweep_durably(self, part: PartitionState, at: float) -> int:
        """Sweep one partition; what it changed is published once a snapshot holds it (see
        :meth:`_store_before_publishing`)."""
        held = self.holds
        was_held = held.begin(part.partition)  # nothing goes out until it is done and stored
        try:
            changes = await sweep_partition(part, at)
        except BaseException:
            held.until(part.partition, part.checkpoint_mark())  # for the next checkpoint
            raise
        if changes or was_held:
            await self._store_before_publishing(part)
        else:
            held.drop(part.partition)
        return changes

    async def _store_before_publishing(self, part: PartitionState) -> None:
        """Store a snapshot of ``part`` (just changed by a sweep or an expiry) before its queued
        segment changes are published.

        An event's changes are made again, under the same ids, by replaying the event after a
        crash; a sweep's or an expiry's are not (the next one runs at another time). So they
        wait until a stored snapshot holds them: a crash before that loses nothing published
        (the next sweep or expiry makes them), a crash after it publishes them from the
        restored outbox, under their ids. If storing fails they wait for the next checkpoint.
        """
        p = part.partition
        if self.store is None or p in self.owned.released:
            self.holds.drop(p)
            return
        self.holds.until(p, part.checkpoint_mark())
        try:
            async with self._checkpoint_lock:
                await self._save(part)
        except Exception:
            log.exception("snapshot of partition %d failed; its changes wait for the next checkpoint", p)

    async def expire_inactive(self) -> int:
        """Delete profiles inactive longer than ``profile_retention_days``; returns how many."""
        max_inactive_s = self.retention_days * 86400
        expired = 0
        for part in list(self.owned.consumed().values()):
            forgotten = part.expire_inactive(max_inactive_s)
            if forgotten:  # stored now: their exits go out only once nothing brings them back
                await self._store_before_publishing(part)
            expired += forgotten
        self.expired_profiles += expired
        return expired
