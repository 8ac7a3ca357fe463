"""A product's own events, traits and context fields (issue 19) through every edge of a running
Headstart (real NATS, Ray, Serve; HTTP, gRPC, the Python publisher, the Segment API), with the
contract catalog: they reach the live profile, undeclared ones are refused or dead-lettered
with the declared types, PII traits stay out of dead letters, erasure and export cover them,
and a type the catalog later drops is skipped and counted."""

from __future__ import annotations

import asyncio
import base64
import shutil
import time
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import msgspec
import nats
import pytest
import ray
import yaml
from nats.aio.msg import Msg

from actors.cluster import ShardGroup
from actors.shard import NAMESPACE, shard_name
from engine.catalog import Catalog
from engine.errors import InvalidEvent
from engine.keys import Pseudonymizer, partition_of
from headstart.adapters.broker import free_port
from headstart.adapters.checkpoints import NatsCheckpointStore
from headstart.adapters.status import collect_status
from headstart.adapters.streams import EventPublisher
from headstart.adapters.topology import dead_letter_subject, ingest_subject
from headstart.protos import headstart_pb2 as pb
from headstart.protos import headstart_pb2_grpc as pb_grpc
from tests.actors.conftest import serving
from tests.catalogs import CUSTOM_SCHEMA
from tests.conftest import TEST_PARTITIONS, TEST_SECRET

pytestmark = pytest.mark.integration

KEYS = {"frontend": "boards-frontend-key", "admin": "boards-admin-key"}
FRONTEND = {"Authorization": f"Bearer {KEYS['frontend']}"}
ADMIN = {"Authorization": f"Bearer {KEYS['admin']}"}
BASIC = {"Authorization": "Basic " + base64.b64encode(f"{KEYS['frontend']}:".encode()).decode()}
GRPC_FRONTEND = [("authorization", f"Bearer {KEYS['frontend']}"), ("application", "headstart")]
PSEUDONYMIZER = Pseudonymizer(TEST_SECRET)
CUSTOM_TYPES = ("created_board", "connected_integration", "connected_slack", "invited_teammate")


def contract_catalog(drop_type: str | None = None) -> Catalog:
    """The contract catalog, plus a PII trait the default dead-letter redaction list does not
    name (the contract's ``phone`` is in that list anyway): its redaction comes from the
    catalog. ``drop_type``: that declared type removed (a later version of the catalog)."""
    data = yaml.safe_load(CUSTOM_SCHEMA.read_text())
    data["schema"]["traits"]["recovery_handle"] = {"type": "string", "pii": True}
    if drop_type is not None:
        del data["schema"]["events"][drop_type]
    return Catalog.model_validate(data)


CATALOG = contract_catalog()


@pytest.fixture(scope="module")
def app(
    ray_local: None, nats_url: str
) -> Iterator[tuple[httpx.Client, ShardGroup, pb_grpc.DecisionServiceStub]]:
    port = free_port()
    with (
        serving(nats_url, CATALOG, KEYS, grpc_port=port) as (client, group),
        grpc.insecure_channel(f"127.0.0.1:{port}") as channel,
    ):
        grpc.channel_ready_future(channel).result(timeout=30)
        yield client, group, pb_grpc.DecisionServiceStub(channel)


def event(
    user: str, kind: str, ts: float | None = None, context: dict[str, Any] | None = None, **props: Any
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "event_id": f"{user}-{kind}-{time.monotonic_ns()}",
        "user_id": user,
        "type": kind,
        "ts": time.time() if ts is None else ts,
        "props": props,
    }
    if context is not None:
        body["context"] = context
    return body


def profile(client: httpx.Client, user: str) -> dict[str, Any]:
    reply = client.get(f"/v1/users/{user}", headers=ADMIN)
    assert reply.status_code == 200, reply.text
    return dict(reply.json())


async def letters(nats_url: str, subject: str) -> list[Msg]:
    """Every dead letter stored on ``subject`` so far."""
    nc = await nats.connect(nats_url)
    try:
        sub = await nc.jetstream().subscribe(subject, ordered_consumer=True)
        found = []
        while True:
            try:
                found.append(await sub.next_msg(timeout=1.0))
            except nats.errors.TimeoutError:
                return found
    finally:
        await nc.close()


