"""The context vector's layout from the catalog: the built-in features as before, the declared
ones (one-hot, log1p, 0/1, event counts), reading another layout by name, and the checks."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from engine.catalog import DEFAULT_CATALOG, Catalog, FeatureSpec, check_catalog_text, load_catalog
from engine.errors import ConfigError
from engine.features import (
    BUILTIN_LAYOUT,
    LEGACY_NAMES,
    FeatureLayout,
    layout_id,
    record_names,
    remap,
    remap_index,
)
from engine.profile import UserState, Vocabularies
from engine.schema import EventSchema, SchemaSection
from tests.catalogs import CUSTOM_SCHEMA

NOW = 1_767_600_000.0
#: The vector's layout before the built-in features moved to the catalog (engine/features.py
#: at 79fa0f3): a catalog that says nothing must keep it, name for name.
BEFORE = (
    "bias",
    "device=mobile",
    "device=desktop",
    "device=tablet",
    "lang=en",
    "lang=de",
    "lang=fr",
    "lang=es",
    "referrer=search",
    "referrer=community",
    "referrer=owned",
    "log_engagement",
    "log_sessions",
    "log_events_5m",
    "new_user",
    "steps_completed",
    "log_tutorials_completed",
    "log_features_clicked",
    "role_technical",
    "company_large",
    "cluster=0",
    "cluster=1",
    "cluster=2",
    "cluster=3",
)


def apply(user: UserState, vocab: Vocabularies, schema: EventSchema, **event: Any) -> None:
    body = {"event_id": f"e{user.events_total}", "user_id": "k", "ts": NOW, **event}
    user.apply(schema.from_object(body), vocab, schema)


def custom() -> tuple[FeatureLayout, EventSchema]:
    catalog = load_catalog(CUSTOM_SCHEMA)
    return FeatureLayout.from_catalog(catalog), catalog.event_schema


def test_the_default_catalog_gives_the_built_in_layout_as_before() -> None:
    layout = FeatureLayout.from_catalog(load_catalog(DEFAULT_CATALOG))
    assert layout.names == BEFORE == BUILTIN_LAYOUT.names == LEGACY_NAMES[2]
    assert layout.dim == 24 and layout.layout_id == BUILTIN_LAYOUT.layout_id == layout_id(BEFORE)
    # A catalog without a learning section, too.
    minimal = Catalog.model_validate(
        {"version": 1, "product": "x", "journey": {"steps": [{"id": "a", "kind": "welcome"}]}}
    )
    assert FeatureLayout.from_catalog(minimal).layout_id == BUILTIN_LAYOUT.layout_id


def test_the_built_in_features_of_a_user_are_those_computed_before() -> None:
    vocab, user = Vocabularies(), UserState.new(NOW - 3600)
    schema = EventSchema()
    context = {"device_type": "desktop", "locale": "fr-CA", "referrer": "LinkedIn"}
    for i in range(3):
        apply(user, vocab, schema, type="session_started", ts=NOW - 3600 + i, context=context)
    apply(user, vocab, schema, type="profile_updated", props={"role": "analyst", "company_size": "1000+"})
    apply(user, vocab, schema, type="feature_clicked", props={"feature": "export"})
    apply(user, vocab, schema, type="tutorial_completed", props={"tutorial": "t", "variant": "v"})
    apply(user, vocab, schema, type="step_completed", props={"step": "welcome"})
    user.cluster = 2
    x = BUILTIN_LAYOUT.vector(user, vocab, {"locale": "es-ES"}, NOW)
    expected = dict.fromkeys(BEFORE, 0.0)
    expected.update(
        {
            "bias": 1.0,
            "device=desktop": 1.0,  # the profile's: the request does not say
            "lang=es": 1.0,  # the request's wins over the profile's fr
            "referrer=community": 1.0,  # case-insensitive
            "log_engagement": math.log1p(user.engagement_at(NOW)),
            "log_sessions": math.log1p(4),  # three starts, then events an hour later
            "log_events_5m": math.log1p(user.events_in_window(NOW)),
            "new_user": 1.0,
            "steps_completed": 0.25,
            "log_tutorials_completed": math.log1p(1),
            "log_features_clicked": math.log1p(1),
            "role_technical": 1.0,
            "company_large": 1.0,
            "cluster=2": 1.0,
        }
    )
    assert x.tolist() == list(expected.values())
    never_seen = BUILTIN_LAYOUT.vector(None, None, {"device_type": "watch"}, NOW)
    assert never_seen.tolist() == [1.0 if n in ("bias", "new_user") else 0.0 for n in BEFORE]


def test_the_built_in_categories_come_from_the_catalog() -> None:
    data = load_catalog(DEFAULT_CATALOG).model_dump()
    data["learning"]["builtin_features"] = {
        "languages": ["en", "pt"],
        "referrer_groups": {"search": ["google"], "social": ["mastodon"]},
        "technical_roles": ["scientist"],
        "large_company_sizes": ["51-200"],
    }
    layout = FeatureLayout.from_catalog(Catalog.model_validate(data))
    assert layout.names[4:8] == ("lang=en", "lang=pt", "referrer=search", "referrer=social")
    assert layout.layout_id != BUILTIN_LAYOUT.layout_id
    user, vocab = UserState.new(NOW), Vocabularies()
    apply(
        user,
        vocab,
        EventSchema(),
        type="profile_updated",
        props={"role": "scientist", "company_size": "51-200"},
    )
    x = layout.vector(user, vocab, {"locale": "pt-BR", "referrer": "mastodon"}, NOW)
    on = {n for n, v in zip(layout.names, x.tolist(), strict=True) if v == 1.0}
    assert {"lang=pt", "referrer=social", "role_technical", "company_large"} <= on


def test_declared_features_follow_the_built_in_ones() -> None:
    layout, _ = custom()
    assert layout.names[:24] == BEFORE
    assert layout.names[24:] == (
        "trait:plan=free",
        "trait:plan=pro",
        "trait:plan=enterprise",
        "event_count:created_board",
        "context:app_theme=light",
        "context:app_theme=dark",
    )
    assert layout.request_fields == ("device_type", "locale", "referrer", "app_theme")


def test_declared_traits_counts_and_context_enter_the_vector() -> None:
    layout, schema = custom()
    vocab, user = Vocabularies(), UserState.new(NOW)
    apply(user, vocab, schema, type="profile_updated", props={"plan": "pro"})
    for template in ("kanban", "blank", "kanban"):
        apply(user, vocab, schema, type="created_board", props={"template": template})
    apply(user, vocab, schema, type="session_started", context={"app_theme": "dark"})

    def declared(request: dict[str, Any] | None) -> dict[str, float]:
        x = layout.vector(user, vocab, request, NOW)
        return dict(zip(layout.names[24:], x[24:].tolist(), strict=True))

    assert declared(None) == {
        "trait:plan=free": 0.0,
        "trait:plan=pro": 1.0,
        "trait:plan=enterprise": 0.0,
        "event_count:created_board": pytest.approx(math.log1p(3)),
        "context:app_theme=light": 0.0,
        "context:app_theme=dark": 1.0,  # the profile's, the request saying nothing
    }
    # The request's context wins over the profile's; a value outside the slots is all zeros.
    assert declared({"app_theme": "light"})["context:app_theme=light"] == 1.0
    assert declared({"app_theme": "light"})["context:app_theme=dark"] == 0.0
    unseen = declared({"app_theme": "sepia"})
    assert unseen["context:app_theme=light"] == unseen["context:app_theme=dark"] == 0.0
    # A user never seen: only the request's context.
    fresh = layout.vector(None, None, {"app_theme": "dark"}, NOW)
    assert fresh[24:].tolist() == [0.0, 0.0, 0.0, 0.0, 0.0, 1.0]


def test_numbers_are_log_scaled_and_booleans_are_0_or_1() -> None:
    schema = EventSchema(
        SchemaSection.model_validate(
            {
                "traits": {"seats": {"type": "number"}, "verified": {"type": "boolean"}},
                "context": {"balance": {"type": "number"}, "beta": {"type": "boolean"}},
            }
        )
    )
    specs = [FeatureSpec(trait="seats"), FeatureSpec(trait="verified"), FeatureSpec(context="balance")]
    layout = FeatureLayout(features=[*specs, FeatureSpec(context="beta")], schema=schema)
    assert layout.names[24:] == ("trait:seats", "trait:verified", "context:balance", "context:beta")
    vocab, user = Vocabularies(), UserState.new(NOW)
    apply(user, vocab, schema, type="profile_updated", props={"seats": 9, "verified": True})
    apply(user, vocab, schema, type="session_started", context={"balance": -99.0, "beta": True})
    x = layout.vector(user, vocab, {"beta": False}, NOW)
    assert x[24:].tolist() == pytest.approx([math.log1p(9), 1.0, -math.log1p(99), 0.0])  # False wins
    assert layout.vector(UserState.new(NOW), vocab, {}, NOW)[24:].tolist() == [0.0] * 4


def test_an_invalid_declaration_is_refused_by_the_layout_too() -> None:
    with pytest.raises(ConfigError):
        FeatureLayout(features=[FeatureSpec(trait="plan")])  # nothing declared
    schema = EventSchema(SchemaSection.model_validate({"context": {"theme": {"type": "string"}}}))
    with pytest.raises(ConfigError):
        FeatureLayout(features=[FeatureSpec(context="theme")], schema=schema)  # no values


def test_another_layout_is_read_by_feature_name() -> None:
    old, new = ("bias", "a", "b", "c"), ("bias", "c", "d", "a")
    index = remap_index(old, new)
    assert index.tolist() == [0, 3, -1, 1]
    assert remap(np.array([1.0, 2.0, 3.0, 4.0]), index).tolist() == [1.0, 4.0, 0.0, 2.0]
    # Linear statistics remap exactly: as if learned in the new layout, its new feature 0.
    rng = np.random.default_rng(1)
    xs = np.column_stack([np.ones(50), rng.normal(size=(50, 3))])
    rewards = rng.random(50)
    gram, b = xs.T @ xs, xs.T @ rewards
    relaid = np.column_stack([xs[:, 0], xs[:, 3], np.zeros(50), xs[:, 1]])
    np.testing.assert_allclose(remap(gram, index, (0, 1)), relaid.T @ relaid)
    np.testing.assert_allclose(remap(b, index), relaid.T @ rewards)


def test_records_name_their_layout_and_older_records_the_built_in_one() -> None:
    layout, _ = custom()
    known = {layout.layout_id: layout.names}
    assert record_names(layout.layout_id, 3, known) == layout.names
    assert record_names("0123456789ab", 3, known) is None  # nobody registered it
    assert record_names(None, 2, known) == BEFORE
    assert record_names(None, 1, known) == BEFORE[:20]  # before the behavioural cluster


CHECKED = """
version: 1
product: Boards
schema:
  events: {created_board: {}, connected_slack: {}}
  traits:
    plan: {type: string, values: [free, pro]}
    seats: {type: number}
    industry: {type: string}
    phone: {type: string, pii: true, values: [x]}
  context: {app_theme: {type: string}}
