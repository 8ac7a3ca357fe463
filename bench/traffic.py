"""Live traffic for fault and rescale runs: events at a steady rate and decisions being asked,
from a thread of its own, plus the exactly-once check of what the shards hold afterwards.

Decisions go to the shards the way the HTTP ingress sends them (coalesced NATS requests with
the ingress's deadline) and are classified as the API would answer them: ``ok`` (from the
user's shard), ``default`` (no shard answered within the deadline, so the API serves the safe
default flow, a 200), or ``failed`` (an error: what the API would turn into a 4xx/5xx).
"""

from __future__ import annotations

import asyncio
import collections
import multiprocessing
import time
from collections.abc import Iterable
from typing import Any

import nats

from engine.keys import Pseudonymizer, partition_of
from headstart.adapters.rpc import DecideRequest, ShardClient, ShardUnavailable, is_error
from headstart.adapters.streams import EventPublisher

Counts = dict[str, collections.Counter[str]]

#: The ingress's deadline for a decision (actors/ingress.py DECIDE_DEADLINE_S).
DECIDE_DEADLINE_S = 0.25


def expected_counts(pseudonymizer: Pseudonymizer, events: Iterable[dict[str, Any]]) -> Counts:
    """Events per user key and type: what the shards must hold, exactly."""
    counts: Counts = collections.defaultdict(collections.Counter)
    for e in events:
        counts[pseudonymizer.key(str(e["user_id"]))][str(e["type"])] += 1
    return counts


def read_back(group: Any, keys: list[str]) -> dict[str, dict[str, int]]:
    """Event counts by type per user, as the owning shards hold them (one call per shard)."""
    import ray

    by_shard: dict[int, list[str]] = collections.defaultdict(list)
    for key in keys:
        by_shard[group.owner[partition_of(key, group.settings.partitions)]].append(key)
    out: dict[str, dict[str, int]] = {}
    for shard, shard_keys in by_shard.items():
        views = ray.get(group.shards[shard].get_users.remote(shard_keys))
        for key, view in zip(shard_keys, views, strict=True):
            out[key] = view["events_by_type"] if view else {}
    return out


def lost_and_duplicated(expected: Counts, actual: dict[str, dict[str, int]]) -> tuple[int, int]:
    lost = duplicated = 0
    for key, counts in expected.items():
        got = actual.get(key) or {}
        for kind in set(counts) | set(got):
            diff = got.get(kind, 0) - counts.get(kind, 0)
            duplicated += max(diff, 0)
            lost += max(-diff, 0)
    return lost, duplicated


class SteadyTraffic:
    """Publishes ``events`` at ``rate`` per second and asks ``decisions_per_s`` decisions, from a
    process of its own (so it takes nothing from the process that drives the run).

    Example::

        with SteadyTraffic(url, secret, events, rate=1000, partitions=64) as traffic:
            ...  # kill, rescale
            traffic.wait_published(60)
        traffic.outcomes  # {"ok": ..., "default": ..., "failed": ...}
    """

    def __init__(
        self,
        url: str,
        secret: bytes,
        events: list[dict[str, Any]],
        rate: float,
        partitions: int,
        decisions_per_s: float = 200.0,
    ) -> None:
        context = multiprocessing.get_context("spawn")  # never fork a process running Ray
        self._stop = context.Event()
        self._done_publishing = context.Event()
        self._published = context.Value("q", 0)
        self._results: multiprocessing.Queue[dict[str, Any]] = context.Queue()
        self._process = context.Process(
            target=_run_traffic,
            args=(url, secret, events, rate, partitions, decisions_per_s),
            kwargs={
                "stop": self._stop,
                "done_publishing": self._done_publishing,
                "published": self._published,
                "results": self._results,
            },
            daemon=True,
        )
        self.outcomes: collections.Counter[str] = collections.Counter()
        #: (monotonic time, outcome, partition) of every decision that was not ``ok``.
        self.incidents: list[tuple[float, str, int]] = []

    @property
    def published(self) -> int:
        """Events stored so far (all of them once the traffic has stopped)."""
        return int(self._published.value)

    def __enter__(self) -> SteadyTraffic:
        self._process.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        result = self._results.get(timeout=120)
        self._process.join(timeout=30)
        self.outcomes.update(result["outcomes"])
        self.incidents = [tuple(i) for i in result["incidents"]]  # type: ignore[misc]
        if result["error"]:
            raise RuntimeError(f"the traffic process failed: {result['error']}")

    def wait_published(self, timeout: float) -> None:
        if not self._done_publishing.wait(timeout):
            raise TimeoutError(f"published {self.published} events in {timeout}s")


def _run_traffic(
    url: str,
    secret: bytes,
    events: list[dict[str, Any]],
    rate: float,
    partitions: int,
    decisions_per_s: float,
    *,
    stop: Any,
    done_publishing: Any,
    published: Any,
    results: Any,
) -> None:
    outcomes: collections.Counter[str] = collections.Counter()
    incidents: list[tuple[float, str, int]] = []
    pseudonymizer = Pseudonymizer(secret)

    async def publish(publisher: EventPublisher) -> None:
        tick = 0.02
        per_tick = max(1, round(rate * tick))
        started = time.monotonic()
        for n, start in enumerate(range(0, len(events), per_tick)):
            if stop.is_set():
                break
            await publisher.publish_many(events[start : start + per_tick])
            published.value = min(len(events), start + per_tick)
            # Paced against the clock, so a slow ack does not lower the average rate.
            await asyncio.sleep(max(0.0, started + (n + 1) * tick - time.monotonic()))
        done_publishing.set()

    async def ask(client: ShardClient) -> None:
        keys = sorted({pseudonymizer.key(str(e["user_id"])) for e in events})
        gap = 1.0 / decisions_per_s
        i = 0
        while not stop.is_set():
            i += 1
            key = keys[(i * 7919) % len(keys)]
            try:
                reply = await client.call_coalesced(DecideRequest(key=key, context={}), DECIDE_DEADLINE_S)
                outcome = "failed" if is_error(reply) else "ok"
            except ShardUnavailable:
                outcome = "default"
            except Exception:  # noqa: BLE001 - anything else is a failed decision, counted
                outcome = "failed"
            outcomes[outcome] += 1
            if outcome != "ok":
                incidents.append((time.monotonic(), outcome, partition_of(key, partitions)))
            await asyncio.sleep(gap)

    async def main() -> None:
        conn = await nats.connect(url, max_reconnect_attempts=-1)
        try:
            client = ShardClient(conn, partitions)
            client.start_owner_refresh()
            asker = asyncio.create_task(ask(client))
            await publish(EventPublisher(conn.jetstream(), pseudonymizer))
            while not stop.is_set():
                await asyncio.sleep(0.05)
            await asker
        finally:
            done_publishing.set()
            await conn.close()

    error = ""
    try:
        asyncio.run(main())
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        error = repr(exc)
    results.put({"outcomes": dict(outcomes), "incidents": incidents, "error": error})
