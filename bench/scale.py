"""``headstart bench scale``: 1 → 2 → 4 shards, live, under load.

1. Publish a backlog large enough that the shards are never idle during the run (their
   throughput, not the publisher's, sets the rate), for 20,000 users.
2. Start 1 shard. While it drains, a steady publisher adds live events and decisions are asked
   (``bench/traffic.py``). Measure events/s applied over a window, rescale to 2 (live), measure,
   rescale to 4, measure. Each rescale reports every move's pause: from the old owner's release
   (final snapshot) to the new owner consuming again.
3. Drain everything, read every user's state back, and compare event counts by type with what
   was published: ``lost`` and ``duplicated``.

On this 2-core machine the broker needs about as much CPU as the shards (see ingest), so going
from 2 to 4 shards adds event loops, not cores: the figure to watch is that it costs nothing.
"""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import itertools
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats
import ray

from bench.common import embedded_broker, local_ray, write_result
from bench.population import onboarding_events
from bench.traffic import Counts, SteadyTraffic, expected_counts, lost_and_duplicated, read_back
from engine.keys import Pseudonymizer
from headstart.adapters.provision import ensure_streams
from headstart.adapters.streams import EventPublisher, publish_prepared
from headstart.settings import Settings

SECRET = b"bench-secret-not-for-production-use"
PARTITIONS = 64
SIZES = (1, 2, 4)


