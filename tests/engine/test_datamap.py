"""The data map covers every field the code can collect or keep (so it cannot drift)."""

from __future__ import annotations

from engine.datamap import EVENT_FIELDS, PROFILE_FIELDS, Retention, datamap, event_fields, profile_fields


def test_every_event_and_profile_field_is_mapped_and_nothing_stale() -> None:
    assert set(event_fields()) == set(EVENT_FIELDS)
    assert set(profile_fields()) == set(PROFILE_FIELDS)


def test_the_map_says_where_how_long_and_why() -> None:
    rows = {r["field"]: r for r in datamap(Retention(events_days=14), checkpoint_interval_s=30)}
    assert rows["props.name"]["pii"] is True and rows["profile.name"]["pii"] is True
    assert (
        "14 days" in rows["context.country"]["kept_in"]
        and rows["context.country"]["purpose"] == "personalization"
    )
    assert rows["props.analytics"]["events"] == ["consent_updated"]
    assert all(r["purpose"] in {"analytics", "personalization", "legal record"} for r in rows.values())


def test_every_declared_field_is_in_the_map_with_its_purpose_and_pii_class() -> None:
    from engine.catalog import load_catalog
    from tests.catalogs import CUSTOM_SCHEMA

    schema = load_catalog(CUSTOM_SCHEMA).event_schema
    rows = datamap(Retention(), schema=schema)
    by = {(r["field"], tuple(r["events"])): r for r in rows}
    for name, spec in schema.section.events.items():
        assert by[("type", (name,))]["purpose"] == "analytics"
        for prop in spec.props:
            assert by[(f"props.{prop}", (name,))]["pii"] is False
    assert "custom_values" in by[("props.integration", ("connected_integration",))]["kept_in"]
    assert "kanban, scrum, blank" in by[("props.template", ("created_board",))]["meaning"]
    for trait in schema.traits:
        carried, kept = by[(f"props.{trait}", ("profile_updated",))], by[(f"profile.{trait}", ())]
        assert carried["purpose"] == kept["purpose"] == "personalization"
        assert carried["pii"] is kept["pii"] is (trait == "phone")
    phone = by[("props.phone", ("profile_updated",))]
    assert "redacted" in phone["kept_in"] and "sealed" in by[("profile.phone", ())]["kept_in"]
    assert "redacted" not in by[("props.plan", ("profile_updated",))]["kept_in"]
    theme = by[("context.app_theme", tuple(sorted(schema.event_types)))]
    assert theme["purpose"] == "personalization" and by[("profile.app_theme", ())]["pii"] is False
    # The built-in rows are all still there, unchanged.
    builtin = datamap(Retention())
    assert all(row in rows for row in builtin)
