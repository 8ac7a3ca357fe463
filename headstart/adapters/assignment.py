"""Which shard owns each partition, kept where every node can read it: a NATS key-value entry.

A shard reads its partitions from here when it (re)starts, so a shard that Ray restarts after
a rescale takes the partitions it owns now, not the ones it was created with. The entry changes
only by compare-and-set (:func:`move_partitions`), one hand-over at a time per writer, so
concurrent moves never overwrite each other.

>>> a = Assignment.even(partitions=8, shards=2)
>>> a.owners, a.partitions_of(1)
([0, 0, 0, 0, 1, 1, 1, 1], [4, 5, 6, 7])
>>> a.moved_to(4).owners
[0, 0, 1, 1, 2, 2, 3, 3]
"""

from __future__ import annotations

import msgspec
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError, NotFoundError
from nats.js.kv import KeyValue

from headstart.adapters.streams import file_bucket
from headstart.adapters.topology import CONTROL_BUCKET

ASSIGNMENT_KEY = "assignment"


class Assignment(msgspec.Struct, frozen=True):
    """``owners[p]`` is the shard id that owns partition ``p``."""

    owners: list[int]

    @classmethod
    def even(cls, partitions: int, shards: int) -> Assignment:
        """Contiguous ranges: growing or shrinking moves neighbouring ranges, not scattered ones."""
        return cls([p * shards // partitions for p in range(partitions)])

    @property
    def shards(self) -> int:
        return max(self.owners) + 1

    def partitions_of(self, shard: int) -> list[int]:
        return [p for p, owner in enumerate(self.owners) if owner == shard]

    def moved_to(self, shards: int) -> Assignment:
        return Assignment.even(len(self.owners), shards)

    def with_owner(self, partitions: list[int], shard: int) -> Assignment:
        owners = list(self.owners)
        for p in partitions:
            owners[p] = shard
        return Assignment(owners)


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(Assignment).decode


async def control_bucket(js: JetStreamContext, replicas: int = 1) -> KeyValue:
    description = "Headstart control state (partition assignment)"
    return await file_bucket(js, CONTROL_BUCKET, description, replicas, history=5)


async def load_assignment(kv: KeyValue) -> tuple[Assignment | None, int]:
    """The current assignment and its revision (0 when there is none yet)."""
    try:
        entry = await kv.get(ASSIGNMENT_KEY)
    except (KeyNotFoundError, NotFoundError):
        return None, 0
    if not entry.value:
        return None, 0
    return _decode(entry.value), int(entry.revision or 0)


async def save_assignment(kv: KeyValue, assignment: Assignment) -> None:
    """Overwrite the assignment (only while no shard runs: a fresh start)."""
    await kv.put(ASSIGNMENT_KEY, _encode(assignment))


async def move_partitions(kv: KeyValue, partitions: list[int], shard: int, default: Assignment) -> Assignment:
    """Record that ``shard`` owns ``partitions`` now, by compare-and-set (retried on conflict).

    ``default`` is the layout to start from when no assignment was ever written.
    """
    while True:
        current, revision = await load_assignment(kv)
        updated = (current or default).with_owner(partitions, shard)
        try:
            if revision == 0:
                await kv.create(ASSIGNMENT_KEY, _encode(updated))
            else:
                await kv.update(ASSIGNMENT_KEY, _encode(updated), last=revision)
            return updated
        except KeyWrongLastSequenceError:
            continue  # someone else moved partitions meanwhile: start again from theirs
