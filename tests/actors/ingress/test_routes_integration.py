"""The HTTP API through a real Serve app (HAProxy front), real shards and a real nats-server."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import ray

from actors.cluster import ShardGroup
from engine.catalog import DEFAULT_CATALOG, load_catalog
from tests.actors.conftest import serving
from tests.conftest import TEST_PARTITIONS

pytestmark = pytest.mark.integration

KEYS = {"frontend": "test-frontend-key", "admin": "test-admin-key"}
FRONTEND = {"Authorization": f"Bearer {KEYS['frontend']}"}
ADMIN = {"Authorization": f"Bearer {KEYS['admin']}"}


@pytest.fixture(scope="module")
def api(ray_local: None, nats_url: str) -> Iterator[tuple[httpx.Client, ShardGroup]]:
    with serving(nats_url, load_catalog(DEFAULT_CATALOG), KEYS) as served:
        yield served


def event(user: str, kind: str, **props: Any) -> dict[str, Any]:
    return {
        "event_id": f"{user}-{kind}-{time.monotonic_ns()}",
        "user_id": user,
        "type": kind,
        "ts": time.time(),
        "props": props,
    }


def test_unknown_users_get_a_cold_start_answer(api: tuple[httpx.Client, ShardGroup]) -> None:
    client, _ = api
    r = client.post(
        "/v1/decide",
        json={"user_id": "new@example.com", "context": {"device_type": "mobile", "locale": "de-DE"}},
        headers=FRONTEND,
    )
    assert r.status_code == 200, r.text
    d = r.json()
    assert d["step"]["id"] == "welcome" and d["message"].startswith("Willkommen")
    assert d["flags"]["simplified_mobile_flow"] is True
    assert "cold start" in d["explain"][0]


def test_an_event_changes_the_next_decision(api: tuple[httpx.Client, ShardGroup]) -> None:
    client, _ = api
    user = "bob@example.com"
    before = client.post("/v1/decide", json={"user_id": user}, headers=FRONTEND).json()
    assert before["step"]["id"] == "welcome"
    stored = client.post(
        "/v1/events",
        json={
            "events": [
                event(user, "step_completed", step="welcome"),
                event(user, "profile_updated", name="Bob"),
            ]
        },
        headers=FRONTEND,
    )
    assert stored.status_code == 200 and stored.json() == {"accepted": 2, "duplicates": 0}
    # Read-your-writes: the next decision after /v1/events answered sees the event.
    deadline = time.monotonic() + 5
    after = before
    while after["step"]["id"] == "welcome" and time.monotonic() < deadline:
        after = client.post("/v1/decide", json={"user_id": user}, headers=FRONTEND).json()
    assert after["step"]["id"] == "profile"
    assert "Bob" in after["message"] and after["personalized"] is True
    profile = client.get(f"/v1/users/{user}", headers=ADMIN)
    assert profile.status_code == 200 and profile.json()["steps_completed"] == ["welcome"]


def test_retried_event_batches_are_stored_once(api: tuple[httpx.Client, ShardGroup]) -> None:
    client, _ = api
    batch = {"events": [event("carol@example.com", "feature_clicked", feature="export")]}
    assert client.post("/v1/events", json=batch, headers=FRONTEND).json() == {"accepted": 1, "duplicates": 0}
    assert client.post("/v1/events", json=batch, headers=FRONTEND).json() == {"accepted": 0, "duplicates": 1}


def test_tutorial_selection(api: tuple[httpx.Client, ShardGroup]) -> None:
    client, _ = api
    r = client.post(
        "/v1/tutorials/select",
        json={"user_id": "dan", "step": "first_project", "context": {"device_type": "mobile"}},
        headers=FRONTEND,
    )
    choice = r.json()
    assert r.status_code == 200 and "video" not in choice["eligible"]  # desktop and tablet only
    # The policy chose among the eligible variants, and logged it (a learned decision's id).
    assert choice["variant"] in choice["eligible"] == ["interactive", "checklist"]
    assert len(choice["decision_id"]) == 42 and "chosen by linear_igw" in choice["explain"][0]
    r = client.post("/v1/tutorials/select", json={"user_id": "dan", "feature": "invite"}, headers=FRONTEND)
    assert r.json()["tutorial"] == "collaboration"
    assert (
        client.post(
            "/v1/tutorials/select", json={"user_id": "dan", "step": "nope"}, headers=FRONTEND
        ).status_code
        == 404
    )
    both = client.post("/v1/tutorials/select", json={"user_id": "dan"}, headers=FRONTEND)
    assert both.status_code == 400 and "exactly one" in both.json()["error"]["message"]


@pytest.mark.parametrize(
    ("path", "body", "code"),
    [
        ("/v1/decide", {"user_id": "x", "surprise": 1}, "invalid_request"),
        ("/v1/decide", {"context": {}}, "invalid_request"),
        ("/v1/decide", {"user_id": 42}, "invalid_request"),
        ("/v1/decide", {"user_id": ""}, "invalid_request"),
        ("/v1/decide", {"user_id": "x" * 1000}, "invalid_request"),
        ("/v1/decide", [1, 2], "invalid_request"),
        ("/v1/events", {"events": []}, "invalid_request"),
        (
            "/v1/events",
            {"events": [{"event_id": "1", "user_id": "u", "type": "warp", "ts": 1}]},
            "invalid_events",
        ),
        (
            "/v1/events",
            {"events": [{"event_id": "1", "user_id": "u", "type": "session_started", "ts": "1"}]},
            "invalid_events",
        ),
        (
            "/v1/events",
            {
                "events": [
                    {
                        "event_id": "1",
                        "user_id": "u",
                        "type": "consent_updated",
                        "ts": 1,
                        "props": {"analytics": 0},
                    }
                ]
            },
            "invalid_events",
        ),
    ],
)
def test_bad_bodies_get_a_4xx_with_a_message(
    api: tuple[httpx.Client, ShardGroup], path: str, body: Any, code: str
) -> None:
    client, _ = api
    r = client.post(path, json=body, headers=FRONTEND)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == code and r.json()["error"]["message"]


def test_malformed_json_and_oversized_bodies(api: tuple[httpx.Client, ShardGroup]) -> None:
    client, _ = api
    r = client.post(
        "/v1/decide", content=b"{not json", headers={**FRONTEND, "content-type": "application/json"}
    )
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_request"
    big = client.post(
        "/v1/events",
        content=b"x" * (2 * 1024 * 1024),
        headers={**FRONTEND, "content-type": "application/json"},
    )
    assert big.status_code == 413 and big.json()["error"]["code"] == "body_too_large"


def test_an_invalid_event_refuses_the_whole_batch(api: tuple[httpx.Client, ShardGroup]) -> None:
    client, _ = api
    good = event("erin@example.com", "feature_clicked", feature="export")
    r = client.post(
        "/v1/events", json={"events": [good, {**good, "event_id": "x2", "ts": "yesterday"}]}, headers=FRONTEND
    )
    assert r.status_code == 400
    assert r.json()["error"]["details"][0]["index"] == 1
    assert client.get("/v1/users/erin@example.com", headers=ADMIN).status_code == 404


def test_the_catalog_routes_answer_before_any_version_is_stored(api: tuple[httpx.Client, ShardGroup]) -> None:
    """This module's app was handed its catalog (static): the store is empty, and says so."""
    client, _ = api
    missing = client.get("/v1/catalog", headers=ADMIN)
    assert missing.status_code == 404 and "no catalog version is stored" in missing.json()["error"]["message"]
    assert client.get("/v1/catalog/history", headers=ADMIN).json() == {"serving": 0, "versions": []}
    assert client.get("/v1/catalog/versions/1", headers=ADMIN).status_code == 404


