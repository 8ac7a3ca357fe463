"""ShardActor: a Ray async actor that owns partitions, consumes them from NATS and serves reads.

The actor is thin on purpose: state and its rules are :class:`engine.shard.ShardState`, the
NATS loop is :class:`headstart.adapters.consumer.PartitionConsumer`. The actor starts itself from its
constructor, so a restart by Ray (``max_restarts``) resumes consumption with no driver
involved: there is no process between NATS and the shard.

Which partitions it owns comes from the recorded assignment (:mod:`headstart.adapters.assignment`) when
it starts, and changes live through :meth:`ShardActor.acquire`, :meth:`ShardActor.release` and
:meth:`ShardActor.forget`, driven by :meth:`actors.cluster.ShardGroup.rescale`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Coroutine
from typing import Any

import msgspec
import ray
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.kv import KeyValue

from actors.shard_rpc import ShardRpc
from engine import queries
from engine.answers import Answers, Logs
from engine.catalog import Catalog
from engine.clusters import ClusterAssigner
from engine.decision import Decider
from engine.experiments import encode_exposure
from engine.keys import partition_of
from engine.learning import Learner, PartitionLearning, encode_record
from engine.partition import CheckpointMark, PartitionSetup, PartitionState, snapshot_position
from engine.pii import PiiSealer
from engine.segments import SegmentIndex
from engine.shard import ShardState
from headstart.adapters.assignment import control_bucket, load_assignment
from headstart.adapters.broker import connect_nats
from headstart.adapters.checkpoints import NatsCheckpointStore
from headstart.adapters.consumer import PartitionConsumer, delete_stale_consumers
from headstart.adapters.membership import (
    CLUSTERS_KEY,
    ChangePublisher,
    ClusterTrainer,
    PublishHolds,
    cluster_listener,
    sweep_partition,
)
from headstart.adapters.merge import PolicyMerger, learn_bucket
from headstart.adapters.rpc import batch_subject, rpc_subject
from headstart.adapters.status import REPORT_EVERY_S, ensure_status_bucket
from headstart.adapters.streams import publish_prepared, record_subjects
from headstart.settings import Settings

log = logging.getLogger(__name__)

NAMESPACE = "headstart"
#: Feature adoptions a shard's recommenders learn per second at most (~10 µs each), in ticks.
RECO_TRAIN_PER_S = 2000
RECO_TRAIN_TICK_S = 0.1
#: How often the publisher looks at each partition's queued segment changes (see
#: :class:`headstart.adapters.membership.ChangePublisher`): a partition gone quiet has its changes sent
#: within two looks. Looking costs next to nothing; it bounds how late the last changes of a
#: burst are.
SEGMENT_FLUSH_S = 0.05
#: How often profiles past ``profile_retention_days`` are deleted.
EXPIRE_EVERY_S = 3600.0
#: The shard that trains the cluster model (every shard has number 0 at every size).
CLUSTER_TRAINING_SHARD = 0
#: The checkpoint mark of a partition with no snapshot stored (a handed-over one, until the
#: next checkpoint writes it): below every real mark.
NOT_STORED: CheckpointMark = (-1, 0, 0)


def _not_bound(seq: int, key: str, data: bytes) -> None:
    raise RuntimeError("a consumer delivered before its partition was restored")


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
        self, shard_id: int, partitions: list[int], settings: Settings, nats_url: str, catalog: Catalog
    ) -> None:
        logging.basicConfig(level=logging.INFO)
        self.shard_id = shard_id
        self.settings = settings
        self.nats_url = nats_url
        # Partitions are taken in _start (restored, then consumed); until then there are none.
        self._initial_partitions = list(partitions)
        self.state = ShardState({})
        self.checkpoints: NatsCheckpointStore | None = None
        self.control: KeyValue | None = None
        self._status: KeyValue | None = None
        # acquire/release change which partitions this shard owns, one call at a time.
        self._ownership_lock = asyncio.Lock()
        self.restored_seqs: dict[int, int] = {}
        self.acquire_timings: collections.deque[dict[str, Any]] = collections.deque(maxlen=64)
        #: Wall-clock instants of a move, per partition: when its consumer here stopped (old
        #: owner) and when its consumer here started pulling (new owner). Between the two, nobody
        #: consumed it: the pause a move costs, measured where it happens.
        self._stopped_at: dict[int, float] = {}
        self._consuming_since: dict[int, float] = {}
        #: Per partition, its :meth:`~engine.partition.PartitionState.checkpoint_mark` when last
        #: stored (last sequence first): a checkpoint skips a partition whose mark is the same.
        self._checkpointed: dict[int, CheckpointMark] = {}
        self.checkpoint_count = 0
        self.checkpoint_max_pause_s = 0.0
        self.last_checkpoint_at = 0.0
        self._checkpointer: asyncio.Task[None] | None = None
        self._checkpoint_lock = asyncio.Lock()
        #: Partitions whose segment changes wait for a stored snapshot (see
        #: :meth:`_store_before_publishing`).
        self._held_for_snapshot = PublishHolds()
        #: One sweep at a time (the timer's, or one asked for): a partition's sweep is one step
        #: for the snapshot that holds its changes.
        self._sweep_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[Any]] = set()
        self.decider = Decider(catalog)
        #: The served policies: the merged statistics of every partition (headstart.adapters.merge).
        self.learner = Learner(catalog, self.decider, seed=shard_id)
        self.merger: PolicyMerger | None = None
        self.merge_interval_s = catalog.learning.merge_interval_s
        self.decisions_logged = 0
        self.decision_log_failures = 0
        self.exposures_logged = 0
        self.personalize_by_default = catalog.consent_mode == "opt_out"
        #: Decisions for this shard's users (engine.answers); the RPC handlers over it and the
        #: shard-wide queries (actors.shard_rpc).
        self.answers = Answers(self.decider, self.learner, self.personalize_by_default)
        self.rpc = ShardRpc(
            shard_id,
            self.state,
            self.answers,
            self._consumed_partitions,
            self.stats,
            self._snapshot_through,
            self._publish_logs,
        )
        # Names are sealed in snapshots with the instance's secret (left out without one).
        secret = settings.secret.get_secret_value().encode() if settings.secret is not None else None
        self.sealer = PiiSealer(secret) if secret else None
        #: Live segment membership: the tracked segments, shared by this shard's partitions.
        self.segment_index = SegmentIndex(catalog) if catalog.membership.track else None
        self.membership = catalog.membership
        self.cluster_settings = catalog.clusters
        self.change_publisher: ChangePublisher | None = None
        self.cluster_trainer: ClusterTrainer | None = None
        self.sweeps = 0
        self.expired_profiles = 0
        self.sweep_changes = 0
        self.last_sweep_s = 0.0
        #: Events only (the consumers' deliveries); everything else goes over ``ctl``.
        self.nc: NATS | None = None
        #: Requests, checkpoints, assignment and status: a connection of their own, so a reply
        #: or an ack never waits behind megabytes of events in flight on the data connection.
        self.ctl: NATS | None = None
        self.consumers: dict[int, PartitionConsumer] = {}
        self.started_at = time.time()
        self.ready = asyncio.Event()
        self.failure: BaseException | None = None
        self._reporter: asyncio.Task[None] | None = None
        self._trainer: asyncio.Task[None] | None = None
        self._rate = 0.0
        self._rpc_subs: dict[int, Subscription] = {}
        #: Partitions handed over (no longer consumed here) that still answer reads until forgotten.
        self._released: set[int] = set()
        #: Consumers created ahead of a hand-over to this shard (see :meth:`prepare`).
        self._prepared: dict[int, PartitionConsumer] = {}
        self._batch_sub: Subscription | None = None
        self._membership_tasks: list[asyncio.Task[None]] = []
        # The constructor runs on the actor's event loop: start consuming now, on first creation
        # and after every restart alike.
        self._starting = asyncio.get_running_loop().create_task(self._start())

    async def _start(self) -> None:
        try:
            auth = self.settings.nats_auth()
            self.nc = await connect_nats(
                self.nats_url,
                auth,
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
            self.checkpoints = await NatsCheckpointStore.open(js, self.settings.stream_replicas)
            self.control = await control_bucket(js, self.settings.stream_replicas)
            self._status = await ensure_status_bucket(js)
            learn_kv = await learn_bucket(js, self.settings.stream_replicas)
            listeners = {}
            if self.cluster_settings.enabled:
                listeners[CLUSTERS_KEY] = cluster_listener(self._serve_clusters)
                if self.shard_id == CLUSTER_TRAINING_SHARD:
                    self.cluster_trainer = await ClusterTrainer.open(learn_kv, self.cluster_settings)
            self.change_publisher = ChangePublisher(js)
            self.merger = PolicyMerger(learn_kv, self.learner, self._owned_learning, listeners)
            # After a rescale the constructor's partitions are stale: the recorded assignment says
            # what this shard owns now (on a first start and after every restart alike).
            assignment, _ = await load_assignment(self.control)
            partitions = assignment.partitions_of(self.shard_id) if assignment else self._initial_partitions
            # The merged policy first: a new shard serves what all shards learned so far.
            await self.merger.start(self.merge_interval_s)
            await self.acquire(partitions)
            self._batch_sub = await self.ctl.subscribe(batch_subject(self.shard_id), cb=self._on_batch)
            self.ready.set()
            self._reporter = asyncio.create_task(self._report_forever())
            self._checkpointer = asyncio.create_task(self._checkpoint_forever())
            self._trainer = asyncio.create_task(self._train_recommenders_forever())
            self._membership_tasks = [
                asyncio.create_task(self._flush_segments_forever()),
                asyncio.create_task(self._sweep_segments_forever()),
                asyncio.create_task(self._expire_forever()),
            ]
            if self.cluster_trainer is not None:
                self._membership_tasks.append(asyncio.create_task(self._train_clusters_forever()))
        except Exception as exc:
            self.failure = exc
            log.exception("shard %d failed to start", self.shard_id)

    async def wait_ready(self, timeout: float = 60.0) -> dict[str, Any]:
        """Wait until the shard consumes (not necessarily caught up); return its stats.

        Raises the start-up error if starting failed, rather than waiting out the timeout.
        """
        await asyncio.wait_for(asyncio.wait([self._starting]), timeout)
        if self.failure is not None:
            raise ShardNotReady(f"shard {self.shard_id} failed to start: {self.failure!r}")
        return await self.stats()

    async def acquire(
        self, partitions: list[int], snapshots: dict[int, bytes] | None = None
    ) -> dict[int, int]:
        """Take partitions over; returns each new one's restored sequence. Idempotent.

        Cold start, recovery and a move are one path: each partition from its latest snapshot
        (or empty), consumed from the sequence after it, and answered for only once consuming.
        All partitions are restored and their consumers created before any of them pulls: the
        first partitions' events would otherwise slow the taking of the rest. ``snapshots``
        (from a hand-over) are used instead of the object store, and stored there afterwards.
        """
        handed = snapshots or {}
        steps = {"entered_at": time.time()}
        clock = time.perf_counter()

        def step(name: str) -> None:
            nonlocal clock
            now = time.perf_counter()
            steps[name] = now - clock
            clock = now

        async with self._ownership_lock, self._held():
            step("lock_s")
            # A partition released here and never taken by another (an interrupted move) resumes
            # from its state in memory, which is exactly as of its last applied sequence; it
            # still answers requests, so it needs only its consumer back.
            back = [p for p in partitions if p in self._released]
            self._released.difference_update(back)
            new = [p for p in partitions if p not in self.state.partitions]
            loaded = await asyncio.gather(*(self._snapshot(p, handed.get(p)) for p in new))
            step("load_s")
            # Each partition resumes right after its own last applied sequence, which a snapshot
            # gives without being restored: the consumers are created on the broker while the
            # states are rebuilt here (both take a few hundred ms on a loaded machine).
            positions = [snapshot_position(snap) for snap in loaded]
            positions += [self.state.partitions[p].last_seq for p in back]
            consuming = new + back
            creating = asyncio.gather(
                *(self._prepared_or_new_consumer(p, at) for p, at in zip(consuming, positions, strict=True))
            )
            assert self.ctl is not None
            await self.ctl.flush()  # the create requests are on the broker before the CPU work
            step("consumers_requested_s")
            parts = [self._restore(p, snap) for p, snap in zip(new, loaded, strict=True)]
            step("restore_s")
            for part in parts:
                self.state.partitions[part.partition] = part
                # A handed-over snapshot is not in the object store yet: the next checkpoint writes it.
                self._checkpointed[part.partition] = (
                    NOT_STORED if part.partition in handed else part.checkpoint_mark()
                )
                self._held_for_snapshot.drop(part.partition)  # restored: nothing to hold
            consumers = await creating
            step("consumers_s")
            for p, consumer in zip(consuming, consumers, strict=True):
                consumer.bind(self.state.partitions[p].apply_message)
                self.consumers[p] = consumer
            # After a start or a crash, consumers an earlier process left behind go (a move's old
            # owner deletes its own: no listing of every consumer on a loaded broker then).
            stale = {p: c.name for p, c in zip(consuming, consumers, strict=True) if p not in handed}
            if stale:
                self._background(delete_stale_consumers(self.ctl.jetstream(), stale))
            # Our own partitions live, instead of their published copies, before any applies.
            if self.merger is not None:
                self.merger.rebuild()
            step("rebuild_s")
            await asyncio.gather(*(consumer.pull() for consumer in consumers))
            step("pull_s")
            pulling_at = time.time()
            self._consuming_since.update(dict.fromkeys(consuming, pulling_at))
            assert self.ctl is not None
            subs = await asyncio.gather(
                *(self.ctl.subscribe(rpc_subject(p, "*"), cb=self._on_rpc) for p in new)
            )
            self._rpc_subs.update(zip(new, subs, strict=True))
            step("subscribe_s")
        if new:
            # Where a take-over's time goes (`headstart bench scale` reports them).
            self.acquire_timings.append({"partitions": new, **steps})
        if new and self.ready.is_set():
            self._background(self._report())  # not on the hand-over's critical path
        if handed.keys() & set(new):
            self._background(self._checkpoint_logged())
        return {part.partition: part.last_seq for part in parts}

    @contextlib.asynccontextmanager
    async def _held(self) -> AsyncIterator[None]:
        """Hold the partitions already consumed here while new ones are taken over.

        Their events wait the few milliseconds this takes (in order, nothing lost) rather than
        every step of the take-over waiting behind their events: on a shard draining a backlog
        the take-over took 0.5-1.5 s without this.
        """
        held = list(self.consumers.values())
        for consumer in held:
            consumer.hold()
        try:
            yield
        finally:
            for consumer in held:
                consumer.resume()

    async def _snapshot(self, partition: int, handed: bytes | None) -> bytes | None:
        assert self.checkpoints is not None
        return handed if handed is not None else await self.checkpoints.load(partition)

    def _restore(self, partition: int, snapshot: bytes | None) -> PartitionState:
        setup = PartitionSetup(
            learner=self.learner,
            segment_index=self.segment_index,
            experiment_plan=self.decider.experiments,
            consent_by_default=self.personalize_by_default,
            sealer=self.sealer,
        )
        part = PartitionState.build(partition, snapshot, setup)
        if snapshot:
            self.restored_seqs[partition] = part.last_seq
        return part

    def _background(self, work: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)  # a reference, or the task may be collected before it finishes
        task.add_done_callback(self._tasks.discard)

    def _owned_learning(self) -> dict[int, PartitionLearning]:
        """The learning state of the partitions this shard consumes (released ones are not ours)."""
        return {
            p: part.learning
            for p, part in self.state.partitions.items()
            if part.learning is not None and p not in self._released
        }

    async def _create_consumer(self, partition: int, position: int) -> PartitionConsumer:
        """A consumer of ``partition`` after ``position``, not pulling yet and without a handler
        until :meth:`PartitionConsumer.bind`; other consumers of the partition (an earlier
        owner's, a crashed one's) are deleted in the background."""
        assert self.nc is not None and self.ctl is not None
        consumer = PartitionConsumer(
            self.nc,
            partition=partition,
            handler=_not_bound,
            batch=self.settings.fetch_batch,
            replicas=self.settings.stream_replicas,
            control=self.ctl,
            pii_fields=self.settings.pii_fields,
        )
        await consumer.start(position, pull=False)
        return consumer

    async def positions(self, partitions: list[int]) -> dict[int, int]:
        """The last applied sequence of each of ``partitions`` this shard consumes."""
        return {
            p: self.state.partitions[p].last_seq
            for p in partitions
            if p in self.state.partitions and p not in self._released
        }

    async def prepare(self, positions: dict[int, int]) -> list[int]:
        """Create consumers for the partitions about to be handed here, each starting after its
        entry in ``positions`` (its owner's last applied sequence now), so that the take-over finds
        them ready: on a saturated broker creating one took up to ~1 s, which is then no part
        of the move's pause. The messages between a position and the handed snapshot's
        sequence are delivered and skipped (applied already, by sequence). They ask for
        nothing until taken over. Returns the partitions prepared."""
        todo = [p for p in positions if p not in self.state.partitions and p not in self._prepared]
        consumers = await asyncio.gather(*(self._create_consumer(p, positions[p]) for p in todo))
        self._prepared.update(zip(todo, consumers, strict=True))
        return todo

    async def _prepared_or_new_consumer(self, partition: int, position: int) -> PartitionConsumer:
        prepared = self._prepared.pop(partition, None)
        if prepared is not None:
            if prepared.position <= position:
                return prepared
            self._background(prepared.stop(delete=True))  # ahead of the snapshot: unusable
        return await self._create_consumer(partition, position)

    async def release(self, partitions: list[int]) -> dict[int, bytes]:
        """Stop consuming partitions and snapshot them, for a hand-over to another shard.

        Returns each released partition's snapshot, which records its last applied sequence:
        the next owner restores it and consumes from the sequence after, so nothing is lost or
        applied twice. Until :meth:`forget`, the released partitions keep answering reads from
        their state as of that sequence, so decisions do not wait for the move. Partitions this
        shard does not own (or already released) are ignored.
        """
        # The shard's other partitions wait meanwhile (as in acquire): on a saturated shard each
        # step would otherwise wait behind every partition's backlog (up to 1.5 s per release).
        async with self._ownership_lock, self._held():
            owned = [p for p in partitions if p in self.state.partitions and p not in self._released]
            stopping = [self.consumers.pop(p) for p in owned]
            await asyncio.gather(*(consumer.stop() for consumer in stopping))
            self._stopped_at.update(dict.fromkeys(owned, time.time()))
            for p, consumer in zip(owned, stopping, strict=True):
                # Deleted on the broker while the next owner takes over (not on the hand-over's
                # path: its own consumer has a new name).
                self._background(consumer.delete())
                self._released.add(p)
            # After every consumer stopped: each snapshot is final, and taken in one step.
            snapshots = {p: self.state.partitions[p].snapshot() for p in owned}
            if self.merger is not None:
                # What they learned, as of the hand-over: every shard (the next owner too) sees it.
                handed = {p: self.state.partitions[p].learning for p in owned}
                await self.merger.publish({p: lp for p, lp in handed.items() if lp is not None})
        if owned:
            self._background(self._report())
        return snapshots

    async def forget(self, partitions: list[int]) -> dict[int, float]:
        """Drop released partitions once their new owner consumes them; returns when each one's
        consumer here had stopped (wall clock)."""
        stopped = {p: self._stopped_at.pop(p) for p in partitions if p in self._stopped_at}
        async with self._ownership_lock:
            for p in [p for p in partitions if p in self._released]:
                # Drain, not unsubscribe: requests already delivered to us are answered.
                await self._rpc_subs.pop(p).drain()  # type: ignore[no-untyped-call]
                del self.state.partitions[p]
                self._released.discard(p)
                self._checkpointed.pop(p, None)
                self._held_for_snapshot.drop(p)  # its snapshot went to the new owner
                self.restored_seqs.pop(p, None)
            if self.merger is not None:
                self.merger.forget_partitions(partitions)
                self.merger.rebuild()
        await self._report()
        return stopped

    async def consuming_since(self, partitions: list[int]) -> dict[int, float]:
        """When this shard's consumer of each partition started pulling (wall clock)."""
        return {p: self._consuming_since[p] for p in partitions if p in self._consuming_since}

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

    async def stats(self) -> dict[str, Any]:
        consumers = [c.stats() for c in self.consumers.values()]
        first = [c["first_handled_at"] for c in consumers if c["first_handled_at"]]
        return {
            "shard": self.shard_id,
            "pid": os.getpid(),
            "node": ray.get_runtime_context().get_node_id(),
            "partitions": sorted(set(self.state.partitions) - self._released),
            "users": self.state.users,
            "applied": self.state.applied,
            "records": self.state.records,
            "ready": self.ready.is_set(),
            "started_at": self.started_at,
            "events_per_s": self._rate,
            "handled": sum(c["handled"] for c in consumers),
            "dead_lettered": sum(c["dead_lettered"] for c in consumers),
            "restarts": sum(c["restarts"] for c in consumers),
            "first_handled_at": min(first, default=0.0),
            "last_handled_at": max((c["last_handled_at"] for c in consumers), default=0.0),
            "first_handled_cpu": min(
                (c["first_handled_cpu"] for c in consumers if c["handled"]), default=0.0
            ),
            "last_handled_cpu": max((c["last_handled_cpu"] for c in consumers), default=0.0),
            "positions": {str(p): c["position"] for p, c in zip(self.consumers, consumers, strict=False)},
            "consumers": {str(p): c["consumer"] for p, c in zip(self.consumers, consumers, strict=False)},
            "restored_partitions": len(self.restored_seqs),
            "restored_through": {str(p): seq for p, seq in sorted(self.restored_seqs.items())},
            "checkpoints": self.checkpoint_count,
            "checkpoint_max_pause_s": self.checkpoint_max_pause_s,
            "last_checkpoint_at": self.last_checkpoint_at,
            "learning": self._learning_stats(),
            "segments": self._segment_stats(),
            "events_without_consent": self._without_consent(),
            "expired_profiles": self.expired_profiles,
        }

    def _without_consent(self) -> dict[str, int]:
        """Events of users without analytics consent, counted by type and dropped."""
        counts: dict[str, int] = {}
        for part in self._consumed_partitions().values():
            for kind, n in part.anonymous.items():
                counts[kind] = counts.get(kind, 0) + n
        return counts

    def _learning_stats(self) -> dict[str, Any]:
        counts: dict[str, int] = {}
        for learning in self._owned_learning().values():
            for name, value in learning.counts.items():
                counts[name] = counts.get(name, 0) + value
        learner = self.learner
        return {
            "policy": learner.policy_name,
            "policy_version": learner.policy_version,
            "shadow": learner.shadow_name,
            "decisions_logged": self.decisions_logged,
            "decision_log_failures": self.decision_log_failures,
            "exposures_logged": self.exposures_logged,
            "rewards_learned": learner.rewards,
            "reward_sum": learner.reward_sum,
            "drifts": learner.drift_counts(),
            "feature_drifts": learner.feature_drifts,
            "merges": self.merger.merges if self.merger is not None else 0,
            "partitions": counts,
        }

    async def segment_sizes(self, now: float) -> dict[str, Any]:
        """Per segment, over every user this shard owns (:func:`engine.queries.segment_sizes`)."""
        sizes = await queries.segment_sizes(
            self._consumed_partitions(), self.decider, self.learner, now, self.shard_id
        )
        return dict(msgspec.to_builtins(sizes))

    async def tutorial_stats(self) -> dict[str, Any]:
        """Per tutorial, variant and segment (and ``all``): users who started and completed it."""
        return dict(
            msgspec.to_builtins(await queries.tutorial_stats(self._consumed_partitions(), self.shard_id))
        )

    async def profile_sample(self, size: int, now: float, seed: int = 0) -> dict[str, Any]:
        """Up to ``size`` users drawn at random: their numeric rule fields (for clustering)."""
        sample = queries.profile_sample(self._consumed_partitions(), size, now, self.shard_id, seed)
        return dict(msgspec.to_builtins(sample))

    async def take_over_timings(self) -> list[dict[str, Any]]:
        """The last take-overs' steps (seconds each; ``entered_at`` is wall-clock time)."""
        return list(self.acquire_timings)

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

    def _publish_logs(self, logs: Logs) -> None:
        """Publish what an answer logs (not on the reply's path): a decision that made a choice
        to its user's partition, where applying it opens its reward window, and to the
        decisions log; the user's first exposures to their partition (where applying one keeps
        one per user and experiment) and to HS_EXPOSURES."""
        record = logs.decision
        if record is not None:
            subjects = record_subjects(logs.partition, record.user_id, "decision")
            self._background(self._publish_record(subjects, encode_record(record), record.decision_id))
        for exposure in logs.exposures:
            subjects = record_subjects(logs.partition, exposure.user_id, "exposure")
            self._background(
                self._publish_record(
                    subjects,
                    encode_exposure(exposure),
                    f"{exposure.experiment}:{exposure.user_id}",
                    "exposure",
                )
            )

    async def experiment_moments(self, experiment: str, cuts: list[float]) -> dict[str, Any]:
        """Over the users of this shard exposed to ``experiment``: how many, the first exposure,
        and per metric and cut time the arms' sufficient statistics (see
        :func:`engine.queries.experiment_moments`)."""
        moments = await queries.experiment_moments(
            self._consumed_partitions(), self.decider.experiments, experiment, cuts, self.shard_id
        )
        return dict(msgspec.to_builtins(moments))

    async def _publish_record(
        self, subjects: tuple[str, str], data: bytes, decision_id: str, kind: str = "decision"
    ) -> None:
        assert self.ctl is not None
        headers = {"Nats-Msg-Id": decision_id}
        try:
            await publish_prepared(self.ctl.jetstream(), [(subject, data, headers) for subject in subjects])
            if kind == "exposure":
                self.exposures_logged += 1
            else:
                self.decisions_logged += 1
        except Exception as exc:  # noqa: BLE001 - the decision was served; only its learning is lost
            self.decision_log_failures += 1
            log.warning("%s log publish failed: %s", kind, type(exc).__name__)

    async def checkpoint(self) -> dict[str, Any]:
        """Snapshot every partition that changed since its last checkpoint; return what was done.

        Each snapshot is taken in one synchronous step on the event loop, so it is consistent
        with the sequence it records; events wait only for that step (the measured pause), not
        for the upload.
        """
        assert self.checkpoints is not None
        written, pauses = 0, []
        async with self._checkpoint_lock:
            for partition, part in list(self.state.partitions.items()):
                if partition in self._released:
                    continue  # handed over: its new owner writes it
                stored = self._checkpointed.get(partition)
                if stored is not None and part.checkpoint_mark() == stored:
                    self._held_for_snapshot.stored(partition, stored)  # what is held is stored
                    continue
                pauses.append(await self._save(part))
                written += 1
        if pauses:
            self.checkpoint_max_pause_s = max(self.checkpoint_max_pause_s, *pauses)
        self.checkpoint_count += written
        self.last_checkpoint_at = time.time()
        return {"written": written, "max_pause_s": max(pauses, default=0.0)}

    async def _snapshot_through(self, part: PartitionState, seq: int) -> bool:
        """Whether the stored snapshot of ``part`` is past ``seq``; writes one if it is applied
        but not yet snapshotted (an erasure waits for this)."""
        if part.last_seq < seq:
            return False
        if self._checkpointed.get(part.partition, NOT_STORED)[0] < seq:
            await self._save(part)
        return True

    async def _save(self, part: PartitionState) -> float:
        """Store a snapshot of ``part``; returns how long taking it paused the event loop."""
        assert self.checkpoints is not None
        started = time.perf_counter()
        mark, data, last_seq = part.checkpoint_mark(), part.snapshot(), part.last_seq
        pause = time.perf_counter() - started
        await self.checkpoints.save(part.partition, data, last_seq)
        self._checkpointed[part.partition] = mark
        self._held_for_snapshot.stored(part.partition, mark)
        return pause

    async def _checkpoint_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.checkpoint_interval_s)
            await self._checkpoint_logged()

    async def _checkpoint_logged(self) -> None:
        try:
            await self.checkpoint()
        except Exception:
            log.exception("checkpoint failed")

    async def _train_recommenders_forever(self) -> None:
        """Learn the partitions' queued feature adoptions in small batches between deliveries
        (see :mod:`engine.models`: too slow for the event path), at most
        :data:`RECO_TRAIN_PER_S` a second so a backlog of events drains first."""
        per_tick = max(1, int(RECO_TRAIN_PER_S * RECO_TRAIN_TICK_S))
        while True:
            await asyncio.sleep(RECO_TRAIN_TICK_S)
            budget = per_tick
            for learning in list(self._owned_learning().values()):
                budget -= learning.recommender.train(min(budget, 64))
                if budget <= 0:
                    break
                await asyncio.sleep(0)

    # ------------------------------------------------------------------ live segments

    def _consumed_partitions(self) -> dict[int, PartitionState]:
        return {p: part for p, part in self.state.partitions.items() if p not in self._released}

    def _publishable_partitions(self) -> dict[int, PartitionState]:
        return self._held_for_snapshot.publishable(self._consumed_partitions())

    async def _flush_segments_forever(self) -> None:
        assert self.change_publisher is not None
        while True:
            await asyncio.sleep(SEGMENT_FLUSH_S)
            try:
                await self.change_publisher.flush(self._publishable_partitions)
            except Exception:
                log.exception("segment change flush failed")

    async def sweep_segments(self, now: float | None = None) -> int:
        """Re-evaluate every user's time-based segments (as of ``now``: by default the wall
        clock, or each partition's newest event time with ``membership.clock: event``)."""
        async with self._sweep_lock:
            started = time.perf_counter()
            changes = 0
            for part in list(self._consumed_partitions().values()):
                at = (
                    now
                    if now is not None
                    else (time.time() if self.membership.clock == "wall" else part.watermark)
                )
                changes += await self._sweep_durably(part, at)
        self.sweeps += 1
        self.sweep_changes += changes
        self.last_sweep_s = time.perf_counter() - started
        return changes

    async def _sweep_durably(self, part: PartitionState, at: float) -> int:
        """Sweep one partition; what it changed is published once a snapshot holds it (see
        :meth:`_store_before_publishing`)."""
        held = self._held_for_snapshot
        was_held = held.begin(part.partition)  # nothing goes out until it is done and stored
        try:
            changes = await sweep_partition(part, at)
        except BaseException:
            held.until(part.partition, part.checkpoint_mark())  # for the next checkpoint
            raise
        if changes or was_held:
            await self._store_before_publishing(part)
        else:
            held.drop(part.partition)
        return changes

    async def _store_before_publishing(self, part: PartitionState) -> None:
        """Store a snapshot of ``part`` (just changed by a sweep or an expiry) before its queued
        segment changes are published.

        An event's changes are made again, under the same ids, by replaying the event after a
        crash; a sweep's or an expiry's are not (the next one runs at another time). So they
        wait until a stored snapshot holds them: a crash before that loses nothing published
        (the next sweep or expiry makes them), a crash after it publishes them from the
        restored outbox, under their ids. If storing fails they wait for the next checkpoint.
        """
        p = part.partition
        if self.checkpoints is None or p in self._released:
            self._held_for_snapshot.drop(p)
            return
        self._held_for_snapshot.until(p, part.checkpoint_mark())
        try:
            async with self._checkpoint_lock:
                await self._save(part)
        except Exception:
            log.exception("snapshot of partition %d failed; its changes wait for the next checkpoint", p)

    async def _sweep_segments_forever(self) -> None:
        while True:
            await asyncio.sleep(self.membership.sweep_interval_s)
            try:
                await self.sweep_segments()
            except Exception:
                log.exception("segment sweep failed")

    async def expire_inactive(self) -> int:
        """Delete profiles inactive longer than ``profile_retention_days``; returns how many."""
        max_inactive_s = self.settings.profile_retention_days * 86400
        expired = 0
        for part in list(self._consumed_partitions().values()):
            forgotten = part.expire_inactive(max_inactive_s)
            if forgotten:  # stored now: their exits go out only once nothing brings them back
                await self._store_before_publishing(part)
            expired += forgotten
        self.expired_profiles += expired
        return expired

    async def _expire_forever(self) -> None:
        while True:
            await asyncio.sleep(EXPIRE_EVERY_S)
            try:
                await self.expire_inactive()
            except Exception:
                log.exception("profile expiry failed")

    async def _train_clusters_forever(self) -> None:
        """Learn sampled users at ``clusters.train_per_s`` at most; publish the model on schedule."""
        trainer = self.cluster_trainer
        assert trainer is not None
        per_tick = max(1, int(self.cluster_settings.train_per_s * RECO_TRAIN_TICK_S))
        next_publish = time.monotonic() + self.cluster_settings.publish_interval_s
        while True:
            await asyncio.sleep(RECO_TRAIN_TICK_S)
            trainer.train(self._consumed_partitions(), per_tick)
            if time.monotonic() >= next_publish:
                next_publish = time.monotonic() + self.cluster_settings.publish_interval_s
                try:
                    await trainer.publish()
                except Exception:
                    log.exception("cluster model publish failed; retrying at the next interval")

    def _serve_clusters(self, data: dict[str, Any]) -> None:
        """A published cluster model: assign users with it from now on."""
        if data.get("k") != self.cluster_settings.k or self.segment_index is None:
            return  # published under another catalog; the trainer replaces it
        self.segment_index.assigner = ClusterAssigner.from_export(data)

    def _change_counts(self) -> dict[str, list[int]]:
        """Entries and exits per segment over the partitions this shard consumes."""
        counts: dict[str, list[int]] = {}
        for part in self._consumed_partitions().values():
            if part.segments is not None:
                for segment, (entered, exited) in part.segments.counts().items():
                    entry = counts.setdefault(segment, [0, 0])
                    entry[0] += entered
                    entry[1] += exited
        return counts

    def _segment_stats(self) -> dict[str, Any]:
        counts = self._change_counts()
        tracked = [p.segments for p in self._consumed_partitions().values() if p.segments is not None]
        queued = sum(s.queued for s in tracked)
        dropped = sum(s.dropped for s in tracked)
        publisher = self.change_publisher
        assigner = self.segment_index.assigner if self.segment_index is not None else None
        return {
            "changes": counts,
            "queued": queued,
            "dropped": dropped,
            "published": publisher.published if publisher is not None else 0,
            "last_published_at": publisher.last_published_at if publisher is not None else 0.0,
            "publish_failures": publisher.failures if publisher is not None else 0,
            "sweeps": self.sweeps,
            "sweep_changes": self.sweep_changes,
            "last_sweep_s": self.last_sweep_s,
            "cluster_model_version": assigner.version if assigner is not None else 0,
            "cluster_samples_learned": self.cluster_trainer.model.learned if self.cluster_trainer else 0,
        }

    async def _report_forever(self) -> None:
        """Publish stats for `headstart status` every second (NATS only: no Ray driver needed)."""
        last_applied, last_time = self.state.applied, time.monotonic()
        while True:
            await self._report()
            await asyncio.sleep(REPORT_EVERY_S)
            applied, now = self.state.applied, time.monotonic()
            self._rate = (applied - last_applied) / max(now - last_time, 1e-9)
            last_applied, last_time = applied, now

    async def _report(self) -> None:
        """Now, not at the next tick: on start and whenever the partitions owned change."""
        try:
            assert self._status is not None
            await self._status.put(f"shard-{self.shard_id}", json.dumps(await self.stats()).encode())
        except Exception as exc:  # noqa: BLE001 - status is best effort; events are not
            log.debug("status report failed: %s", exc)

    async def lag(self) -> int:
        """Events stored in our partitions and not yet delivered to us."""
        self._require_ready()
        return sum(await asyncio.gather(*(c.lag() for c in self.consumers.values())))

    async def stop(self, checkpoint: bool = True) -> None:
        """Stop consuming; by default write a final checkpoint so a restart replays nothing."""
        for task in (self._reporter, self._checkpointer, self._trainer, *self._membership_tasks):
            if task is not None:
                task.cancel()
        if self.merger is not None:
            await self.merger.stop()
        for sub in [*self._rpc_subs.values(), self._batch_sub]:
            if sub is not None:
                await sub.unsubscribe()
        self._rpc_subs, self._batch_sub = {}, None
        for consumer in self.consumers.values():
            await consumer.stop()
        for consumer in self._prepared.values():  # a hand-over that never came
            await consumer.stop(delete=True)
        self._prepared = {}
        if self.change_publisher is not None and self.ready.is_set():
            with contextlib.suppress(Exception):
                # Held sweep changes stay queued: the checkpoint below stores them.
                await self.change_publisher.flush(self._publishable_partitions, force=True)
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
