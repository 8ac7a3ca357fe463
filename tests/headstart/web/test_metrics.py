"""The Prometheus text built from shard and webhook stats, read back with prometheus_client's parser."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from headstart.adapters.shard_stats import SegmentStats, ShardStats
from headstart.web.metrics import IngressMetrics, render


def samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text.decode())
        for s in family.samples
    }


def test_segment_changes_cluster_model_and_webhook_deliveries_are_exported() -> None:
    shards = [
        ShardStats(
            shard=0,
            segments=SegmentStats(
                changes={"dormant": [5, 2], "cluster_1": [3, 0]},
                queued=7,
                published=8,
                cluster_model_version=4,
            ),
        )
    ]
    webhooks = [{"webhook": "crm", "delivered": 10, "attempts_failed": 2, "given_up": 1}]
    got = samples(render(IngressMetrics(), shards, {0: 3}, webhooks))
    assert (
        got[("hs_segment_changes_total", (("change", "enter"), ("segment", "dormant"), ("shard", "0")))] == 5
    )
    assert (
        got[("hs_segment_changes_total", (("change", "exit"), ("segment", "dormant"), ("shard", "0")))] == 2
    )
    assert got[("hs_segment_changes_queued", (("shard", "0"),))] == 7
    assert got[("hs_cluster_model_version", (("shard", "0"),))] == 4
    assert got[("hs_webhook_changes_delivered_total", (("webhook", "crm"),))] == 10
    assert got[("hs_webhook_attempts_failed_total", (("webhook", "crm"),))] == 2
    assert got[("hs_webhook_changes_given_up_total", (("webhook", "crm"),))] == 1
    assert got[("hs_consumer_lag", (("partition", "0"),))] == 3


def test_retired_events_are_exported_by_shard_and_type() -> None:
    shards = [ShardStats(shard=1, retired_events={"created_board": 4}), ShardStats(shard=2)]
    got = samples(render(IngressMetrics(), shards, {}, []))
    assert got[("hs_events_retired_total", (("shard", "1"), ("type", "created_board")))] == 4
    assert not any(name == "hs_events_retired_total" and ("shard", "2") in labels for name, labels in got)
