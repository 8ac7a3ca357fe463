"""The catalog's ``segment_api`` may map Segment calls to the types and traits its ``schema``
declares; ``check-config`` names every mapping to something undeclared, with its field path."""

from __future__ import annotations

import pytest

from engine.catalog import check_catalog_text, load_catalog
from tests.catalogs import CUSTOM_SCHEMA

CONTRACT = CUSTOM_SCHEMA.read_text()
#: The contract catalog without its own ``segment_api`` section (each test gives one).
BASE = CONTRACT[: CONTRACT.index("\nsegment_api:")] + "\n"


def test_the_contract_catalog_maps_tracks_and_traits_to_declared_ones() -> None:
    api = load_catalog(CUSTOM_SCHEMA).segment_api
    assert {t.type for t in api.track} >= {"created_board", "connected_integration", "connected_slack"}
    assert {"plan", "seats", "phone"} <= set(api.identify_traits)


@pytest.mark.parametrize(
    ("section", "where", "why"),
    [
        (
            'segment_api: {track: [{event: "Board Copied", type: copied_board}]}',
            "segment_api.track[0].type",
            "unknown event type 'copied_board' (allowed: session_started",
        ),
        (
            'segment_api: {track: [{event: "Board Created", type: created_board, props: {colour: c}}]}',
            "segment_api.track[0].props.colour",
            "created_board has no prop 'colour' (its props: template, cards)",
        ),
        (
            'segment_api: {track: [{event: "Connected", type: connected_integration}]}',
            "segment_api.track[0].props",
            "connected_integration's required prop 'integration' is not mapped",
        ),
        (
            'segment_api: {track: [{event: "Used", type: feature_clicked, props: {feature: f, plan: p}}]}',
            "segment_api.track[0].props.plan",
            "feature_clicked has no prop 'plan' (its props: feature)",
        ),
        (
            "segment_api: {identify_traits: [name, plan, favourite_colour]}",
            "segment_api.identify_traits[2]",
            "unknown trait 'favourite_colour' (known: name, age_band, role, company_size, plan, seats",
        ),
        (
            'segment_api: {track: [{event: "Profile", type: profile_updated}]}',
            "segment_api.track[0].type",
            "unknown event type 'profile_updated'",
        ),
    ],
)
def test_mappings_to_undeclared_names_are_refused(section: str, where: str, why: str) -> None:
    errors = check_catalog_text(BASE + section + "\n", "boards.yaml")
    assert any(e.startswith(f"boards.yaml: {where}: {why}") for e in errors), errors


def test_without_a_schema_a_track_to_a_custom_type_is_an_unknown_type() -> None:
    text = BASE[: BASE.index("\nschema:")] + BASE[BASE.index("\njourney:") :]
    text = text[: text.index("\nlearning:")] + "\n"  # its features name the schema's fields
    errors = check_catalog_text(text + 'segment_api: {track: [{event: "B", type: created_board}]}\n')
    # (The catalog's other references to declared types fail too; this is the mapping's error.)
    assert (
        "<text>: segment_api.track[0].type: unknown event type 'created_board' (allowed: session_started, "
        "onboarding_started, onboarding_completed, step_viewed, step_completed, feature_clicked, "
        "tutorial_started, tutorial_completed)"
    ) in errors
