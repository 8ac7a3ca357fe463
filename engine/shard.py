"""The state a shard owns: a set of partitions. Pure logic, driven by a thin Ray actor.

>>> from engine.events import encode_event
>>> shard = ShardState.build({0: None, 1: None})
>>> raw = encode_event({"event_id": "e", "user_id": "k", "type": "session_started", "ts": 5})
>>> shard.apply(seq=7, partition=1, user_key="k", data=raw)
>>> shard.partitions[1].last_seq, shard.view(1, "k", now=5)["sessions"]
(7, 1)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from engine.errors import HeadstartError
from engine.partition import PartitionSetup, PartitionState


class NotOwned(HeadstartError):
    """A partition was asked of a shard that does not own it (it moved, or never was here)."""


class ShardState:
    """Partitions by number, each with its own last applied sequence."""

    def __init__(self, partitions: dict[int, PartitionState]) -> None:
        self.partitions = partitions

    @classmethod
    def build(cls, snapshots: Mapping[int, bytes | None], setup: PartitionSetup | None = None) -> ShardState:
        """Cold start and recovery are one path: each partition from its snapshot or empty."""
        return cls({p: PartitionState.build(p, snap, setup) for p, snap in snapshots.items()})

    def apply(self, seq: int, partition: int, user_key: str, data: bytes) -> None:
        try:
            part = self.partitions[partition]
        except KeyError:
            raise NotOwned(f"partition {partition} is not owned by this shard") from None
        part.apply_message(seq, user_key, data)

    def part(self, partition: int) -> PartitionState:
        try:
            return self.partitions[partition]
        except KeyError:
            raise NotOwned(f"partition {partition} is not owned by this shard") from None

    def view(self, partition: int, user_key: str, now: float) -> dict[str, Any] | None:
        return self.part(partition).view(user_key, now)

    def views(self, requests: Iterable[tuple[int, str]], now: float) -> list[dict[str, Any] | None]:
        return [self.view(p, key, now) for p, key in requests]

    @property
    def users(self) -> int:
        return sum(len(p.users) for p in self.partitions.values())

    @property
    def applied(self) -> int:
        return sum(p.applied for p in self.partitions.values())

    @property
    def replayed(self) -> int:
        """Events skipped as already applied to their user (see :mod:`engine.recent`)."""
        return sum(p.replayed for p in self.partitions.values())

    @property
    def records(self) -> int:
        """Decision and reward records applied (see :mod:`engine.learning`)."""
        return sum(p.records for p in self.partitions.values())
