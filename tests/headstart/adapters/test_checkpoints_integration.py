"""Snapshots in the real NATS object store: round trip, replacement, and sizes past max_payload."""

from __future__ import annotations

import os

import pytest
from nats.aio.client import Client as NATS

from headstart.adapters.checkpoints import NatsCheckpointStore

pytestmark = pytest.mark.integration


async def test_snapshots_round_trip_and_replace(fresh_streams: str, nc: NATS) -> None:
    store = await NatsCheckpointStore.open(nc.jetstream())
    assert await store.load(3) is None
    await store.save(3, b"first", last_seq=10)
    assert await store.load(3) == b"first"
    big = os.urandom(3 * 1024 * 1024)  # over the broker's 1 MiB max_payload: stored in chunks
    await store.save(3, big, last_seq=20)
    assert await store.load(3) == big
    assert await store.load(4) is None
