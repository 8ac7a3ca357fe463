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
import threading
import time
from collections.abc import Iterable
from typing import Any

import nats

from engine.keys import Pseudonymizer, partition_of
from headstart.rpc import ShardClient, ShardUnavailable, is_error
from headstart.streams import EventPublisher

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
    """Publishes ``events`` at ``rate`` per second and asks ``decisions_per_s`` decisions.

    Example::

        with SteadyTraffic(url, pseudonymizer, events, rate=1000, partitions=64) as traffic:
            ...  # kill, rescale
            traffic.wait_published(60)
        traffic.outcomes  # {"ok": ..., "default": ..., "failed": ...}
    """

    def __init__(
        self,
        url: str,
        pseudonymizer: Pseudonymizer,
        events: list[dict[str, Any]],
        rate: float,
        partitions: int,
        decisions_per_s: float = 200.0,
    ) -> None:
        self.url, self.pseudonymizer, self.events = url, pseudonymizer, events
        self.rate, self.partitions, self.decisions_per_s = rate, partitions, decisions_per_s
        self.published = 0
        self.outcomes: collections.Counter[str] = collections.Counter()
        #: (monotonic time, outcome, partition) of every decision that was not ``ok``.
        self.incidents: list[tuple[float, str, int]] = []
        self._done_publishing = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)
        self.error: BaseException | None = None

    def __enter__(self) -> SteadyTraffic:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=120)
        if self.error is not None:
            raise self.error

    def wait_published(self, timeout: float) -> None:
        if not self._done_publishing.wait(timeout):
            raise TimeoutError(f"published {self.published} of {len(self.events)} events in {timeout}s")

    async def _run(self) -> None:
        conn = await nats.connect(self.url, max_reconnect_attempts=-1)
        try:
            client = ShardClient(conn, self.partitions)
            client.start_owner_refresh()
            asker = asyncio.create_task(self._ask(client))
            await self._publish(EventPublisher(conn.jetstream(), self.pseudonymizer))
            while not self._stop.is_set():
                await asyncio.sleep(0.05)
            await asker
        except BaseException as exc:  # noqa: BLE001 - reported to the caller on exit
            self.error = exc
        finally:
            self._done_publishing.set()
            await conn.close()

    async def _publish(self, publisher: EventPublisher) -> None:
        tick = 0.02
        per_tick = max(1, round(self.rate * tick))
        started = time.monotonic()
        for n, start in enumerate(range(0, len(self.events), per_tick)):
            if self._stop.is_set():
                break
            await publisher.publish_many(self.events[start : start + per_tick])
            self.published = min(len(self.events), start + per_tick)
            # Paced against the clock, so a slow ack does not lower the average rate.
            await asyncio.sleep(max(0.0, started + (n + 1) * tick - time.monotonic()))
        self._done_publishing.set()

    async def _ask(self, client: ShardClient) -> None:
        keys = sorted({self.pseudonymizer.key(str(e["user_id"])) for e in self.events})
        gap = 1.0 / self.decisions_per_s
        i = 0
        while not self._stop.is_set():
            i += 1
            key = keys[(i * 7919) % len(keys)]
            try:
                reply = await client.call_coalesced(key, "decide", timeout=DECIDE_DEADLINE_S, context={})
                outcome = "failed" if is_error(reply) else "ok"
            except ShardUnavailable:
                outcome = "default"
            except Exception:  # noqa: BLE001 - anything else is a failed decision, counted
                outcome = "failed"
            self.outcomes[outcome] += 1
            if outcome != "ok":
                self.incidents.append((time.monotonic(), outcome, partition_of(key, self.partitions)))
            await asyncio.sleep(gap)
