"""The webhook actor in live mode, on Ray with a real nats-server: started for a catalog
without webhooks, it follows the store: a version that adds one starts delivering (signed, to
a real endpoint), a webhook whose secret is not set is reported, a removed one stops."""

from __future__ import annotations

import asyncio
import copy
import time
from collections.abc import Callable, Iterator
from typing import Any

import nats
import pytest
import ray
import yaml
from nats.js.errors import NotFoundError

from actors.webhooks import start_webhooks
from engine.catalog import DEFAULT_CATALOG, load_catalog
from engine.segments import SegmentChange, change_encoder
from headstart.adapters.catalog_store import CatalogStore
from headstart.adapters.topology import SEGMENTS_STREAM, changes_subject, webhook_consumer
from tests.conftest import reset_streams
from tests.headstart.web.test_webhooks_integration import Endpoint

pytestmark = pytest.mark.integration

#: Set in every process Ray starts, so the actor can sign with it (a test has no other way to
#: give a secret to a worker started before it ran).
SECRET_ENV = "PATH"


@pytest.fixture
def endpoint() -> Iterator[Endpoint]:
    server = Endpoint(fail_first=0)
    server.thread.start()
    try:
        yield server
    finally:
        server.server.shutdown()
        server.server.server_close()


def document(*hooks: dict[str, Any]) -> dict[str, Any]:
    data = yaml.safe_load(DEFAULT_CATALOG.read_text())
    assert isinstance(data, dict)
    if hooks:
        data["webhooks"] = [copy.deepcopy(h) for h in hooks]
    return data


async def push(url: str, data: dict[str, Any]) -> int:
    nc = await nats.connect(url)
    try:
        result = await (await CatalogStore.open(nc.jetstream())).push(data, who="cli:test")
        return result.stored.version
    finally:
        await nc.close()


async def consumer_exists(url: str, hook_id: str) -> bool:
    nc = await nats.connect(url)
    try:
        await nc.jetstream().consumer_info(SEGMENTS_STREAM, webhook_consumer(hook_id))
    except NotFoundError:
        return False
    finally:
        await nc.close()
    return True


async def publish_enter(url: str, user: str) -> None:
    nc = await nats.connect(url)
    try:
        change = SegmentChange(user, "power_user", "enter", 1.0, f"id-{user}", 0)
        await nc.jetstream().publish(changes_subject(0), change_encoder.encode([change]))
    finally:
        await nc.close()


def until(condition: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_the_live_webhook_actor_follows_catalog_versions(
    ray_local: None, nats_url: str, endpoint: Endpoint
) -> None:
    asyncio.run(reset_streams(nats_url))
    first = asyncio.run(push(nats_url, document()))
    actor = start_webhooks(nats_url, load_catalog(DEFAULT_CATALOG), None, catalog_version=first)
    assert actor is not None  # live: started without webhooks, since a version may add some
    try:
        assert ray.get(actor.serving.remote()) == 1 and ray.get(actor.stats.remote()) == []
        crm = {"id": "crm", "url": endpoint.url, "secret_env": SECRET_ENV, "changes": ["enter"]}
        unset = {"id": "unset", "url": endpoint.url, "secret_env": "HS_TEST_SURELY_UNSET_SECRET"}
        pushed_at = time.monotonic()
        assert asyncio.run(push(nats_url, document(crm, unset))) == 2
        until(lambda: ray.get(actor.serving.remote()) == 2)
        assert time.monotonic() - pushed_at < 2.0
        stats = {s["webhook"]: s for s in ray.get(actor.stats.remote())}
        assert stats["crm"]["last_error"] == ""
        assert "HS_TEST_SURELY_UNSET_SECRET is not set" in stats["unset"]["last_error"]
        until(lambda: asyncio.run(consumer_exists(nats_url, "crm")))
        asyncio.run(publish_enter(nats_url, "user1"))
        until(lambda: len(endpoint.delivered()) == 1)
        assert endpoint.delivered()[0]["user_id"] == "user1"

        assert asyncio.run(push(nats_url, document())) == 3  # the webhooks removed again
        until(lambda: ray.get(actor.serving.remote()) == 3)
        assert ray.get(actor.stats.remote()) == []
        assert not asyncio.run(consumer_exists(nats_url, "crm"))
        asyncio.run(publish_enter(nats_url, "user2"))
        time.sleep(0.5)
        assert len(endpoint.delivered()) == 1
    finally:
        ray.get(actor.stop.remote(), timeout=10)
        ray.kill(actor)
