"""The feature layout registry in the real HS_LEARN bucket: every shard registers its layout
before it takes a partition, learns the others', and readers of the decisions log find them."""

from __future__ import annotations

import pytest
from nats.aio.client import Client as NATS

from engine.catalog import load_catalog
from engine.decision import Decider
from engine.features import BUILTIN_LAYOUT
from engine.learning import Learner
from headstart.adapters.merge import PolicyMerger, known_layouts, learn_bucket
from headstart.reports.evaluate import read_layouts
from tests.catalogs import CUSTOM_SCHEMA
from tests.engine.test_learning import learner_for

pytestmark = pytest.mark.integration


async def test_shards_register_their_layouts_and_readers_find_them(fresh_streams: str, nc: NATS) -> None:
    kv = await learn_bucket(nc.jetstream())
    assert await known_layouts(kv) == {}
    assert await read_layouts(fresh_streams) == {}
    catalog = load_catalog(CUSTOM_SCHEMA)
    custom = Learner(catalog, Decider(catalog))
    plain = learner_for()
    first = PolicyMerger(kv, custom, owned=dict)
    await first.start(interval_s=3600)
    second = PolicyMerger(kv, plain, owned=dict)
    await second.start(interval_s=3600)
    try:
        registered = {
            custom.layout.layout_id: custom.layout.names,
            BUILTIN_LAYOUT.layout_id: BUILTIN_LAYOUT.names,
        }
        assert await known_layouts(kv) == registered
        assert await read_layouts(fresh_streams) == registered
        # The shard started later learned the earlier one's layout from the bucket.
        assert plain.layouts[custom.layout.layout_id] == custom.layout.names
    finally:
        await first.stop()
        await second.stop()
