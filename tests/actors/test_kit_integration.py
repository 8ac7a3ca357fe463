"""The in-app kit's server side end to end (real NATS, Ray and Serve, through the HTTP API): a
tour's progress events make the next decision resume at the right step, a dismissal stops it
being offered, and pacing holds back a second interruption within the gap and says why."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from actors.cluster import ShardGroup
from engine.catalog import DEFAULT_CATALOG, Catalog, load_catalog
from tests.actors.conftest import serving

pytestmark = pytest.mark.integration

KEYS = {"frontend": "test-frontend-key"}
FRONTEND = {"Authorization": f"Bearer {KEYS['frontend']}"}
CONTEXT = {"device_type": "desktop", "locale": "en-US", "timezone": "Europe/Berlin"}


def kit_catalog() -> Catalog:
    """The default catalog with one variant of the first project's tutorial (its tour: no
    choice to wait for) and pacing without quiet hours (the test passes at any hour)."""
    data = load_catalog(DEFAULT_CATALOG).model_dump(by_alias=True, exclude_none=True)
    tutorial = next(t for t in data["tutorials"] if t["id"] == "first_project")
    tutorial["variants"] = [v for v in tutorial["variants"] if v["id"] == "interactive"]
    data["pacing"] = {"overall": {"min_gap_minutes": 10}, "surfaces": {"tour": {"max_per_day": 2}}}
    return Catalog.model_validate(data)


@pytest.fixture(scope="module")
def api(ray_local: None, nats_url: str) -> Iterator[tuple[httpx.Client, ShardGroup]]:
    with serving(nats_url, kit_catalog(), KEYS) as served:
        yield served


def send(client: httpx.Client, user: str, *events: tuple[str, dict[str, Any]]) -> None:
    now = time.time()
    body = [
        {"event_id": f"{user}-{kind}-{now}-{i}", "user_id": user, "type": kind, "ts": now, "props": props}
        for i, (kind, props) in enumerate(events)
    ]
    reply = client.post("/v1/events", json={"events": body}, headers=FRONTEND)
    assert reply.status_code == 200, reply.text


def decide_until(client: httpx.Client, user: str, ready: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """The first answer ``ready`` accepts (events reach the user's shard asynchronously)."""
    deadline = time.monotonic() + 30
    while True:
        reply = client.post("/v1/decide", json={"user_id": user, "context": CONTEXT}, headers=FRONTEND)
        assert reply.status_code == 200, reply.text
        answer: dict[str, Any] = reply.json()
        if ready(answer) or time.monotonic() > deadline:
            return answer
        time.sleep(0.2)


def on_first_project(client: httpx.Client, user: str) -> dict[str, Any]:
    send(
        client,
        user,
        ("session_started", {}),
        *(("step_completed", {"step": step}) for step in ("welcome", "profile", "connect_data")),
    )
    answer = decide_until(client, user, lambda a: (a["step"] or {}).get("id") == "first_project")
    assert answer["step"]["id"] == "first_project", answer["explain"]
    return answer


def test_a_tours_progress_resumes_and_a_dismissal_stops_it(api: tuple[httpx.Client, ShardGroup]) -> None:
    client, _ = api
    user = "kit-tour@example.com"
    answer = on_first_project(client, user)
    tutorial = answer["tutorial"]
    assert tutorial["id"] == "first_project" and tutorial["surface"] == "tour" and tutorial["resume_at"] == 0
    assert [s["target"] for s in tutorial["tour"]] == ["#new-project", "#project-name", "#project-create"]
    assert answer["surfaces"]["tour"] == {"show": True, "reason": "allowed"}
    checklist = {item["id"]: (item["url"], item["done"]) for item in answer["journey"]}
    assert checklist["welcome"] == ("/welcome", True) and checklist["first_project"] == (
        "/projects/new",
        False,
    )

    progress = {"tutorial": "first_project", "variant": "interactive", "decision_id": answer["decision_id"]}
    send(
        client,
        user,
        ("surface_shown", {"surface": "tour", "id": "first_project"}),
        ("tour_step_viewed", {**progress, "index": 0}),
        ("tour_step_viewed", {**progress, "index": 1}),
    )
    resumed = decide_until(
        client, user, lambda a: a["tutorial"] is not None and a["tutorial"]["resume_at"] == 1
    )
    assert resumed["tutorial"]["resume_at"] == 1, resumed["explain"]
    # The next step of a tour in progress is no new interruption: the gap does not hold it back.
    assert resumed["surfaces"]["tour"] == {"show": True, "reason": "tour in progress: its next step"}

    send(client, user, ("surface_dismissed", {"surface": "tour", "id": "first_project", "index": 1}))
    after = decide_until(client, user, lambda a: a["tutorial"] is None)
    assert after["tutorial"] is None, after["explain"]
    assert "tutorial first_project: dismissed by the user, not offered again" in after["explain"]
    assert after["surfaces"]["tour"] == {"show": False, "reason": "nothing to show"}


def test_pacing_holds_back_a_second_interruption_within_the_gap(api: tuple[httpx.Client, ShardGroup]) -> None:
    client, _ = api
    user = "kit-pacing@example.com"
    answer = on_first_project(client, user)
    assert answer["surfaces"]["tour"]["show"] is True
    send(client, user, ("surface_shown", {"surface": "banner", "id": "welcome"}))
    held = decide_until(client, user, lambda a: not a["surfaces"]["tour"]["show"])
    reason = held["surfaces"]["tour"]["reason"]
    assert reason.startswith("overall gap: the last interruption was 0 min ago (at least 10 min apart)"), held
    assert f"tour: held back: {reason}" in held["explain"]
    assert held["tutorial"]["id"] == "first_project"  # still the tutorial: only not now
