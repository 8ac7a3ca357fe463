"""A shard's background work: its seven ``*_forever`` loops, and one-off tasks off the hot path.

The loops are started together by :meth:`Background.start` (once the shard consumes) and
cancelled together by :meth:`Background.stop`; each one catches and logs its own failures, so
one failing does not stop the others.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from actors.durability import Durability
from actors.owned import OwnedPartitions
from engine.catalog import Clusters
from headstart.adapters.membership import ChangePublisher, ClusterTrainer
from headstart.adapters.status import REPORT_EVERY_S

log = logging.getLogger(__name__)

#: Feature adoptions a shard's recommenders learn per second at most, in ticks: assuming ~10 µs
#: per update, a few percent of the shard's core.
RECO_TRAIN_PER_S = 2000
RECO_TRAIN_TICK_S = 0.1
#: How often the publisher looks at each partition's queued segment changes (see
#: :class:`headstart.adapters.membership.ChangePublisher`): a partition gone quiet has its changes sent
#: within two looks. Looking costs next to nothing; it bounds how late the last changes of a
#: burst are.
SEGMENT_FLUSH_S = 0.05
#: How often profiles past ``profile_retention_days`` are deleted.
EXPIRE_EVERY_S = 3600.0


class Background:
    """The shard's tasks: named loops (started and stopped together) and one-off work.

    >>> async def demo() -> int:
    ...     background, done = Background(), []
    ...     async def work() -> None:
    ...         done.append(1)
    ...     background.spawn(work())
    ...     await asyncio.sleep(0)
    ...     return len(done)
    >>> asyncio.run(demo())
    1
    """

    def __init__(self) -> None:
        #: One-off tasks (a report, a checkpoint, consumer deletions): not cancelled by stop.
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loops: list[asyncio.Task[None]] = []
        #: Events applied per second, over the report loop's last interval.
        self.events_per_s = 0.0

    def spawn(self, work: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)  # a reference, or the task may be collected before it finishes
        task.add_done_callback(self._tasks.discard)

    def start(
        self,
        *,
        report: Callable[[], Awaitable[None]],
        applied: Callable[[], int],
        durability: Durability,
        checkpoint_interval_s: float,
        owned: OwnedPartitions,
        publisher: ChangePublisher,
        sweep_interval_s: float,
        trainer: Callable[[], ClusterTrainer | None] | None,
        clusters: Callable[[], Clusters],
    ) -> None:
        """Start every loop (the cluster training one only on the shard given a ``trainer``:
        what gives the trainer of the served catalog, None while its clusters are off)."""
        loops = [
            self._report_forever(report, applied),
            _checkpoint_forever(durability, checkpoint_interval_s),
            _train_recommenders_forever(owned),
            _flush_segments_forever(publisher, durability),
            _sweep_segments_forever(durability, sweep_interval_s),
            _expire_forever(durability),
        ]
        if trainer is not None:
            loops.append(_train_clusters_forever(trainer, owned, clusters))
        self._loops = [asyncio.create_task(loop) for loop in loops]

    def stop(self) -> None:
        """Cancel the loops (one-off tasks finish on their own)."""
        for task in self._loops:
            task.cancel()
        self._loops = []

    async def _report_forever(
        self, report: Callable[[], Awaitable[None]], applied: Callable[[], int]
    ) -> None:
        """Publish stats for `headstart status` every second (NATS only: no Ray driver needed)."""
        last_applied, last_time = applied(), time.monotonic()
        while True:
            await report()
            await asyncio.sleep(REPORT_EVERY_S)
            now_applied, now = applied(), time.monotonic()
            self.events_per_s = (now_applied - last_applied) / max(now - last_time, 1e-9)
            last_applied, last_time = now_applied, now


async def _checkpoint_forever(durability: Durability, interval_s: float) -> None:
    while True:
        await asyncio.sleep(interval_s)
        await durability.checkpoint_logged()


async def _train_recommenders_forever(owned: OwnedPartitions) -> None:
    """Learn the partitions' queued feature adoptions in small batches between deliveries
    (see :mod:`engine.models`: too slow for the event path), at most
    :data:`RECO_TRAIN_PER_S` a second so a backlog of events drains first."""
    per_tick = max(1, int(RECO_TRAIN_PER_S * RECO_TRAIN_TICK_S))
    while True:
        await asyncio.sleep(RECO_TRAIN_TICK_S)
        budget = per_tick
        for learning in list(owned.learning().values()):
            budget -= learning.recommender.train(min(budget, 64))
            if budget <= 0:
                break
            await asyncio.sleep(0)


async def _flush_segments_forever(publisher: ChangePublisher, durability: Durability) -> None:
    while True:
        await asyncio.sleep(SEGMENT_FLUSH_S)
        try:
            await publisher.flush(durability.publishable)
        except Exception:
            log.exception("segment change flush failed")


async def _sweep_segments_forever(durability: Durability, interval_s: float) -> None:
    while True:
        await asyncio.sleep(interval_s)
        try:
            await durability.sweep_segments()
        except Exception:
            log.exception("segment sweep failed")


async def _expire_forever(durability: Durability) -> None:
    while True:
        await asyncio.sleep(EXPIRE_EVERY_S)
        try:
            await durability.expire_inactive()
        except Exception:
            log.exception("profile expiry failed")


async def _train_clusters_forever(
    trainer_of: Callable[[], ClusterTrainer | None],
    owned: OwnedPartitions,
    clusters_of: Callable[[], Clusters],
) -> None:
    """Learn sampled users at ``clusters.train_per_s`` at most; publish the model on schedule.
    Both are read at every tick: a new catalog version may bring another trainer (another ``k``)."""
    next_publish = time.monotonic() + clusters_of().publish_interval_s
    while True:
        await asyncio.sleep(RECO_TRAIN_TICK_S)
        trainer, clusters = trainer_of(), clusters_of()
        if trainer is None:
            continue
        trainer.train(owned.consumed(), max(1, int(clusters.train_per_s * RECO_TRAIN_TICK_S)))
        if time.monotonic() >= next_publish:
            next_publish = time.monotonic() + clusters.publish_interval_s
            try:
                await trainer.publish()
            except Exception:
                log.exception("cluster model publish failed; retrying at the next interval")
