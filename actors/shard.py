"""ShardActor: a Ray async actor that owns partitions, consumes them from NATS and serves reads.

The actor is thin on purpose: state and its rules are :class:`engine.shard.ShardState`, the
NATS loop is :class:`headstart.adapters.consumer.PartitionConsumer`. The actor composes the
rest: partition hand-over (:mod:`actors.handover`), checkpoints and what waits for them
(:mod:`actors.durability`) and its background loops (:mod:`actors.loops`). It starts itself
from its constructor, so a restart by Ray (``max_restarts``) resumes consumption with no driver
involved: there is no process between NATS and the shard.

Which partitions it owns comes from the recorded assignment (:mod:`headstart.adapters.assignment`) when
it starts, and changes live through :meth:`ShardActor.acquire`, :meth:`ShardActor.release` and
:meth:`ShardActor.forget`, driven by :meth:`actors.cluster.ShardGroup.rescale`.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import time
from typing import Any

import msgspec
import ray
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.kv import KeyValue

from actors.decision_log import DecisionLog
from actors.durability import Durability
from actors.handover import HandOver
from actors.loops import Background
from actors.owned import OwnedPartitions
from actors.shard_rpc import ShardRpc
from engine import queries
from engine.answers import Answers
from engine.catalog import Catalog, Clusters, Membership
from engine.clusters import ClusterAssigner
from engine.decision import Decider
from engine.keys import partition_of
from engine.learning import Learner
from engine.partition import PartitionState
from engine.pii import PiiSealer
from engine.runtime import CatalogRuntime
from engine.segments import SegmentIndex
from engine.shard import ShardState
from headstart.adapters.assignment import control_bucket, load_assignment
from headstart.adapters.broker import connect_nats
from headstart.adapters.catalog_store import CatalogStore, StoredVersion, Watch
from headstart.adapters.checkpoints import NatsCheckpointStore
from headstart.adapters.lean_nats import LeanClient
from headstart.adapters.membership import CLUSTERS_KEY, ChangePublisher, ClusterTrainer, cluster_listener
from headstart.adapters.merge import PolicyMerger, learn_bucket, register_layout
from headstart.adapters.shard_stats import (
    LearningStats,
    SegmentStats,
    ShardStats,
    encode_shard_stats,
)
from headstart.adapters.status import ensure_status_bucket
from headstart.adapters.topology import batch_subject
from headstart.settings import Settings

log = logging.getLogger(__name__)

NAMESPACE = "headstart"
#: The shard that trains the cluster model (every shard has number 0 at every size).
CLUSTER_TRAINING_SHARD = 0


def shard_name(shard_id: int) -> str:
    return f"hs-shard-{shard_id}"


class ShardNotReady(RuntimeError):
    """The shard is still starting (restoring or catching up with its stream)."""


@ray.remote(max_restarts=-1, max_task_retries=3)
class ShardActor:
    """Owns ``partitions``; applies their events from NATS; answers reads of its users.

    Example::

        shard = ShardActor.options(name=shard_name(0), namespace=NAMESPACE).remote(
            0, [0, 1], settings, nats_url)
        ray.get(shard.wait_ready.remote())
    """

    def __init__(
        self,
        shard_id: int,
        partitions: list[int],
        settings: Settings,
        nats_url: str,
        catalog: Catalog,
        catalog_version: int = 0,
    ) -> None:
        logging.basicConfig(level=logging.INFO)
        self.shard_id = shard_id
        self.settings = settings
        self.nats_url = nats_url
        # Partitions are taken in _start (restored, then consumed); until then there are none.
        self._initial_partitions = list(partitions)
        self.state = ShardState({})
        self.owned = OwnedPartitions(self.state)
        self.control: KeyValue | None = None
        self._status: KeyValue | None = None
        # Names are sealed in snapshots with the instance's secret (left out without one).
        secret = settings.secret.get_secret_value().encode() if settings.secret is not None else None
        self.sealer = PiiSealer(secret) if secret else None
        #: Everything derived from the served catalog version (decider, learner, answers, live
        #: segment index, the partitions' setup): read through this one reference, replaced in
        #: one synchronous step by :meth:`_switch`. ``catalog_version`` 0: static (a catalog
        #: given directly); N > 0: live, ``catalog`` is stored version N and the store is
        #: followed (see :meth:`_follow_catalog`).
        self.runtime = CatalogRuntime.build(catalog, catalog_version, seed=shard_id, sealer=self.sealer)
        self._live = catalog_version > 0
        self._catalog_watch: Watch | None = None
        self._catalog_store: CatalogStore | None = None
        self._learn_kv: KeyValue | None = None
        #: Catalog versions switched to since start.
        self.catalog_switches = 0
        self._switching = asyncio.Lock()
        self.merger: PolicyMerger | None = None
        self.change_publisher: ChangePublisher | None = None
        self.cluster_trainer: ClusterTrainer | None = None
        #: Events only (the consumers' deliveries); everything else goes over ``ctl``.
        self.nc: NATS | None = None
        #: Requests, checkpoints, assignment and status: a connection of their own, so a reply
        #: or an ack never waits behind megabytes of events in flight on the data connection.
        self.ctl: NATS | None = None
        self.started_at = time.time()
        self.ready = asyncio.Event()
        self.failure: BaseException | None = None
        self._batch_sub: Subscription | None = None
        self.background = Background()
        self.decision_log = DecisionLog(self.background.spawn)
        self.durability = Durability(self.owned, self.runtime.membership, settings.profile_retention_days)
        #: Decisions for this shard's users (the served runtime's engine.answers); the RPC
        #: handlers over it and the shard-wide queries (actors.shard_rpc).
        self.rpc = ShardRpc(
            shard_id,
            self.state,
            self.runtime.answers,
            self.owned.consumed,
            self.stats,
            self.durability.snapshot_through,
            self.decision_log.publish,
        )
        self.handover = HandOver(
            self._handover_settings(self.runtime),
            self.owned,
            self.durability,
            self.background,
            self._build_partition,
            self._on_rpc,
            self._report,
            self.ready,
        )
        # The constructor runs on the actor's event loop: start consuming now, on first creation
        # and after every restart alike.
        self._starting = asyncio.get_running_loop().create_task(self._start())

    # ------------------------------------------------------------------ the served catalog version

    @property
    def decider(self) -> Decider:
        return self.runtime.decider

    @property
    def learner(self) -> Learner:
        """The served policies: the merged statistics of every partition (headstart.adapters.merge)."""
        return self.runtime.learner

    @property
    def answers(self) -> Answers:
        return self.runtime.answers

    @property
    def segment_index(self) -> SegmentIndex | None:
        """Live segment membership: the tracked segments, shared by this shard's partitions."""
        return self.runtime.segment_index

    @property
    def membership(self) -> Membership:
        return self.runtime.membership

    @property
    def cluster_settings(self) -> Clusters:
        return self.runtime.clusters

    def _handover_settings(self, runtime: CatalogRuntime) -> Settings:
        # Dead letters redact the catalog's PII traits too, like a name.
        pii_fields = (*self.settings.pii_fields, *sorted(runtime.schema.pii_traits))
        return self.settings.model_copy(update={"pii_fields": pii_fields})

    def _build_partition(self, partition: int, snapshot: bytes | None) -> PartitionState:
        """A partition's state: restored from ``snapshot``, or empty without one."""
        return PartitionState.build(partition, snapshot, self.runtime.setup)

    def _switch(self, fresh: CatalogRuntime) -> None:
        """Serve ``fresh`` (a catalog version's runtime from :meth:`CatalogRuntime.prepare`)
        from now on, in one synchronous step: no request is answered between carrying state
        over, reconfiguring the partitions and swapping the runtime, so each is made wholly
        from one version. Learned and live state carry over (see
        :meth:`engine.runtime.CatalogRuntime.carried_from`); a failure leaves the served version
        as it was.
        """
        old = self.runtime
        runtime = fresh.carried_from(old)
        consumed = self.owned.consumed()
        marks = {p: part.checkpoint_mark() for p, part in consumed.items()}
        # The step allocates an object per open decision and segment change: a full collection
        # over a shard's heap in the middle of it doubled the pause (measured); one after it.
        gc.disable()
        try:
            runtime.serve(self.state.partitions, self.owned.learning)
        except Exception:
            for part in self.state.partitions.values():
                part.reconfigure(old.setup)  # back to the version served
            raise
        finally:
            gc.enable()
        held = False
        for p, part in consumed.items():
            if part.checkpoint_mark() != marks[p]:
                # New or changed segments were evaluated: like a sweep's, their changes cannot be
                # made again by replaying the stream, so they wait for a snapshot that holds them
                # (a crash before it re-evaluates from the old snapshot: same changes, same ids).
                self.durability.holds.at_least(p, part.checkpoint_mark())
                held = True
        self.runtime = runtime
        self.rpc.answers = runtime.answers
        if self.merger is not None:
            self.merger.learner = runtime.learner
        self.durability.membership = runtime.membership
        self.handover.settings = self._handover_settings(runtime)
        self.catalog_switches += 1
        log.info("shard %d serves catalog version %d", self.shard_id, runtime.version)
        if self.ready.is_set():
            self.background.spawn(self._after_switch(old, checkpoint=held))

    async def _after_switch(self, old: CatalogRuntime, checkpoint: bool) -> None:
        """What follows a switch off its critical path: the new feature layout registered (other
        processes read decisions logged in it by name), another cluster model trained when the
        ``clusters`` section changed, stats reported, and, when the switch made segment changes
        (they wait for a snapshot that holds them), a checkpoint. A switch that changed no
        partition's state needs none: a restart from an older snapshot evaluates the new
        version's segments again, to the same changes."""
        runtime = self.runtime
        try:
            if self.merger is not None and runtime.learner.layout.names != old.learner.layout.names:
                await register_layout(self.merger.kv, runtime.learner.layout)
            if runtime.clusters != old.clusters and self.shard_id == CLUSTER_TRAINING_SHARD:
                await self._open_cluster_trainer()
            await self._report()
            if checkpoint:
                await self.durability.checkpoint_logged()
        except Exception:  # the next report, publish and checkpoint catch up
            log.exception("shard %d: after switching to catalog version %d", self.shard_id, runtime.version)

    async def _open_cluster_trainer(self) -> None:
        """The trainer of the served catalog's clusters (None while they are off): a model of
        another ``k`` than the one published is trained from scratch, and until it is published
        the old one (of another ``k``) is ignored."""
        clusters = self.runtime.clusters
        if not clusters.enabled or self._learn_kv is None:
            self.cluster_trainer = None
            return
        self.cluster_trainer = await ClusterTrainer.open(self._learn_kv, clusters)

    async def _follow_catalog(self) -> None:
        """Live mode: serve the store's latest version if newer than the one served (a shard
        restarted by Ray, or killed while a version was pushed, comes back on the latest)."""
        assert self._catalog_store is not None
        latest = await self._catalog_store.latest()
        if latest is not None:
            await self._serve_version(latest)

    async def _on_catalog_version(self, version: StoredVersion) -> None:
        """A newer version stored (the store's watch): switch to it."""
        await self._serve_version(version)

    async def _serve_version(self, stored: StoredVersion) -> None:
        """Switch to ``stored`` if newer than the version served. Reading and compiling it run
        in a thread (about 10 ms of Python for the default catalog: on the event loop, every
        request in flight would wait for it); only the switch itself is on the loop."""
        async with self._switching:  # the watch and a start-up check may both deliver it
            if stored.version <= self.runtime.version:
                return
            try:
                fresh = await asyncio.to_thread(self._prepare, stored)
            except ValueError:
                # Stored valid, unreadable here (a newer Headstart's?): keep serving, say so.
                log.exception("shard %d cannot read catalog version %d", self.shard_id, stored.version)
                return
            self._switch(fresh)

    def _prepare(self, stored: StoredVersion) -> CatalogRuntime:
        return CatalogRuntime.prepare(
            stored.catalog(),
            stored.version,
            seed=self.shard_id,
            sealer=self.sealer,
            segments=self.runtime.segment_index,
        )

    async def _start(self) -> None:
        try:
            auth = self.settings.nats_auth()
            # The partitions' deliveries only: their headers are never read (see LeanClient).
            self.nc = await connect_nats(
                self.nats_url,
                auth,
                client=LeanClient,
                name=f"headstart-{shard_name(self.shard_id)}",
                max_reconnect_attempts=-1,
                reconnect_time_wait=0.5,
            )
            self.ctl = await connect_nats(
                self.nats_url,
                auth,
                name=f"headstart-{shard_name(self.shard_id)}-control",
                max_reconnect_attempts=-1,
                reconnect_time_wait=0.5,
            )
            js = self.ctl.jetstream()
            if self._live:
                # Before any partition is built: they are built with the version served.
                self._catalog_store = await CatalogStore.open(js, self.settings.stream_replicas)
                await self._follow_catalog()
            checkpoints = await NatsCheckpointStore.open(js, self.settings.stream_replicas)
            self.durability.open(checkpoints)
            self.control = await control_bucket(js, self.settings.stream_replicas)
            self._status = await ensure_status_bucket(js)
            learn_kv = self._learn_kv = await learn_bucket(js, self.settings.stream_replicas)
            # Always listened to: a later catalog version may turn clusters on.
            listeners = {CLUSTERS_KEY: cluster_listener(self._serve_clusters)}
            if self.shard_id == CLUSTER_TRAINING_SHARD:
                await self._open_cluster_trainer()
            self.change_publisher = ChangePublisher(js)
            self.merger = PolicyMerger(learn_kv, self.learner, self.owned.learning, listeners)
            self.handover.connect(self.nc, self.ctl, checkpoints, self.merger)
            self.decision_log.connect(js)
            # After a rescale the constructor's partitions are stale: the recorded assignment says
            # what this shard owns now (on a first start and after every restart alike).
            assignment, _ = await load_assignment(self.control)
            partitions = assignment.partitions_of(self.shard_id) if assignment else self._initial_partitions
            # The merged policy first: a new shard serves what all shards learned so far.
            await self.merger.start(self.runtime.merge_interval_s)
            await self.acquire(partitions)
            self._batch_sub = await self.ctl.subscribe(batch_subject(self.shard_id), cb=self._on_batch)
            self.ready.set()
            # Partitions restored under a newer catalog than their snapshots (segments evaluated
            # on restore) hold their changes until stored: now, not at the first interval.
            self.background.spawn(self.durability.checkpoint_logged())
            self.background.start(
                report=self._report,
                applied=lambda: self.state.applied,
                durability=self.durability,
                checkpoint_interval_s=self.settings.checkpoint_interval_s,
                owned=self.owned,
                publisher=self.change_publisher,
                sweep_interval_s=self.membership.sweep_interval_s,
                trainer=(lambda: self.cluster_trainer) if self.shard_id == CLUSTER_TRAINING_SHARD else None,
                clusters=lambda: self.cluster_settings,
            )
            if self._catalog_store is not None:
                # From the version served on: a version stored since _follow_catalog read the
                # latest is caught by the check right after (the watch only sees newer ones).
                self._catalog_watch = await self._catalog_store.watch(
                    self.runtime.version, self._on_catalog_version
                )
                await self._follow_catalog()
        except Exception as exc:
            self.failure = exc
            log.exception("shard %d failed to start", self.shard_id)

    async def wait_ready(self, timeout: float = 60.0) -> ShardStats:
        """Wait until the shard consumes (not necessarily caught up); return its stats.

        Raises the start-up error if starting failed, rather than waiting out the timeout.
        """
        await asyncio.wait_for(asyncio.wait([self._starting]), timeout)
        if self.failure is not None:
            raise ShardNotReady(f"shard {self.shard_id} failed to start: {self.failure!r}")
        return await self.stats()

    # ------------------------------------------------------------------ hand-over (actors.handover)

    async def acquire(
        self, partitions: list[int], snapshots: dict[int, bytes] | None = None
    ) -> dict[int, int]:
        """Take partitions over (see :meth:`actors.handover.HandOver.acquire`)."""
        return await self.handover.acquire(partitions, snapshots)

    async def prepare(self, positions: dict[int, int]) -> list[int]:
        """Create consumers ahead of a hand-over here (see :meth:`actors.handover.HandOver.prepare`)."""
        return await self.handover.prepare(positions)

    async def release(self, partitions: list[int]) -> dict[int, bytes]:
        """Stop consuming partitions; their snapshots (see :meth:`actors.handover.HandOver.release`)."""
        return await self.handover.release(partitions)

    async def forget(self, partitions: list[int]) -> dict[int, float]:
        """Drop released partitions (see :meth:`actors.handover.HandOver.forget`)."""
        return await self.handover.forget(partitions)

    async def positions(self, partitions: list[int]) -> dict[int, int]:
        """The last applied sequence of each of ``partitions`` this shard consumes."""
        return self.handover.positions(partitions)

    async def consuming_since(self, partitions: list[int]) -> dict[int, float]:
        """When this shard's consumer of each partition started pulling (wall clock)."""
        return self.handover.consuming_since(partitions)

    async def caught_up(self) -> bool:
        """True once every event stored in our partitions so far has been applied."""
        if not self.ready.is_set():
            return False
        return await self.lag() == 0

    def _require_ready(self) -> None:
        if not self.ready.is_set():
            if self.failure is not None:
                raise ShardNotReady(f"shard {self.shard_id} failed to start: {self.failure}")
            raise ShardNotReady(f"shard {self.shard_id} is starting")

    async def get_user(self, user_key: str, now: float | None = None) -> dict[str, Any] | None:
        """The live state of one user (by key), or None if this shard has never seen them."""
        self._require_ready()
        partition = partition_of(user_key, self.settings.partitions)
        return self.state.view(partition, user_key, time.time() if now is None else now)

    async def get_users(self, user_keys: list[str], now: float | None = None) -> list[dict[str, Any] | None]:
        """Batched :meth:`get_user`: one actor call for many users of this shard."""
        self._require_ready()
        at = time.time() if now is None else now
        n = self.settings.partitions
        return self.state.views(((partition_of(k, n), k) for k in user_keys), at)

    async def stats(self) -> ShardStats:
        consumers = [c.stats() for c in self.handover.consumers.values()]
        first = [c["first_handled_at"] for c in consumers if c["first_handled_at"]]
        restored = self.handover.restored_seqs
        durability = self.durability
        return ShardStats(
            shard=self.shard_id,
            pid=os.getpid(),
            node=ray.get_runtime_context().get_node_id(),
            partitions=self.owned.numbers(),
            users=self.state.users,
            applied=self.state.applied,
            records=self.state.records,
            ready=self.ready.is_set(),
            started_at=self.started_at,
            events_per_s=self.background.events_per_s,
            handled=sum(c["handled"] for c in consumers),
            dead_lettered=sum(c["dead_lettered"] for c in consumers),
            restarts=sum(c["restarts"] for c in consumers),
            first_handled_at=min(first, default=0.0),
            last_handled_at=max((c["last_handled_at"] for c in consumers), default=0.0),
            first_handled_cpu=min((c["first_handled_cpu"] for c in consumers if c["handled"]), default=0.0),
            last_handled_cpu=max((c["last_handled_cpu"] for c in consumers), default=0.0),
            positions={p: c["position"] for p, c in zip(self.handover.consumers, consumers, strict=False)},
            consumers={p: c["consumer"] for p, c in zip(self.handover.consumers, consumers, strict=False)},
            restored_partitions=len(restored),
            restored_through=dict(sorted(restored.items())),
            checkpoints=durability.checkpoint_count,
            checkpoint_max_pause_s=durability.checkpoint_max_pause_s,
            last_checkpoint_at=durability.last_checkpoint_at,
            learning=self._learning_stats(),
            segments=self._segment_stats(),
            events_without_consent=queries.events_without_consent(self.owned.consumed()),
            expired_profiles=durability.expired_profiles,
            retired_events=queries.retired_events(self.owned.consumed()),
            replayed_events=self.state.replayed,
            catalog_version=self.runtime.version,
        )

    def _learning_stats(self) -> LearningStats:
        counts: dict[str, int] = {}
        for learning in self.owned.learning().values():
            for name, value in learning.counts.items():
                counts[name] = counts.get(name, 0) + value
        learner = self.learner
        return LearningStats(
            policy=learner.policy_name,
            policy_version=learner.policy_version,
            shadow=learner.shadow_name,
            decisions_logged=self.decision_log.decisions_logged,
            decision_log_failures=self.decision_log.failures,
            exposures_logged=self.decision_log.exposures_logged,
            rewards_learned=learner.rewards,
            reward_sum=learner.reward_sum,
            drifts=learner.drift_counts(),
            feature_drifts=learner.feature_drifts,
            merges=self.merger.merges if self.merger is not None else 0,
            partitions=counts,
        )

    async def take_over_timings(self) -> list[dict[str, Any]]:
        """The last take-overs' steps (seconds each; ``entered_at`` is wall-clock time)."""
        return list(self.handover.acquire_timings)

    async def learned(self) -> dict[str, Any]:
        """What the served policies learned, per decision point: arms, and per arm the weighted
        count of rewards and their sum (the merged statistics this shard serves)."""
        return dict(msgspec.to_builtins(queries.learned(self.learner)))

    async def _on_rpc(self, msg: Msg) -> None:
        """A request on ``hs.rpc.<partition>.<method>``, answered on this event loop."""
        _, _, partition, method = msg.subject.split(".", 3)
        await msg.respond(await self.rpc.on_request(int(partition), method, msg.data))

    async def _on_batch(self, msg: Msg) -> None:
        """Several requests in one message (``hs.rpc.shard.<id>.batch``); replies in order."""
        await msg.respond(await self.rpc.on_batch(msg.data))

    # ------------------------------------------------------------------ durability (actors.durability)

    async def checkpoint(self) -> dict[str, Any]:
        """Snapshot every partition that changed since its last checkpoint; return what was done."""
        return await self.durability.checkpoint()

    async def sweep_segments(self, now: float | None = None) -> int:
        """Re-evaluate every user's time-based segments (see :meth:`Durability.sweep_segments`)."""
        return await self.durability.sweep_segments(now)

    async def expire_inactive(self) -> int:
        """Delete profiles inactive longer than ``profile_retention_days``; returns how many."""
        return await self.durability.expire_inactive()

    # ------------------------------------------------------------------ live segments

    def _serve_clusters(self, data: dict[str, Any]) -> None:
        """A published cluster model: assign users with it from now on."""
        clusters, index = self.cluster_settings, self.segment_index
        if not clusters.enabled or data.get("k") != clusters.k or index is None:
            return  # published under another catalog; the trainer replaces it
        index.assigner = ClusterAssigner.from_export(data)

    def _segment_stats(self) -> SegmentStats:
        tracked = [p.segments for p in self.owned.consumed().values() if p.segments is not None]
        publisher = self.change_publisher
        assigner = self.segment_index.assigner if self.segment_index is not None else None
        durability = self.durability
        return SegmentStats(
            changes=queries.change_counts(self.owned.consumed()),
            queued=sum(s.queued for s in tracked),
            dropped=sum(s.dropped for s in tracked),
            published=publisher.published if publisher is not None else 0,
            last_published_at=publisher.last_published_at if publisher is not None else 0.0,
            publish_failures=publisher.failures if publisher is not None else 0,
            sweeps=durability.sweeps,
            sweep_changes=durability.sweep_changes,
            last_sweep_s=durability.last_sweep_s,
            cluster_model_version=assigner.version if assigner is not None else 0,
            cluster_samples_learned=self.cluster_trainer.model.learned if self.cluster_trainer else 0,
        )

    async def _report(self) -> None:
        """Now, not at the next tick: on start and whenever the partitions owned change."""
        try:
            assert self._status is not None
            await self._status.put(f"shard-{self.shard_id}", encode_shard_stats(await self.stats()))
        except Exception as exc:  # noqa: BLE001 - status is best effort; events are not
            log.debug("status report failed: %s", exc)

    async def lag(self) -> int:
        """Events stored in our partitions and not yet delivered to us."""
        self._require_ready()
        return await self.handover.lag()

    async def stop(self, checkpoint: bool = True) -> None:
        """Stop consuming; by default write a final checkpoint so a restart replays nothing."""
        self.background.stop()
        if self._catalog_watch is not None:
            await self._catalog_watch.stop()
            self._catalog_watch = None
        if self.merger is not None:
            await self.merger.stop()
        if self._batch_sub is not None:
            await self._batch_sub.unsubscribe()
        self._batch_sub = None
        await self.handover.stop()
        if self.change_publisher is not None and self.ready.is_set():
            with contextlib.suppress(Exception):
                # Held sweep changes stay queued: the checkpoint below stores them.
                await self.change_publisher.flush(self.durability.publishable, force=True)
        if checkpoint and self.ready.is_set():
            await self.checkpoint()
            if self.merger is not None:
                with contextlib.suppress(Exception):
                    await self.merger.publish()
        if self.ctl is not None:
            # A stopped shard leaves `headstart status` now, not when its entry expires.
            with contextlib.suppress(Exception):
                assert self._status is not None
                await self._status.delete(f"shard-{self.shard_id}")
            await self.ctl.drain()
        if self.nc is not None:
            await self.nc.drain()
