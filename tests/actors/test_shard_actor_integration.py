"""Shard actors with real Ray and a real nats-server: events in, live state out, and a shard
process killed mid-stream that comes back without losing or doubling an event."""

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
from engine.keys import Pseudonymizer
from headstart.adapters.rpc import DecideRequest, ShardClient
from tests.conftest import TEST_PARTITIONS
from tests.conftest import publish_events as publish

pytestmark = pytest.mark.integration


def test_published_events_show_in_live_state(
    group: ShardGroup, fresh_streams: str, pseudonymizer: Pseudonymizer
) -> None:
    events = list(onboarding_events(users=30, events=600, seed=3))
    asyncio.run(publish(fresh_streams, pseudonymizer, events))
    group.wait_caught_up(timeout=60)
    expected = expected_counts(pseudonymizer, events)
    assert read_back(group, list(expected)) == {k: dict(v) for k, v in expected.items()}
    stats = group.stats()
    assert sum(s.users for s in stats) == len(expected)
    assert all(s.ready for s in stats)
    # Batched reads: one call for many users of a shard.
    keys = [k for k in expected if group.shard_for_key(k) is group.shards[0]]
    views = ray.get(group.shards[0].get_users.remote(keys))
    assert [v["events_total"] for v in views] == [sum(expected[k].values()) for k in keys]


def test_reads_over_nats_reach_the_owner(
    group: ShardGroup, fresh_streams: str, pseudonymizer: Pseudonymizer
) -> None:
    event = {
        "event_id": "rpc-1",
        "user_id": "carol@example.com",
        "type": "step_completed",
        "ts": time.time(),
        "props": {"step": "welcome"},
    }
    asyncio.run(publish(fresh_streams, pseudonymizer, [event]))
    group.wait_caught_up(timeout=30)

    async def read() -> tuple[dict[str, object] | None, dict[str, object] | None]:
        conn = await nats.connect(fresh_streams)
        try:
            client = ShardClient(conn, TEST_PARTITIONS)
            return await client.get_user(pseudonymizer.key("carol@example.com")), await client.get_user(
                "unknown"
            )
        finally:
            await conn.close()

    known, unknown = asyncio.run(read())
    assert known is not None and known["steps_completed"] == ["welcome"]
    assert unknown is None


def test_a_killed_shard_resumes_without_loss_or_duplicates(
    group: ShardGroup, fresh_streams: str, pseudonymizer: Pseudonymizer
) -> None:
    events = list(onboarding_events(users=40, events=4000, seed=5))
    asyncio.run(publish(fresh_streams, pseudonymizer, events[:2000]))
    victim = group.shards[0]
    # Wait until the victim is mid-stream, then kill its process (SIGKILL: no clean shutdown).
    deadline = time.monotonic() + 30
    while ray.get(victim.stats.remote()).handled == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    pid = ray.get(victim.stats.remote()).pid
    os.kill(pid, signal.SIGKILL)
    asyncio.run(publish(fresh_streams, pseudonymizer, events[2000:]))
    # Ray restarts the actor; it restores (cold here) and replays from its partitions' positions.
    ray.get(victim.wait_ready.remote(), timeout=60)
    assert ray.get(victim.stats.remote()).pid != pid
    group.wait_caught_up(timeout=60)
    expected = expected_counts(pseudonymizer, events)
    assert read_back(group, list(expected)) == {k: dict(v) for k, v in expected.items()}


def test_coalesced_decisions_travel_together_and_reach_their_callers(
    group: ShardGroup, fresh_streams: str, pseudonymizer: Pseudonymizer
) -> None:
    users = [f"co-{i}@example.com" for i in range(40)]
    done = [
        {
            "event_id": f"co-{i}",
            "user_id": u,
            "type": "step_completed",
            "ts": time.time(),
            "props": {"step": "welcome"},
        }
        for i, u in enumerate(users[:20])
    ]
    asyncio.run(publish(fresh_streams, pseudonymizer, done))
    group.wait_caught_up(timeout=30)

    async def decide_all() -> tuple[list[dict[str, object]], int, int, list[int | None]]:
        import msgspec

        conn = await nats.connect(fresh_streams)
        try:
            client = ShardClient(conn, TEST_PARTITIONS)
            await client.refresh_owners()
            replies = await asyncio.gather(
                *(
                    client.call_coalesced(DecideRequest(key=pseudonymizer.key(u), context={}), 2.0)
                    for u in users
                )
            )
            return (
                [msgspec.json.decode(r) for r in replies],
                client.coalesced_calls,
                client.coalesced_messages,
                client.owners,
            )
        finally:
            await conn.close()

    decisions, calls, messages, owners = asyncio.run(decide_all())
    assert owners == [group.owner[p] for p in range(TEST_PARTITIONS)]
    assert calls == 40 and messages <= 2 * 2  # at most a batch per shard (and a lone one)
    # Each caller got its own user's decision: the first 20 completed the welcome step.
    assert [d["step"]["id"] for d in decisions] == ["profile"] * 20 + ["welcome"] * 20


def test_a_restarted_shard_restores_its_checkpoint_and_replays_only_the_rest(
    group: ShardGroup, fresh_streams: str, pseudonymizer: Pseudonymizer
) -> None:
    events = list(onboarding_events(users=40, events=3000, seed=9))
    asyncio.run(publish(fresh_streams, pseudonymizer, events[:2000]))
    group.wait_caught_up(timeout=60)
    victim = group.shards[0]
    written = ray.get(victim.checkpoint.remote())
    assert written["written"] > 0 and written["max_pause_s"] < 1.0
    before = ray.get(victim.stats.remote())
    asyncio.run(publish(fresh_streams, pseudonymizer, events[2000:]))
    os.kill(before.pid, signal.SIGKILL)
    ray.get(victim.wait_ready.remote(), timeout=60)
    group.wait_caught_up(timeout=60)
    after = ray.get(victim.stats.remote())
    assert after.pid != before.pid
    assert after.restored_partitions == len(after.partitions)
    # Only the events after the snapshot were delivered again, not the whole stream.
    assert after.handled < before.handled
    assert after.applied == before.applied + after.handled - after.dead_lettered
    expected = expected_counts(pseudonymizer, events)
    assert read_back(group, list(expected)) == {k: dict(v) for k, v in expected.items()}
