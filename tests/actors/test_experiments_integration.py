"""Experiments end to end with real NATS, Ray and Serve: arms in decisions, one exposure per
user and experiment however often they are decided for, outcomes counted, and the report."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import httpx
import nats
import pytest

from actors.cluster import ShardGroup
from engine.keys import Pseudonymizer
from headstart.adapters.topology import EXPOSURES_STREAM
from tests.actors.conftest import serving
from tests.conftest import TEST_SECRET
from tests.engine.test_experiment_arms import SHORT, experiment_catalog

pytestmark = pytest.mark.integration

KEYS = {"frontend": "test-frontend-key", "admin": "test-admin-key"}
FRONTEND = {"Authorization": f"Bearer {KEYS['frontend']}"}
ADMIN = {"Authorization": f"Bearer {KEYS['admin']}"}
USERS = [f"exp-user-{i}@example.com" for i in range(40)]


@pytest.fixture(scope="module")
def api(ray_local: None, nats_url: str) -> Iterator[tuple[httpx.Client, ShardGroup]]:
    with serving(nats_url, experiment_catalog(), KEYS) as served:
        yield served


async def exposures_logged(url: str) -> dict[str, int]:
    conn = await nats.connect(url)
    try:
        info = await conn.jetstream().stream_info(EXPOSURES_STREAM, subjects_filter="hs.exposures.>")
        return dict(info.state.subjects or {})
    finally:
        await conn.close()


def report(client: httpx.Client, experiment: str) -> dict[str, Any]:
    reply = client.get(f"/v1/experiments/{experiment}/report", headers=ADMIN)
    assert reply.status_code == 200, reply.text
    body: dict[str, Any] = reply.json()
    return body


def test_arms_exposures_outcomes_and_the_report(api: tuple[httpx.Client, ShardGroup], nats_url: str) -> None:
    client, _ = api
    pseudonymizer = Pseudonymizer(TEST_SECRET)
    arms: dict[str, str] = {}
    for _ in range(3):  # decided for three times: exposed once
        for user in USERS:
            body = {"user_id": user, "context": {"locale": "en"}}
            reply = client.post("/v1/decide", json=body, headers=FRONTEND)
            assert reply.status_code == 200, reply.text
            decision = reply.json()
            arm = decision["experiments"].get("welcome_copy")
            if arm is None:  # the global holdout: the default flow
                assert decision["experiments"] == {}
                assert decision["message"] != SHORT.replace("{{product}}", "Relay")
                continue
            assert arms.setdefault(user, arm) == arm
            assert (decision["message"] == SHORT.replace("{{product}}", "Relay")) == (arm == "short")
    assert 0 < len(arms) < len(USERS) and set(arms.values()) == {"control", "short"}

    # Half of the exposed users complete onboarding after their exposure.
    converting = sorted(arms)[::2]
    now = time.time()
    events = [
        {"event_id": f"done-{i}", "user_id": user, "type": "onboarding_completed", "ts": now + 5}
        for i, user in enumerate(converting)
    ]
    assert client.post("/v1/events", json={"events": events}, headers=FRONTEND).status_code == 200

    deadline = time.monotonic() + 60
    while True:
        body = report(client, "welcome_copy")
        conversions = sum(a["conversions"] for a in body["primary"]["arms"].values())
        if (body["exposed"] == len(arms) and conversions == len(converting)) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert body["exposed"] == len(arms)
    by_arm = body["primary"]["arms"]
    for arm in ("control", "short"):
        assert by_arm[arm]["users"] == sum(a == arm for a in arms.values())
        assert by_arm[arm]["conversions"] == sum(arms[u] == arm for u in converting)
    assert body["primary"]["srm"]["counts"] == {a: by_arm[a]["users"] for a in ("control", "short")}
    assert body["verdict"] and body["over_time"][-1]["arms"]["short"]["users"] == by_arm["short"]["users"]
    assert body["shards_missing"] == []

    # The exposures log holds one record per exposed user (decided for three times each).
    logged = asyncio.run(exposures_logged(nats_url))
    assert set(logged.values()) == {1}
    logged_keys = sorted(subject.rsplit(".", 1)[1] for subject in logged)
    assert logged_keys == sorted(pseudonymizer.key(u) for u in arms)
    # The tutorial experiment was not reached (everyone is at the welcome step): nobody exposed.
    assert report(client, "tutorial_format")["exposed"] == 0


def test_an_unknown_experiment_is_a_404(api: tuple[httpx.Client, ShardGroup]) -> None:
    client, _ = api
    reply = client.get("/v1/experiments/nope/report", headers=ADMIN)
    assert reply.status_code == 404 and reply.json()["error"]["code"] == "not_found"
