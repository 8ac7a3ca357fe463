"""Live segments with real NATS and Ray: enter/exit changes on ``hs.segments.>`` that replay to
each user's live membership, and clusters trained on one shard and served by all."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import nats
import pytest
import ray

from actors.cluster import ShardGroup
from bench.population import onboarding_events
from engine.catalog import DEFAULT_CATALOG, Catalog, load_catalog
from engine.keys import Pseudonymizer, partition_of
from engine.segments import batch_decoder
from headstart.adapters.shard_stats import SegmentStats
from headstart.adapters.topology import SEGMENTS_STREAM
from tests.actors.conftest import two_shards
from tests.conftest import TEST_PARTITIONS
from tests.conftest import publish_events as publish

pytestmark = pytest.mark.integration


def membership_catalog() -> Catalog:
    data = load_catalog(DEFAULT_CATALOG).model_dump()
    data["segments"] += [
        {"id": "busy", "rule": "events_5m >= 3"},
        {"id": "exporter", "rule": 'feature_count("export") > 0'},
        {"id": "cluster_1_mobile", "rule": 'cluster == 1 and device_type == "mobile"'},
    ]
    # Simulated timestamps: sweeps by the events' clock; a model as soon as it can have one.
    data["membership"] = {"track": True, "clock": "event", "sweep_interval_s": 0.5}
    data["clusters"] = {**data["clusters"], "sample_every": 1, "min_samples": 64, "publish_interval_s": 0.5}
    return Catalog.model_validate(data)


@pytest.fixture
def tracked_group(ray_local: None, fresh_streams: str) -> Iterator[ShardGroup]:
    with two_shards(fresh_streams, membership_catalog()) as shards:
        yield shards


async def read_changes(url: str) -> list[Any]:
    conn = await nats.connect(url)
    try:
        js = conn.jetstream()
        total = (await js.stream_info(SEGMENTS_STREAM)).state.messages
        sub = await js.subscribe("hs.segments.>", ordered_consumer=True)
        out = []
        while len(out) < total:
            msg = await sub.next_msg(timeout=5)
            out.append(batch_decoder.decode(msg.data))
        await sub.unsubscribe()
        return out
    finally:
        await conn.close()


def wait_for(condition: Any, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError("condition not met in time")


def membership_state(group: ShardGroup) -> tuple[Any, ...]:
    """What must hold still for published changes and live views to be compared."""
    stats = [s.segments for s in group.stats()]
    return tuple((s.changes, s.queued, s.cluster_model_version, s.cluster_samples_learned) for s in stats)


def read_quietly(
    group: ShardGroup, url: str, keys: list[str]
) -> tuple[list[Any], list[SegmentStats], dict[str, Any]]:
    """Published changes, segment stats and views read while nothing changed.

    The cluster trainer keeps learning its sample after the events are applied and each new
    model version re-assigns users at the next sweep, so a single read can fall between a sweep
    and its publication. Read when the state held still over a publish and a sweep interval, and
    only accept the read if it still holds afterwards.
    """
    for _ in range(20):
        before = membership_state(group)
        time.sleep(1.2)  # > publish_interval_s + sweep_interval_s of membership_catalog()
        if membership_state(group) != before or any(queued for _, queued, _, _ in before):
            continue
        changes = [c for batch in asyncio.run(read_changes(url)) for c in batch]
        stats = [s.segments for s in group.stats()]
        views = dict(zip(keys, group.views(keys), strict=True))
        if membership_state(group) == before:
            return changes, stats, views
    raise AssertionError("segment membership never held still")


def assert_changes_replay_to_views(changes: list[Any], views: dict[str, Any], keys: list[str]) -> None:
    """Published changes, applied in order, give each user's live membership (none for a
    user no longer kept): no enter while in, no exit while out, and nothing missing."""
    assert len({c.id for c in changes}) == len(changes)
    replayed: dict[str, set[str]] = defaultdict(set)
    for change in changes:
        members = replayed[change.user_id]
        if change.change == "enter":
            assert change.segment not in members, change
            members.add(change.segment)
        else:
            assert change.segment in members, change
            members.discard(change.segment)
    for key in keys:
        view = views[key]
        assert replayed[key] == (set(view["segments"]) if view is not None else set()), key


def test_published_changes_replay_to_live_membership_and_clusters_reach_every_shard(
    tracked_group: ShardGroup, fresh_streams: str, pseudonymizer: Pseudonymizer
) -> None:
    events = list(onboarding_events(users=40, events=1500, seed=5))
    asyncio.run(publish(fresh_streams, pseudonymizer, events))
    tracked_group.wait_caught_up(timeout=60)

    keys = sorted({pseudonymizer.key(e["user_id"]) for e in events})
    # Every user has a cluster once a sweep ran with the published model.
    wait_for(lambda: all(v is not None and v["cluster"] is not None for v in tracked_group.views(keys)))
    changes, stats, views = read_quietly(tracked_group, fresh_streams, keys)
    counted = sum(e + x for s in stats for e, x in s.changes.values())
    assert len(changes) == counted > 0  # each change stored once
    assert len({c.id for c in changes}) == len(changes)

    assert_changes_replay_to_views(changes, views, keys)
    for key in keys:
        assert f"cluster_{views[key]['cluster']}" in views[key]["segments"]
    clusters_used = {v["cluster"] for v in views.values()}
    assert len(clusters_used) >= 2  # the population is not one blob


def settle(
    group: ShardGroup, url: str, pseudonymizer: Pseudonymizer, events: list[dict[str, Any]]
) -> list[str]:
    """Publish ``events``, wait until they are applied and membership holds still; the users' keys."""
    asyncio.run(publish(url, pseudonymizer, events))
    group.wait_caught_up(timeout=60)
    keys = sorted({pseudonymizer.key(e["user_id"]) for e in events})
    read_quietly(group, url, keys)
    return keys


