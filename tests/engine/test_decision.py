from __future__ import annotations

from typing import Any

import pytest

from engine.catalog import DEFAULT_CATALOG, Catalog, load_catalog
from engine.decision import Decider, rollout_bucket
from engine.events import event_from_object
from engine.keys import Pseudonymizer
from engine.profile import UserState, Vocabularies

NOW = 1_767_600_000.0


@pytest.fixture(scope="module")
def decider() -> Decider:
    return Decider(load_catalog(DEFAULT_CATALOG))


def user_after(*events: dict[str, Any]) -> tuple[UserState, Vocabularies]:
    vocab, user = Vocabularies(), UserState.new(NOW)
    for i, body in enumerate(events):
        user.apply(event_from_object({"event_id": str(i), "user_id": "k", "ts": NOW, **body}), vocab)
    return user, vocab


def done(step: str) -> dict[str, Any]:
    return {"type": "step_completed", "props": {"step": step}}


def test_cold_start_uses_the_request_context(decider: Decider) -> None:
    d = decider.decide("k" * 26, None, None, {"device_type": "tablet", "locale": "fr-FR"}, NOW).answer
    assert d.step is not None and d.step.id == "welcome" and d.step.title == "Bienvenue sur Relay"
    assert d.message.startswith("Bienvenue sur Relay")
    assert set(d.segments) == {"engagement_low", "device_tablet", "locale_fr", "new_user"}
    assert d.personalized is False and "cold start" in d.explain[0]
    assert len(d.decision_id) == 32


def test_next_step_follows_prerequisites_and_completion_rules(decider: Decider) -> None:
    user, vocab = user_after(done("welcome"))
    assert decider.decide("k", user, vocab, {}, NOW).answer.step.id == "profile"
    user, vocab = user_after(done("welcome"), done("profile"))
    d = decider.decide("k", user, vocab, {"device_type": "mobile"}, NOW).answer
    assert d.step.id == "connect_data"
    # first_project is also completed by clicking create_project (completed_by in the catalog).
    user, vocab = user_after(
        done("welcome"),
        done("profile"),
        done("connect_data"),
        {"type": "feature_clicked", "props": {"feature": "create_project"}},
    )
    d = decider.decide("k", user, vocab, {"device_type": "mobile"}, NOW).answer
    assert d.step.id == "invite_team"
    assert "first_project" in d.completed_steps


def test_segment_restricted_steps_and_journey_end(decider: Decider) -> None:
    steps = ["welcome", "profile", "connect_data", "first_project", "invite_team"]
    user, vocab = user_after(*(done(s) for s in steps))
    mobile = decider.decide("k", user, vocab, {"device_type": "mobile"}, NOW).answer
    # integrations is only for engaged or desktop users; this user is engaged by now.
    assert mobile.step.id == "integrations"
    user, vocab = user_after(*(done(s) for s in [*steps, "integrations"]))
    finished = decider.decide("k", user, vocab, {}, NOW).answer
    assert finished.step is None and "journey complete" in finished.explain


def test_tutorial_variants_respect_segments(decider: Decider) -> None:
    user, vocab = user_after(done("welcome"), done("profile"), done("connect_data"))
    mobile = decider.decide("k", user, vocab, {"device_type": "mobile"}, NOW).answer.tutorial
    assert mobile.id == "first_project" and "video" not in mobile.eligible
    desktop = decider.decide("k", user, vocab, {"device_type": "desktop"}, NOW).answer.tutorial
    assert "video" in desktop.eligible
    choice = decider.select_tutorial(None, {"device_type": "mobile"}, NOW, feature="invite")
    assert choice is not None and choice.answer.tutorial == "collaboration"
    assert decider.select_tutorial(None, {}, NOW, feature="no-such-feature") is None


def test_messages_escape_user_values_and_render_missing_ones_empty(decider: Decider) -> None:
    user, vocab = user_after({"type": "profile_updated", "props": {"name": "<script>x</script>"}})
    message = decider.decide("k", user, vocab, {"locale": "en-GB"}, NOW).answer.message
    assert "<script>" not in message and "&lt;script&gt;" in message
    anonymous = decider.decide("k", None, None, {"locale": "xx-YY"}, NOW).answer.message
    assert anonymous == "Welcome to Relay! Let's set up your workspace."


def test_flag_targeting_and_stable_rollout(decider: Decider) -> None:
    p = Pseudonymizer(b"s" * 32)
    keys = [p.key(f"user{i}") for i in range(4000)]
    on = [decider.flags(k, ["device_desktop"])["new_onboarding"]["value"] for k in keys]
    assert 0.45 < sum(on) / len(on) < 0.55  # a 50% rollout
    again = [decider.flags(k, ["device_mobile"])["new_onboarding"]["value"] for k in keys]
    assert on == again  # stable per user, whatever else changes
    assert decider.flags(keys[0], ["device_mobile"])["simplified_mobile_flow"]["value"] is True
    assert decider.flags(keys[0], ["device_desktop"])["simplified_mobile_flow"]["value"] is False
    assert decider.flags(keys[0], ["locale_de"])["onboarding_emails"] == {
        "value": False,
        "reason": "TARGETING_MATCH",
        "rule": 0,
    }
    assert decider.flags(keys[0], [])["onboarding_emails"] == {
        "value": True,
        "reason": "DEFAULT",
        "rule": None,
    }
    split = decider.flags(keys[0], [])["new_onboarding"]
    assert split["reason"] == ("SPLIT" if split["value"] else "DEFAULT")
    # Independent flags do not share rollout buckets.
    assert rollout_bucket("a", keys[0]) != rollout_bucket("b", keys[0])


