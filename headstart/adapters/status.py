"""Reading the running instance's numbers from NATS: what shards report, and consumer lag.

Shards write their stats to the ``HS_STATUS`` key-value bucket every second; entries of a
shard that stopped expire. Reading them needs only a NATS connection, not a Ray driver.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import msgspec
import nats
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import BucketNotFoundError, NotFoundError
from nats.js.kv import KeyValue

from headstart.adapters.broker import NatsAuth, connect_nats
from headstart.adapters.rpc import Request, ShardClient, ShardUnavailable, StatsRequest
from headstart.adapters.shard_stats import ShardStats, decode_shard_stats
from headstart.adapters.streams import bucket_keys, open_bucket
from headstart.adapters.topology import DLQ_STREAM, EVENTS_STREAM, STATUS_BUCKET

#: A shard that has not reported for this long is gone; its entry expires.
STATUS_TTL_S = 30.0
REPORT_EVERY_S = 1.0
#: The webhook actor's entry (shards' entries are ``shard-<id>``).
WEBHOOKS_STATUS_KEY = "webhooks"
#: The supervisor's entry: the children it watches and their restarts (:class:`SupervisorHealth`).
SUPERVISOR_STATUS_KEY = "supervisor"


class ChildHealth(msgspec.Struct, frozen=True):
    """One child of the supervisor: ``running``, ``restarting`` (dead, a start due at
    ``retry_at``) or ``gave_up``; its restarts so far and its last death. ``restarted_by``:
    who starts it again (``supervisor``; ``serve`` for HAProxy, which the supervisor only
    watches). Times are Unix seconds.

    >>> ChildHealth("nats-server", "running", restarts=1).restarted_by
    'supervisor'
    """

    name: str
    state: str
    restarts: int = 0
    failures: int = 0
    last_death_at: float | None = None
    last_reason: str | None = None
    last_restart_at: float | None = None
    retry_at: float | None = None
    restarted_by: str = "supervisor"


class SupervisorHealth(msgspec.Struct, frozen=True):
    """What the supervisor reports (state file ``health``, and ``HS_STATUS`` key ``supervisor``
    for ``/metrics``): each child it watches, and why it gave up, if it did.

    >>> health = SupervisorHealth(children=[ChildHealth("nats-server", "running", restarts=2)])
    >>> decode_supervisor_health(msgspec.json.encode(health)).children[0].restarts
    2
    """

    children: list[ChildHealth]
    gave_up: str | None = None


def decode_supervisor_health(data: bytes) -> SupervisorHealth:
    return msgspec.json.decode(data, type=SupervisorHealth)


async def ensure_status_bucket(js: JetStreamContext) -> KeyValue:
    return await open_bucket(
        js, KeyValueConfig(bucket=STATUS_BUCKET, history=1, ttl=STATUS_TTL_S, storage=StorageType.MEMORY)
    )


async def status_entries(js: JetStreamContext, wait_s: float = 10.0) -> dict[str, bytes]:
    """Every entry of the status bucket now. An empty bucket is asked again for up to
    ``wait_s`` (shards starting, or a shard between deleting and writing its entry), and an
    entry gone between the listing and its read (stopped, expired) is left out, not an error."""
    deadline = time.monotonic() + wait_s
    while True:
        keys = await bucket_keys(js, STATUS_BUCKET)
        if keys:
            break
        if time.monotonic() > deadline:
            return {}
        await asyncio.sleep(0.5)
    kv = await js.key_value(STATUS_BUCKET)
    entries = {}
    for key in keys:
        try:
            entry = await kv.get(key)
        except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
            continue
        if entry.value:
            entries[key] = entry.value
    return entries


async def collect_status(nats_url: str, auth: NatsAuth | None = None) -> dict[str, Any]:
    nc = await connect_nats(nats_url, auth, connect_timeout=5, max_reconnect_attempts=1)
    try:
        js = nc.jetstream()
        shards: list[ShardStats] = []
        webhooks: list[dict[str, Any]] = []
        try:
            entries = await status_entries(js)
        except (BucketNotFoundError, NotFoundError):
            entries = {}
        for key, value in entries.items():
            if key == WEBHOOKS_STATUS_KEY:
                webhooks = json.loads(value)
            elif key.startswith("shard-"):
                shards.append(decode_shard_stats(value))
        shards.sort(key=lambda s: s.shard)
        # The bucket is up to a second old; ask each shard for its numbers now where it answers.
        via = _first_partitions(shards)
        fresh = await _client(nc, via).ask_each_shard(StatsRequest(key=""), 1.0, via=via, wait=False)
        shards = [
            msgspec.convert(fresh.by_shard[s.shard], ShardStats, strict=False)
            if s.shard in fresh.by_shard
            else s
            for s in shards
        ]
        now = time.time()
        lags = []
        for shard in shards:
            lag = 0
            # Each partition's consumer has the name its shard created it with.
            for name in shard.consumers.values():
                try:
                    info = await js.consumer_info(EVENTS_STREAM, name)
                    lag += int(info.num_pending or 0)
                except NotFoundError:
                    pass
            lags.append(lag)
        events = await js.stream_info(EVENTS_STREAM)
        try:
            dlq = (await js.stream_info(DLQ_STREAM)).state.messages
        except NotFoundError:
            dlq = 0
        return {
            "nats_url": nats_url,
            # Each shard's stats as it reported them, with its age and its consumers' lag.
            "shards": [
                {**msgspec.to_builtins(s, str_keys=True), "age_s": now - (s.started_at or now), "lag": lag}
                for s, lag in zip(shards, lags, strict=True)
            ],
            "stream": {
                "name": EVENTS_STREAM,
                "messages": events.state.messages,
                "last_seq": events.state.last_seq,
            },
            "dead_letters": dlq,
            "retired_events": retired_summary(shards),
            "events_per_s": sum(s.events_per_s for s in shards),
            "lag": sum(lags),
            "learning": learning_summary(shards),
            "segments": segments_summary(shards),
            "webhooks": webhooks,
        }
    finally:
        await nc.close()


def retired_summary(shards: list[ShardStats]) -> dict[str, int]:
    """Stored events of types the catalog no longer declares, skipped on replay, by type."""
    counts: dict[str, int] = {}
    for shard in shards:
        for kind, n in shard.retired_events.items():
            counts[kind] = counts.get(kind, 0) + n
    return dict(sorted(counts.items()))


def segments_summary(shards: list[ShardStats]) -> dict[str, Any]:
    """Live membership across shards: changes per segment, queued, published, cluster model."""
    parts = [s.segments for s in shards]
    changes: dict[str, list[int]] = {}
    for part in parts:
        for segment, (entered, exited) in part.changes.items():
            entry = changes.setdefault(segment, [0, 0])
            entry[0] += entered
            entry[1] += exited
    return {
        "changes": {k: {"entered": e, "exited": x} for k, (e, x) in sorted(changes.items())},
        "queued": sum(p.queued for p in parts),
        "published": sum(p.published for p in parts),
        "cluster_model_version": max((p.cluster_model_version for p in parts), default=0),
    }


def learning_summary(shards: list[ShardStats]) -> dict[str, Any]:
    """The learning loop across shards: policy, rewards attributed, drifts detected per point."""
    learning = [s.learning for s in shards]
    if not learning:
        return {}
    attribution: dict[str, int] = {}
    drifts: dict[str, int] = {}
    feature_drifts: dict[str, int] = {}
    for entry in learning:
        for key, count in entry.feature_drifts.items():
            feature_drifts[key] = feature_drifts.get(key, 0) + count
        for outcome, count in entry.partitions.items():
            attribution[outcome] = attribution.get(outcome, 0) + count
        for point, count in entry.drifts.items():
            drifts[point] = max(drifts.get(point, 0), count)
    return {
        "policy": learning[0].policy,
        "shadow": learning[0].shadow,
        "decisions_logged": sum(e.decisions_logged for e in learning),
        "attribution": attribution,
        # Per point, the most any shard's served policy detected (shards share each forgetting).
        "drifts": drifts,
        "feature_drifts": feature_drifts,
    }


def _first_partitions(shards: list[ShardStats]) -> dict[int, int]:
    """Shard -> a partition it reported owning (where to ask it), for shards that own one."""
    return {s.shard: s.partitions[0] for s in shards if s.partitions}


def _client(nc: NATS, via: dict[int, int]) -> ShardClient:
    return ShardClient(nc, 1 + max(via.values(), default=-1))


async def ask_every_shard(
    nats_url: str, request: Request, timeout: float = 30.0, auth: NatsAuth | None = None
) -> list[Any]:
    """``request`` asked of every running shard once, over NATS (for reports from the CLI)."""
    nc = await connect_nats(nats_url, auth, connect_timeout=5, max_reconnect_attempts=1)
    try:
        entries = await status_entries(nc.jetstream())
        shards = [decode_shard_stats(value) for key, value in entries.items() if key.startswith("shard-")]
        via = _first_partitions(shards)
        each = await _client(nc, via).ask_each_shard(request, timeout, via=via, wait=False)
        if each.missing:
            # A report over some of the users would read as a report over all of them.
            raise ShardUnavailable(f"shards {each.missing} did not answer {type(request).__name__}")
        return each.answers
    finally:
        await nc.close()