def test_declared_events_traits_and_context_over_http_reach_the_live_profile(app: Any) -> None:
    client, group, _ = app
    user, t0 = "ada@boards.example", float(int(time.time()) - 100)
    batch = [
        event(user, "created_board", t0, template="kanban", cards=3),
        event(user, "connected_integration", t0 + 10, integration="slack"),
        event(user, "connected_integration", t0 + 20, integration="slack"),
        event(user, "connected_integration", t0 + 30, integration="github"),
        event(user, "connected_slack", t0 + 40),
        event(user, "created_board", t0 + 50, template="blank"),
        event(
            user,
            "profile_updated",
            t0 + 60,
            context={"app_theme": "dark", "locale": "de-DE"},
            plan="pro",
            seats=5,
            industry="logistics",
            phone="+49 30 5550101",
            name="Ada",
        ),
    ]
    stored = client.post("/v1/events", json={"events": batch}, headers=FRONTEND)
    assert stored.status_code == 200 and stored.json() == {"accepted": 7, "duplicates": 0}, stored.text
    group.wait_caught_up(timeout=30)
    state = profile(client, user)
    custom = state["custom_events"]
    assert custom["created_board"] == {"count": 2, "first_seen": int(t0), "last_seen": int(t0) + 50}
    assert custom["connected_integration"]["count"] == 3
    assert custom["connected_integration"]["by"] == {"integration": {"slack": 2, "github": 1}}
    assert custom["connected_slack"]["count"] == 1 and "invited_teammate" not in custom
    assert state["events_by_type"]["created_board"] == 2 and state["events_by_type"]["profile_updated"] == 1
    traits = state["traits"]
    assert (traits["plan"], traits["seats"], traits["industry"]) == ("pro", 5.0, "logistics")
    assert traits["phone"] == "+49 30 5550101" and traits["name"] == "Ada"
    assert state["context"]["app_theme"] == "dark" and state["context"]["locale"] == "de-DE"


def test_a_decision_reads_declared_context_from_the_request_and_traits_from_the_profile(app: Any) -> None:
    client, group, _ = app
    user = "grace@boards.example"
    batch = [event(user, "profile_updated", context={"app_theme": "dark"}, plan="enterprise")]
    assert client.post("/v1/events", json={"events": batch}, headers=FRONTEND).status_code == 200
    group.wait_caught_up(timeout=30)
    # The request's declared context field wins over the profile's (this visit), as built-ins do.
    body = {"user_id": user, "context": {"app_theme": "light", "locale": "en-US"}}
    answer = client.post("/v1/decide", json=body, headers=FRONTEND)
    assert answer.status_code == 200, answer.text
    decided = answer.json()
    assert decided["step"]["id"] == "welcome"
    assert decided["step_message"] == "You are on the enterprise plan (light theme)."
    without = client.post("/v1/decide", json={"user_id": user}, headers=FRONTEND).json()
    assert without["step_message"] == "You are on the enterprise plan (dark theme)."
    # A declared context field of the wrong type is the caller's mistake: a 400 that says where.
    wrong = client.post("/v1/decide", json={"user_id": user, "context": {"app_theme": 3}}, headers=FRONTEND)
    assert wrong.status_code == 400 and "app_theme" in wrong.text, wrong.text


def test_an_undeclared_type_or_prop_value_is_refused_with_the_declared_types(app: Any) -> None:
    client, _, _ = app
    user = "typo@boards.example"
    r = client.post("/v1/events", json={"events": [event(user, "created_bord")]}, headers=FRONTEND)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["code"] == "invalid_events" and error["details"][0]["reason"] == "unknown_type"
    for name in (*CUSTOM_TYPES, "session_started", "profile_updated"):
        assert name in error["message"] and name in error["details"][0]["problem"]
    wrong = [event(user, "created_board", template="gantt"), event(user, "connected_integration")]
    r = client.post("/v1/events", json={"events": wrong}, headers=FRONTEND)
    assert r.status_code == 400 and [d["reason"] for d in r.json()["error"]["details"]] == [
        "invalid_field",
        "missing_field",
    ]
    # Strict as for built-in props: a number sent as text is refused at this edge.
    r = client.post(
        "/v1/events", json={"events": [event(user, "created_board", cards="3")]}, headers=FRONTEND
    )
    assert r.status_code == 400 and "props.cards" in r.json()["error"]["details"][0]["problem"]
    assert client.get(f"/v1/users/{user}", headers=ADMIN).status_code == 404  # nothing stored
    # The served document describes this catalog's types.
    document = client.get("/openapi.json", headers=FRONTEND).json()
    assert set(CUSTOM_TYPES) <= set(document["components"]["schemas"])
    items = document["components"]["schemas"]["EventsBody"]["properties"]["events"]["items"]
    assert (
        "here: created_board, connected_integration, connected_slack, invited_teammate"
        in items["description"]
    )


