"""Fixtures for the actor tests: a group of 2 shards on the session's Ray and a fresh stream."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator

import httpx
import nats
import pytest

from actors.cluster import ShardGroup
from actors.serving import start_app, stop_app
from engine.catalog import Catalog
from headstart.adapters.broker import free_port
from headstart.adapters.key_store import KeyStore
from headstart.settings import Settings
from headstart.web.auth import key_hashes
from tests.conftest import TEST_IDENTITY_SECRET, TEST_PARTITIONS, TEST_SECRET, reset_streams


@contextlib.contextmanager
def two_shards(nats_url: str, catalog: Catalog | None = None) -> Iterator[ShardGroup]:
    """Two small shards on ``nats_url`` with ``catalog`` (None: the default), ready, then stopped."""
    settings = Settings(partitions=TEST_PARTITIONS, shards=2, shard_num_cpus=0.25, fetch_batch=64)
    shards = ShardGroup(settings, nats_url, catalog).start()
    shards.wait_ready()
    try:
        yield shards
    finally:
        shards.stop()


@pytest.fixture
def group(ray_local: None, fresh_streams: str) -> Iterator[ShardGroup]:
    with two_shards(fresh_streams) as shards:
        yield shards


async def seeded_keys(nats_url: str, keys: dict[str, str]) -> tuple[dict[str, list[str]], dict[str, float]]:
    """``keys`` seeded into the key store, and the store's keys as the runtime gives the ingress."""
    conn = await nats.connect(nats_url)
    try:
        accepted = await (await KeyStore.open(conn.jetstream())).seed(keys)
    finally:
        await conn.close()
    return accepted.hashes(time.time())


@contextlib.contextmanager
def serving(
    nats_url: str,
    catalog: Catalog,
    keys: dict[str, str],
    shard_num_cpus: float = 0.5,
    grpc_port: int | None = None,
    keys_in_store: bool = False,
    **overrides: object,
) -> Iterator[tuple[httpx.Client, ShardGroup]]:
    """Fresh streams, 2 shards and the Serve app with ``keys`` (and settings ``overrides``, e.g.
    ``identity_verification="required"``: user hashes under ``TEST_IDENTITY_SECRET``); an HTTP
    client once ready. ``keys_in_store``: ``keys`` seeded into the key store and the app given
    the store's keys, as ``headstart up`` does (else the app is handed ``keys`` and the store
    stays empty, so they stay the keys accepted)."""
    asyncio.run(reset_streams(nats_url))
    hashes, expiries = asyncio.run(seeded_keys(nats_url, keys)) if keys_in_store else (key_hashes(keys), {})
    settings = Settings(
        partitions=TEST_PARTITIONS, shards=2, shard_num_cpus=shard_num_cpus, port=free_port(), **overrides
    )
    group = ShardGroup(settings, nats_url, catalog).start()
    group.wait_ready()
    url = start_app(
        settings,
        nats_url,
        catalog,
        TEST_SECRET,
        hashes,
        grpc_port=grpc_port,
        identity_secret=TEST_IDENTITY_SECRET,
        key_expiries=expiries,
    )
    client = httpx.Client(base_url=url, timeout=10)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if client.get("/readyz").status_code == 200:
                break
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    try:
        yield client, group
    finally:
        client.close()
        stop_app()
        group.stop()