def test_health_readiness_and_openapi(api: tuple[httpx.Client, ShardGroup]) -> None:
    client, _ = api
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["partitions_without_shard"] == []
    assert client.get("/openapi.json").status_code == 401  # nothing but health answers without a key
    assert client.get("/docs").status_code == 404
    paths = client.get("/openapi.json", headers=FRONTEND).json()["paths"]
    assert {"/v1/decide", "/v1/tutorials/select", "/v1/events", "/v1/users/{user_id}"} <= set(paths)


def test_metrics_for_prometheus_need_the_admin_key(api: tuple[httpx.Client, ShardGroup]) -> None:
    client, _ = api
    client.post("/v1/decide", json={"user_id": "metrics@example.com"}, headers=FRONTEND)
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers=FRONTEND).status_code == 403
    r = client.get("/metrics", headers=ADMIN)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    assert 'hs_decisions_total{outcome="shard"}' in text
    assert "hs_decide_seconds_bucket" in text
    assert text.count("hs_shard_events_applied_total{") == 2  # both shards answered
    assert text.count("hs_consumer_lag{") == TEST_PARTITIONS
    applied = sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("hs_shard_events_applied_total{")
    )
    assert applied > 0


def test_segments_with_their_rules_and_live_sizes(api: tuple[httpx.Client, ShardGroup]) -> None:
    client, group = api
    for user in ("seg-a@example.com", "seg-b@example.com"):
        body = {"events": [{**event(user, "session_started"), "context": {"device_type": "mobile"}}]}
        assert client.post("/v1/events", json=body, headers=FRONTEND).status_code == 200
    group.wait_caught_up(timeout=30)
    report = client.get("/v1/segments", headers=ADMIN).json()
    by_id = {s["id"]: s for s in report["segments"]}
    assert by_id["mobile_newcomer"]["kind"] == "rule" and "session_count" in by_id["mobile_newcomer"]["rule"]
    assert by_id["mobile_newcomer"]["size"] >= 2 and by_id["device_mobile"]["kind"] == "built-in"
    assert report["users"] >= by_id["mobile_newcomer"]["size"] and report["shards_missing"] == []
    assert 0 < by_id["mobile_newcomer"]["share"] <= 1 and by_id["mobile_newcomer"]["mean_engagement"] > 0
    assert by_id["new_user"]["entered"] >= 1 and by_id["new_user"]["entered_per_day"] is not None
    assert by_id["mobile_newcomer"]["activation_rate"] is not None
    assert by_id["cluster_0"]["kind"] == "cluster"
    one = client.get("/v1/segments/mobile_newcomer", headers=ADMIN).json()
    assert one["size"] == by_id["mobile_newcomer"]["size"]
    missing = client.get("/v1/segments/nope", headers=ADMIN)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"


