"""The Python client and the OpenFeature provider under identity verification ``required``
(real NATS, Ray and Serve): a product backend's server key acts for any user without a hash;
a frontend key needs each user's ``user_hash``, and without it the client raises the 403 with
the engine's message."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest
from openfeature import api
from openfeature.evaluation_context import EvaluationContext
from openfeature.flag_evaluation import Reason

from actors.cluster import ShardGroup
from engine.catalog import DEFAULT_CATALOG, load_catalog
from headstart.client import Client, Decision, HeadstartApiError
from headstart.feature_flags import HeadstartProvider
from headstart.web.identity import user_hash
from tests.actors.conftest import serving
from tests.conftest import TEST_IDENTITY_SECRET

pytestmark = pytest.mark.integration

KEYS = {"frontend": "idc-frontend-key", "server": "idc-server-key", "admin": "idc-admin-key"}
ADMIN = {"Authorization": f"Bearer {KEYS['admin']}"}


@pytest.fixture(scope="module")
def served(ray_local: None, nats_url: str) -> Iterator[tuple[httpx.Client, ShardGroup]]:
    catalog = load_catalog(DEFAULT_CATALOG)
    with serving(nats_url, catalog, KEYS, identity_verification="required") as engine:
        yield engine


def _until_completed(hs: Client, user: str, step: str, **signed: str) -> Decision:
    deadline = time.monotonic() + 30
    while True:
        decision = hs.decide(user, context={"device_type": "desktop"}, **signed)
        if step in decision.completed_steps or time.monotonic() > deadline:
            return decision
        time.sleep(0.2)


def test_a_server_key_acts_for_any_user_without_a_hash(served: tuple[httpx.Client, ShardGroup]) -> None:
    http, group = served
    alice, bob = "server-alice@example.com", "server-bob@example.com"
    with Client(str(http.base_url), KEYS["server"]) as hs:
        first = hs.decide(alice, context={"device_type": "desktop"})
        assert first.step is not None and first.step.id == "welcome"
        # One batch naming two users: a backend's batch needs no hash and no single user.
        hs.track(alice, "step_completed", props={"step": "welcome"})
        hs.track(bob, "session_started")
        assert hs.flush() == 2
        assert "welcome" in _until_completed(hs, alice, "welcome").completed_steps
        hs.reward(first.decision_id, 1.0)
        choice = hs.select_tutorial(alice, step="first_project")
        assert choice.tutorial == "first_project" and choice.variant is not None
        assert set(hs.flags(alice, context={"device_type": "mobile"}).flags) >= {"simplified_mobile_flow"}
        assert http.get(f"/v1/users/{bob}", headers=ADMIN).status_code == 200
        hs.set_consent(bob, analytics=False, personalization=False)
        group.wait_caught_up(timeout=30)
        assert http.get(f"/v1/users/{bob}", headers=ADMIN).status_code == 404  # nothing kept
        after = hs.decide(bob)
        assert after.personalized is False and "personalization not permitted" in after.explain[0]
    # The OpenFeature provider of a backend, on the same key.
    provider = HeadstartProvider(str(http.base_url), KEYS["server"])
    api.set_provider(provider)
    try:
        phone = EvaluationContext(targeting_key=alice, attributes={"device_type": "mobile"})
        details = api.get_client().get_boolean_details("simplified_mobile_flow", False, phone)
        assert details.value is True and details.reason == Reason.TARGETING_MATCH
    finally:
        api.clear_providers()


def test_a_frontend_key_needs_the_users_hash(served: tuple[httpx.Client, ShardGroup]) -> None:
    http, _ = served
    carol, dave = "frontend-carol@example.com", "frontend-dave@example.com"
    with Client(str(http.base_url), KEYS["frontend"]) as hs:
        for call in (
            lambda: hs.decide(carol),
            lambda: hs.flags(carol),
            lambda: hs.select_tutorial(carol, step="first_project"),
            lambda: hs.set_consent(carol, analytics=True),
        ):
            with pytest.raises(HeadstartApiError) as refused:
                call()
            assert refused.value.status == 403 and "user_hash" in refused.value.message
        hs.track(carol, "session_started")
        with pytest.raises(HeadstartApiError) as unsigned_events:
            hs.flush()
        assert unsigned_events.value.status == 403 and "user_hash" in str(unsigned_events.value)
        assert len(hs._buffer) == 1  # kept, to be sent again
        hs._buffer.clear()
        # Another user's hash is no better than none.
        with pytest.raises(HeadstartApiError) as wrong:
            hs.decide(carol, user_hash=user_hash(TEST_IDENTITY_SECRET, dave))
        assert wrong.value.status == 403 and "does not match" in wrong.value.message
        # With each user's own hash: every call, and events sent as one batch per user.
        carols, daves = user_hash(TEST_IDENTITY_SECRET, carol), user_hash(TEST_IDENTITY_SECRET, dave)
        assert hs.decide(carol, user_hash=carols).step is not None
        assert hs.flags(carol, user_hash=carols).flags
        assert hs.select_tutorial(carol, step="first_project", user_hash=carols).variant is not None
        hs.set_consent(carol, analytics=True, personalization=True, user_hash=carols)
        hs.track(carol, "step_completed", props={"step": "welcome"}, user_hash=carols)
        hs.track(dave, "session_started", user_hash=daves)
        hs.track(carol, "session_started", user_hash=carols)
        assert hs.flush() == 3
        assert "welcome" in _until_completed(hs, carol, "welcome", user_hash=carols).completed_steps
        # Anonymous visitors need no hash.
        assert hs.decide("anon-7f3a9c").step is not None
    provider = HeadstartProvider(str(http.base_url), KEYS["frontend"])
    api.set_provider(provider)
    try:
        client = api.get_client()
        unsigned = EvaluationContext(targeting_key=carol, attributes={"device_type": "mobile"})
        failed = client.get_boolean_details("simplified_mobile_flow", False, unsigned)
        assert failed.reason == Reason.ERROR and "user_hash" in (failed.error_message or "")
        attributes = {"device_type": "mobile", "user_hash": carols}
        signed = EvaluationContext(targeting_key=carol, attributes=attributes)
        assert client.get_boolean_details("simplified_mobile_flow", False, signed).value is True
    finally:
        api.clear_providers()
