"""The live state of what a catalog's schema declares (custom event counts, first and last
times, counts by value, custom traits and context fields), against a plain model of it."""

from __future__ import annotations

import collections
from array import array
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from engine.events import Event
from engine.partition import PartitionSetup, PartitionState
from engine.profile import (
    CONTEXT_CHANGED,
    FIRST_USE,
    TRAITS_CHANGED,
    Sealer,
    UserState,
    Vocabularies,
)
from engine.schema import EventSchema, SchemaSection

T0 = 1_767_571_200.0
SCHEMA = EventSchema(
    SchemaSection.model_validate(
        {
            "events": {
                "created_board": {"props": {"template": {"type": "string"}, "cards": {"type": "number"}}},
                # Two counted props, one bounded at two values: "(other)" past it.
                "shared": {
                    "props": {
                        "channel": {"type": "string", "count_by": True, "max_values": 2},
                        "audience": {"type": "string", "count_by": True},
                    }
                },
                "connected_slack": {},
            },
            "traits": {
                "plan": {"type": "string"},
                "seats": {"type": "number"},
                "beta": {"type": "boolean"},
                "phone": {"type": "string", "pii": True},
            },
            "context": {"app_theme": {"type": "string"}, "region": {"type": "string"}},
        }
    )
)
COUNTED = {"shared": (("channel", 2), ("audience", 20))}

EVENT = st.one_of(
    st.fixed_dictionaries(
        {"type": st.just("created_board")},
        optional={
            "props": st.fixed_dictionaries(
                {}, optional={"template": st.sampled_from(["kanban", "blank"]), "cards": st.integers(0, 9)}
            )
        },
    ),
    st.fixed_dictionaries(
        {"type": st.just("shared")},
        optional={
            "props": st.fixed_dictionaries(
                {},
                optional={
                    "channel": st.sampled_from(["link", "email", "slack", "teams"]),
                    "audience": st.sampled_from(["team", "public"]),
                },
            )
        },
    ),
    st.fixed_dictionaries({"type": st.just("connected_slack")}),
    st.fixed_dictionaries(
        {"type": st.just("profile_updated")},
        optional={
            "props": st.fixed_dictionaries(
                {},
                optional={
                    "plan": st.sampled_from(["free", "pro"]),
                    "seats": st.sampled_from([1.0, 5.0]),
                    "beta": st.booleans(),
                    "phone": st.sampled_from(["+1555", "+4930"]),
                },
            )
        },
    ),
    st.fixed_dictionaries({"type": st.just("feature_clicked"), "props": st.just({"feature": "export"})}),
)
CONTEXT = st.none() | st.fixed_dictionaries(
    {}, optional={"app_theme": st.sampled_from(["light", "dark"]), "region": st.sampled_from(["eu", "us"])}
)
STREAM = st.lists(
    st.tuples(EVENT, st.floats(min_value=0, max_value=5 * 86400, allow_nan=False), CONTEXT),
    min_size=1,
    max_size=40,
)


def events_of(stream: list[tuple[dict[str, Any], float, dict[str, Any] | None]]) -> list[Event]:
    out = []
    for n, (body, offset, context) in enumerate(stream):
        event = {**body, "event_id": f"e{n}", "user_id": "k", "ts": T0 + offset}
        if context is not None:
            event["context"] = context
        out.append(SCHEMA.from_object(event))
    return out


def play(events: list[Event], vocab: Vocabularies | None = None) -> tuple[UserState, Vocabularies, list[int]]:
    vocab = vocab or Vocabularies()
    user = UserState.new(events[0].ts)
    return user, vocab, [user.apply(event, vocab, SCHEMA) for event in events]


class Model:
    """The same state, kept the obvious way (dicts, the whole history)."""

    def __init__(self) -> None:
        self.times: dict[str, list[int]] = collections.defaultdict(list)
        self.by: dict[tuple[str, str], collections.Counter[str]] = collections.defaultdict(
            collections.Counter
        )
        self.fields: dict[str, Any] = {}

    def apply(self, event: Event) -> int:
        changed = 0
        name = event.type_name
        for field in SCHEMA.context:
            value = getattr(event.context, field, None) if event.context is not None else None
            if value is not None and self.fields.get(field) != value:
                self.fields[field] = value
                changed |= CONTEXT_CHANGED
        if name in SCHEMA.custom_types:
            changed |= 0 if self.times[name] else FIRST_USE
            self.times[name].append(int(event.ts))
            for prop, bound in COUNTED.get(name, ()):
                value = getattr(event.props, prop)  # type: ignore[attr-defined]
                if value is not None:
                    counts = self.by[name, prop]
                    known = value in counts or len(counts) < bound
                    counts[value if known else "(other)"] += 1
        elif name == "profile_updated":
            for field in SCHEMA.traits:
                value = getattr(event.props, field)  # type: ignore[attr-defined]
                if value is not None and self.fields.get(field) != value:
                    self.fields[field] = value
                    changed |= TRAITS_CHANGED
        return changed


#: Past the bound: the third and fourth channels count as "(other)".
CHANNELS = [({"type": "shared", "props": {"channel": c}}, n * 60.0, None) for n, c in enumerate("abcd")]