def test_consent_withdrawn_over_the_api_forgets_the_user_and_stops_personalizing(
    api: tuple[httpx.Client, ShardGroup], nats_url: str
) -> None:
    client, group = api
    user = "consent-c@example.com"
    body = {"events": [event(user, "session_started"), event(user, "feature_clicked", feature="export")]}
    assert client.post("/v1/events", json=body, headers=FRONTEND).status_code == 200
    group.wait_caught_up(timeout=30)
    assert client.get(f"/v1/users/{user}", headers=ADMIN).status_code == 200
    url = f"/v1/users/{user}/consent"
    assert client.put(url, json={"analytics": False}).status_code == 401
    assert client.put(url, json={}, headers=FRONTEND).status_code == 400
    assert client.put(url, json={"analytics": "maybe"}, headers=FRONTEND).status_code == 400
    r = client.put(url, json={"analytics": False, "personalization": False}, headers=FRONTEND)
    assert r.status_code == 202 and r.json()["accepted"] is True
    group.wait_caught_up(timeout=30)
    assert client.get(f"/v1/users/{user}", headers=ADMIN).status_code == 404  # nothing kept

    async def last_audit(what: str) -> bytes:
        import nats

        nc = await nats.connect(nats_url)
        try:
            return (await nc.jetstream().get_last_msg("HS_AUDIT", f"hs.audit.{what}")).data
        finally:
            await nc.close()

    import asyncio
    import json as json_module

    from headstart.web.auth import hash_key

    record = asyncio.run(last_audit("consent"))
    assert user.encode() not in record
    # Who: the role and an id of the key (a prefix of its hash), never the key.
    assert json_module.loads(record)["analytics"] is False
    assert json_module.loads(record)["who"] == f"frontend:{hash_key(KEYS['frontend'])[:12]}"
    read = json_module.loads(asyncio.run(last_audit("profile_read")))  # the admin's GET above
    assert read["who"].startswith("admin:") and user.encode() not in json_module.dumps(read).encode()
    more = {"events": [event(user, "feature_clicked", feature="share")]}
    assert client.post("/v1/events", json=more, headers=FRONTEND).status_code == 200
    group.wait_caught_up(timeout=30)
    assert client.get(f"/v1/users/{user}", headers=ADMIN).status_code == 404  # counted, dropped
    decision = client.post("/v1/decide", json={"user_id": user}, headers=FRONTEND).json()
    assert decision["personalized"] is False and "personalization not permitted" in decision["explain"][0]
    metrics = client.get("/metrics", headers=ADMIN).text
    assert "hs_events_without_consent_total{shard=" in metrics and 'type="feature_clicked"' in metrics
    # An admin key may record consent too; granting again starts keeping events.
    assert client.put(url, json={"analytics": True}, headers=ADMIN).status_code == 202
    after = {"events": [event(user, "feature_clicked", feature="share")]}  # a new event id
    assert client.post("/v1/events", json=after, headers=FRONTEND).status_code == 200
    group.wait_caught_up(timeout=30)
    profile = client.get(f"/v1/users/{user}", headers=ADMIN).json()
    assert profile["features"] == {"share": 1} and profile["consent"]["personalization"] is False


