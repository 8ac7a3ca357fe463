"""The deliveries of the served catalog's webhooks, kept in step with the live catalog.

One :class:`~headstart.web.webhooks.WebhookDelivery` runs per webhook of the catalog served.
When a new catalog version is stored, :meth:`WebhookSet.apply` compares its webhooks with the
running ones, by id:

- a new webhook starts delivering (changes from then on: its consumer starts at new messages);
- a removed one stops, and its durable consumer is deleted, so nothing keeps tracking it and a
  webhook added again later under the same id starts afresh rather than with a backlog;
- a changed one (URL, segments, batch, secret's variable...) is stopped and started again with
  its new config on the same durable consumer: no change is lost, the batch in flight is handed
  back at once (``nak``), and the ids delivered lately carry over so repeats are still skipped;
- an unchanged one keeps running untouched.

A webhook whose secret's environment variable is not set cannot sign: it is not started, and
its problem is reported in :meth:`WebhookSet.stats` (the other webhooks run).

Example::

    hooks = WebhookSet(nc)
    await hooks.apply(catalog.webhooks)                 # the catalog the instance started with
    watch = await hooks.follow(store, version=3)        # then every newer stored version
    ...
    await watch.stop()
    await hooks.stop()
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
from nats.aio.client import Client as NATS
from nats.js.errors import NotFoundError

from engine.catalog import Webhook
from engine.errors import ConfigError
from headstart.adapters.catalog_store import CatalogStore, StoredVersion, Watch
from headstart.adapters.topology import SEGMENTS_STREAM, webhook_consumer
from headstart.web.webhooks import WebhookDelivery, webhook_secret

log = logging.getLogger(__name__)

#: Pause before a delivery that failed unexpectedly runs again (not a tight loop on a bug).
RESTART_AFTER_S = 1.0


@dataclass
class WebhookChanges:
    """What one :meth:`WebhookSet.apply` did, by webhook id."""

    started: list[str] = field(default_factory=list)
    stopped: list[str] = field(default_factory=list)
    restarted: list[str] = field(default_factory=list)
    #: Webhooks of the catalog that could not start, with why.
    failed: dict[str, str] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.started or self.stopped or self.restarted or self.failed)


@dataclass
class _Running:
    delivery: WebhookDelivery
    task: asyncio.Task[None]


class WebhookSet:
    """One running delivery per webhook of the catalog served (see the module's docstring)."""

    def __init__(
        self,
        nc: NATS,
        secret_of: Callable[[Webhook], bytes] = webhook_secret,
        client_for: Callable[[Webhook], httpx.AsyncClient] | None = None,
    ) -> None:
        self.nc = nc
        self._secret_of = secret_of
        self._client_for = client_for
        self._running: dict[str, _Running] = {}
        #: Webhooks of the served catalog that are not running, with why.
        self.problems: dict[str, str] = {}
        #: The catalog version served (0: a catalog given directly, not followed).
        self.version = 0
        self._lock = asyncio.Lock()

    @property
    def deliveries(self) -> list[WebhookDelivery]:
        return [running.delivery for running in self._running.values()]

    def stats(self) -> list[dict[str, Any]]:
        """Each webhook's counters; one that could not start has its problem as ``last_error``."""
        stats = [d.stats() for d in self.deliveries]
        for hook_id, problem in self.problems.items():
            stats.append(
                {
                    "webhook": hook_id,
                    "delivered": 0,
                    "deliveries": 0,
                    "attempts_failed": 0,
                    "given_up": 0,
                    "last_error": problem,
                    "last_delivered_at": 0.0,
                }
            )
        return stats

    async def apply(self, hooks: Sequence[Webhook]) -> WebhookChanges:
        """Run exactly ``hooks``: start the new, stop the removed, restart the changed."""
        changes = WebhookChanges()
        wanted = {hook.id: hook for hook in hooks}
        for hook_id in [i for i in self._running if i not in wanted]:
            await self._stop(hook_id)
            await self._forget(hook_id)
            changes.stopped.append(hook_id)
        for hook_id in [i for i in self.problems if i not in wanted]:
            del self.problems[hook_id]
            await self._forget(hook_id)
        for hook in hooks:
            running = self._running.get(hook.id)
            if running is not None and running.delivery.hook == hook:
                continue
            seen = running.delivery.seen if running is not None else None
            if running is not None:
                await self._stop(hook.id)
            try:
                secret = self._secret_of(hook)
            except ConfigError as exc:
                # Its consumer is kept: once the variable is set and the webhook restarted, the
                # changes since are delivered.
                self.problems[hook.id] = str(exc)
                changes.failed[hook.id] = str(exc)
                log.error("webhook %s not started: %s", hook.id, exc)
                continue
            self.problems.pop(hook.id, None)
            client = self._client_for(hook) if self._client_for is not None else None
            delivery = WebhookDelivery(self.nc, hook, secret, client, seen=seen)
            self._running[hook.id] = _Running(delivery, asyncio.create_task(self._run(delivery)))
            (changes.restarted if running is not None else changes.started).append(hook.id)
        return changes

    async def serve(self, stored: StoredVersion) -> WebhookChanges:
        """Apply a stored version's webhooks, if it is newer than the one served."""
        async with self._lock:
            if stored.version <= self.version:
                return WebhookChanges()
            changes = await self.apply(stored.catalog().webhooks)
            self.version = stored.version
        if changes:
            log.info(
                "catalog version %d: webhooks started %s, stopped %s, restarted %s, failed %s",
                stored.version,
                changes.started,
                changes.stopped,
                changes.restarted,
                sorted(changes.failed),
            )
        return changes

    async def follow(self, store: CatalogStore, version: int) -> Watch:
        """Serve the store's latest version if newer than ``version`` (the one applied), then
        every newer one as it is stored."""
        self.version = max(self.version, version)
        # The watch first, then the read: a version stored in between wakes the watch, and
        # serve() skips what is already served.
        watch = await store.watch(after=self.version, on_version=self._on_version)
        latest = await store.latest()
        if latest is not None:
            await self.serve(latest)
        return watch

    async def _on_version(self, stored: StoredVersion) -> None:
        await self.serve(stored)

    async def stop(self) -> None:
        """Stop every delivery (their consumers are kept: a restart resumes them)."""
        for hook_id in list(self._running):
            await self._stop(hook_id)

    async def _run(self, delivery: WebhookDelivery) -> None:
        while True:
            try:
                await delivery.run()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("webhook %s stopped; restarting it", delivery.hook.id)
                await asyncio.sleep(RESTART_AFTER_S)

    async def _stop(self, hook_id: str) -> None:
        running = self._running.pop(hook_id)
        running.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running.task
        await running.delivery.client.aclose()

    async def _forget(self, hook_id: str) -> None:
        """Delete a removed webhook's durable consumer."""
        with contextlib.suppress(NotFoundError):
            await self.nc.jetstream().delete_consumer(SEGMENTS_STREAM, webhook_consumer(hook_id))
