"""Fixtures for the actor tests: a group of 2 shards on the session's Ray and a fresh stream."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from actors.cluster import ShardGroup
from headstart.config import Settings
from tests.conftest import TEST_PARTITIONS


@pytest.fixture
def group(ray_local: None, fresh_streams: str) -> Iterator[ShardGroup]:
    settings = Settings(partitions=TEST_PARTITIONS, shards=2, shard_num_cpus=0.25, fetch_batch=64)
    shards = ShardGroup(settings, fresh_streams).start()
    shards.wait_ready()
    try:
        yield shards
    finally:
        shards.stop()
