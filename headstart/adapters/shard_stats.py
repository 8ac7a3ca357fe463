"""What a shard reports about itself: :class:`ShardStats`, as the ``stats`` RPC answers it and as
shards write it to the status bucket (JSON, one object per shard).

Readers decode the JSON into the Struct (:func:`decode_shard_stats`) and read typed fields.
Every field has a default, so a reader can be given a partial report (a test, a shard of an
older version).
"""

from __future__ import annotations

import msgspec


class LearningStats(msgspec.Struct):
    """The learning loop as one shard sees it: the served policy and what it learned."""

    policy: str = ""
    policy_version: int = 0
    shadow: str | None = None
    decisions_logged: int = 0
    decision_log_failures: int = 0
    exposures_logged: int = 0
    rewards_learned: int = 0
    reward_sum: float = 0.0
    #: Per decision point, drops in the served policy's reward rate detected.
    drifts: dict[str, int] = msgspec.field(default_factory=dict)
    #: Per ``<point>/<feature>``, changes in a key feature's distribution.
    feature_drifts: dict[str, int] = msgspec.field(default_factory=dict)
    merges: int = 0
    #: Reward attribution in the shard's partitions, by outcome.
    partitions: dict[str, int] = msgspec.field(default_factory=dict)


class SegmentStats(msgspec.Struct):
    """Live segment membership on one shard: changes counted, queued and published; sweeps."""

    #: Per segment, ``[entered, exited]`` since tracking began.
    changes: dict[str, list[int]] = msgspec.field(default_factory=dict)
    queued: int = 0
    dropped: int = 0
    published: int = 0
    last_published_at: float = 0.0
    publish_failures: int = 0
    sweeps: int = 0
    sweep_changes: int = 0
    last_sweep_s: float = 0.0
    cluster_model_version: int = 0
    cluster_samples_learned: int = 0


class ShardStats(msgspec.Struct):
    """One shard's numbers (``headstart status``, ``/metrics``, benchmarks and tests read them).

    >>> stats = decode_shard_stats(b'{"shard": 1, "partitions": [2, 3], "positions": {"2": 40}}')
    >>> stats.shard, stats.partitions, stats.positions, stats.segments.queued
    (1, [2, 3], {2: 40}, 0)
    >>> encode_shard_stats(ShardStats(shard=1, positions={2: 40}))[:40]
    b'{"shard":1,"pid":0,"node":"","partitions'
    """

    shard: int
    pid: int = 0
    #: The Ray node it runs on.
    node: str = ""
    #: The partitions it consumes (not those handed over and not yet forgotten).
    partitions: list[int] = msgspec.field(default_factory=list)
    users: int = 0
    applied: int = 0
    records: int = 0
    ready: bool = False
    started_at: float = 0.0
    events_per_s: float = 0.0
    handled: int = 0
    dead_lettered: int = 0
    restarts: int = 0
    first_handled_at: float = 0.0
    last_handled_at: float = 0.0
    first_handled_cpu: float = 0.0
    last_handled_cpu: float = 0.0
    #: Per partition, the last sequence its consumer delivered (JSON keys are strings).
    positions: dict[int, int] = msgspec.field(default_factory=dict)
    #: Per partition, its consumer's name on the events stream.
    consumers: dict[int, str] = msgspec.field(default_factory=dict)
    restored_partitions: int = 0
    #: Per partition restored from a snapshot, the sequence it was restored through.
    restored_through: dict[int, int] = msgspec.field(default_factory=dict)
    checkpoints: int = 0
    checkpoint_max_pause_s: float = 0.0
    last_checkpoint_at: float = 0.0
    learning: LearningStats = msgspec.field(default_factory=LearningStats)
    segments: SegmentStats = msgspec.field(default_factory=SegmentStats)
    #: Events of users without analytics consent, counted by type and dropped.
    events_without_consent: dict[str, int] = msgspec.field(default_factory=dict)
    expired_profiles: int = 0
    #: Stored events of custom types the catalog no longer declares, skipped (not dead-lettered)
    #: when replayed, by type.
    retired_events: dict[str, int] = msgspec.field(default_factory=dict)
    #: The stored catalog version the shard serves (0: a catalog given directly, not stored).
    catalog_version: int = 0
    #: Events already applied to their user, met again inside another message (an event
    #: retried inside a different batch, see engine/recent.py) and skipped.
    replayed_events: int = 0


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(ShardStats).decode


def encode_shard_stats(stats: ShardStats) -> bytes:
    return _encode(stats)


def decode_shard_stats(data: bytes | str) -> ShardStats:
    return _decode(data)
