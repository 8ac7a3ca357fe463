"""The served view of the catalog without NATS: built whole from one version, replaced by a
newer one only, whatever order the switches finish in."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import msgspec
import yaml

from actors.ingress.live_catalog import LiveCatalog
from engine.catalog import DEFAULT_CATALOG, load_catalog
from headstart.adapters.catalog_store import StoredVersion
from tests.conftest import TEST_SECRET

DOCUMENT: dict[str, Any] = yaml.safe_load(DEFAULT_CATALOG.read_text())


def version(n: int, welcome: str, context_field: str | None = None) -> StoredVersion:
    document = copy.deepcopy(DOCUMENT)
    document["messages"]["welcome"]["en"] = welcome
    if context_field is not None:
        document["schema"] = {"context": {context_field: {"type": "string"}}}
    return StoredVersion(version=n, document=document, who="test", at=0.0, summary="", fingerprint=str(n))


def test_a_newer_version_replaces_the_whole_view_and_an_older_one_nothing() -> None:
    live = LiveCatalog(load_catalog(DEFAULT_CATALOG), 2, TEST_SECRET)
    first = live.view

    async def switches() -> list[bool]:
        return [
            await live.switch_to(version(1, "old")),
            await live.switch_to(version(3, "three", "app_theme")),
        ]

    assert asyncio.run(switches()) == [False, True]
    view = live.view
    assert view is not first and view.version == 3
    assert view.catalog.messages.welcome["en"] == "three" and view.decider.catalog is view.catalog
    assert "app_theme" in view.schema.context
    body = view.decide_decoder.decode(b'{"user_id": "u", "context": {"app_theme": "dark"}}')
    assert msgspec.structs.asdict(body.context)["app_theme"] == "dark"


def test_switches_finishing_out_of_order_keep_the_newest() -> None:
    live = LiveCatalog(load_catalog(DEFAULT_CATALOG), 1, TEST_SECRET)

    async def both() -> None:
        await asyncio.gather(live.switch_to(version(5, "five")), live.switch_to(version(4, "four")))

    asyncio.run(both())
    assert live.view.version == 5 and live.view.catalog.messages.welcome["en"] == "five"
