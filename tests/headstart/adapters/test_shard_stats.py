"""The shard stats contract: the JSON keys readers rely on, round trips, partial reports."""

from __future__ import annotations

import json

from headstart.adapters.shard_stats import (
    LearningStats,
    SegmentStats,
    ShardStats,
    decode_shard_stats,
    encode_shard_stats,
)
from headstart.adapters.status import learning_summary, retired_summary, segments_summary

#: The keys of a shard's stats as `headstart status --json` and `/metrics` have always read them.
KEYS = [
    "shard", "pid", "node", "partitions", "users", "applied", "records", "ready", "started_at",
    "events_per_s", "handled", "dead_lettered", "restarts", "first_handled_at", "last_handled_at",
    "first_handled_cpu", "last_handled_cpu", "positions", "consumers", "restored_partitions",
    "restored_through", "checkpoints", "checkpoint_max_pause_s", "last_checkpoint_at", "learning",
    "segments", "events_without_consent", "expired_profiles", "retired_events", "catalog_version",
    "replayed_events",
]  # fmt: skip
LEARNING_KEYS = [
    "policy", "policy_version", "shadow", "decisions_logged", "decision_log_failures",
    "exposures_logged", "rewards_learned", "reward_sum", "drifts", "feature_drifts", "merges",
    "partitions",
]  # fmt: skip
SEGMENT_KEYS = [
    "changes", "queued", "dropped", "published", "last_published_at", "publish_failures", "sweeps",
    "sweep_changes", "last_sweep_s", "cluster_model_version", "cluster_samples_learned",
]  # fmt: skip


def full() -> ShardStats:
    return ShardStats(
        shard=1,
        pid=42,
        node="ab" * 28,
        partitions=[2, 5],
        positions={2: 10, 5: 7},
        consumers={2: "hs-p2-x", 5: "hs-p5-x"},
        restored_partitions=1,
        restored_through={5: 6},
        learning=LearningStats(policy="linear_igw", drifts={"step": 1}, partitions={"rewards": 3}),
        segments=SegmentStats(changes={"dormant": [2, 1]}, queued=4),
        events_without_consent={"feature_clicked": 2},
        retired_events={"created_board": 3},
    )


def test_the_json_has_the_keys_readers_use_in_their_order_with_partitions_as_strings() -> None:
    data = json.loads(encode_shard_stats(full()))
    assert list(data) == KEYS
    assert list(data["learning"]) == LEARNING_KEYS and list(data["segments"]) == SEGMENT_KEYS
    assert data["positions"] == {"2": 10, "5": 7} and data["restored_through"] == {"5": 6}


def test_a_report_decodes_back_to_the_same_stats_also_from_json_dumps() -> None:
    stats = full()
    assert decode_shard_stats(encode_shard_stats(stats)) == stats
    # Shards wrote their status with json.dumps before: those entries read the same.
    assert decode_shard_stats(json.dumps(json.loads(encode_shard_stats(stats)))) == stats


def test_a_partial_report_decodes_with_defaults() -> None:
    stats = decode_shard_stats(b'{"shard": 3, "segments": {"queued": 2}}')
    assert stats.shard == 3 and stats.segments.queued == 2 and stats.learning.policy == ""


def test_summaries_read_typed_stats() -> None:
    other = ShardStats(
        shard=2,
        learning=LearningStats(policy="linear_igw", drifts={"step": 3}, partitions={"rewards": 1}),
        segments=SegmentStats(changes={"dormant": [1, 0]}, published=5, cluster_model_version=2),
    )
    assert segments_summary([full(), other]) == {
        "changes": {"dormant": {"entered": 3, "exited": 1}},
        "queued": 4,
        "published": 5,
        "cluster_model_version": 2,
    }
    learning = learning_summary([full(), other])
    assert learning["policy"] == "linear_igw" and learning["drifts"] == {"step": 3}
    assert learning["attribution"] == {"rewards": 4} and learning_summary([]) == {}
    other.retired_events["connected_slack"] = 1
    assert retired_summary([full(), other]) == {"connected_slack": 1, "created_board": 3}
