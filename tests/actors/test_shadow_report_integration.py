"""The apprentice report end to end (real Serve, shards, nats-server): users are shown tutorial
variants by a served policy that explores uniformly, complete one variant far more often, and
the report says whether the shadow scored beside it would do better (a learning shadow) or worse
(one that always shows the other variant); the decisions export carries the shadow's draws."""

from __future__ import annotations

import time
from typing import Any

import httpx
import numpy as np
import pytest

from engine.catalog import DEFAULT_CATALOG, Catalog, load_catalog
from tests.actors.conftest import serving

pytestmark = pytest.mark.integration

KEYS = {"frontend": "shadow-frontend-key", "admin": "shadow-admin-key"}
FRONTEND = {"Authorization": f"Bearer {KEYS['frontend']}"}
ADMIN = {"Authorization": f"Bearer {KEYS['admin']}"}
POINT = "tutorial:first_project"
#: Hidden truth: users finish the checklist far more often than the interactive tour.
COMPLETES = {"checklist": 0.85, "interactive": 0.15}


def catalog_with_shadow(shadow: str) -> Catalog:
    """Served: epsilon-greedy exploring uniformly (every arm has support for the estimate)."""
    data = load_catalog(DEFAULT_CATALOG).model_dump()
    data["learning"].update(policy="epsilon_greedy", params={"epsilon": 1.0}, shadow=shadow)
    return Catalog.model_validate(data)


def run_users(client: httpx.Client, prefix: str, users: int = 240) -> None:
    """``users`` new users each shown a variant, then completing it (or not) as the truth says."""
    rng = np.random.default_rng(11)
    for start in range(0, users, 40):
        events, rewards = [], []
        for i in range(start, start + 40):
            user = f"{prefix}-{i}"
            answer = client.post(
                "/v1/tutorials/select", json={"user_id": user, "step": "first_project"}, headers=FRONTEND
            )
            assert answer.status_code == 200, answer.text
            choice = answer.json()
            if rng.random() < COMPLETES[choice["variant"]]:
                props = {"tutorial": "first_project", "variant": choice["variant"]}
                events.append(
                    {
                        "event_id": f"{choice['decision_id']}-done",
                        "user_id": user,
                        "type": "tutorial_completed",
                        "ts": time.time(),
                        "props": props,
                    }
                )
            else:
                rewards.append({"decision_id": choice["decision_id"], "reward": 0.0})
        time.sleep(0.3)  # the logged decisions reach their partitions before their rewards
        if events:
            assert client.post("/v1/events", json={"events": events}, headers=FRONTEND).status_code == 200
        for body in rewards:
            assert client.post("/v1/rewards", json=body, headers=FRONTEND).status_code == 202


def shadow_report(client: httpx.Client, decisions: int) -> dict[str, Any]:
    """The report once every decision is in it (rewards are stored asynchronously)."""
    deadline = time.monotonic() + 30
    while True:
        answer = client.get("/v1/admin/shadow", headers=ADMIN)
        assert answer.status_code == 200, answer.text
        report: dict[str, Any] = answer.json()
        point = report["points"].get(POINT)
        if (point and point["decisions"] >= decisions) or time.monotonic() > deadline:
            return report
        time.sleep(0.5)


@pytest.mark.parametrize(
    ("shadow", "verdict"), [("ucb", "shadow better"), ("journey", "shadow worse")], ids=["better", "worse"]
)
def test_the_apprentice_report_tells_a_better_shadow_from_a_worse_one(
    ray_local: None, nats_url: str, shadow: str, verdict: str
) -> None:
    with serving(nats_url, catalog_with_shadow(shadow), KEYS, shard_num_cpus=0.25) as (client, _):
        assert client.get("/v1/admin/shadow", headers=FRONTEND).status_code == 403
        run_users(client, f"apprentice-{shadow}")
        report = shadow_report(client, 240)
    assert report["served_policy"] == "epsilon_greedy" and report["shadow_policy"] == shadow
    point = report["points"][POINT]
    assert point["decisions"] == 240
    served, dr = point["served"]["value"], point["shadow"]["dr"]
    assert 0.3 < served < 0.7  # uniform exploration: about the mean of both variants
    assert point["verdict"] == verdict, point
    if shadow == "ucb":
        # It learned the checklist from the served rewards: it mostly agrees only when the
        # served draw happened to be the checklist.
        assert dr["ci_low"] > served and 0.3 < point["agreement"] < 0.7
        assert report["ready_to_switch"] is (set(report["points"]) == {POINT})
    else:
        # Always the interactive tour: its value is the tour's, and it agrees half the time.
        assert dr["ci_high"] < served and dr["ci_low"] < COMPLETES["interactive"] + 0.1
        assert report["ready_to_switch"] is False
