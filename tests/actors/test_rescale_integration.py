"""Live rescaling with real Ray and a real nats-server: partitions move between shards while
events are being published and decisions asked, and the final state is exactly what was sent."""

from __future__ import annotations

import asyncio
from typing import Any

import nats
import pytest
import ray

from actors.cluster import ShardGroup
from bench.population import onboarding_events
from bench.traffic import SteadyTraffic, expected_counts, read_back
from engine.keys import Pseudonymizer
from headstart.adapters.assignment import Assignment, control_bucket, load_assignment
from tests.actors.test_shard_actor_integration import publish
from tests.conftest import TEST_PARTITIONS, TEST_SECRET

pytestmark = pytest.mark.integration


def test_partitions_move_live_without_losing_or_doubling_an_event(
    group: ShardGroup, fresh_streams: str, pseudonymizer: Pseudonymizer
) -> None:
    # Enough traffic to outlast the three moves (two start a new shard: ~1.3 s each here, and
    # up to ~2 s each on a busy machine: 10 s of traffic).
    events = list(onboarding_events(users=60, events=15000, seed=17))
    with SteadyTraffic(fresh_streams, TEST_SECRET, events, rate=1500, partitions=TEST_PARTITIONS) as traffic:
        reports = [group.rescale(3), group.rescale(1), group.rescale(2)]
        assert traffic.published < len(events)  # the moves happened while events were flowing
        traffic.wait_published(timeout=120)
        group.wait_caught_up(timeout=60)
    assert [(r["from"], r["to"]) for r in reports] == [(2, 3), (3, 1), (1, 2)]
    assert all(r["moved_partitions"] > 0 and r["max_pause_s"] < 5 for r in reports)
    # Every partition is owned once, by the shard the final layout says, and recorded so.
    stats = group.stats()
    assert sorted(p for s in stats for p in s.partitions) == list(range(TEST_PARTITIONS))
    assert [s.partitions for s in stats] == [
        Assignment.even(TEST_PARTITIONS, 2).partitions_of(i) for i in range(2)
    ]
    recorded = asyncio.run(_recorded(fresh_streams))
    assert recorded == Assignment.even(TEST_PARTITIONS, 2)
    assert_applied_exactly_once(group, pseudonymizer, events)
    # Decisions went on during the moves: none failed with an error.
    assert traffic.outcomes["ok"] > 50 and traffic.outcomes["failed"] == 0


def test_a_shard_restarted_after_a_rescale_takes_the_partitions_it_owns_now(
    group: ShardGroup, fresh_streams: str, pseudonymizer: Pseudonymizer
) -> None:
    import os
    import signal

    group.rescale(3)
    newcomer = group.shards[2]
    before = ray.get(newcomer.stats.remote())
    assert before.partitions == Assignment.even(TEST_PARTITIONS, 3).partitions_of(2)
    os.kill(before.pid, signal.SIGKILL)
    after = ray.get(newcomer.wait_ready.remote(), timeout=60)
    assert after.pid != before.pid and after.partitions == before.partitions


def publish_and_catch_up(
    group: ShardGroup, url: str, pseudonymizer: Pseudonymizer, events: list[dict[str, Any]]
) -> None:
    asyncio.run(publish(url, pseudonymizer, events))
    group.wait_caught_up(timeout=60)


def assert_applied_exactly_once(
    group: ShardGroup, pseudonymizer: Pseudonymizer, events: list[dict[str, Any]]
) -> None:
    expected = expected_counts(pseudonymizer, events)
    assert read_back(group, list(expected)) == {k: dict(v) for k, v in expected.items()}


async def _recorded(url: str) -> Assignment | None:
    conn = await nats.connect(url)
    try:
        return (await load_assignment(await control_bucket(conn.jetstream())))[0]
    finally:
        await conn.close()


def test_an_interrupted_move_is_finished_when_the_group_is_attached_again(
    group: ShardGroup, fresh_streams: str, pseudonymizer: Pseudonymizer
) -> None:
    events = list(onboarding_events(users=40, events=1200, seed=19))
    publish_and_catch_up(group, fresh_streams, pseudonymizer, events[:600])
    # A rescale that died after the release, before recording or handing over anything.
    moving = group.assignment.partitions_of(0)[:2]
    handed = ray.get(group.shards[0].release.remote(moving))
    assert sorted(handed) == moving
    assert not set(moving) & set(ray.get(group.shards[0].stats.remote()).partitions)
    asyncio.run(publish(fresh_streams, pseudonymizer, events[600:]))
    again = ShardGroup(group.settings, fresh_streams).start()  # attaches and reconciles
    assert set(moving) <= set(ray.get(again.shards[0].stats.remote()).partitions)
    again.wait_caught_up(timeout=60)
    assert_applied_exactly_once(again, pseudonymizer, events)


def test_consumers_prepared_for_a_move_deliver_nothing_until_it_comes(
    group: ShardGroup, fresh_streams: str, pseudonymizer: Pseudonymizer
) -> None:
    import time

    events = list(onboarding_events(users=30, events=900, seed=23))
    publish_and_catch_up(group, fresh_streams, pseudonymizer, events[:300])
    # Partitions the rescale below moves from shard 0 to shard 1, prepared there now.
    later = Assignment.even(TEST_PARTITIONS, 3)
    moving = sorted(set(group.assignment.partitions_of(0)) & set(later.partitions_of(1)))
    assert moving
    positions = ray.get(group.shards[0].positions.remote(moving))
    assert sorted(ray.get(group.shards[1].prepare.remote(positions))) == moving
    publish_and_catch_up(group, fresh_streams, pseudonymizer, events[300:600])
    time.sleep(8)  # past the consumer watchdog's silence limit: a prepared consumer is not restarted
    assert not set(moving) & set(ray.get(group.shards[1].stats.remote()).partitions)
    # The move comes later: the consumers prepared then start further back than the handed
    # snapshots and skip what the old owner applied since.
    asyncio.run(publish(fresh_streams, pseudonymizer, events[600:]))
    report = group.rescale(3)
    assert report["moved_partitions"] > 0
    assert set(moving) <= set(ray.get(group.shards[1].stats.remote()).partitions)
    group.wait_caught_up(timeout=60)
    assert_applied_exactly_once(group, pseudonymizer, events)
