"""The learning loop end to end: real Serve, shards, nats-server. Simulated users are shown
tutorial variants chosen by the served policy, complete the better one more often, and the
policy every shard serves moves toward it; rewards count once; shards serve one merged policy;
a new shard starts from it; the decisions log holds every logged decision."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import nats
import numpy as np
import pytest
import ray

from actors.cluster import ShardGroup
from engine.catalog import DEFAULT_CATALOG, Catalog, load_catalog
from headstart.adapters.topology import DECISIONS_STREAM
from tests.actors.conftest import serving

pytestmark = pytest.mark.integration

KEYS = {"frontend": "learn-frontend-key", "admin": "learn-admin-key"}
FRONTEND = {"Authorization": f"Bearer {KEYS['frontend']}"}
ADMIN = {"Authorization": f"Bearer {KEYS['admin']}"}
POINT = "tutorial:first_project"
#: Hidden truth: mobile users finish the checklist far more often than the interactive tour.
COMPLETES = {"checklist": 0.85, "interactive": 0.15}


def fast_merging_catalog() -> Catalog:
    data = load_catalog(DEFAULT_CATALOG).model_dump()
    data["learning"].update(merge_interval_s=0.5, shadow="thompson")
    return Catalog.model_validate(data)


@pytest.fixture(scope="module")
def loop(ray_local: None, nats_url: str) -> Iterator[tuple[httpx.Client, ShardGroup]]:
    with serving(nats_url, fast_merging_catalog(), KEYS, shard_num_cpus=0.25) as api:
        yield api


def learned(group: ShardGroup) -> list[dict[str, Any]]:
    return [ray.get(shard.learned.remote())[POINT] for shard in group.shards]


def wait_for(condition: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.2)


def test_served_policy_moves_toward_the_variant_users_complete(loop: tuple[httpx.Client, ShardGroup]) -> None:
    client, group = loop
    rng = np.random.default_rng(5)
    served: list[str] = []
    decisions = 0
    for round_ in range(12):
        shown = []
        for i in range(25):
            user = f"learner-{round_}-{i}"
            r = client.post(
                "/v1/tutorials/select",
                json={"user_id": user, "step": "first_project", "context": {"device_type": "mobile"}},
                headers=FRONTEND,
            )
            assert r.status_code == 200, r.text
            choice = r.json()
            assert choice["eligible"] == ["interactive", "checklist"] and len(choice["decision_id"]) == 42
            shown.append((user, choice["decision_id"], choice["variant"]))
        served += [variant for _, _, variant in shown]
        decisions += len(shown)
        time.sleep(0.3)  # users take a while; the logged decisions reach their partitions first
        events, rewards = [], []
        for user, decision_id, variant in shown:
            if rng.random() < COMPLETES[variant]:
                events.append(
                    {
                        "event_id": f"{decision_id}-done",
                        "user_id": user,
                        "type": "tutorial_completed",
                        "ts": time.time(),
                        "props": {"tutorial": "first_project", "variant": variant},
                    }
                )
            else:
                rewards.append({"decision_id": decision_id, "reward": 0.0})
        if events:
            assert client.post("/v1/events", json={"events": events}, headers=FRONTEND).status_code == 200
        for body in rewards:
            r = client.post("/v1/rewards", json=body, headers=FRONTEND)
            assert r.status_code == 202 and r.json()["accepted"] is True, r.text
    # Every decision got exactly one reward, learned by the shard owning its user ...
    wait_for(lambda: sum(sum(p["n"]) for p in learned(group)) >= decisions)
    time.sleep(1.5)  # ... and after a merge every shard serves the sum of all of them.
    views = learned(group)
    for view in views:
        assert sum(view["n"]) == pytest.approx(decisions)
        np.testing.assert_allclose(view["n"], views[0]["n"])
        np.testing.assert_allclose(view["rewards"], views[0]["rewards"])
    arms = views[0]["arms"]
    means = {arm: views[0]["rewards"][i] / max(views[0]["n"][i], 1) for i, arm in enumerate(arms)}
    assert means["checklist"] > means["interactive"] + 0.3
    first, last = Counter(served[:75]), Counter(served[-75:])
    assert last["checklist"] > first["checklist"] and last["checklist"] >= 60, (first, last)
    # A reward for a decision already rewarded is not learned again (stored once if repeated,
    # counted as late if the decision closed).
    for _, decision_id, _ in shown[:5]:
        r = client.post("/v1/rewards", json={"decision_id": decision_id, "reward": 1.0}, headers=FRONTEND)
        assert r.status_code == 202
    time.sleep(1.5)
    assert all(sum(view["n"]) == pytest.approx(decisions) for view in learned(group))
    # The decisions log (hs.decisions.>) holds every logged decision, with its propensity.
    assert asyncio.run(_decisions_logged(group)) >= decisions


async def _decisions_logged(group: ShardGroup) -> int:
    conn = await nats.connect(group.nats_url)
    try:
        js = conn.jetstream()
        deadline = time.monotonic() + 10
        while True:
            info = await js.stream_info(DECISIONS_STREAM)
            if info.state.messages or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        msg = await js.get_last_msg(DECISIONS_STREAM, "hs.decisions.>")
        assert msg.subject.startswith("hs.decisions.") and b"propensity" in (msg.data or b"")
        return int(info.state.messages)
    finally:
        await conn.close()


def test_bad_rewards_get_a_clear_4xx(loop: tuple[httpx.Client, ShardGroup]) -> None:
    client, _ = loop
    for body in ({"decision_id": "nope", "reward": 1}, {"decision_id": "x" * 42, "reward": 0.5}):
        r = client.post("/v1/rewards", json=body, headers=FRONTEND)
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_decision_id"
    for body in ({"decision_id": "a" * 42, "reward": 2}, {"reward": 1}, {"decision_id": "a" * 42}):
        r = client.post("/v1/rewards", json=body, headers=FRONTEND)
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_request", r.text
    plain = client.post("/v1/rewards", json={"decision_id": "f" * 32, "reward": 1}, headers=FRONTEND)
    assert plain.status_code == 202 and plain.json()["accepted"] is False


def test_a_new_shard_starts_from_the_merged_policy(loop: tuple[httpx.Client, ShardGroup]) -> None:
    _, group = loop
    before = learned(group)[0]
    group.rescale(3)
    try:
        wait_for(lambda: len(group.shards) == 3)
        newcomer = ray.get(group.shards[2].learned.remote())[POINT]
        np.testing.assert_allclose(newcomer["n"], before["n"])
        np.testing.assert_allclose(newcomer["rewards"], before["rewards"])
    finally:
        group.rescale(2)


def test_the_decisions_log_replays_into_what_the_policies_learned(
    loop: tuple[httpx.Client, ShardGroup],
) -> None:
    """``headstart evaluate``'s source: the stream replayed gives each decision the reward the
    shards learned from, with its propensity."""
    from headstart.reports.evaluate import evaluate_logged, logged_decisions, read_events_stream

    _, group = loop
    catalog = fast_merging_catalog()
    frame = logged_decisions(asyncio.run(read_events_stream(group.nats_url)), catalog)
    rows = frame.filter(frame["point"] == POINT)
    served = learned(group)[0]
    assert rows.height == pytest.approx(sum(served["n"]))
    assert rows["reward"].sum() == pytest.approx(sum(served["rewards"]))
    assert rows["propensity"].min() > 0  # type: ignore[operator]
    report = evaluate_logged("thompson", frame, catalog)
    assert set(report["points"][POINT]["estimates"]) == {"ips", "snips", "dr"}
