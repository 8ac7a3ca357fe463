"""The admin answers that gather from every shard: segment and experiment reports, what the
policies learned, and the Prometheus scrape (shard stats, consumer lag, webhook delivery).

>>> learned_points({"welcome": {"arms": ["a", "b"], "n": [3.0, 1.0], "rewards": [1.5, 0.0]}})
{'welcome': {'a': {'share': 0.75, 'rate': 0.5, 'n': 3.0}, 'b': {'share': 0.25, 'rate': 0.0, 'n': 1.0}}}
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any

import msgspec
from nats.js import JetStreamContext

from actors.ingress.shards import ask_each_shard
from engine.catalog import Catalog
from engine.experiments import Experiment
from headstart.adapters.membership import read_cluster_model
from headstart.adapters.rpc import (
    ExperimentMomentsRequest,
    LearnedRequest,
    SegmentSizesRequest,
    ShardClient,
    StatsRequest,
)
from headstart.adapters.shard_stats import ShardStats
from headstart.adapters.status import (
    SUPERVISOR_STATUS_KEY,
    WEBHOOKS_STATUS_KEY,
    SupervisorHealth,
    decode_supervisor_health,
)
from headstart.adapters.topology import EVENTS_STREAM, STATUS_BUCKET
from headstart.reports.evaluate import events_of, layouts_of, replay_log
from headstart.reports.experiments import experiment_report, report_cuts
from headstart.reports.segments import segment_report
from headstart.reports.shadow import shadow_report
from headstart.web.metrics import IngressMetrics, render


async def segments(js: JetStreamContext, shards: ShardClient, catalog: Catalog) -> dict[str, Any]:
    """Every segment with its live size, counted by the shards now."""
    answers, missing = await ask_each_shard(shards, SegmentSizesRequest(key=""), timeout=10.0)
    report = segment_report(answers, catalog, await read_cluster_model(js))
    return {**report, "shards_missing": missing}


async def experiment(shards: ShardClient, exp: Experiment) -> dict[str, Any]:
    """An experiment's report: the time cuts from the shards' spans, then the moments per cut."""
    spans, _ = await ask_each_shard(shards, ExperimentMomentsRequest(key="", experiment=exp.id), timeout=10.0)
    cuts = report_cuts(spans, time.time())
    answers, missing = await ask_each_shard(
        shards, ExperimentMomentsRequest(key="", experiment=exp.id, cuts=cuts), timeout=20.0
    )
    return {**experiment_report(exp, answers, cuts), "shards_missing": missing}


async def shadow(js: JetStreamContext, catalog: Catalog) -> dict[str, Any]:
    """The apprentice report (:mod:`headstart.reports.shadow`) over the events stream as it is
    now, replayed in a thread: the replay is CPU work the replica's loop must not wait on."""
    messages = await events_of(js)
    layouts = await layouts_of(js)
    replayed = await asyncio.to_thread(replay_log, messages, catalog, layouts)
    return shadow_report(replayed)


async def learned(shards: ShardClient) -> dict[str, Any] | None:
    """What the served policy learned (from one shard: they all serve the same merged
    statistics, up to the last merge), or None if no shard answered."""
    answers, _ = await ask_each_shard(shards, LearnedRequest(key=""), timeout=5.0)
    return learned_points(answers[0]) if answers else None


def learned_points(learned: dict[str, Any]) -> dict[str, Any]:
    """Per decision point and arm: decisions credited (weighted), their share and reward rate."""
    points = {}
    for point, stats in learned.items():
        total = sum(stats["n"]) or 1.0
        points[point] = {
            arm: {"share": n / total, "rate": (reward / n) if n else None, "n": n}
            for arm, n, reward in zip(stats["arms"], stats["n"], stats["rewards"], strict=True)
        }
    return points


async def scrape(js: JetStreamContext, shards: ShardClient, metrics: IngressMetrics) -> bytes:
    """The Prometheus text: the ingress's own metrics, every shard's stats, each partition's
    consumer lag, the webhooks' delivery status and the supervisor's restarts."""
    answers, _ = await ask_each_shard(shards, StatsRequest(key=""), timeout=1.0)
    stats = [msgspec.convert(answer, ShardStats, strict=False) for answer in answers]
    lag: dict[int, int] = {}
    for shard_stats in stats:
        for partition, name in shard_stats.consumers.items():
            with contextlib.suppress(Exception):
                info = await js.consumer_info(EVENTS_STREAM, name, timeout=1.0)
                lag[partition] = int(info.num_pending or 0)
    webhooks: list[dict[str, Any]] = []
    supervisor: SupervisorHealth | None = None
    with contextlib.suppress(Exception):  # no webhooks, or their actor not reporting yet
        entry = await (await js.key_value(STATUS_BUCKET)).get(WEBHOOKS_STATUS_KEY)
        webhooks = json.loads(entry.value or b"[]")
    with contextlib.suppress(Exception):  # no supervisor (an app started without `up`)
        entry = await (await js.key_value(STATUS_BUCKET)).get(SUPERVISOR_STATUS_KEY)
        supervisor = decode_supervisor_health(entry.value or b"")
    return render(metrics, stats, lag, webhooks, supervisor)