@settings(max_examples=200, deadline=None)
@given(STREAM)
@example(CHANNELS)
@example([(e, 300.0 - t, c) for e, t, c in CHANNELS])  # late events: first and last times
def test_counts_times_values_and_fields_are_those_of_a_plain_model(stream: list[Any]) -> None:
    events = events_of(stream)
    user, vocab, changes = play(events)
    model = Model()
    expected = [model.apply(event) for event in events]

    # What the schema's fields and types changed (a feature's first use is FIRST_USE too).
    def bits(changed: int, event: Event) -> int:
        clicked = event.type_name == "feature_clicked"
        return changed & (CONTEXT_CHANGED | TRAITS_CHANGED | (0 if clicked else FIRST_USE))

    assert [bits(c, e) for c, e in zip(changes, events, strict=True)] == [
        bits(c, e) for c, e in zip(expected, events, strict=True)
    ]
    for name in SCHEMA.custom_types:
        type_id = vocab.custom_types.find(name)
        times = model.times.get(name)
        assert user.custom_count(type_id) == len(times or ())
        assert user.custom_times(type_id) == ((min(times), max(times)) if times else None)
    for (name, prop), counts in model.by.items():
        for value, n in counts.items():
            assert (
                user.value_count(vocab.custom_keys.find(f"{name}.{prop}"), vocab.custom_values.find(value))
                == n
            )
    stored = {field: user.extra(vocab.custom_fields.find(field)) for field in SCHEMA.traits + SCHEMA.context}
    assert {k: v for k, v in stored.items() if v is not None} == model.fields
    view = user.view(vocab, T0 + 6 * 86400, SCHEMA)
    assert {k: v["count"] for k, v in view["custom_events"].items() if v["count"]} == {
        k: len(v) for k, v in model.times.items()
    }


class _Sealer:
    def seal(self, user_key: str, value: str) -> bytes:
        return f"{user_key}:{value}".encode()

    def unseal(self, user_key: str, sealed: bytes) -> str | None:
        return sealed.decode().split(":", 1)[1]


@settings(max_examples=100, deadline=None)
@given(STREAM, st.integers(min_value=1, max_value=40))
def test_snapshot_restore_mid_stream_equals_uninterrupted(stream: list[Any], cut: int) -> None:
    events = events_of(stream)
    straight, vocab, _ = play(events)
    first, vocab2, _ = play(events[:cut])
    sealer: Sealer = _Sealer()
    pii = frozenset({vocab2.custom_fields.id("phone")})
    restored = UserState.restore(first.snapshot("k", sealer, pii), "k", sealer)
    vocab3 = Vocabularies(vocab2.snapshot())
    for event in events[cut:]:
        restored.apply(event, vocab3, SCHEMA)
    now = T0 + 6 * 86400
    assert restored.view(vocab3, now, SCHEMA) == straight.view(vocab, now, SCHEMA)


def test_a_user_without_custom_data_holds_none_of_it() -> None:
    events = events_of([({"type": "feature_clicked", "props": {"feature": "a"}}, 0.0, None)])
    user, _, _ = play(events)
    assert (user.custom, user.custom_values, user.extras) == (None, None, None)
    assert len(user.counters) == len(UserState.new(0).counters)  # no room for custom events
    user.custom = array("I", (1, 2, 3, 4))
    assert user.custom_count(1) == 2 and user.custom_times(1) == (3, 4)
    assert user.snapshot()[13] == [array("I", (1, 2, 3, 4)).tobytes(), None, None]
    user.custom_values = array("I", (5, 6, 7))
    assert user.value_count(5, 6) == 7 and user.custom_count(1) == 2
    user.custom = None
    assert user.custom is None and user.value_count(5, 6) == 7
    user.custom_values = None
    assert len(user.counters) == len(UserState.new(0).counters)


def test_ids_are_given_on_first_use_and_a_new_schema_gets_its_own() -> None:
    vocab = Vocabularies()
    user = UserState.new(T0)
    body: dict[str, Any] = {"event_id": "a", "user_id": "k", "type": "shared", "ts": T0}
    user.apply(SCHEMA.from_object(body), vocab, SCHEMA)
    # No value yet: no key, no field id (snapshots hold the names used, as before).
    assert vocab.custom_keys.names == ["(other)"] and vocab.custom_fields.names == ["(other)"]
    body = {**body, "props": {"audience": "team"}, "context": {"region": "eu"}}
    user.apply(SCHEMA.from_object(body), vocab, SCHEMA)
    assert vocab.custom_keys.names == ["(other)", "shared.audience"]
    assert vocab.custom_fields.names == ["(other)", "region"]
    assert "schema_ids" not in vocab.snapshot()
    other = EventSchema(SchemaSection.model_validate({"context": {"tier": {"type": "string"}}}))
    event = other.from_object(
        {"event_id": "c", "user_id": "k", "type": "session_started", "ts": T0, "context": {"tier": "x"}}
    )
    assert user.apply(event, vocab, other) & CONTEXT_CHANGED
    assert user.extra(vocab.custom_fields.find("tier")) == "x"
    assert user.extra(vocab.custom_fields.find("region")) == "eu"


@pytest.mark.parametrize("opt_out", [True, False])
def test_a_pii_trait_is_held_only_while_personalization_is_granted(opt_out: bool) -> None:
    part = PartitionState(0, PartitionSetup(schema=SCHEMA, consent_by_default=opt_out))

    def send(n: int, kind: str, **props: Any) -> None:
        body = {"event_id": f"e{n}", "user_id": "k", "type": kind, "ts": T0 + n, "props": props}
        part.apply_event("k", SCHEMA.from_object(body))

    if not opt_out:  # kept only once analytics is granted; nothing personal before a grant
        send(0, "consent_updated", analytics=True)
    send(1, "profile_updated", phone="+1", plan="pro")
    phone, plan = (part.vocab.custom_fields.find(name) for name in ("phone", "plan"))
    user = part.users["k"]
    assert user.extra(phone) == ("+1" if opt_out else None) and user.extra(plan) == "pro"
    send(2, "consent_updated", personalization=True)
    send(3, "profile_updated", phone="+1")
    assert user.extra(phone) == "+1"
    send(4, "consent_updated", personalization=False)
    assert user.extra(phone) is None and user.extra(plan) == "pro"
