"""The live catalog's store with a real nats-server: numbered immutable versions, compare-and-set,
validation, the experiment guard, the audit record and the watch."""

from __future__ import annotations

import asyncio
import copy
import json
import time
from typing import Any

import pytest
import yaml
from nats.aio.client import Client as NATS

from engine.catalog import DEFAULT_CATALOG
from headstart.adapters.catalog_store import (
    CatalogInvalid,
    CatalogStore,
    StoredVersion,
    VersionConflict,
    VersionNotFound,
)
from headstart.adapters.topology import AUDIT_STREAM, CATALOG_STREAM
from tests.conftest import reset_streams

pytestmark = pytest.mark.integration


def default_document() -> dict[str, Any]:
    document = yaml.safe_load(DEFAULT_CATALOG.read_text())
    assert isinstance(document, dict)
    return document


def with_welcome(document: dict[str, Any], text: str) -> dict[str, Any]:
    changed = copy.deepcopy(document)
    changed.setdefault("messages", {})["welcome"] = {"en": text}
    return changed


@pytest.fixture
async def store(nats_url: str, nc: NATS) -> CatalogStore:
    await reset_streams(nats_url)
    return await CatalogStore.open(nc.jetstream())


async def test_versions_are_numbered_from_one_and_kept_with_who_and_what(store: CatalogStore) -> None:
    assert await store.latest() is None
    first = await store.push(default_document(), who="admin:abc123")
    assert first.changed and first.stored.version == 1 and first.previous is None
    assert first.stored.summary == "first version"
    second = await store.push(
        with_welcome(default_document(), "Hi {{user_name}}"), who="admin:abc123", expected=1
    )
    assert second.stored.version == 2 and second.stored.summary == "messages: welcome changed"
    latest = await store.latest()
    assert latest is not None and latest.version == 2
    assert latest.document["messages"]["welcome"] == {"en": "Hi {{user_name}}"}
    assert (await store.get(1)).document == default_document()
    history = await store.history()
    assert [(v.version, v.who) for v in history] == [(1, "admin:abc123"), (2, "admin:abc123")]
    with pytest.raises(VersionNotFound):
        await store.get(3)


async def test_a_stale_expected_version_is_a_conflict_and_stores_nothing(store: CatalogStore) -> None:
    await store.push(default_document(), who="a")
    await store.push(with_welcome(default_document(), "one"), who="a", expected=1)
    with pytest.raises(VersionConflict) as raised:
        await store.push(with_welcome(default_document(), "two"), who="b", expected=1)
    assert raised.value.latest == 2
    assert await store.latest_number() == 2


async def test_concurrent_pushes_naming_the_same_version_store_exactly_one(store: CatalogStore) -> None:
    await store.push(default_document(), who="a")
    results = await asyncio.gather(
        *(store.push(with_welcome(default_document(), f"v{i}"), who="a", expected=1) for i in range(5)),
        return_exceptions=True,
    )
    stored = [r for r in results if not isinstance(r, BaseException)]
    assert len(stored) == 1 and all(isinstance(r, VersionConflict) for r in results if r not in stored)
    assert await store.latest_number() == 2


async def test_an_invalid_catalog_is_refused_with_every_problem(store: CatalogStore) -> None:
    await store.push(default_document(), who="a")
    bad = default_document()
    bad["flags"] = [{"id": "x", "rules": [{"segments": ["no_such_segment"]}]}]
    bad["consent_mode"] = "sometimes"
    with pytest.raises(CatalogInvalid) as raised:
        await store.push(bad, who="a", source="body")
    assert any("consent_mode" in e for e in raised.value.errors), raised.value.errors
    assert all(e.startswith("body: ") for e in raised.value.errors)
    assert await store.latest_number() == 1


async def test_same_content_and_dry_run_store_nothing(store: CatalogStore) -> None:
    await store.push(default_document(), who="a")
    same = await store.push(default_document(), who="a")
    assert not same.changed and same.stored.version == 1
    dry = await store.push(with_welcome(default_document(), "new"), who="a", dry_run=True)
    assert dry.dry_run and not dry.changed and dry.stored.version == 0
    assert dry.stored.summary == "messages: welcome changed"
    assert await store.latest_number() == 1


async def test_a_running_experiments_design_changes_only_when_forced(store: CatalogStore, nc: NATS) -> None:
    document = default_document()
    document["experiments"] = [
        {
            "id": "welcome_test",
            "salt": "s1",
            "arms": [{"id": "control"}, {"id": "short", "welcome": {"en": "Hi"}}],
        }
    ]
    await store.push(document, who="a")
    changed = copy.deepcopy(document)
    changed["experiments"][0]["salt"] = "s2"
    with pytest.raises(CatalogInvalid) as raised:
        await store.push(changed, who="a")
    assert "experiments.welcome_test" in raised.value.errors[0] and "salt" in raised.value.errors[0]
    forced = await store.push(changed, who="admin:k1", force=True)
    assert forced.stored.forced and forced.stored.version == 2
    described = copy.deepcopy(changed)
    described["experiments"][0]["description"] = "only the words changed"
    assert (await store.push(described, who="a")).stored.version == 3
    audit = await nc.jetstream().get_last_msg(AUDIT_STREAM, "hs.audit.catalog")
    record = json.loads(audit.data)
    assert record["what"] == "catalog" and record["version"] == 3 and record["who"] == "a"


async def test_rollback_stores_an_old_versions_content_as_a_new_version(store: CatalogStore) -> None:
    await store.push(default_document(), who="a")
    await store.push(with_welcome(default_document(), "changed"), who="a")
    back = await store.rollback(1, who="admin:k1")
    assert back.stored.version == 3 and back.stored.rollback_of == 1
    assert back.stored.fingerprint == (await store.get(1)).fingerprint


async def test_the_stream_refuses_to_delete_a_version(store: CatalogStore, nc: NATS) -> None:
    await store.push(default_document(), who="a")
    with pytest.raises(Exception, match="delete"):
        await nc.jetstream().delete_msg(CATALOG_STREAM, 1)


async def test_watch_gives_each_new_version_within_milliseconds(store: CatalogStore) -> None:
    await store.push(default_document(), who="a")
    seen: list[tuple[int, float]] = []

    async def on_version(version: StoredVersion) -> None:
        seen.append((version.version, time.monotonic()))

    watch = await store.watch(after=1, on_version=on_version)
    try:
        for i in range(3):
            started = time.monotonic()
            pushed = await store.push(with_welcome(default_document(), f"v{i}"), who="a")
            deadline = time.monotonic() + 5
            while not seen or seen[-1][0] != pushed.stored.version:
                assert time.monotonic() < deadline, seen
                await asyncio.sleep(0.005)
            assert seen[-1][1] - started < 1.0
        assert [v for v, _ in seen] == [2, 3, 4]
    finally:
        await watch.stop()


async def test_a_files_dates_and_the_same_json_body_are_one_version(store: CatalogStore) -> None:
    # yaml.safe_load gives datetimes; a JSON body gives ISO strings: the same content either way.
    document = default_document()
    document["experiments"] = [
        {
            "id": "dated",
            "salt": "s1",
            "arms": [{"id": "control"}, {"id": "short", "welcome": {"en": "Hi"}}],
            "start": yaml.safe_load("2026-01-01T00:00:00Z"),
        }
    ]
    first = await store.push(document, who="cli:k")
    as_json = json.loads(json.dumps(first.stored.document))
    again = await store.push(as_json, who="admin:k")
    assert not again.changed and again.stored.version == first.stored.version == 1
