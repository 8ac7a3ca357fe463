"""Prometheus metrics: the ingress's own counters, and the shards' numbers at scrape time.

Shard figures are gathered when Prometheus scrapes (from each shard over NATS, lag from the
consumers), so nothing is pushed on the event path.
"""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from headstart.adapters.shard_stats import ShardStats
from headstart.adapters.status import SupervisorHealth

#: Decision latency buckets (seconds): from sub-millisecond to the 250 ms fallback deadline.
DECIDE_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0)


class IngressMetrics:
    """Counters the HTTP ingress updates per request (cheap: a dict lookup and an add)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.decisions = Counter(
            "hs_decisions", "Decisions served, by how", ["outcome"], registry=self.registry
        )
        self.decide_seconds = Histogram(
            "hs_decide_seconds",
            "Time to answer /v1/decide inside the ingress",
            buckets=DECIDE_BUCKETS,
            registry=self.registry,
        )
        self.events = Counter(
            "hs_http_events", "Events accepted over HTTP", ["result"], registry=self.registry
        )
        self.errors = Counter("hs_http_errors", "Error answers by code", ["code"], registry=self.registry)
        self.rewards = Counter(
            "hs_http_rewards", "Explicit rewards accepted over HTTP", ["result"], registry=self.registry
        )
        self.identity_refused = Counter(
            "hs_identity_refused",
            "Frontend-key requests refused by identity verification, by why (user_hash_required, ...)",
            ["reason"],
            registry=self.registry,
        )
        self.segment_calls = Counter(
            "hs_segment_api_calls",
            "Calls to the Segment-compatible API, by call type and outcome (stored, duplicate, "
            "unmapped, invalid)",
            ["type", "outcome"],
            registry=self.registry,
        )
        self.cors_refused = Counter(
            "hs_cors_refused",
            "Browser requests from origins not in HEADSTART_CORS_ORIGINS (given no CORS headers), "
            "by kind (preflight, request)",
            ["kind"],
            registry=self.registry,
        )


def render(
    ingress: IngressMetrics,
    shards: list[ShardStats],
    lag: dict[int, int],
    webhooks: list[dict[str, Any]] | None = None,
    supervisor: SupervisorHealth | None = None,
) -> bytes:
    """The ingress's metrics plus gauges and counters built from shard, webhook and supervisor
    stats (``supervisor``: None where no supervisor reports, e.g. tests without ``up``)."""
    shard_registry = CollectorRegistry()
    shard_registry.register(_ShardCollector(shards, lag, webhooks or []))
    if supervisor is not None:
        shard_registry.register(_SupervisorCollector(supervisor))
    return generate_latest(ingress.registry) + generate_latest(shard_registry)


class _SupervisorCollector:
    """The children ``headstart up`` watches: their restarts, and whether each runs now.

    >>> from headstart.adapters.status import ChildHealth
    >>> health = SupervisorHealth(children=[ChildHealth("nats-server", "running", restarts=1)])
    >>> [(m.name, m.samples[0].value) for m in _SupervisorCollector(health).collect()]
    [('hs_supervisor_restarts', 1), ('hs_supervisor_child_up', 1.0)]
    """

    def __init__(self, health: SupervisorHealth) -> None:
        self.health = health

    def collect(self) -> Any:
        restarts = CounterMetricFamily(
            "hs_supervisor_restarts",
            "Times a child of the supervisor was started again after it died, by child and by "
            "whom (supervisor; serve for HAProxy)",
            labels=["child", "by"],
        )
        up = GaugeMetricFamily(
            "hs_supervisor_child_up",
            "1 while a child of the supervisor runs, 0 while it is down",
            labels=["child"],
        )
        for child in self.health.children:
            restarts.add_metric([child.name, child.restarted_by], child.restarts)
            up.add_metric([child.name], 1.0 if child.state == "running" else 0.0)
        yield from (restarts, up)


class _ShardCollector:
    def __init__(self, shards: list[ShardStats], lag: dict[int, int], webhooks: list[dict[str, Any]]) -> None:
        self.shards, self.lag, self.webhooks = shards, lag, webhooks

    def _segments(self) -> Any:
        changes = CounterMetricFamily(
            "hs_segment_changes",
            "Users entering or leaving a segment, by shard, segment and change (enter, exit)",
            labels=["shard", "segment", "change"],
        )
        queued = GaugeMetricFamily(
            "hs_segment_changes_queued", "Segment changes waiting to be published", labels=["shard"]
        )
        published = CounterMetricFamily(
            "hs_segment_changes_published", "Segment changes published to hs.segments", labels=["shard"]
        )
        model = GaugeMetricFamily(
            "hs_cluster_model_version",
            "Version of the behavioural cluster model a shard serves",
            labels=["shard"],
        )
        for stats in self.shards:
            label = [str(stats.shard)]
            segments = stats.segments
            for segment, (entered, exited) in segments.changes.items():
                changes.add_metric([*label, segment, "enter"], entered)
                changes.add_metric([*label, segment, "exit"], exited)
            queued.add_metric(label, segments.queued)
            published.add_metric(label, segments.published)
            model.add_metric(label, segments.cluster_model_version)
        delivered = CounterMetricFamily(
            "hs_webhook_changes_delivered", "Segment changes delivered to a webhook", labels=["webhook"]
        )
        failed = CounterMetricFamily(
            "hs_webhook_attempts_failed",
            "Webhook POSTs that failed (then retried with backoff)",
            labels=["webhook"],
        )
        given_up = CounterMetricFamily(
            "hs_webhook_changes_given_up",
            "Segment changes a webhook gave up on after its attempts",
            labels=["webhook"],
        )
        for hook in self.webhooks:
            label = [str(hook.get("webhook"))]
            delivered.add_metric(label, hook.get("delivered", 0))
            failed.add_metric(label, hook.get("attempts_failed", 0))
            given_up.add_metric(label, hook.get("given_up", 0))
        without_consent = CounterMetricFamily(
            "hs_events_without_consent",
            "Events of users without analytics consent: counted by type, then dropped",
            labels=["shard", "type"],
        )
        retired = CounterMetricFamily(
            "hs_events_retired",
            "Stored events of custom types the catalog no longer declares: skipped on replay",
            labels=["shard", "type"],
        )
        for stats in self.shards:
            for kind, count in stats.events_without_consent.items():
                without_consent.add_metric([str(stats.shard), kind], count)
            for kind, count in stats.retired_events.items():
                retired.add_metric([str(stats.shard), kind], count)
        return (changes, queued, published, model, delivered, failed, given_up, without_consent, retired)

    def collect(self) -> Any:
        now = time.time()
        applied = CounterMetricFamily(
            "hs_shard_events_applied", "Events applied by a shard", labels=["shard"]
        )
        dead = CounterMetricFamily(
            "hs_shard_dead_letters", "Messages a shard dead-lettered", labels=["shard"]
        )
        restarts = CounterMetricFamily(
            "hs_shard_consumer_restarts", "Consumer re-creations (reconnects, gaps)", labels=["shard"]
        )
        users = GaugeMetricFamily("hs_shard_users", "Users held by a shard", labels=["shard"])
        partitions = GaugeMetricFamily("hs_shard_partitions", "Partitions owned by a shard", labels=["shard"])
        checkpoint_age = GaugeMetricFamily(
            "hs_shard_checkpoint_age_seconds", "Seconds since a shard's last checkpoint", labels=["shard"]
        )
        pause = GaugeMetricFamily(
            "hs_shard_checkpoint_max_pause_seconds",
            "Longest event-path pause for a snapshot",
            labels=["shard"],
        )
        logged = CounterMetricFamily(
            "hs_decisions_logged", "Decisions with a learned choice logged by a shard", labels=["shard"]
        )
        exposures = CounterMetricFamily(
            "hs_experiment_exposures_logged",
            "First exposures of a user to an experiment logged by a shard",
            labels=["shard"],
        )
        learned = CounterMetricFamily(
            "hs_rewards_learned", "Rewards a shard's served policies learned from", labels=["shard"]
        )
        attribution = CounterMetricFamily(
            "hs_reward_attribution",
            "Reward attribution in a shard's partitions, by outcome (rewards, explicit, defaulted, "
            "late, unknown)",
            labels=["shard", "outcome"],
        )
        drifts = CounterMetricFamily(
            "hs_policy_drifts",
            "Drops in a served policy's reward rate detected (ADWIN); each resets what it learned",
            labels=["shard", "point"],
        )
        feature_drifts = CounterMetricFamily(
            "hs_feature_drifts",
            "Changes in a key feature's distribution at a decision point (ADWIN), per shard",
            labels=["shard", "point", "feature"],
        )
        for stats in self.shards:
            label = [str(stats.shard)]
            learning = stats.learning
            for key, count in learning.feature_drifts.items():
                point, _, feature = key.rpartition("/")
                feature_drifts.add_metric([*label, point, feature], count)
            logged.add_metric(label, learning.decisions_logged)
            exposures.add_metric(label, learning.exposures_logged)
            learned.add_metric(label, learning.rewards_learned)
            for outcome, count in learning.partitions.items():
                attribution.add_metric([*label, outcome], count)
            for point, count in learning.drifts.items():
                drifts.add_metric([*label, point], count)
            applied.add_metric(label, stats.applied)
            dead.add_metric(label, stats.dead_lettered)
            restarts.add_metric(label, stats.restarts)
            users.add_metric(label, stats.users)
            partitions.add_metric(label, len(stats.partitions))
            last = stats.last_checkpoint_at or stats.started_at or now
            checkpoint_age.add_metric(label, max(0.0, now - last))
            pause.add_metric(label, stats.checkpoint_max_pause_s)
        lag = GaugeMetricFamily(
            "hs_consumer_lag", "Events stored and not yet delivered", labels=["partition"]
        )
        for partition, pending in sorted(self.lag.items()):
            lag.add_metric([str(partition)], pending)
        yield from (applied, dead, restarts, users, partitions, checkpoint_age, pause, lag)
        yield from (logged, exposures, learned, attribution, drifts, feature_drifts)
        yield from self._segments()