def test_without_personalization_consent_the_default_flow_is_served(decider: Decider) -> None:
    user, vocab = user_after(done("welcome"), done("profile"))
    d = decider.decide("k", user, vocab, {}, NOW, personalize=False).answer
    assert d.step.id == "welcome" and d.personalized is False
    assert "personalization not permitted" in d.explain[0]


def test_engagement_tiers_come_from_the_catalog() -> None:
    catalog: Catalog = load_catalog(DEFAULT_CATALOG)
    strict = Decider(
        catalog.model_copy(
            update={
                "engagement_tiers": catalog.engagement_tiers.model_copy(
                    update={"high": 1000.0, "medium": 500.0}
                )
            }
        )
    )
    user, _ = user_after(*(done("welcome") for _ in range(10)))
    assert "engagement_low" in strict.segments(user, {}, NOW)
    assert "engagement_high" in Decider(catalog).segments(user, {}, NOW)


def test_rule_segments_are_in_decisions_and_target_flags() -> None:
    data = load_catalog(DEFAULT_CATALOG).model_dump()
    data["flags"].append({"id": "export_tips", "rules": [{"segments": ["power_user"], "value": True}]})
    decider = Decider(Catalog.model_validate(data))
    user, vocab = user_after({"type": "feature_clicked", "props": {"feature": "export"}})
    d = decider.decide("k", user, vocab, {"device_type": "desktop"}, NOW).answer
    assert "power_user" in d.segments and "mobile_newcomer" not in d.segments
    assert d.flags["export_tips"] is True
    later = decider.decide("k", user, vocab, {}, NOW + 4 * 86_400).answer  # time alone makes them dormant
    assert "dormant" in later.segments
    cold = decider.decide("k" * 26, None, None, {"device_type": "mobile"}, NOW).answer
    assert "mobile_newcomer" in cold.segments and "power_user" not in cold.segments


def test_a_welcome_message_can_target_segments() -> None:
    from engine.catalog import DEFAULT_CATALOG, load_catalog
    from engine.decision import Decider
    from engine.events import event_from_object
    from engine.profile import UserState, Vocabularies

    decider = Decider(load_catalog(DEFAULT_CATALOG))
    vocab, user = Vocabularies(), UserState.new(1_700_000_000.0)
    user.apply(
        event_from_object(
            {"event_id": "e", "user_id": "k", "type": "session_started", "ts": 1_700_000_000.0}
        ),
        vocab,
    )
    fresh = decider.decide("k", user, vocab, {"locale": "de-DE"}, now=1_700_000_100.0).answer
    back = decider.decide("k", user, vocab, {"locale": "de-DE"}, now=1_700_000_000.0 + 4 * 86400).answer
    assert "dormant" not in fresh.segments and fresh.message.startswith("Willkommen bei")
    assert "dormant" in back.segments and back.message.startswith("Willkommen zurück")


def test_flags_target_rule_segments_over_declared_traits_context_and_events() -> None:
    """The contract catalog: ``pro_tips`` is on for the ``pro_plan`` segment (``plan == "pro"``);
    the request's declared context field counts for rules as the built-in ones do."""
    from tests.catalogs import CUSTOM_SCHEMA

    catalog = load_catalog(CUSTOM_SCHEMA)
    schema, decider = catalog.event_schema, Decider(catalog)
    vocab, user = Vocabularies(), UserState.new(NOW)
    for i, body in enumerate(
        [
            {"type": "profile_updated", "props": {"plan": "pro", "seats": 9}},
            {"type": "created_board", "props": {"template": "kanban"}},
            {"type": "created_board", "props": {"template": "scrum"}},
        ]
    ):
        user.apply(schema.from_object({"event_id": str(i), "user_id": "k", "ts": NOW, **body}), vocab, schema)
    d = decider.decide("k", user, vocab, {"app_theme": "dark"}, NOW).answer
    assert {"pro_plan", "board_maker", "dark_team"} <= set(d.segments)
    assert "slack_connected" not in d.segments and d.flags["pro_tips"] is True
    light = decider.decide("k", user, vocab, {"app_theme": "light"}, NOW).answer
    assert "dark_team" not in light.segments and light.flags["pro_tips"] is True
    cold = decider.decide("k" * 26, None, None, {"app_theme": "dark"}, NOW).answer
    assert not {"pro_plan", "dark_team"} & set(cold.segments) and cold.flags["pro_tips"] is False
