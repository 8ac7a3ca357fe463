"""Rule segments over a catalog's declared events, traits and context (the contract catalog)
with real NATS and Ray: custom events stored in ``HS_EVENTS`` move users in and out, and the
changes published on ``hs.segments.>`` replay to each user's live membership."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import nats
import pytest

from actors.cluster import ShardGroup
from engine.catalog import Catalog, load_catalog
from engine.events import encode_event
from engine.keys import Pseudonymizer
from engine.segments import batch_decoder
from headstart.adapters.streams import publish_prepared
from headstart.adapters.topology import SEGMENTS_STREAM, ingest_subject
from tests.actors.conftest import two_shards
from tests.catalogs import CUSTOM_SCHEMA

pytestmark = pytest.mark.integration

NOW = 1_767_600_000.0


def boards_catalog() -> Catalog:
    data = load_catalog(CUSTOM_SCHEMA).model_dump(by_alias=True)
    data["membership"] = {"track": True, "clock": "event", "sweep_interval_s": 0.5}
    return Catalog.model_validate(data)


@pytest.fixture
def boards_group(ray_local: None, fresh_streams: str) -> Iterator[ShardGroup]:
    with two_shards(fresh_streams, boards_catalog()) as shards:
        yield shards


async def store(url: str, pseudonymizer: Pseudonymizer, events: list[dict[str, Any]]) -> None:
    """The events as a producer stores them: pseudonymized keys, msgpack, deduplicated by id."""
    prepared = []
    for event in events:
        key = pseudonymizer.key(event["user_id"])
        prepared.append(
            (ingest_subject(key), encode_event({**event, "user_id": key}), {"Nats-Msg-Id": event["event_id"]})
        )
    conn = await nats.connect(url)
    try:
        await publish_prepared(conn.jetstream(), prepared)
    finally:
        await conn.close()


async def published_changes(url: str) -> list[Any]:
    conn = await nats.connect(url)
    try:
        js = conn.jetstream()
        total = (await js.stream_info(SEGMENTS_STREAM)).state.messages
        sub = await js.subscribe("hs.segments.>", ordered_consumer=True)
        out = []
        for _ in range(total):
            out += batch_decoder.decode((await sub.next_msg(timeout=5)).data)
        await sub.unsubscribe()
        return out
    finally:
        await conn.close()


def test_custom_events_traits_and_context_move_users_through_rule_segments_over_nats(
    boards_group: ShardGroup, fresh_streams: str, pseudonymizer: Pseudonymizer
) -> None:
    plans = {"ada": "pro", "bob": "free", "cy": "pro"}
    events: list[dict[str, Any]] = []

    def send(user: str, kind: str, **extra: Any) -> None:
        n = len(events)
        events.append({"event_id": f"e{n}", "user_id": user, "type": kind, "ts": NOW + n, **extra})

    for user, plan in plans.items():
        send(user, "session_started", context={"device_type": "desktop", "app_theme": "dark"})
        send(user, "profile_updated", props={"plan": plan, "seats": 10 if user == "ada" else 1})
    for _ in range(2):
        send("ada", "created_board", props={"template": "kanban"})
    send("bob", "created_board", props={"template": "blank"})
    send("bob", "connected_integration", props={"integration": "slack"})
    send("cy", "connected_integration", props={"integration": "github"})
    send("cy", "profile_updated", props={"plan": "enterprise"})  # leaves pro_plan
    asyncio.run(store(fresh_streams, pseudonymizer, events))
    boards_group.wait_caught_up(timeout=60)

    keys = {user: pseudonymizer.key(user) for user in plans}
    expected = {
        "ada": {"board_maker", "pro_plan", "dark_team"},
        "bob": {"slack_connected"},
        "cy": set(),
    }
    custom = {"board_maker", "slack_connected", "pro_plan", "dark_team"}
    deadline = time.monotonic() + 30
    while True:  # changes are published a moment after they are made
        changes = asyncio.run(published_changes(fresh_streams))
        replayed: dict[str, set[str]] = {key: set() for key in keys.values()}
        for change in changes:
            members = replayed[change.user_id]
            if change.change == "enter":
                members.add(change.segment)
            else:
                members.discard(change.segment)
        if all(replayed[keys[u]] & custom == expected[u] for u in plans) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    for user, key in keys.items():
        assert replayed[key] & custom == expected[user], user
    views = dict(zip(keys, boards_group.views(list(keys.values())), strict=True))
    for user, view in views.items():
        assert view is not None and set(view["segments"]) & custom == expected[user], user
        assert replayed[keys[user]] == set(view["segments"]), user  # published changes replay to it
    assert ("pro_plan", "exit") in {(c.segment, c.change) for c in changes if c.user_id == keys["cy"]}
    assert views["ada"]["custom_events"]["created_board"]["count"] == 2
