"""``headstart bench recover``: a shard process killed, then a Ray node lost, under load.

Both scenarios: 2 shards, 20,000 users with live state, a steady publisher (1,000 events/s) and
decisions asked at 200/s the way the HTTP ingress asks them (``bench/traffic.py``).

- ``shard_kill``: SIGKILL one shard's process on a local Ray. Ray restarts the actor; it restores
  its partitions' latest snapshots and consumes from the sequence after each.
- ``node_loss``: a 2-node cluster on this machine (``ray.cluster_utils.Cluster``); the shards run
  on the worker node (soft node affinity) and the worker is removed without a graceful shutdown.
  The head detects it by its health checks (1 s period, 3 misses, as in ``ray_cluster.yaml``;
  Ray's defaults take 15-20 s) and restarts the shards on the head.

``recovery_s``: from the fault until every partition of the affected shards answers again from
a new process; ``caught_up_s``: until their lag is back to zero. After the run every user's state
is read back and compared with what was published: ``lost``, ``duplicated``. Decisions:
``failed_decisions`` would be errors from the API; ``default_decisions`` got the safe default
flow because no shard answered within the ingress's 250 ms deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import nats

from bench.common import embedded_broker, write_result
from bench.population import onboarding_events
from bench.traffic import SteadyTraffic, expected_counts, lost_and_duplicated, read_back
from engine.keys import Pseudonymizer
from headstart.adapters.provision import ensure_streams
from headstart.adapters.rpc import ShardClient, ShardUnavailable, StatsRequest, is_error
from headstart.adapters.shard_stats import ShardStats, decode_shard_stats
from headstart.adapters.streams import EventPublisher, publish_prepared
from headstart.settings import Settings

SECRET = b"bench-secret-not-for-production-use"
PARTITIONS = 64
#: Fast node-death detection (the same settings as ray_cluster.yaml).
HEALTH_CHECKS = {
    "health_check_initial_delay_ms": 1000,
    "health_check_period_ms": 1000,
    "health_check_timeout_ms": 1000,
    "health_check_failure_threshold": 3,
}


def run(quick: bool = False, out_dir: Path | None = None) -> Path:
    started = dt.datetime.now(dt.UTC)
    users = 2_000 if quick else 20_000
    sizes = {
        "users": users,
        "initial_events": users * 5,
        "live_events_per_s": 1_000,
        "before_fault_s": 2.0 if quick else 5.0,
        "after_recovery_s": 2.0 if quick else 5.0,
    }
    metrics = {
        "shard_kill": _scenario(sizes, ShardKill()),
        "node_loss": _scenario(sizes, NodeLoss()),
    }
    params = {
        **sizes,
        "partitions": PARTITIONS,
        "shards": 2,
        "decisions_per_s": 200,
        "decision_deadline_s": 0.25,
        "checkpoint_interval_s": 30.0,
        "ray_health_checks": HEALTH_CHECKS,
        "quick": quick,
    }
    return write_result("recover", params, metrics, out_dir=out_dir, started_at=started)


class Scenario(Protocol):
    def cluster(self) -> contextlib.AbstractContextManager[dict[str, Any]]: ...

    def fault(self, group: Any, old: dict[int, ShardStats]) -> list[int]:
        """Cause the fault; return the shards it hit."""
        ...


def _scenario(sizes: dict[str, Any], scenario: Scenario) -> dict[str, Any]:
    from actors.cluster import ShardGroup

    pseudonymizer = Pseudonymizer(SECRET)
    initial = list(onboarding_events(users=sizes["users"], events=sizes["initial_events"], seed=51))
    seconds = sizes["before_fault_s"] + sizes["after_recovery_s"] + 60
    live = list(
        onboarding_events(users=sizes["users"], events=int(sizes["live_events_per_s"] * seconds), seed=52)
    )
    settings = Settings(partitions=PARTITIONS, shards=2, shard_num_cpus=0.5)
    with embedded_broker() as broker, scenario.cluster() as actor_options:
        asyncio.run(_publish(broker.url, pseudonymizer, initial))
        group = ShardGroup(settings, broker.url, actor_options=actor_options).start()
        try:
            group.wait_ready()
            group.wait_caught_up(timeout=300)
            # A checkpoint as the periodic one would have written it, then more live events
            # that only the stream has: recovery must restore and replay.
            import ray

            ray.get([s.checkpoint.remote() for s in group.shards])
            traffic = SteadyTraffic(
                broker.url, SECRET, live, rate=sizes["live_events_per_s"], partitions=PARTITIONS
            )
            with traffic:
                time.sleep(sizes["before_fault_s"])
                old = {s.shard: s for s in group.stats()}
                t0, fault_at = time.monotonic(), time.time()
                affected = scenario.fault(group, old)
                partitions = [p for shard in affected for p in old[shard].partitions]
                old_pids = {old[shard].pid for shard in affected}
                recovery_s = asyncio.run(_until_served(broker.url, partitions, old_pids, t0))
                group.wait_caught_up(timeout=300)
                caught_up_s = time.monotonic() - t0
                time.sleep(sizes["after_recovery_s"])
            sent = live[: traffic.published]
            group.wait_caught_up(timeout=300)
            expected = expected_counts(pseudonymizer, [*initial, *sent])
            lost, duplicated = lost_and_duplicated(expected, read_back(group, list(expected)))
            new = group.stats()
            # Where the recovery's time went: when each new process started (after the fault),
            # and its take-over's steps (restore, consumers...).
            timeline = {
                str(shard): {
                    "process_started_s": next(st.started_at for st in new if st.shard == shard) - fault_at,
                    "take_over": ray.get(group.shards[shard].take_over_timings.remote())[:1],
                }
                for shard in affected
            }
        finally:
            group.stop()
    return {
        "recovery_s": recovery_s,
        "caught_up_s": caught_up_s,
        "lost": lost,
        "duplicated": duplicated,
        "failed_decisions": traffic.outcomes.get("failed", 0),
        "default_decisions": traffic.outcomes.get("default", 0),
        "ok_decisions": traffic.outcomes.get("ok", 0),
        "affected_shards": affected,
        "affected_partitions": len(partitions),
        "restored_partitions": sum(s.restored_partitions for s in new if s.shard in affected),
        "live_events_sent": traffic.published,
        "nodes_after": sorted({s.node[:12] for s in new}),
        "nodes_before": sorted({s.node[:12] for s in old.values()}),
        "timeline": timeline,
    }


async def _until_served(url: str, partitions: list[int], old_pids: set[int], t0: float) -> float:
    """Seconds from ``t0`` until every partition answers from a process that is not an old one."""
    nc = await nats.connect(url)
    client = ShardClient(nc, PARTITIONS)
    waiting = set(partitions)
    try:
        while waiting:
            if time.monotonic() - t0 > 120:
                raise TimeoutError(f"partitions {sorted(waiting)} not served 120 s after the fault")
            for partition in sorted(waiting):
                with contextlib.suppress(ShardUnavailable):
                    reply = await client.call_raw_partition(
                        partition, StatsRequest(key=""), timeout=0.2, wait=False
                    )
                    if not is_error(reply) and decode_shard_stats(reply).pid not in old_pids:
                        waiting.discard(partition)
            await asyncio.sleep(0.01)
        return time.monotonic() - t0
    finally:
        await nc.close()


# ---------------------------------------------------------------------- the two scenarios


class ShardKill:
    """SIGKILL one shard's process on a local Ray."""

    @contextlib.contextmanager
    def cluster(self) -> Iterator[dict[str, Any]]:
        import ray

        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, namespace="headstart")
        try:
            yield {}
        finally:
            ray.shutdown()

    def fault(self, group: Any, old: dict[int, ShardStats]) -> list[int]:
        os.kill(old[0].pid, signal.SIGKILL)
        return [0]


