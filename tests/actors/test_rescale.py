"""Live rescaling with real Ray and a real nats-server: partitions move between shards while
events are being published and decisions asked, and the final state is exactly what was sent."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import nats
import pytest
import ray

from actors.cluster import ShardGroup
from bench.population import onboarding_events
from engine.keys import Pseudonymizer
from headstart.assignment import Assignment, control_bucket, load_assignment
from headstart.config import Settings
from headstart.rpc import ShardClient, ShardUnavailable
from headstart.streams import EventPublisher
from tests.actors.test_shard_actor import actual_counts, expected_counts
from tests.conftest import TEST_PARTITIONS

pytestmark = pytest.mark.integration


@pytest.fixture
def group(ray_local: None, fresh_streams: str) -> Iterator[ShardGroup]:
    settings = Settings(partitions=TEST_PARTITIONS, shards=2, shard_num_cpus=0.25, fetch_batch=64)
    shards = ShardGroup(settings, fresh_streams).start()
    shards.wait_ready()
    try:
        yield shards
    finally:
        shards.stop()


class Traffic:
    """Publishes events at a steady pace and asks for decisions, on its own thread and loop."""

    def __init__(self, url: str, pseudonymizer: Pseudonymizer, events: list[dict[str, object]]) -> None:
        self.url, self.pseudonymizer, self.events = url, pseudonymizer, events
        self.decisions = self.unavailable = self.failed = 0
        self.published = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    async def _run(self) -> None:
        conn = await nats.connect(self.url)
        publisher = EventPublisher(conn.jetstream(), self.pseudonymizer)
        client = ShardClient(conn, TEST_PARTITIONS)
        client.start_owner_refresh()
        keys = sorted({self.pseudonymizer.key(str(e["user_id"])) for e in self.events})

        async def ask() -> None:
            i = 0
            while not self._stop.is_set():
                i += 1
                try:
                    reply = await client.call_coalesced(
                        keys[i % len(keys)], "decide", timeout=1.0, context={}
                    )
                    self.decisions += 1
                    self.failed += reply.startswith(b'{"error"')
                except ShardUnavailable:
                    self.unavailable += 1
                await asyncio.sleep(0.002)

        asker = asyncio.create_task(ask())
        for start in range(0, len(self.events), 50):
            await publisher.publish_many(self.events[start : start + 50])
            await asyncio.sleep(0.02)
        self.published.set()
        while not self._stop.is_set():
            await asyncio.sleep(0.05)
        await asker
        await conn.close()


def test_partitions_move_live_without_losing_or_doubling_an_event(
    group: ShardGroup, fresh_streams: str, pseudonymizer: Pseudonymizer
) -> None:
    events = list(onboarding_events(users=60, events=4000, seed=17))
    with Traffic(fresh_streams, pseudonymizer, events) as traffic:
        reports = [group.rescale(3), group.rescale(1), group.rescale(2)]
        assert traffic.published.wait(timeout=120)
        group.wait_caught_up(timeout=60)
    assert [(r["from"], r["to"]) for r in reports] == [(2, 3), (3, 1), (1, 2)]
    assert all(r["moved_partitions"] > 0 and r["max_pause_s"] < 5 for r in reports)
    # Every partition is owned once, by the shard the final layout says, and recorded so.
    stats = group.stats()
    assert sorted(p for s in stats for p in s["partitions"]) == list(range(TEST_PARTITIONS))
    assert [s["partitions"] for s in stats] == [
        Assignment.even(TEST_PARTITIONS, 2).partitions_of(i) for i in range(2)
    ]
    recorded = asyncio.run(_recorded(fresh_streams))
    assert recorded == Assignment.even(TEST_PARTITIONS, 2)
    expected = expected_counts(pseudonymizer, events)
    assert actual_counts(group, list(expected)) == {k: dict(v) for k, v in expected.items()}
    # Decisions went on during the moves: none failed with an error.
    assert traffic.decisions > 50 and traffic.failed == 0


def test_a_shard_restarted_after_a_rescale_takes_the_partitions_it_owns_now(
    group: ShardGroup, fresh_streams: str, pseudonymizer: Pseudonymizer
) -> None:
    import os
    import signal

    group.rescale(3)
    newcomer = group.shards[2]
    before = ray.get(newcomer.stats.remote())
    assert before["partitions"] == Assignment.even(TEST_PARTITIONS, 3).partitions_of(2)
    os.kill(before["pid"], signal.SIGKILL)
    after = ray.get(newcomer.wait_ready.remote(), timeout=60)
    assert after["pid"] != before["pid"] and after["partitions"] == before["partitions"]


async def _recorded(url: str) -> Assignment | None:
    conn = await nats.connect(url)
    try:
        return (await load_assignment(await control_bucket(conn.jetstream())))[0]
    finally:
        await conn.close()
