"""Live membership of rule segments over the catalog's declared events, traits and context
fields (the contract catalog, tests/catalogs/custom_schema.yaml), driven by real events
through a partition: exact re-evaluation (an event re-evaluates only the rules reading what it
changed), and the same membership as evaluating every rule from scratch."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from engine.catalog import Catalog, load_catalog
from engine.events import EventKind, encode_event
from engine.partition import PartitionSetup, PartitionState
from engine.profile import CONTEXT_CHANGED, TRAITS_CHANGED
from engine.rules import rule_input
from engine.segments import SegmentIndex
from tests.catalogs import CUSTOM_SCHEMA

NOW = 1_767_571_200.0
CONTRACT = load_catalog(CUSTOM_SCHEMA)
#: Beside the contract's own segments (board_maker, slack_connected, pro_plan, dark_team).
MORE = {
    "invited_twice": 'event_count("invited_teammate") >= 2',
    "busy_free": 'plan == "free" and event_count("session_started") >= 2',
    "github_not_slack": (
        'event_count("connected_integration", integration="github") > 0'
        ' and event_count("connected_integration", integration="slack") == 0'
    ),
    "saas": 'industry == "saas" or app_theme == "light"',
}


def catalog_with(rules: dict[str, str]) -> Catalog:
    data = CONTRACT.model_dump(by_alias=True)
    data["segments"] = [*data["segments"], *({"id": k, "rule": v} for k, v in rules.items())]
    return Catalog.model_validate(data)


def partition(catalog: Catalog = CONTRACT) -> tuple[SegmentIndex, PartitionState]:
    index = SegmentIndex(catalog)
    return index, PartitionState(0, PartitionSetup(segment_index=index, schema=catalog.event_schema))


def send(part: PartitionState, seq: int, kind: str, ts: float, key: str = "k", **extra: Any) -> None:
    """An event as the stream holds it (msgpack), decoded by the partition with its schema."""
    body = {"event_id": f"e{seq}", "user_id": key, "type": kind, "ts": ts, **extra}
    part.apply_message(seq, key, encode_event(body))


def changes(part: PartitionState) -> list[tuple[str, str]]:
    assert part.segments is not None
    return [(row[1], row[2]) for row in part.segments.take() if not row[1].startswith(("engagement", "new_"))]


def test_declared_events_traits_and_context_move_users_in_and_out_of_rule_segments() -> None:
    _, part = partition()
    send(part, 1, "session_started", NOW, context={"device_type": "desktop", "app_theme": "dark"})
    changes(part)
    send(part, 2, "created_board", NOW + 10, props={"template": "kanban"})
    assert changes(part) == []
    send(part, 3, "created_board", NOW + 20, props={"template": "blank"})
    assert changes(part) == [("board_maker", "enter")]
    send(part, 4, "connected_integration", NOW + 30, props={"integration": "github"})
    assert changes(part) == []
    send(part, 5, "connected_integration", NOW + 40, props={"integration": "slack"})
    assert changes(part) == [("slack_connected", "enter")]
    send(part, 6, "profile_updated", NOW + 50, props={"plan": "pro", "seats": 3})
    assert changes(part) == [("pro_plan", "enter")]
    send(part, 7, "profile_updated", NOW + 60, props={"seats": 12})  # the theme was dark already
    assert changes(part) == [("dark_team", "enter")]
    send(part, 8, "invited_teammate", NOW + 70, context={"app_theme": "light"})
    assert changes(part) == [("dark_team", "exit")]
    send(part, 9, "profile_updated", NOW + 80, props={"plan": "free"})
    assert changes(part) == [("pro_plan", "exit")]
    user = part.users["k"]
    facts = rule_input(user, part.vocab, NOW + 80, schema=part.schema)
    index = part.segments.index if part.segments else None
    assert index is not None
    assert set(index.names(user.segments)) >= {"board_maker", "slack_connected"}
    assert {s for s, r in zip(index.ids, index.rules, strict=True) if r.matches(facts)} == set(
        index.names(user.segments)
    )


def test_an_event_re_evaluates_only_the_rules_reading_what_it_changed() -> None:
    index, _ = partition(catalog_with(MORE))
    bits = {name: 1 << index.bit[name] for name in index.ids}
    custom = {name: bits[name] for name in ("board_maker", "slack_connected", "pro_plan", "dark_team")} | {
        name: bits[name] for name in MORE
    }

    def decided(kind: EventKind, changed: int = 0, counted: str | None = None) -> set[str]:
        key = index.key(kind, changed, counted_type=index.counted_types.get(counted or "", 0))
        decides, _ = index.evaluator(key)
        return {name for name, bit in custom.items() if decides & bit}

    assert decided(EventKind.CUSTOM, counted="created_board") == {"board_maker"}
    assert decided(EventKind.CUSTOM, counted="connected_integration") == {
        "slack_connected",
        "github_not_slack",
    }
    assert decided(EventKind.CUSTOM, counted="invited_teammate") == {"invited_twice"}
    # A type no rule counts (connected_slack) has no number of its own: nothing custom to redo.
    assert "connected_slack" not in index.counted_types and decided(EventKind.CUSTOM) == set()
    assert decided(EventKind.PROFILE_UPDATED, TRAITS_CHANGED) == {
        "pro_plan",
        "dark_team",
        "busy_free",
        "saas",
    }
    assert decided(EventKind.PROFILE_UPDATED) == set()  # the same traits again
    assert decided(EventKind.CUSTOM, CONTEXT_CHANGED, "created_board") == {"board_maker", "dark_team", "saas"}
    # event_count of a built-in type: its events, and only them.
    assert decided(EventKind.SESSION_STARTED) == {"busy_free"}
    assert decided(EventKind.FEATURE_CLICKED) == set()


def test_a_custom_event_of_a_type_no_rule_counts_evaluates_no_rule_segment() -> None:
    index, part = partition()
    send(part, 1, "session_started", NOW)
    send(part, 2, "connected_slack", NOW + 1)
    assert part.segments is not None
    key = index.key(EventKind.CUSTOM, fresh=True)
    decides, _ = index.by_key[key]  # the key the event path built
    assert not decides & sum(1 << index.bit[s.id] for s in CONTRACT.segments)


EVENTS = st.sampled_from(
    [
        ("session_started", {"context": {"app_theme": "dark"}}),
        ("session_started", {"context": {"app_theme": "light", "device_type": "mobile"}}),
        ("session_started", {}),
        ("created_board", {"props": {"template": "kanban"}}),
        ("created_board", {"props": {"template": "scrum"}, "context": {"app_theme": "dark"}}),
        ("connected_integration", {"props": {"integration": "slack"}}),
        ("connected_integration", {"props": {"integration": "github"}}),
        ("connected_slack", {}),
        ("invited_teammate", {"props": {"role": "pm"}}),
        ("profile_updated", {"props": {"plan": "pro", "seats": 7}}),
        ("profile_updated", {"props": {"plan": "free", "industry": "saas"}}),
        ("profile_updated", {"props": {"seats": 2, "phone": "+4930"}}),
        ("feature_clicked", {"props": {"feature": "export"}}),
    ]
)


@settings(max_examples=150, deadline=None)
@given(
    steps=st.lists(
        st.tuples(st.sampled_from(["a", "b"]), EVENTS, st.floats(0, 2 * 86400)), min_size=1, max_size=30
    ),
    in_order=st.booleans(),
)
def test_live_membership_over_declared_fields_equals_evaluating_every_rule_after_every_event(
    steps: list[tuple[str, tuple[str, dict[str, Any]], float]], in_order: bool
) -> None:
    """As the built-in fields' property test (tests/engine/test_segments.py): re-evaluating only
    what an event can change gives the membership that evaluating every rule gives."""
    index, part = partition(catalog_with(MORE))
    ordered = sorted(steps, key=lambda s: s[2]) if in_order else steps
    for n, (key, (kind, extra), gap) in enumerate(ordered):
        send(part, n + 1, kind, NOW + gap, key=key, **extra)
        user = part.users[key]
        assert part.segments is not None
        facts = rule_input(user, part.vocab, part.segments.clock, schema=part.schema)
        expected = {name for name, rule in zip(index.ids, index.rules, strict=True) if rule.matches(facts)}
        assert set(index.names(user.segments)) == expected
