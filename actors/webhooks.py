"""WebhookActor: delivers segment changes to the catalog's webhooks (:mod:`headstart.web.webhooks`).

A Ray actor of its own, so HTTP to someone else's endpoint never shares an event loop with a
shard; restarted by Ray if it dies, resuming from each webhook's durable JetStream consumer.
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
from headstart.adapters.status import REPORT_EVERY_S, WEBHOOKS_STATUS_KEY, ensure_status_bucket
from headstart.web.webhooks import WebhookDelivery, webhook_secret

log = logging.getLogger(__name__)

WEBHOOK_ACTOR = "hs-webhooks"


@ray.remote(max_restarts=-1, num_cpus=0.1)
class WebhookActor:
    """Runs one :class:`WebhookDelivery` per webhook of ``catalog``.

    Example::

        actor = WebhookActor.options(name=WEBHOOK_ACTOR).remote(nats_url, catalog)
        ray.get(actor.wait_ready.remote())
    """

    def __init__(self, nats_url: str, catalog: Catalog, auth: NatsAuth | None = None) -> None:
        logging.basicConfig(level=logging.INFO)
        self.nats_url = nats_url
        self.auth = auth
        self.catalog = catalog
        self.nc: NATS | None = None
        self.deliveries: list[WebhookDelivery] = []
        self._tasks: list[asyncio.Task[None]] = []
        # Secrets are read here, where deliveries are signed: a missing one fails the start.
        self._secrets = {hook.id: webhook_secret(hook) for hook in catalog.webhooks}
        self._starting = asyncio.get_running_loop().create_task(self._start())

    async def _start(self) -> None:
        self.nc = await connect_nats(
            self.nats_url, self.auth, name="headstart-webhooks", max_reconnect_attempts=-1
        )
        self.deliveries = [WebhookDelivery(self.nc, h, self._secrets[h.id]) for h in self.catalog.webhooks]
        self._tasks = [asyncio.create_task(self._run(d)) for d in self.deliveries]
        self._tasks.append(asyncio.create_task(self._report_forever()))

    async def _run(self, delivery: WebhookDelivery) -> None:
        while True:
            try:
                await delivery.run()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("webhook %s stopped; restarting it", delivery.hook.id)
                await asyncio.sleep(1.0)

    async def wait_ready(self, timeout: float = 30.0) -> list[dict[str, Any]]:
        await asyncio.wait_for(asyncio.shield(self._starting), timeout)
        return self.stats()

    def stats(self) -> list[dict[str, Any]]:
        return [d.stats() for d in self.deliveries]

    async def _report_forever(self) -> None:
        assert self.nc is not None
        kv = await ensure_status_bucket(self.nc.jetstream())
        while True:
            with contextlib.suppress(Exception):
                await kv.put(WEBHOOKS_STATUS_KEY, json.dumps(self.stats()).encode())
            await asyncio.sleep(REPORT_EVERY_S)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for delivery in self.deliveries:
            await delivery.client.aclose()
        if self.nc is not None:
            await self.nc.drain()


def start_webhooks(nats_url: str, catalog: Catalog, auth: NatsAuth | None = None) -> Any:
    """The webhook actor for ``catalog`` (None without webhooks), started and ready."""
    if not catalog.webhooks:
        return None
    actor = WebhookActor.options(  # type: ignore[attr-defined]
        name=WEBHOOK_ACTOR, namespace="headstart", get_if_exists=True
    ).remote(nats_url, catalog, auth)
    ray.get(actor.wait_ready.remote())
    return actor
