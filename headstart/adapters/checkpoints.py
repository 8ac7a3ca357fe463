"""Durable partition snapshots in the NATS object store, reachable from every node.

A snapshot is a partition's whole state including its last applied stream sequence, so
restoring it and consuming from that sequence + 1 gives exactly the state an uninterrupted
shard would have. Objects are written in chunks and made visible by one final metadata
message: a reader sees the previous snapshot or the new one, never half of one.
"""

from __future__ import annotations

from typing import Protocol

from nats.js import JetStreamContext
from nats.js.api import ObjectMeta, ObjectStoreConfig, StorageType
from nats.js.errors import BucketNotFoundError, NotFoundError, ObjectNotFoundError
from nats.js.object_store import ObjectStore

from headstart.adapters.topology import SNAPSHOT_BUCKET


class CheckpointStore(Protocol):
    """Where partition snapshots live (the seam for tests and other backends)."""

    async def load(self, partition: int) -> bytes | None: ...

    async def save(self, partition: int, data: bytes, last_seq: int) -> None: ...


def object_name(partition: int) -> str:
    return f"partition-{partition}"


async def ensure_snapshot_bucket(js: JetStreamContext, replicas: int = 1) -> ObjectStore:
    try:
        return await js.object_store(SNAPSHOT_BUCKET)
    except (BucketNotFoundError, NotFoundError):
        return await js.create_object_store(
            SNAPSHOT_BUCKET,
            ObjectStoreConfig(
                description="Headstart partition snapshots", storage=StorageType.FILE, replicas=replicas
            ),
        )


class NatsCheckpointStore:
    """Snapshots as objects ``partition-<p>`` of the ``HS_SNAPSHOTS`` bucket."""

    def __init__(self, store: ObjectStore) -> None:
        self._store = store

    @classmethod
    async def open(cls, js: JetStreamContext, replicas: int = 1) -> NatsCheckpointStore:
        return cls(await ensure_snapshot_bucket(js, replicas))

    async def load(self, partition: int) -> bytes | None:
        try:
            result = await self._store.get(object_name(partition))
        except (ObjectNotFoundError, NotFoundError):
            return None
        return bytes(result.data) if result.data is not None else None

    async def save(self, partition: int, data: bytes, last_seq: int) -> None:
        meta = ObjectMeta(
            name=object_name(partition),
            description=f"partition {partition} through stream sequence {last_seq}",
            headers={"Hs-Last-Seq": str(last_seq)},
        )
        await self._store.put(object_name(partition), data, meta=meta)