def kill_once_published(group: ShardGroup, victim: Any) -> None:
    """SIGKILL ``victim`` once its queued segment changes went out; wait for Ray's restart."""
    wait_for(lambda: ray.get(victim.stats.remote()).segments.queued == 0)
    before = ray.get(victim.stats.remote())
    os.kill(before.pid, signal.SIGKILL)
    ray.get(victim.wait_ready.remote(), timeout=60)
    group.wait_caught_up(timeout=60)
    assert ray.get(victim.stats.remote()).pid != before.pid


def test_a_sweep_stores_a_snapshot_before_its_changes_go_out_so_a_crash_keeps_them(
    tracked_group: ShardGroup, fresh_streams: str, pseudonymizer: Pseudonymizer
) -> None:
    events = list(onboarding_events(users=40, events=1000, seed=8))
    keys = settle(tracked_group, fresh_streams, pseudonymizer, events)

    # A month without events: the sweep moves users out of time-based segments. Nothing else
    # changes the partitions after this checkpoint, and no other checkpoint is asked for: the
    # sweep stores its own before publishing.
    victim = tracked_group.shards[0]
    ray.get(victim.checkpoint.remote())
    later = max(e["ts"] for e in events) + 30 * 86400
    assert ray.get(victim.sweep_segments.remote(later)) > 0
    kill_once_published(tracked_group, victim)

    # The restarted shard resumed the swept membership: the published changes still replay to
    # it, each made once (from a snapshot older than the sweep, the users would be back in the
    # segments they left, and the next sweep would publish those exits again).
    changes, _, views = read_quietly(tracked_group, fresh_streams, keys)
    assert_changes_replay_to_views(changes, views, keys)
    assert any(str(c.origin).startswith(f"t{later:.3f}") for c in changes)  # the sweep's


def test_an_expiry_stores_a_snapshot_before_its_exits_go_out_so_a_crash_does_not_revive_users(
    tracked_group: ShardGroup, fresh_streams: str, pseudonymizer: Pseudonymizer
) -> None:
    events = list(onboarding_events(users=40, events=600, seed=4))
    keys = settle(tracked_group, fresh_streams, pseudonymizer, events)

    # A year and more later, newcomers in every partition: everyone else is past the profile
    # retention (365 days) by the partitions' event time.
    later = max(e["ts"] for e in events) + 400 * 86400
    newcomers: dict[int, str] = {}
    n = 0
    while len(newcomers) < TEST_PARTITIONS:
        user = f"newcomer-{n}"
        newcomers.setdefault(partition_of(pseudonymizer.key(user), TEST_PARTITIONS), user)
        n += 1
    arrivals = [
        {"event_id": f"arrival-{u}", "user_id": u, "type": "session_started", "ts": later}
        for u in newcomers.values()
    ]
    asyncio.run(publish(fresh_streams, pseudonymizer, arrivals))
    tracked_group.wait_caught_up(timeout=60)
    victim = tracked_group.shards[0]
    ray.get(victim.checkpoint.remote())
    assert ray.get(victim.expire_inactive.remote()) > 0
    kill_once_published(tracked_group, victim)

    changes, _, views = read_quietly(tracked_group, fresh_streams, keys)
    gone = [key for key in keys if views[key] is None]
    assert gone  # the victim's users stay expired after the restart
    assert_changes_replay_to_views(changes, views, keys)  # and their exits were made once
