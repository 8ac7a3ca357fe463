"""The Segment-compatible tracking API, fed by the real ``segment-analytics-python`` client
pointed at a running Headstart (real NATS, Ray and Serve): what it sends shows up in the
user's live state; aliases, unmapped and bad calls."""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import nats
import pytest
import segment.analytics as segment

from actors.cluster import ShardGroup
from engine.catalog import DEFAULT_CATALOG, load_catalog
from tests.actors.conftest import serving

pytestmark = pytest.mark.integration

KEYS = {"frontend": "segment-write-key", "admin": "segment-admin-key"}
ADMIN = {"Authorization": f"Bearer {KEYS['admin']}"}
BASIC = {"Authorization": "Basic " + base64.b64encode(f"{KEYS['frontend']}:".encode()).decode()}


@pytest.fixture(scope="module")
def api(ray_local: None, nats_url: str) -> Iterator[tuple[httpx.Client, ShardGroup]]:
    with serving(nats_url, load_catalog(DEFAULT_CATALOG), KEYS) as served:
        yield served


def live(http: httpx.Client, user: str, ready: Any, timeout: float = 30.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        reply = http.get(f"/v1/users/{user}", headers=ADMIN)
        state = reply.json() if reply.status_code == 200 else {}
        if (state and ready(state)) or time.monotonic() > deadline:
            return state
        time.sleep(0.2)


def test_the_segment_client_feeds_live_state(api: tuple[httpx.Client, ShardGroup]) -> None:
    http, _ = api
    errors: list[Any] = []
    client = segment.Client(
        write_key=KEYS["frontend"],
        host=f"{http.base_url}/segment",
        sync_mode=True,
        gzip=True,
        max_retries=1,
        on_error=lambda error, batch: errors.append(error),
    )
    context = {
        "device": {"type": "ios"},
        "locale": "de-DE",
        "os": {"name": "iOS"},
        "campaign": {"source": "google"},
    }
    client.identify("seg-user-1", {"role": "engineer", "email": "seg@example.com", "plan": "pro"})
    client.track("seg-user-1", "Feature Used", {"feature": "export", "extra": 1}, context=context)
    client.page("seg-user-1", name="profile")
    client.track("seg-user-1", "Checkout Started", {"value": 3})  # not mapped: counted, dropped
    # An anonymous visitor, then identified: later anonymous calls are the user's.
    client.alias(previous_id="anon-visitor-7", user_id="seg-user-1")
    client.track(anonymous_id="anon-visitor-7", event="Feature Used", properties={"feature": "share"})
    # Retried by a client with the same messageId: stored once.
    client.track("seg-user-1", "Session Started", message_id="same-message")
    client.track("seg-user-1", "Session Started", message_id="same-message")
    client.flush()
    assert errors == []

    state = live(
        http,
        "seg-user-1",
        lambda s: s.get("features", {}).get("share") and s["events_by_type"].get("session_started"),
    )
    assert state["features"] == {"export": 1, "share": 1}
    assert state["traits"] == {"role": "engineer"}  # only allowed traits: no e-mail, no plan
    assert state["context"]["device_type"] == "mobile" and state["context"]["locale"] == "de-DE"
    assert state["context"]["os"] == "ios" and state["context"]["referrer"] == "google"
    assert "profile" in state["steps_viewed"]
    assert state["events_by_type"]["session_started"] == 1  # the retried call was deduplicated
    metrics = http.get("/metrics", headers=ADMIN).text
    assert 'hs_segment_api_calls_total{outcome="unmapped",type="track"} 1.0' in metrics
    assert 'hs_segment_api_calls_total{outcome="duplicate",type="track"} 1.0' in metrics


def test_plain_and_gzip_calls_and_bad_payloads(api: tuple[httpx.Client, ShardGroup], nats_url: str) -> None:
    http, _ = api
    call = {"userId": "seg-user-2", "event": "Onboarding Completed", "messageId": "m-2", "properties": {}}
    assert http.post("/segment/v1/track", json=call, headers=BASIC).status_code == 200
    state = live(http, "seg-user-2", lambda s: s.get("events_by_type", {}).get("onboarding_completed"))
    assert state["events_by_type"]["onboarding_completed"] == 1
    # A wrong write key, a body that says gzip but is not, and JSON that is not a call.
    wrong = {"Authorization": "Basic " + base64.b64encode(b"nope:").decode()}
    assert http.post("/segment/v1/track", json=call, headers=wrong).status_code == 401
    not_gzip = http.post("/segment/v1/batch", content=b"{}", headers={**BASIC, "Content-Encoding": "gzip"})
    assert not_gzip.status_code == 400 and "gzip" in not_gzip.json()["error"]["message"]
    no_batch = http.post(
        "/segment/v1/batch",
        content=gzip.compress(json.dumps({"calls": []}).encode()),
        headers={**BASIC, "Content-Encoding": "gzip", "Content-Type": "application/json"},
    )
    assert no_batch.status_code == 400 and "batch" in no_batch.json()["error"]["message"]
    assert http.post("/segment/v1/nonsense", json=call, headers=BASIC).status_code == 404
    # A call without any user id is dead-lettered with its reason (ids pseudonymized), and the
    # batch's good calls are stored.
    batch = {
        "batch": [
            {"type": "track", "event": "Feature Used", "messageId": "m-3", "properties": {"feature": "x"}},
            {**call, "type": "track", "messageId": "m-4", "userId": "seg-user-3"},
        ]
    }
    assert http.post("/segment/v1/batch", json=batch, headers=BASIC).status_code == 200
    live(http, "seg-user-3", lambda s: s.get("events_by_type", {}).get("onboarding_completed"))

    async def dead_letters() -> list[tuple[dict[str, Any], dict[str, str]]]:
        conn = await nats.connect(nats_url)
        try:
            sub = await conn.jetstream().subscribe("hs.dlq.segment", ordered_consumer=True)
            out = []
            while True:
                try:
                    msg = await sub.next_msg(timeout=2)
                except TimeoutError:
                    return out
                out.append((json.loads(msg.data), dict(msg.headers or {})))
        finally:
            await conn.close()

    letters = asyncio.run(dead_letters())
    assert any("userId or an anonymousId" in headers["Hs-Reason"] for _, headers in letters)
    assert all("properties" not in body for body, _ in letters)
