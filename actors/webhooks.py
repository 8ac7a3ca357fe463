"""WebhookActor: delivers segment changes to the catalog's webhooks (:mod:`headstart.web.webhooks`).

A Ray actor of its own, so HTTP to someone else's endpoint never shares an event loop with a
shard; restarted by Ray if it dies, resuming from each webhook's durable JetStream consumer.

Live (``catalog_version`` N > 0, what ``headstart up`` runs): the actor follows the stored
catalog itself (:meth:`headstart.web.webhook_set.WebhookSet.follow`): it serves the store's
latest version if newer than N, then every newer one, starting, stopping and restarting
deliveries without a restart of anything. The actor watches rather than being told by the
supervisor because Ray restarts it with the arguments it was first given: watching, a restarted
actor reads the latest version itself instead of delivering an old version's webhooks until
someone pushes again; and propagation then works like the shards' and the ingress's.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

import ray
from nats.aio.client import Client as NATS

from engine.catalog import Catalog
from headstart.adapters.broker import NatsAuth, connect_nats
from headstart.adapters.catalog_store import CatalogStore, Watch
from headstart.adapters.status import REPORT_EVERY_S, WEBHOOKS_STATUS_KEY, ensure_status_bucket
from headstart.web.webhook_set import WebhookSet
from headstart.web.webhooks import WebhookDelivery, webhook_secret

log = logging.getLogger(__name__)

WEBHOOK_ACTOR = "hs-webhooks"


@ray.remote(max_restarts=-1, num_cpus=0.1)
class WebhookActor:
    """Runs one :class:`WebhookDelivery` per webhook of the catalog served.

    Example::

        actor = WebhookActor.options(name=WEBHOOK_ACTOR).remote(nats_url, catalog, auth, 3)
        ray.get(actor.wait_ready.remote())
    """

    def __init__(
        self, nats_url: str, catalog: Catalog, auth: NatsAuth | None = None, catalog_version: int = 0
    ) -> None:
        logging.basicConfig(level=logging.INFO)
        self.nats_url = nats_url
        self.auth = auth
        self.catalog = catalog
        self.catalog_version = catalog_version
        self.nc: NATS | None = None
        self.hooks: WebhookSet | None = None
        self._watch: Watch | None = None
        self._tasks: list[asyncio.Task[None]] = []
        # The catalog the instance starts with is checked here: a secret missing from the
        # environment fails `headstart up` with its name. Later versions' are reported instead.
        for hook in catalog.webhooks:
            webhook_secret(hook)
        self._starting = asyncio.get_running_loop().create_task(self._start())

    async def _start(self) -> None:
        self.nc = await connect_nats(
            self.nats_url, self.auth, name="headstart-webhooks", max_reconnect_attempts=-1
        )
        self.hooks = WebhookSet(self.nc)
        await self.hooks.apply(self.catalog.webhooks)
        if self.catalog_version > 0:
            store = await CatalogStore.open(self.nc.jetstream())
            self._watch = await self.hooks.follow(store, self.catalog_version)
        self._tasks.append(asyncio.create_task(self._report_forever()))

    @property
    def deliveries(self) -> list[WebhookDelivery]:
        return self.hooks.deliveries if self.hooks is not None else []

    async def wait_ready(self, timeout: float = 30.0) -> list[dict[str, Any]]:
        await asyncio.wait_for(asyncio.shield(self._starting), timeout)
        return self.stats()

    def stats(self) -> list[dict[str, Any]]:
        return self.hooks.stats() if self.hooks is not None else []

    def serving(self) -> int:
        """The catalog version whose webhooks run (0: static)."""
        return self.hooks.version if self.hooks is not None else 0

    async def _report_forever(self) -> None:
        assert self.nc is not None
        kv = await ensure_status_bucket(self.nc.jetstream())
        while True:
            with contextlib.suppress(Exception):
                await kv.put(WEBHOOKS_STATUS_KEY, json.dumps(self.stats()).encode())
            await asyncio.sleep(REPORT_EVERY_S)

    async def stop(self) -> None:
        if self._watch is not None:
            await self._watch.stop()
        for task in self._tasks:
            task.cancel()
        if self.hooks is not None:
            await self.hooks.stop()
        if self.nc is not None:
            await self.nc.drain()


def start_webhooks(
    nats_url: str, catalog: Catalog, auth: NatsAuth | None = None, catalog_version: int = 0
) -> Any:
    """The webhook actor, started and ready. Static (``catalog_version`` 0): for ``catalog``'s
    webhooks, None without any. Live: always, since a later version may add webhooks."""
    if not catalog.webhooks and catalog_version == 0:
        return None
    actor = WebhookActor.options(  # type: ignore[attr-defined]
        name=WEBHOOK_ACTOR, namespace="headstart", get_if_exists=True
    ).remote(nats_url, catalog, auth, catalog_version)
    ray.get(actor.wait_ready.remote())
    return actor