def test_an_export_holds_the_profile_and_the_retained_decisions(api: tuple[httpx.Client, ShardGroup]) -> None:
    client, group = api
    user = "export-me@example.com"
    body = {"events": [event(user, "session_started"), event(user, "feature_clicked", feature="export")]}
    assert client.post("/v1/events", json=body, headers=FRONTEND).status_code == 200
    group.wait_caught_up(timeout=30)
    selected = {"user_id": user, "step": "first_project", "context": {"device_type": "mobile"}}
    decided = client.post("/v1/tutorials/select", json=selected, headers=FRONTEND).json()  # a logged choice
    deadline = time.monotonic() + 10
    url = f"/v1/users/{user}/export"
    while not client.get(url, headers=ADMIN).json()["decisions"] and time.monotonic() < deadline:
        time.sleep(0.1)  # the decision is logged in the background
    assert client.get(url, headers=FRONTEND).status_code == 403
    exported = client.get(url, headers=ADMIN)
    assert exported.status_code == 200, exported.text
    data = exported.json()
    assert data["profile"]["features"] == {"export": 1} and "segments" in data["profile"]
    assert [d["decision_id"] for d in data["decisions"]] == [decided["decision_id"]]
    assert user not in exported.text  # pseudonymized key only


def test_erasure_removes_the_user_everywhere_and_finishes_after_a_crash(
    api: tuple[httpx.Client, ShardGroup], nats_url: str
) -> None:
    import asyncio
    import json as json_module

    import nats

    from engine.keys import Pseudonymizer, partition_of
    from headstart.adapters.checkpoints import NatsCheckpointStore
    from headstart.adapters.rpc import ShardClient
    from headstart.adapters.topology import AUDIT_STREAM, DECISIONS_STREAM, ERASURE_BUCKET, EVENTS_STREAM
    from headstart.privacy.erasure import Eraser
    from tests.conftest import TEST_PARTITIONS, TEST_SECRET

    client, group = api
    pseudonymizer = Pseudonymizer(TEST_SECRET)
    erased, interrupted = "erase-me@example.com", "erase-later@example.com"
    for user in (erased, interrupted):
        body = {"events": [event(user, "session_started"), event(user, "feature_clicked", feature="export")]}
        assert client.post("/v1/events", json=body, headers=FRONTEND).status_code == 200
        assert client.post("/v1/decide", json={"user_id": user}, headers=FRONTEND).status_code == 200
    group.wait_caught_up(timeout=30)
    assert client.delete(f"/v1/users/{erased}", headers=FRONTEND).status_code == 403
    r = client.delete(f"/v1/users/{erased}", headers=ADMIN)
    assert r.status_code == 200 and r.json()["erased"] is True, r.text
    assert client.get(f"/v1/users/{erased}", headers=ADMIN).status_code == 404
    assert client.delete(f"/v1/users/{erased}", headers=ADMIN).status_code == 200  # idempotent

    async def check_gone(user: str) -> None:
        key = pseudonymizer.key(user)
        p = partition_of(key, TEST_PARTITIONS)
        nc = await nats.connect(nats_url)
        try:
            js = nc.jetstream()
            for stream, subject in (
                (EVENTS_STREAM, f"hs.events.{p}.{key}"),
                (EVENTS_STREAM, f"hs.events.{p}.{key}-decision"),
                (DECISIONS_STREAM, f"hs.decisions.{p}.{key}"),
            ):
                with pytest.raises(nats.js.errors.NotFoundError):
                    await js.get_last_msg(stream, subject)
            snapshot = await (await NatsCheckpointStore.open(js)).load(p)
            assert snapshot is not None and key.encode() not in snapshot
            audit = await js.get_last_msg(AUDIT_STREAM, "hs.audit.erasure")
            record = json_module.loads(audit.data)
            assert record["what"] == "erasure" and user.encode() not in audit.data
        finally:
            await nc.close()

    asyncio.run(check_gone(erased))

    async def crash_then_resume(user: str) -> list[str]:
        # An erasure that stopped after recording itself (the process died): the next
        # ingress start (or a DELETE) finishes it.
        key = pseudonymizer.key(user)
        nc = await nats.connect(nats_url)
        try:
            js = nc.jetstream()
            kv = await js.key_value(ERASURE_BUCKET)
            progress = {"partition": partition_of(key, TEST_PARTITIONS), "who": "admin", "step": "pending"}
            await kv.put(key, json_module.dumps(progress).encode())
            return await Eraser(js, ShardClient(nc, TEST_PARTITIONS), TEST_PARTITIONS).resume()
        finally:
            await nc.close()

    assert asyncio.run(crash_then_resume(interrupted)) == [pseudonymizer.key(interrupted)]
    assert client.get(f"/v1/users/{interrupted}", headers=ADMIN).status_code == 404
    asyncio.run(check_gone(interrupted))