def test_nats_producers_publish_declared_events_and_undeclared_ones_are_dead_lettered(
    app: Any, nats_url: str
) -> None:
    client, group, _ = app
    user = "grace@boards.example"
    key = PSEUDONYMIZER.key(user)
    subject = dead_letter_subject("events", partition_of(key, TEST_PARTITIONS))

    async def publish() -> None:
        nc = await nats.connect(nats_url)
        try:
            js = nc.jetstream()
            publisher = EventPublisher(js, PSEUDONYMIZER, CATALOG.event_schema)
            await publisher.publish(event(user, "created_board", template="scrum"))
            with pytest.raises(InvalidEvent, match="declared types: "):
                await publisher.publish(event(user, "archived_board"))
            with pytest.raises(InvalidEvent, match="unknown_type"):  # the built-in publisher
                await EventPublisher(js, PSEUDONYMIZER).publish(event(user, "connected_slack"))
            # A producer that skips validation: the shard dead-letters what it cannot apply.
            raw = [
                {"event_id": "raw-undeclared", "user_id": key, "type": "archived_board", "ts": time.time()},
                {
                    "event_id": "raw-bad-plan",
                    "user_id": key,
                    "type": "profile_updated",
                    "ts": time.time(),
                    "props": {"plan": "gold", "recovery_handle": "@grace-secret", "seats": 3},
                },
            ]
            for message in raw:
                await js.publish(ingest_subject(key), msgspec.msgpack.encode(message))
            # The consumer goes on after them.
            await publisher.publish(event(user, "connected_slack"))
        finally:
            await nc.close()

    asyncio.run(publish())
    group.wait_caught_up(timeout=30)
    custom = profile(client, user)["custom_events"]
    assert custom["created_board"]["count"] == 1 and custom["connected_slack"]["count"] == 1
    mine = {msgspec.msgpack.decode(m.data)["event_id"]: m for m in asyncio.run(letters(nats_url, subject))}
    undeclared = mine["raw-undeclared"].headers or {}
    assert undeclared["Hs-Reason"] == "unknown_type" and "declared types: " in undeclared["Hs-Detail"]
    assert all(name in undeclared["Hs-Detail"] for name in CUSTOM_TYPES)
    bad = mine["raw-bad-plan"]
    assert bad.headers is not None and bad.headers["Hs-Redacted"] == "props"
    assert b"@grace-secret" not in bad.data
    props = msgspec.msgpack.decode(bad.data)["props"]
    assert props["recovery_handle"] == "<redacted>" and props["plan"] == "gold" and props["seats"] == 3


def test_grpc_send_events_takes_declared_types_traits_and_context(app: Any) -> None:
    client, group, stub = app
    user = "linus@boards.example"
    events = [
        pb.Event(
            event_id="grpc-board-1",
            user_id=user,
            type="created_board",
            ts=time.time(),
            props={"template": "scrum", "cards": "4"},
            context=pb.Context(locale="fr-FR", custom={"app_theme": "light"}),
        ),
        pb.Event(
            event_id="grpc-traits-1",
            user_id=user,
            type="profile_updated",
            ts=time.time(),
            props={"plan": "enterprise", "seats": "40"},
        ),
    ]
    sent = stub.SendEvents(pb.SendEventsRequest(events=events), metadata=GRPC_FRONTEND, timeout=10)
    assert sent.accepted == 2 and sent.duplicates == 0
    group.wait_caught_up(timeout=30)
    state = profile(client, user)
    assert state["custom_events"]["created_board"]["count"] == 1
    assert state["traits"]["plan"] == "enterprise" and state["traits"]["seats"] == 40.0
    assert state["context"]["app_theme"] == "light" and state["context"]["locale"] == "fr-FR"
    typo = pb.Event(event_id="grpc-typo", user_id=user, type="connected_slak", ts=time.time())
    with pytest.raises(grpc.RpcError) as refused:
        stub.SendEvents(pb.SendEventsRequest(events=[typo]), metadata=GRPC_FRONTEND, timeout=10)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (
        "declared types: " in (refused.value.details() or "") and "connected_slack" in refused.value.details()
    )


