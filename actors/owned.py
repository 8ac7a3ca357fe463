"""The partitions a shard holds, and which of them it consumes (the rest are handed over).

A partition released to another shard stays in :class:`engine.shard.ShardState` and answers
reads until forgotten, but it is no longer this shard's: no checkpoint, sweep, expiry, learning
or stats counts it. Hand-over (:mod:`actors.handover`) changes the set; the rest only reads it.
"""

from __future__ import annotations

from engine.learning import PartitionLearning
from engine.partition import PartitionState
from engine.shard import ShardState


class OwnedPartitions:
    """A shard's partitions: all it holds (``state``) and the ones ``released`` to another shard.

    >>> owned = OwnedPartitions(ShardState({}))
    >>> owned.state.partitions[3] = PartitionState(3)
    >>> owned.released.add(3)
    >>> owned.consumed(), owned.holds(3), owned.consumes(3)
    ({}, True, False)
    """

    def __init__(self, state: ShardState) -> None:
        self.state = state
        #: Partitions handed over (no longer consumed here) that still answer reads until forgotten.
        self.released: set[int] = set()

    def holds(self, partition: int) -> bool:
        return partition in self.state.partitions

    def consumes(self, partition: int) -> bool:
        return partition in self.state.partitions and partition not in self.released

    def consumed(self) -> dict[int, PartitionState]:
        """The partitions this shard consumes, by number."""
        return {p: part for p, part in self.state.partitions.items() if p not in self.released}

    def numbers(self) -> list[int]:
        """The numbers of the partitions consumed, in order."""
        return sorted(set(self.state.partitions) - self.released)

    def learning(self) -> dict[int, PartitionLearning]:
        """The learning state of the partitions this shard consumes (released ones are not ours)."""
        return {
            p: part.learning
            for p, part in self.state.partitions.items()
            if part.learning is not None and p not in self.released
        }
