"""The OpenFeature provider through the real OpenFeature SDK against a running engine."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from openfeature import api
from openfeature.evaluation_context import EvaluationContext
from openfeature.exception import ErrorCode
from openfeature.flag_evaluation import Reason

from engine.catalog import DEFAULT_CATALOG, load_catalog
from engine.decision import rollout_bucket
from engine.keys import Pseudonymizer
from headstart.feature_flags import HeadstartProvider
from tests.actors.conftest import serving
from tests.conftest import TEST_SECRET

pytestmark = pytest.mark.integration

KEYS = {"frontend": "flags-frontend-key", "admin": "flags-admin-key"}


@pytest.fixture(scope="module")
def provider(ray_local: None, nats_url: str) -> Iterator[HeadstartProvider]:
    with serving(nats_url, load_catalog(DEFAULT_CATALOG), KEYS) as (http, _group):
        flags = HeadstartProvider(str(http.base_url), KEYS["frontend"], ttl_s=60)
        api.set_provider(flags)
        try:
            yield flags
        finally:
            api.clear_providers()


def test_flags_targeting_and_rollouts_with_their_reasons(provider: HeadstartProvider) -> None:
    client = api.get_client()
    phone = EvaluationContext(targeting_key="of-user@example.com", attributes={"device_type": "mobile"})
    details = client.get_boolean_details("simplified_mobile_flow", False, phone)
    assert details.value is True and details.reason == Reason.TARGETING_MATCH
    assert details.variant == "on" and details.flag_metadata["rule"] == 0
    assert "phones" in str(details.flag_metadata["description"])
    desktop = EvaluationContext(targeting_key="of-user@example.com", attributes={"device_type": "desktop"})
    assert client.get_boolean_details("simplified_mobile_flow", True, desktop).reason == Reason.DEFAULT
    # A rollout: the same answer Headstart's own bucketing gives this user.
    rollout = client.get_boolean_details("new_onboarding", False, phone)
    bucket = rollout_bucket("new_onboarding", Pseudonymizer(TEST_SECRET).key("of-user@example.com"))
    assert rollout.value is (bucket < 50)
    assert rollout.reason == (Reason.SPLIT if rollout.value else Reason.DEFAULT)
    # Cached: the five evaluations above for two contexts made two calls.
    assert provider.calls == 2


def test_errors_give_the_default_with_a_reason(provider: HeadstartProvider) -> None:
    client = api.get_client()
    user = EvaluationContext(targeting_key="of-user-2@example.com")
    missing = client.get_boolean_details("no_such_flag", True, user)
    assert missing.value is True and missing.reason == Reason.ERROR
    assert missing.error_code == ErrorCode.FLAG_NOT_FOUND
    anonymous = client.get_boolean_details("new_onboarding", False, EvaluationContext())
    assert anonymous.value is False and anonymous.error_code == ErrorCode.TARGETING_KEY_MISSING
    typed = client.get_string_details("new_onboarding", "x", user)
    assert typed.value == "x" and typed.error_code == ErrorCode.TYPE_MISMATCH


def test_an_unreachable_headstart_is_an_error_with_the_default() -> None:
    from headstart.adapters.broker import free_port

    unreachable = HeadstartProvider(f"http://127.0.0.1:{free_port()}", "k", timeout=0.5)
    details = unreachable.resolve_boolean_details
    with pytest.raises(Exception) as raised:
        details("new_onboarding", False, EvaluationContext(targeting_key="u"))
    assert "did not answer" in str(raised.value)
    unreachable.shutdown()