def test_segment_tracks_and_identify_map_to_declared_types_and_traits(app: Any, nats_url: str) -> None:
    client, group, _ = app
    user = "margaret@boards.example"

    def call(kind: str, message_id: str, **fields: Any) -> dict[str, Any]:
        return {"type": kind, "userId": user, "messageId": message_id, **fields}

    batch = [
        call(
            "track", "s-1", event="Board Created", properties={"kind": "kanban", "cards": 2, "colour": "red"}
        ),
        call("track", "s-2", event="Integration Connected", properties={"integration": "notion"}),
        call("track", "s-3", event="Slack Connected"),
        call("identify", "s-4", traits={"plan": "free", "seats": 2, "email": "m@boards.example"}),
        call("track", "s-5", event="Board Created", properties={"kind": "gantt"}),  # not a declared value
        call("track", "s-6", event="Integration Connected", properties={}),  # its required prop missing
    ]
    r = client.post("/segment/v1/batch", json={"batch": batch}, headers=BASIC)
    assert r.status_code == 200 and r.json() == {"success": True}, r.text
    group.wait_caught_up(timeout=30)
    state = profile(client, user)
    custom = state["custom_events"]
    assert custom["created_board"]["count"] == 1 and custom["connected_slack"]["count"] == 1
    assert custom["connected_integration"]["by"] == {"integration": {"notion": 1}}
    assert (state["traits"]["plan"], state["traits"]["seats"]) == ("free", 2.0)
    assert "email" not in state["traits"]
    dead = [m for m in asyncio.run(letters(nats_url, "hs.dlq.segment")) if b'"s-5"' in m.data]
    assert len(dead) == 1 and dead[0].headers is not None
    assert (
        dead[0].headers["Hs-Reason"].startswith("invalid_field")
        and "props.template" in dead[0].headers["Hs-Reason"]
    )
    metrics = client.get("/metrics", headers=ADMIN).text
    assert 'hs_segment_api_calls_total{outcome="invalid",type="track"}' in metrics
    assert 'hs_segment_api_calls_total{outcome="unmapped",type="track"}' in metrics  # s-6, dropped


def test_export_and_erasure_cover_custom_events_counts_and_traits(app: Any, nats_url: str) -> None:
    client, group, _ = app
    user = "barbara@boards.example"
    key = PSEUDONYMIZER.key(user)
    batch = [
        event(user, "created_board", template="blank", context={"app_theme": "dark"}),
        event(user, "connected_integration", integration="slack"),
        event(user, "profile_updated", plan="pro", phone="+44 20 7946 0000", recovery_handle="@barbara-h"),
    ]
    assert client.post("/v1/events", json={"events": batch}, headers=FRONTEND).status_code == 200
    group.wait_caught_up(timeout=30)
    exported = client.get(f"/v1/users/{user}/export", headers=ADMIN)
    assert exported.status_code == 200, exported.text
    data = exported.json()["profile"]
    assert data["custom_events"]["created_board"]["count"] == 1
    assert data["custom_events"]["connected_integration"]["by"] == {"integration": {"slack": 1}}
    assert data["events_by_type"]["connected_integration"] == 1
    assert data["traits"]["plan"] == "pro" and data["traits"]["phone"] == "+44 20 7946 0000"
    assert data["traits"]["recovery_handle"] == "@barbara-h" and data["context"]["app_theme"] == "dark"

    async def snapshot() -> bytes:
        nc = await nats.connect(nats_url)
        try:
            store = await NatsCheckpointStore.open(nc.jetstream())
            found = await store.load(partition_of(key, TEST_PARTITIONS))
            assert found is not None
            return found
        finally:
            await nc.close()

    ray.get(group.shard_for_key(key).checkpoint.remote())
    before = asyncio.run(snapshot())
    # The user is in the snapshot, PII traits sealed.
    assert key.encode() in before and b"+44 20 7946" not in before and b"@barbara-h" not in before
    r = client.delete(f"/v1/users/{user}", headers=ADMIN)
    assert r.status_code == 200 and r.json()["erased"] is True, r.text
    assert client.get(f"/v1/users/{user}", headers=ADMIN).status_code == 404
    assert key.encode() not in asyncio.run(snapshot())
    assert client.get(f"/v1/users/{user}/export", headers=ADMIN).json()["profile"] is None
    # Events sent again start a new profile: no count survived the erasure.
    again = [event(user, "created_board", template="kanban")]
    assert client.post("/v1/events", json={"events": again}, headers=FRONTEND).status_code == 200
    group.wait_caught_up(timeout=30)
    state = profile(client, user)
    assert (
        set(state["custom_events"]) == {"created_board"}
        and state["custom_events"]["created_board"]["count"] == 1
    )
    assert "plan" not in state["traits"] and "phone" not in state["traits"]


