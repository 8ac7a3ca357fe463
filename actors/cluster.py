"""Creating, finding, rescaling and stopping the shard actors of one Headstart instance."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import ray
from nats.js.kv import KeyValue
from ray.actor import ActorHandle

from actors.shard import NAMESPACE, ShardActor, shard_name
from engine.catalog import DEFAULT_CATALOG, Catalog, load_catalog
from engine.keys import partition_of
from headstart.adapters.assignment import (
    Assignment,
    control_bucket,
    load_assignment,
    move_partitions,
    save_assignment,
)
from headstart.adapters.broker import connect_nats
from headstart.adapters.shard_stats import ShardStats
from headstart.settings import Settings

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Partitions handed over in one step (see ShardGroup.rescale).
MOVE_GROUP = 4


class ShardGroup:
    """The shards of one instance and the partition → shard map.

    Example::

        group = ShardGroup(settings, nats_url).start()
        group.wait_ready()
        ray.get(group.shard_for_key(key).get_user.remote(key))
        group.rescale(4)  # live: events keep flowing, decisions keep being served
    """

    def __init__(
        self,
        settings: Settings,
        nats_url: str,
        catalog: Catalog | None = None,
        catalog_version: int = 0,
        actor_options: dict[str, Any] | None = None,
    ) -> None:
        self.settings = settings
        #: 0: static, the shards serve ``catalog`` as given. N > 0: ``catalog`` is stored
        #: version N of the live catalog; the shards follow the store (serving its latest
        #: version when they start, and every newer one as it is stored).
        self.catalog_version = catalog_version
        #: Extra Ray options for every shard actor (e.g. a scheduling strategy).
        self.actor_options = actor_options or {}
        self.catalog = catalog or load_catalog(settings.catalog or DEFAULT_CATALOG)
        self.nats_url = nats_url
        self.shards: list[ActorHandle[Any]] = []
        self.assignment = Assignment.even(settings.partitions, settings.shards)

    @property
    def owner(self) -> list[int]:
        return self.assignment.owners

    def start(self) -> ShardGroup:
        """Create the shard actors, or attach to the running ones of this instance.

        A fresh start lays partitions out evenly over ``settings.shards``; attaching keeps the
        layout the running shards have (a ``headstart scale`` may have changed it).
        """
        try:
            ray.get_actor(shard_name(0), namespace=NAMESPACE)
            running = True
        except ValueError:
            running = False
        if running:
            self.assignment = self._control(load_assignment)[0] or self.assignment
        else:
            self._control(lambda kv: save_assignment(kv, self.assignment))
        self.shards = [self._actor(i) for i in range(self.assignment.shards)]
        if running:
            # Finish what an interrupted rescale left: every partition with its recorded owner
            # (acquire is idempotent; a partition already owned is left as it is).
            others = [
                [p for p in range(self.settings.partitions) if self.owner[p] != i]
                for i in range(len(self.shards))
            ]
            # A shard holding a partition recorded for another (a take-over whose record did not
            # land) stops consuming it first; then each recorded owner has every partition.
            ray.get([s.release.remote(others[i]) for i, s in enumerate(self.shards)])
            ray.get([s.acquire.remote(self.assignment.partitions_of(i)) for i, s in enumerate(self.shards)])
            ray.get([s.forget.remote(others[i]) for i, s in enumerate(self.shards)])
        return self

    def _actor(self, shard: int) -> ActorHandle[Any]:
        return ShardActor.options(  # type: ignore[attr-defined,no-any-return]
            name=shard_name(shard),
            namespace=NAMESPACE,
            lifetime="detached",
            get_if_exists=True,
            num_cpus=self.settings.shard_num_cpus,
            **self.actor_options,
        ).remote(
            shard,
            self.assignment.partitions_of(shard),
            self.settings,
            self.nats_url,
            self.catalog,
            self.catalog_version,
        )

    def _control(self, action: Callable[[KeyValue], Awaitable[T]]) -> T:
        async def run() -> T:
            nc = await connect_nats(
                self.nats_url, self.settings.nats_auth(), connect_timeout=5, max_reconnect_attempts=3
            )
            try:
                return await action(await control_bucket(nc.jetstream(), self.settings.stream_replicas))
            finally:
                await nc.close()

        return asyncio.run(run())

    def rescale(self, shards: int, timeout: float = 120.0) -> dict[str, Any]:
        """Move partitions so that ``shards`` shards own them evenly, live.

        New shards start empty. A move of a group of partitions from their old owner to their
        new one: the old owner releases them (stops consuming, snapshots them, keeps answering
        reads), the new owner is recorded (compare-and-set on the assignment entry) while it
        acquires them from the snapshots handed over and consumes from the sequence after each,
        and the old owner forgets them.
        Pairs of shards that share no shard move a group at once; shards left without partitions
        stop.
        Returns the moves and their pauses (release start → consuming again).

        This process drives the moves, not the loaded shards: each step is one call, and the
        record is written from here. If it dies midway, :meth:`start` (attaching) re-acquires
        every partition for its recorded owner, and a partition released but not yet recorded
        goes back to its old owner from the object store (an older snapshot, replayed forward).
        """
        if shards < 1:
            raise ValueError("shards must be at least 1")
        started = time.perf_counter()
        before = self._control(load_assignment)[0] or self.assignment
        after = before.moved_to(shards)
        self.assignment = before
        self.shards = [self._actor(i) for i in range(max(shards, before.shards))]
        ray.get([s.wait_ready.remote(timeout) for s in self.shards[before.shards :]], timeout=timeout + 5)
        pairs: dict[tuple[int, int], list[int]] = collections.defaultdict(list)
        for partition, (old, new) in enumerate(zip(before.owners, after.owners, strict=True)):
            if old != new:
                pairs[(old, new)].append(partition)
        # Moves go in groups of partitions: smaller groups keep each partition's pause short on a
        # loaded shard; pairs of shards in parallel (see _move_rounds) keep the rescale short.
        chunks = {
            pair: [ps[i : i + MOVE_GROUP] for i in range(0, len(ps), MOVE_GROUP)]
            for pair, ps in pairs.items()
        }
        moves = self._control(lambda kv: self._move_rounds(kv, chunks, before, timeout))
        retired = self.shards[shards:]
        with contextlib.suppress(Exception):
            ray.get([s.stop.remote() for s in retired], timeout=30)
        for shard in retired:
            ray.kill(shard)
        self.shards = self.shards[:shards]
        self.assignment = after
        report: dict[str, Any] = {
            "from": before.shards,
            "to": shards,
            "moves": moves,
            "moved_partitions": sum(len(m["partitions"]) for m in moves),
            "max_pause_s": max((m["pause_s"] for m in moves), default=0.0),
            "seconds": time.perf_counter() - started,
        }
        log.info(
            "rescaled %d -> %d shards: %d partitions moved", before.shards, shards, report["moved_partitions"]
        )
        return report

    async def _move_rounds(
        self,
        kv: KeyValue,
        chunks: dict[tuple[int, int], list[list[int]]],
        layout: Assignment,
        timeout: float,
    ) -> list[dict[str, Any]]:
        # Each round, a shard takes part in one move at most (as giver or taker): two moves on one
        # shard wait for each other's hold of its partitions (a take-over waited 0.5 s for the
        # lock, doubling a pause), so disjoint pairs move at once, the busiest pairs first.
        pending = {pair: list(groups) for pair, groups in chunks.items()}
        moves: list[dict[str, Any]] = []
        while any(pending.values()):
            busy: set[int] = set()
            batch = []
            for (old, new), groups in sorted(pending.items(), key=lambda item: -len(item[1])):
                if groups and old not in busy and new not in busy:
                    batch.append((old, new, groups.pop(0)))
                    busy.update((old, new))
            moves += await asyncio.wait_for(
                asyncio.gather(*(self._move(kv, old, new, group, layout) for old, new, group in batch)),
                timeout,
            )
        return moves

    async def _move(
        self, kv: KeyValue, old: int, new: int, partitions: list[int], layout: Assignment
    ) -> dict[str, Any]:
        # The new owner's consumers are created while the old owner still consumes: on a
        # saturated broker that took up to ~1 s, which is then not part of the pause.
        preparing = time.perf_counter()
        positions: dict[int, int] = await self.shards[old].positions.remote(partitions)
        await self.shards[new].prepare.remote(positions)
        started = time.perf_counter()
        snapshots: dict[int, bytes] = await self.shards[old].release.remote(partitions)
        released_at = time.perf_counter()
        moved = sorted(snapshots)

        async def timed(step: Awaitable[Any]) -> float:
            await step
            return time.perf_counter() - released_at

        # The new owner is recorded while it takes over, not before: on a loaded broker each
        # took up to ~1 s. If this process dies in between, attaching (start) hands every
        # partition back to its recorded owner, which releases it from the other first.
        record_s, acquire_s = await asyncio.gather(
            timed(move_partitions(kv, moved, new, layout)),
            timed(self.shards[new].acquire.remote(moved, snapshots)),
        )
        done = time.perf_counter()
        # Until now the old owner answered reads from the state it handed over.
        stopped: dict[int, float] = await self.shards[old].forget.remote(moved)
        consuming: dict[int, float] = await self.shards[new].consuming_since.remote(moved)
        observed = (released_at - started) + acquire_s
        # The partitions consumed by nobody: from the old owner's consumer stopping to the new
        # owner's pulling, as both shards saw it. Seen from here the same span also holds the
        # calls reaching the shards and their answers coming back (``observed_pause_s``).
        # Decisions are answered throughout (by the old owner until it forgets them).
        pauses = [consuming[p] - stopped[p] for p in moved if p in stopped and p in consuming]
        return {
            "from": old,
            "to": new,
            "partitions": moved,
            "pause_s": max(pauses) if pauses else observed,
            "observed_pause_s": observed,
            "move_s": done - preparing,
            "prepare_s": started - preparing,
            "release_s": released_at - started,
            "record_s": record_s,
            "acquire_s": acquire_s,
        }

    def wait_ready(self, timeout: float = 120.0) -> list[ShardStats]:
        return list(ray.get([s.wait_ready.remote(timeout) for s in self.shards], timeout=timeout + 5))

    def wait_caught_up(self, timeout: float = 120.0) -> None:
        """Block until every shard has applied everything stored in its partitions so far."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(ray.get([s.caught_up.remote() for s in self.shards])):
                return
            time.sleep(0.05)
        raise TimeoutError(f"shards not caught up after {timeout}s")

    def shard_for_key(self, user_key: str) -> ActorHandle[Any]:
        return self.shards[self.owner[partition_of(user_key, self.settings.partitions)]]

    def views(self, user_keys: list[str]) -> list[dict[str, Any] | None]:
        """Users' live state, in the order asked (one call per owning shard)."""
        by_shard: dict[int, list[str]] = {}
        for key in user_keys:
            by_shard.setdefault(self.owner[partition_of(key, self.settings.partitions)], []).append(key)
        found: dict[str, dict[str, Any] | None] = {}
        for shard, keys in by_shard.items():
            found.update(zip(keys, ray.get(self.shards[shard].get_users.remote(keys)), strict=True))
        return [found[key] for key in user_keys]

    def stats(self) -> list[ShardStats]:
        return list(ray.get([s.stats.remote() for s in self.shards]))

    def stop(self) -> None:
        """Stop consuming and remove the actors (their consumers are deleted with them)."""
        # A dead shard has nothing to stop; the kill below removes it either way.
        with contextlib.suppress(Exception):
            ray.get([s.stop.remote() for s in self.shards], timeout=30)
        for shard in self.shards:
            ray.kill(shard)
        self.shards = []
