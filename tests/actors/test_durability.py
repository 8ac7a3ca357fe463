"""The shard's durability protocol without NATS or Ray: an in-memory checkpoint store."""

from __future__ import annotations

import asyncio

import pytest

from actors.durability import NOT_STORED, Durability
from actors.owned import OwnedPartitions
from engine.partition import PartitionSetup, PartitionState
from engine.segments import SegmentIndex
from engine.shard import ShardState
from tests.engine.test_segments import NOW, RULES, catalog_with, event


class MemoryStore:
    """A :class:`headstart.adapters.checkpoints.CheckpointStore` in a dict; can be made to fail."""

    def __init__(self) -> None:
        self.saved: dict[int, tuple[bytes, int]] = {}
        self.saves: list[int] = []
        self.failing = False

    async def load(self, partition: int) -> bytes | None:
        entry = self.saved.get(partition)
        return entry[0] if entry else None

    async def save(self, partition: int, data: bytes, last_seq: int) -> None:
        if self.failing:
            raise OSError("store down")
        self.saved[partition] = (data, last_seq)
        self.saves.append(partition)


def shard(*partitions: int) -> tuple[Durability, OwnedPartitions, MemoryStore]:
    catalog = catalog_with(RULES)
    index = SegmentIndex(catalog)
    setup = PartitionSetup(segment_index=index)
    owned = OwnedPartitions(ShardState({p: PartitionState(p, setup) for p in partitions}))
    durability = Durability(owned, catalog.membership, retention_days=1)
    store = MemoryStore()
    durability.open(store)
    return durability, owned, store


def busy(part: PartitionState, key: str = "k", first_seq: int = 1) -> None:
    """Three clicks: ``key`` enters "busy", which a sweep ten minutes later makes them leave."""
    for n in range(3):
        part.apply_event(
            key,
            event(first_seq + n, "feature_clicked", NOW + n, key=key, props={"feature": "share"}),
            seq=first_seq + n,
        )
    assert part.segments is not None
    part.segments.take()


def test_a_checkpoint_writes_changed_consumed_partitions_only() -> None:
    durability, owned, store = shard(0, 1, 2)
    busy(owned.state.partitions[0])
    owned.released.add(2)  # handed over: its new owner writes it
    assert asyncio.run(durability.checkpoint())["written"] == 2
    assert sorted(store.saves) == [0, 1]
    assert asyncio.run(durability.checkpoint())["written"] == 0  # nothing changed since
    assert durability.checkpoint_count == 2 and durability.last_checkpoint_at > 0


def test_a_handed_over_partition_is_written_by_the_next_checkpoint_and_forgotten_ones_are_not() -> None:
    durability, owned, store = shard(0, 1)
    durability.taken(owned.state.partitions[0], handed=True)
    durability.taken(owned.state.partitions[1], handed=False)  # its mark is the stored one
    asyncio.run(durability.checkpoint())
    assert store.saves == [0]
    durability.forget(0)
    assert durability._checkpointed.get(0, NOT_STORED) == NOT_STORED


def test_a_sweeps_changes_are_publishable_only_once_stored() -> None:
    durability, owned, store = shard(0)
    part = owned.state.partitions[0]
    busy(part)
    store.failing = True  # the snapshot after the sweep fails: its changes wait
    assert asyncio.run(durability.sweep_segments(NOW + 600)) == 1
    assert durability.publishable() == {}
    store.failing = False
    asyncio.run(durability.checkpoint())  # the next checkpoint stores them, then they may go
    assert durability.publishable() == {0: part}
    assert durability.sweeps == 1 and durability.sweep_changes == 1


def test_a_sweep_that_changes_nothing_holds_nothing_and_stores_nothing() -> None:
    durability, owned, store = shard(0)
    busy(owned.state.partitions[0])
    asyncio.run(durability.checkpoint())
    store.saves.clear()
    assert asyncio.run(durability.sweep_segments(NOW + 60)) == 0
    assert store.saves == [] and durability.publishable() == {0: owned.state.partitions[0]}


def test_an_expiry_is_stored_before_its_exits_are_published() -> None:
    durability, owned, store = shard(0)
    part = owned.state.partitions[0]
    busy(part)
    asyncio.run(durability.checkpoint())
    store.saves.clear()
    # Another user's event days later moves the partition's clock past the first one's retention.
    part.apply_event("o", event(9, "session_started", NOW + 3 * 86400, key="o"), seq=9)
    assert asyncio.run(durability.expire_inactive()) == 1
    assert store.saves == [0] and durability.publishable() == {0: part}
    assert durability.expired_profiles == 1


def test_snapshot_through_writes_only_what_is_applied_and_not_stored() -> None:
    durability, owned, store = shard(0)
    part = owned.state.partitions[0]
    busy(part)
    part.last_seq = 3  # as the consumer's delivery of the third event sets it
    assert asyncio.run(durability.snapshot_through(part, 4)) is False  # not applied yet
    assert asyncio.run(durability.snapshot_through(part, 3)) is True and store.saves == [0]
    assert asyncio.run(durability.snapshot_through(part, 2)) is True and store.saves == [0]  # stored


def test_without_a_store_nothing_is_held() -> None:
    catalog = catalog_with(RULES)
    setup = PartitionSetup(segment_index=SegmentIndex(catalog))
    owned = OwnedPartitions(ShardState({0: PartitionState(0, setup)}))
    durability = Durability(owned, catalog.membership, retention_days=1)
    busy(owned.state.partitions[0])
    assert asyncio.run(durability.sweep_segments(NOW + 600)) == 1
    assert 0 in durability.publishable()
    with pytest.raises(AssertionError):
        asyncio.run(durability.checkpoint())


def test_changes_of_segments_evaluated_on_restore_wait_for_a_snapshot_holding_them() -> None:
    """A partition restored under a catalog with a changed rule evaluates it for every user on
    restore: the stream cannot make those changes again, so they are published only once a
    snapshot holding them is stored, and the next checkpoint stores one."""
    durability, owned, store = shard(0)
    part = owned.state.partitions[0]
    busy(part)
    snapshot = part.snapshot()
    changed = catalog_with({**RULES, "busy": "events_5m >= 1", "new_one": "events_total >= 1"})
    restored = PartitionState.restore(snapshot, PartitionSetup(segment_index=SegmentIndex(changed)))
    owned.state.partitions[0] = restored
    durability.taken(restored, handed=False)
    assert restored.segments is not None and restored.segments.queued == 1  # entered new_one
    assert durability.publishable() == {}
    asyncio.run(durability.checkpoint())
    assert store.saves == [0] and list(durability.publishable()) == [0]
    # Restored from that snapshot: nothing evaluated again, nothing held.
    again = PartitionState.restore(store.saved[0][0], PartitionSetup(segment_index=SegmentIndex(changed)))
    durability.taken(again, handed=False)
    assert again.segments is not None and again.segments.revision == 0
    assert list(durability.publishable()) == [0]