def run(quick: bool = False, out_dir: Path | None = None) -> Path:
    from actors.cluster import ShardGroup

    started = dt.datetime.now(dt.UTC)
    users = 2_000 if quick else 20_000
    # Sized to outlast all three windows and both rescales (~50 s together) at ~50,000
    # events/s: with 2,100,000 a faster run drained it before the 4-shard window.
    backlog_events = 100_000 if quick else 3_600_000
    window_s = 1.5 if quick else 5.0
    live_rate = 500 if quick else 1_000
    pseudonymizer = Pseudonymizer(SECRET)
    # Enough live events to keep flowing until the end of the run.
    live = list(onboarding_events(users=users, events=int(live_rate * (window_s * 6 + 60)), seed=42))
    settings = Settings(partitions=PARTITIONS, shards=SIZES[0], shard_num_cpus=0.5, fetch_batch=256)
    rates: dict[str, float] = {}
    windows: dict[str, dict[str, Any]] = {}
    rescales: list[dict[str, Any]] = []
    with embedded_broker() as broker, local_ray(num_cpus=4):
        expected, publish_s = asyncio.run(
            _publish_backlog(broker.url, pseudonymizer, onboarding_events(users, backlog_events, seed=41))
        )
        group = ShardGroup(settings, broker.url).start()
        try:
            group.wait_ready()
            traffic = SteadyTraffic(broker.url, SECRET, live, rate=live_rate, partitions=PARTITIONS)
            with traffic:
                for size in SIZES:
                    if size != group.assignment.shards:
                        rescales.append(group.rescale(size))
                    windows[str(size)] = _window(group, window_s)
                    rates[str(size)] = windows[str(size)]["events_per_s"]
            traffic_stopped_at = traffic.published  # after the thread stopped: all it sent
            live_sent = live[:traffic_stopped_at]
            group.wait_caught_up(timeout=600)
            for key, counts in expected_counts(pseudonymizer, live_sent).items():
                expected[key].update(counts)
            lost, duplicated = lost_and_duplicated(expected, read_back(group, list(expected)))
            outcomes = dict(traffic.outcomes)
            # Where each take-over's time went, inside the new owner (see ShardActor.acquire).
            take_overs: list[dict[str, Any]] = []
            for shard in group.shards:
                take_overs += ray.get(shard.take_over_timings.remote())
        finally:
            group.stop()
    pauses = [m["pause_s"] for r in rescales for m in r["moves"]]
    observed = [m["observed_pause_s"] for r in rescales for m in r["moves"]]
    metrics = {
        "events_per_s_by_shards": rates,
        # Per move, from the old owner's consumer stopping to the new owner's pulling, as the
        # two shards timed it; "observed" is the same span seen from the driver, which adds the
        # calls' travel to the shards and back.
        "max_pause_s": max(pauses),
        "median_pause_s": sorted(pauses)[len(pauses) // 2],
        "moves_over_1s": sum(p > 1.0 for p in pauses),
        "max_observed_pause_s": max(observed),
        "median_observed_pause_s": sorted(observed)[len(observed) // 2],
        "lost": lost,
        "duplicated": duplicated,
        "decisions": outcomes,
        "failed_decisions": outcomes.get("failed", 0),
        "windows": windows,
        "rescales": [
            {k: r[k] for k in ("from", "to", "moved_partitions", "max_pause_s", "seconds")}
            | {"moves": r["moves"]}
            for r in rescales
        ],
        "backlog_publish_events_per_s": backlog_events / publish_s,
        "take_over_steps_max_s": {
            step: max((t[step] for t in take_overs if step in t), default=0.0)
            for step in ("lock_s", "restore_s", "consumers_s", "rebuild_s", "pull_s", "subscribe_s")
        },
        "take_overs": take_overs,
    }
    params = {
        "users": users,
        "backlog_events": backlog_events,
        "live_events_per_s": live_rate,
        "live_events_sent": traffic_stopped_at,
        "decisions_per_s": 200,
        "window_s": window_s,
        "partitions": PARTITIONS,
        "sizes": list(SIZES),
        "shard_num_cpus": 0.5,
        "quick": quick,
    }
    return write_result("scale", params, metrics, out_dir=out_dir, started_at=started)


def _window(group: Any, seconds: float) -> dict[str, Any]:
    """Events applied per second over ``seconds``, after a second for the new layout to settle."""
    time.sleep(1.0)
    before, t0 = _applied(group), time.monotonic()
    time.sleep(seconds)
    after, t1 = _applied(group), time.monotonic()
    lag = sum(_lags(group))
    # With no lag left at the end, the window measured the publisher, not the shards.
    return {
        "events_per_s": (after - before) / (t1 - t0),
        "seconds": t1 - t0,
        "lag_at_end": lag,
        "saturated": lag > 0,
    }


def _applied(group: Any) -> int:
    return sum(s.applied for s in group.stats())


def _lags(group: Any) -> list[int]:
    import ray

    return list(ray.get([s.lag.remote() for s in group.shards]))


async def _publish_backlog(
    url: str, pseudonymizer: Pseudonymizer, events: Iterator[dict[str, Any]]
) -> tuple[Counts, float]:
    """Publish in chunks as they are generated (the backlog does not fit comfortably in memory
    as dicts); returns what the shards must hold, and the seconds publishing took."""
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        await ensure_streams(js, PARTITIONS)
        publisher = EventPublisher(js, pseudonymizer)
        expected: Counts = collections.defaultdict(collections.Counter)
        took = 0.0
        while chunk := list(itertools.islice(events, 50_000)):
            prepared = []
            for event in chunk:
                subject, payload, headers = publisher.prepare(event)
                prepared.append((subject, payload, headers))
                expected[subject.rsplit(".", 1)[1]][event["type"]] += 1
            t0 = time.perf_counter()
            await publish_prepared(js, prepared)
            took += time.perf_counter() - t0
        return expected, took
    finally:
        await nc.close()


def summary(path: Path) -> str:
    import json

    m = json.loads(path.read_text())["metrics"]
    rates = ", ".join(f"{k}: {v:,.0f}" for k, v in m["events_per_s_by_shards"].items())
    return (
        f"events/s by shards {rates}; max pause {m['max_pause_s'] * 1000:.0f} ms; "
        f"lost {m['lost']}, duplicated {m['duplicated']}; decisions {m['decisions']}"
    )
