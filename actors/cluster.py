"""Creating, finding and stopping the shard actors of one Headstart instance."""

from __future__ import annotations

import contextlib
import time
from typing import Any

import ray
from ray.actor import ActorHandle

from actors.shard import NAMESPACE, ShardActor, shard_name
from engine.catalog import DEFAULT_CATALOG, Catalog, load_catalog
from engine.keys import partition_of
from headstart.config import Settings


class ShardGroup:
    """The shards of one instance and the partition → shard map.

    Example::

        group = ShardGroup(settings, nats_url).start()
        group.wait_ready()
        ray.get(group.shard_for_key(key).get_user.remote(key))
    """

    def __init__(self, settings: Settings, nats_url: str, catalog: Catalog | None = None) -> None:
        self.settings = settings
        self.catalog = catalog or load_catalog(settings.catalog or DEFAULT_CATALOG)
        self.nats_url = nats_url
        self.shards: list[ActorHandle[Any]] = []
        self.owner = [settings.shard_of_partition(p) for p in range(settings.partitions)]

    def start(self) -> ShardGroup:
        """Create the shard actors (or attach to running ones of the same name)."""
        self.shards = [
            ShardActor.options(  # type: ignore[attr-defined]
                name=shard_name(i),
                namespace=NAMESPACE,
                lifetime="detached",
                get_if_exists=True,
                num_cpus=self.settings.shard_num_cpus,
            ).remote(i, self.settings.partitions_of_shard(i), self.settings, self.nats_url, self.catalog)
            for i in range(self.settings.shards)
        ]
        return self

    def wait_ready(self, timeout: float = 120.0) -> list[dict[str, Any]]:
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

    def stats(self) -> list[dict[str, Any]]:
        return list(ray.get([s.stats.remote() for s in self.shards]))

    def stop(self) -> None:
        """Stop consuming and remove the actors (their consumers are deleted with them)."""
        # A dead shard has nothing to stop; the kill below removes it either way.
        with contextlib.suppress(Exception):
            ray.get([s.stop.remote() for s in self.shards], timeout=30)
        for shard in self.shards:
            ray.kill(shard)
        self.shards = []