def test_a_key_over_its_rate_limit_is_told_when_to_retry(
    api: tuple[httpx.Client, ShardGroup], nats_url: str
) -> None:
    """A second app with a small frontend limit, beside the module's (limits are per replica)."""
    from ray import serve

    from actors.ingress import Ingress, IngressConfig
    from headstart.web.auth import key_hashes
    from tests.conftest import TEST_SECRET

    client, _ = api
    config = IngressConfig(
        nats_url=nats_url,
        partitions=TEST_PARTITIONS,
        secret=TEST_SECRET,
        key_hashes=key_hashes(KEYS),
        catalog=load_catalog(DEFAULT_CATALOG),
        rate_limits={"frontend": "3/minute"},
    )
    serve.run(Ingress.bind(config), name="limited", route_prefix="/limited", blocking=False)
    try:
        deadline = time.monotonic() + 60
        while client.get("/limited/healthz").status_code != 200:
            assert time.monotonic() < deadline, "the second app did not come up"
            time.sleep(0.2)
        answers = [
            client.post("/limited/v1/decide", json={"user_id": "eve"}, headers=FRONTEND) for _ in range(3)
        ]
        assert [r.status_code for r in answers] == [200, 200, 200]
        over = client.post("/limited/v1/decide", json={"user_id": "eve"}, headers=FRONTEND)
        assert over.status_code == 429 and over.json()["error"]["code"] == "rate_limited"
        assert 1 <= int(over.headers["retry-after"]) <= 60
        batch = {"events": [event("eve", "feature_clicked", feature="export")]}
        assert client.post("/limited/v1/events", json=batch, headers=FRONTEND).status_code == 429  # per key
        assert client.get("/limited/v1/segments", headers=ADMIN).status_code == 200  # another key
        assert client.post("/v1/decide", json={"user_id": "eve"}, headers=FRONTEND).status_code == 200
    finally:
        serve.delete("limited")


def test_a_wrong_method_is_told_every_allowed_one(api: tuple[httpx.Client, ShardGroup]) -> None:
    client, _ = api
    r = client.request("TRACE", "/v1/users/someone", headers=ADMIN)
    assert r.status_code == 405 and set(r.headers["allow"].split(", ")) >= {"GET", "DELETE"}
    assert client.request("PATCH", "/v1/decide", headers=FRONTEND).headers["allow"] == "POST"


def test_the_served_document_bounds_scaling_by_the_partitions(api: tuple[httpx.Client, ShardGroup]) -> None:
    client, _ = api
    document = client.get("/openapi.json", headers=FRONTEND).json()
    assert document["components"]["schemas"]["ScaleBody"]["properties"]["shards"]["maximum"] == min(
        256, TEST_PARTITIONS
    )
    assert document["paths"]["/metrics"]["get"]["responses"]["200"]["content"].keys() == {"text/plain"}


def test_without_shards_decisions_degrade_to_the_default_flow(api: tuple[httpx.Client, ShardGroup]) -> None:
    """Runs last in this module: it stops the shards."""
    client, group = api
    for shard in group.shards:
        ray.kill(shard, no_restart=True)
    time.sleep(1.5)  # let readiness's cache expire
    r = client.post("/v1/decide", json={"user_id": "bob@example.com"}, headers=FRONTEND)
    assert r.status_code == 200
    assert r.json()["step"]["id"] == "welcome" and "shard unavailable" in r.json()["explain"][0]
    assert client.get("/readyz").status_code == 503
    assert client.get("/v1/users/bob@example.com", headers=ADMIN).status_code == 503
