"""Batched messages through shard actors (real Ray, real nats-server): a shard killed while it
applies batches comes back with every event applied once, retried and regrouped batches
included; a user whose events came in batches is erased by subject."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import nats
import pytest
import ray

from actors.cluster import ShardGroup
from bench.population import onboarding_events
from bench.traffic import expected_counts, read_back
from engine.keys import Pseudonymizer, partition_of
from headstart.adapters.checkpoints import NatsCheckpointStore
from headstart.adapters.rpc import ShardClient
from headstart.adapters.topology import EVENTS_STREAM
from headstart.privacy.erasure import Eraser
from tests.conftest import TEST_PARTITIONS, publish_events

pytestmark = pytest.mark.integration


def test_a_shard_killed_while_applying_batches_applies_each_event_once(
    group: ShardGroup, fresh_streams: str, pseudonymizer: Pseudonymizer
) -> None:
    events = list(onboarding_events(users=40, events=3000, seed=5))

    async def publish(chunk: list[dict[str, object]]) -> None:
        # Batches of up to 10 of a user's events; then the same events again, regrouped in
        # batches of up to 7 (a producer retrying differently): different messages, stored.
        await publish_events(fresh_streams, pseudonymizer, chunk, max_events=10)
        await publish_events(fresh_streams, pseudonymizer, chunk, max_events=7)

    for start in range(0, 1500, 150):
        asyncio.run(publish(events[start : start + 150]))
    victim = group.shards[0]
    deadline = time.monotonic() + 30
    while ray.get(victim.stats.remote()).handled == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    before = ray.get(victim.stats.remote())
    os.kill(before.pid, signal.SIGKILL)  # mid-stream, likely inside a batch's events
    for start in range(1500, 3000, 150):
        asyncio.run(publish(events[start : start + 150]))
    ray.get(victim.wait_ready.remote(), timeout=60)
    assert ray.get(victim.stats.remote()).pid != before.pid
    group.wait_caught_up(timeout=60)
    expected = expected_counts(pseudonymizer, events)
    assert read_back(group, list(expected)) == {k: dict(v) for k, v in expected.items()}
    stats = group.stats()
    assert sum(s.applied for s in stats) == len(events)
    assert sum(s.replayed_events for s in stats) > 0  # the regrouped retries, skipped
    assert sum(s.handled for s in stats) < len(events)  # messages, most of them batches


def test_a_user_whose_events_came_in_batches_is_erased_by_subject(
    group: ShardGroup, fresh_streams: str, pseudonymizer: Pseudonymizer
) -> None:
    user, kept = "batched@example.com", "stays@example.com"
    events = [
        {"event_id": f"{u[:2]}-{i}", "user_id": u, "type": "session_started", "ts": time.time() + i}
        for u in (user, kept)
        for i in range(25)
    ]
    asyncio.run(publish_events(fresh_streams, pseudonymizer, events, max_events=10))
    group.wait_caught_up(timeout=30)
    key, other = pseudonymizer.key(user), pseudonymizer.key(kept)
    partition = partition_of(key, TEST_PARTITIONS)

    async def erase() -> tuple[int, bytes | None]:
        nc = await nats.connect(fresh_streams)
        try:
            js = nc.jetstream()
            await Eraser(js, ShardClient(nc, TEST_PARTITIONS), TEST_PARTITIONS).erase(key, who="test")
            info = await js.stream_info(EVENTS_STREAM, subjects_filter=f"hs.events.*.{key}")
            snapshot = await (await NatsCheckpointStore.open(js)).load(partition)
            return len(info.state.subjects or {}), snapshot
        finally:
            await nc.close()

    subjects, snapshot = asyncio.run(erase())
    assert subjects == 0  # its batches purged with its subject
    assert snapshot is not None and key.encode() not in snapshot  # profile and recent ids gone
    assert read_back(group, [key, other]) == {key: {}, other: {"session_started": 25}}