journey: {steps: [{id: welcome, kind: welcome}]}
messages: {welcome: {en: "Hi"}}
learning:
  features:
"""


@pytest.mark.parametrize(
    ("features", "expected"),
    [
        (
            "[{trait: plan}, {event_count: created_bord}]",
            "learning.features[1].event_count: unknown event type 'created_bord' "
            "(declared: created_board, connected_slack)",
        ),
        (
            "[{trait: tier}]",
            "learning.features[0].trait: unknown trait 'tier' (declared: plan, seats, industry, phone)",
        ),
        ("[{context: plan, values: [free]}]", "learning.features[0].context: unknown context field 'plan'"),
        (
            "[{trait: industry}]",
            "learning.features[0].trait: string field 'industry' needs 'values' "
            "(here or in schema.traits.industry)",
        ),
        (
            "[{context: app_theme}]",
            "learning.features[0].context: string field 'app_theme' needs 'values'",
        ),
        (
            "[{trait: seats, values: [a]}]",
            "learning.features[0].values: 'values' applies to strings; 'seats' is a number",
        ),
        (
            "[{event_count: created_board, values: [a]}]",
            "learning.features[0].values: 'values' applies to string",
        ),
        (
            "[{trait: plan}, {trait: seats}, {trait: plan}]",
            "learning.features[2]: trait 'plan' is listed twice (also learning.features[0])",
        ),
        (
            "[{trait: plan, values: [free, gold]}]",
            "learning.features[0].values[1]: 'gold' is not a declared value",
        ),
        ("[{trait: plan, values: [free, free]}]", "learning.features[0].values: a value is listed twice"),
        ("[{trait: phone}]", "learning.features[0].trait: 'phone' is PII"),
        (
            "[{trait: plan, context: app_theme}]",
            "learning.features[0]: Value error, a feature names exactly one",
        ),
    ],
)
def test_check_config_refuses_wrong_features_with_their_path(features: str, expected: str) -> None:
    errors = check_catalog_text(CHECKED + f"    {features}\n", "boards.yaml")
    assert any(e.startswith(f"boards.yaml: {expected}") for e in errors), errors


def test_check_config_bounds_the_declared_slots() -> None:
    values = ", ".join(f"v{i}" for i in range(40))
    text = CHECKED.replace("industry: {type: string}", f"industry: {{type: string, values: [{values}]}}")
    text = text.replace("app_theme: {type: string}", f"app_theme: {{type: string, values: [{values}]}}")
    errors = check_catalog_text(text + "    [{trait: industry}, {context: app_theme}]\n")
    assert any("learning.features: 80 slots in the context vector" in e for e in errors), errors
    assert (
        check_catalog_text(text + "    [{trait: industry}, {trait: plan}, {event_count: created_board}]\n")
        == []
    )


def test_the_built_in_categories_are_checked() -> None:
    text = CHECKED.replace("learning:\n  features:\n", "learning:\n  builtin_features:\n")
    errors = check_catalog_text(text + "    referrer_groups: {search: [google], ads: [Google]}\n")
    assert any("referrer 'Google' is in groups 'search' and 'ads'" in e for e in errors), errors
    errors = check_catalog_text(text + "    languages: [en, EN-us]\n")
    assert any(e.startswith("<text>: learning.builtin_features.languages[1]") for e in errors), errors
