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