class NodeLoss:
    """Two Ray nodes on this machine; the shards' node is removed without a graceful shutdown."""

    def __init__(self) -> None:
        self._cluster: Any = None
        self._worker: Any = None

    @contextlib.contextmanager
    def cluster(self) -> Iterator[dict[str, Any]]:
        import ray
        from ray.cluster_utils import Cluster
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        self._cluster = Cluster(
            initialize_head=True,
            head_node_args={"num_cpus": 1, "include_dashboard": False, "_system_config": HEALTH_CHECKS},
        )
        self._worker = self._cluster.add_node(num_cpus=1)
        ray.init(address=self._cluster.address, namespace="headstart", log_to_driver=False)
        self._cluster.wait_for_nodes()
        try:
            # Soft affinity: the shards start on the worker and may be restarted anywhere.
            yield {"scheduling_strategy": NodeAffinitySchedulingStrategy(self._worker.node_id, soft=True)}
        finally:
            ray.shutdown()
            self._cluster.shutdown()

    def fault(self, group: Any, old: dict[int, ShardStats]) -> list[int]:
        affected = [shard for shard, s in old.items() if s.node == self._worker.node_id]
        self._cluster.remove_node(self._worker, allow_graceful=False)
        return affected


async def _publish(url: str, pseudonymizer: Pseudonymizer, events: list[dict[str, Any]]) -> None:
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        await ensure_streams(js, PARTITIONS)
        publisher = EventPublisher(js, pseudonymizer)
        await publish_prepared(js, [publisher.prepare(e) for e in events])
    finally:
        await nc.close()


def summary(path: Path) -> str:
    m = json.loads(path.read_text())["metrics"]
    return "; ".join(
        f"{name}: recovery {m[name]['recovery_s']:.2f} s, lost {m[name]['lost']}, "
        f"duplicated {m[name]['duplicated']}, failed decisions {m[name]['failed_decisions']}"
        for name in ("shard_kill", "node_loss")
    )