def test_the_javascript_client_sends_declared_events_unchanged(app: Any) -> None:
    """headstart.js in a real headless Chromium: a page tracks the product's own event with
    a custom context field, and it reaches the profile (no client change was needed)."""
    from playwright.sync_api import sync_playwright

    client, group, _ = app
    user = "js-user@boards.example"
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=shutil.which("chromium") or "/usr/bin/chromium", args=["--no-sandbox"]
        )
        try:
            page = chromium.new_page()
            page.goto(f"{client.base_url}/")  # the demo page loads /static/headstart.js
            stored = page.evaluate(
                """async ([key, user]) => {
                    const hs = new Headstart({ baseUrl: location.origin, apiKey: key });
                    hs.track(user, "created_board", { template: "kanban", cards: 2 }, { app_theme: "dark" });
                    return await hs.flush();
                }""",
                [KEYS["frontend"], user],
            )
        finally:
            chromium.close()
    assert stored == 1
    group.wait_caught_up(timeout=30)
    state = profile(client, user)
    assert state["custom_events"]["created_board"]["count"] == 1 and state["context"]["app_theme"] == "dark"


# Last in this module: it replaces the app's shards by shards with a later catalog.
def test_a_type_the_catalog_drops_is_skipped_on_replay_and_counted(app: Any, nats_url: str) -> None:
    client, group, _ = app
    user = "ken@boards.example"
    assert (
        client.post(
            "/v1/events", json={"events": [event(user, "invited_teammate", role="editor")]}, headers=FRONTEND
        ).status_code
        == 200
    )
    group.wait_caught_up(timeout=30)
    group.stop()  # writes a final checkpoint: its vocabulary knows invited_teammate

    async def publish_while_down() -> None:
        nc = await nats.connect(nats_url)
        try:
            publisher = EventPublisher(nc.jetstream(), PSEUDONYMIZER, CATALOG.event_schema)
            await publisher.publish_many([event(user, "invited_teammate", role="viewer") for _ in range(3)])
            await publisher.publish(event(user, "connected_slack"))
        finally:
            await nc.close()

    asyncio.run(publish_while_down())
    deadline = time.monotonic() + 30
    while True:  # the killed actors' names go away
        try:
            ray.get_actor(shard_name(0), namespace=NAMESPACE)
        except ValueError:
            break
        assert time.monotonic() < deadline
        time.sleep(0.1)
    later = ShardGroup(group.settings, nats_url, contract_catalog(drop_type="invited_teammate")).start()
    try:
        later.wait_ready()
        later.wait_caught_up(timeout=30)
        assert sum(s.dead_lettered for s in later.stats()) == 0
        retired: dict[str, int] = {}
        for stats in later.stats():
            for kind, n in stats.retired_events.items():
                retired[kind] = retired.get(kind, 0) + n
        assert retired == {"invited_teammate": 3}
        state = profile(client, user)
        assert state["custom_events"]["invited_teammate"]["count"] == 1  # history stays
        assert state["custom_events"]["connected_slack"]["count"] == 1  # and the stream goes on
        assert asyncio.run(collect_status(nats_url))["retired_events"] == {"invited_teammate": 3}
        deadline = time.monotonic() + 30
        metrics = ""
        while 'type="invited_teammate"} 3.0' not in metrics and time.monotonic() < deadline:
            time.sleep(0.2)  # the ingress finds the new shards when it refreshes their owners
            metrics = client.get("/metrics", headers=ADMIN).text
        assert 'hs_events_retired_total{shard="' in metrics and 'type="invited_teammate"} 3.0' in metrics
    finally:
        later.stop()
