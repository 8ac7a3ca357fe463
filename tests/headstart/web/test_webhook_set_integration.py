"""Webhooks follow the live catalog, with a real nats-server, the real store and real HTTP
endpoints: a webhook added by a new version starts delivering, a changed one delivers with its
new config (nothing lost), a removed one stops (its consumer deleted), one whose secret is
missing is reported while the others run; no restart of anything."""

from __future__ import annotations

import asyncio
import copy
import time
from collections.abc import Iterator
from typing import Any

import httpx
import nats
import pytest
import yaml
from nats.js.errors import NotFoundError

from engine.catalog import DEFAULT_CATALOG, Webhook
from engine.errors import ConfigError
from engine.segments import SegmentChange, change_encoder
from headstart.adapters.catalog_store import CatalogStore
from headstart.adapters.topology import SEGMENTS_STREAM, changes_subject, webhook_consumer
from headstart.web.webhook_set import WebhookSet
from tests.conftest import reset_streams
from tests.headstart.web.test_webhooks_integration import Endpoint

pytestmark = pytest.mark.integration

SECRET = b"webhook-secret"


@pytest.fixture
def endpoints() -> Iterator[list[Endpoint]]:
    servers = [Endpoint(fail_first=0) for _ in range(3)]
    for server in servers:
        server.thread.start()
    try:
        yield servers
    finally:
        for server in servers:
            server.server.shutdown()
            server.server.server_close()


def with_webhooks(*hooks: dict[str, Any]) -> dict[str, Any]:
    document = yaml.safe_load(DEFAULT_CATALOG.read_text())
    document["webhooks"] = [copy.deepcopy(h) for h in hooks]
    assert isinstance(document, dict)
    return document


def secret_of(hook: Webhook) -> bytes:
    if hook.secret_env == "UNSET_SECRET":
        raise ConfigError(f"webhooks[{hook.id}].secret_env: environment variable UNSET_SECRET is not set")
    return SECRET


async def until(condition: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def consumer_exists(js: Any, hook_id: str) -> bool:
    try:
        await js.consumer_info(SEGMENTS_STREAM, webhook_consumer(hook_id))
    except NotFoundError:
        return False
    return True


async def test_webhooks_follow_new_catalog_versions(nats_url: str, endpoints: list[Endpoint]) -> None:
    a, b, c = endpoints
    await reset_streams(nats_url)
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    store = await CatalogStore.open(js)
    crm = {"id": "crm", "url": a.url, "secret_env": "CRM_SECRET", "changes": ["enter"]}
    first = await store.push(with_webhooks(crm), who="cli:test")
    hooks = WebhookSet(nc, secret_of=secret_of, client_for=lambda hook: httpx.AsyncClient(timeout=2))
    await hooks.apply(first.stored.catalog().webhooks)
    watch = await hooks.follow(store, first.stored.version)
    sent = 0

    async def publish(n: int) -> list[str]:
        """n enters, each a user of its own; their ids."""
        nonlocal sent
        batch = [
            SegmentChange(f"user{sent + i}", "power_user", "enter", 1000.0 + i, f"c{sent + i}", 0)
            for i in range(n)
        ]
        sent += n
        await js.publish(changes_subject(0), change_encoder.encode(batch))
        return [change.user_id for change in batch]

    try:
        for _ in range(100):
            if await consumer_exists(js, "crm"):
                break
            await asyncio.sleep(0.05)
        before = await publish(3)
        await until(lambda: len(a.delivered()) == 3)

        # Version 2: crm moves to endpoint b, audit is new (to c). No restart of anything.
        audit = {"id": "audit", "url": c.url, "secret_env": "AUDIT_SECRET"}
        pushed_at = time.monotonic()
        await store.push(with_webhooks({**crm, "url": b.url}, audit), who="cli:test", expected=1)
        await until(lambda: hooks.version == 2)
        assert time.monotonic() - pushed_at < 1.0  # the watch delivers within milliseconds
        assert sorted(d.hook.id for d in hooks.deliveries) == ["audit", "crm"]
        for _ in range(100):
            if await consumer_exists(js, "audit"):
                break
            await asyncio.sleep(0.05)
        after = await publish(2)
        await until(lambda: len(b.delivered()) == 2 and len(c.delivered()) == 2)
        assert [x["user_id"] for x in a.delivered()] == before  # the old address got nothing more
        assert [x["user_id"] for x in b.delivered()] == after
        assert [x["user_id"] for x in c.delivered()] == after

        # Version 3: audit removed (its consumer deleted); one with a missing secret is reported.
        broken = {"id": "broken", "url": a.url, "secret_env": "UNSET_SECRET"}
        await store.push(with_webhooks({**crm, "url": b.url}, broken), who="cli:test", expected=2)
        await until(lambda: hooks.version == 3)
        assert [d.hook.id for d in hooks.deliveries] == ["crm"]
        assert not await consumer_exists(js, "audit")
        problems = {s["webhook"]: s["last_error"] for s in hooks.stats()}
        assert "UNSET_SECRET is not set" in problems["broken"] and problems["crm"] == ""
        last = await publish(1)
        await until(lambda: len(b.delivered()) == 3)
        await asyncio.sleep(0.3)
        assert [x["user_id"] for x in b.delivered()][-1:] == last
        assert len(c.delivered()) == 2 and len(a.delivered()) == 3
    finally:
        await watch.stop()
        await hooks.stop()
        await nc.close()


async def test_a_changed_webhook_hands_its_batch_in_flight_back(
    nats_url: str, endpoints: list[Endpoint]
) -> None:
    """Restarted while its endpoint fails (retrying with backoff): the new config delivers the
    same changes at once, not after the consumer's ack wait."""
    down, up, _ = endpoints
    down.fail_first = 10**6
    await reset_streams(nats_url)
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    hooks = WebhookSet(nc, secret_of=secret_of, client_for=lambda hook: httpx.AsyncClient(timeout=2))
    hook = Webhook(id="crm", url=down.url, secret_env="CRM_SECRET", max_attempts=50)
    try:
        await hooks.apply([hook])
        for _ in range(100):
            if await consumer_exists(js, "crm"):
                break
            await asyncio.sleep(0.05)
        changes = [SegmentChange(f"user{i}", "power_user", "enter", 1.0, f"x{i}", 0) for i in range(2)]
        await js.publish(changes_subject(1), change_encoder.encode(changes))
        await until(lambda: len(down.requests) >= 1)
        started = time.monotonic()
        changed = await hooks.apply([hook.model_copy(update={"url": up.url})])
        assert changed.restarted == ["crm"]
        await until(lambda: len(up.delivered()) == 2)
        assert time.monotonic() - started < 5.0  # ack_wait is two minutes
        assert [x["user_id"] for x in up.delivered()] == ["user0", "user1"]
    finally:
        await hooks.stop()
        await nc.close()
