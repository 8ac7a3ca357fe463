from __future__ import annotations

import contextlib

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.errors import InvalidEvent
from engine.events import (
    BUILTIN_KINDS,
    EVENT_CLASSES,
    EventKind,
    FeatureClicked,
    ProfileUpdated,
    decode_event,
    encode_event,
    event_from_object,
)

BASE = {"event_id": "e1", "user_id": "k1", "ts": 1_700_000_000}
PROPS = {
    "session_started": {"session_id": "s1"},
    "onboarding_started": {},
    "onboarding_completed": {},
    "step_viewed": {"step": "welcome"},
    "step_completed": {"step": "welcome"},
    "feature_clicked": {"feature": "export"},
    "tutorial_started": {"tutorial": "intro", "variant": "video"},
    "tutorial_completed": {"tutorial": "intro", "variant": "video"},
    "profile_updated": {"role": "engineer", "age_band": "25-34"},
    "consent_updated": {"analytics": True, "personalization": False},
    "tour_step_viewed": {"tutorial": "intro", "variant": "tour", "index": 1, "decision_id": "d1"},
    "tour_step_skipped": {"tutorial": "intro", "variant": "tour", "index": 2, "reason": "timeout"},
    "surface_shown": {"surface": "tour", "id": "intro"},
    "surface_dismissed": {"surface": "tooltip", "id": "intro", "index": 0, "decision_id": "d1"},
}


def test_every_kind_has_a_wire_type_and_props_example() -> None:
    assert set(EVENT_CLASSES) == {k.wire_name for k in BUILTIN_KINDS} == set(PROPS)


@pytest.mark.parametrize("kind", sorted(PROPS))
def test_each_type_round_trips(kind: str) -> None:
    event = decode_event(encode_event({**BASE, "type": kind, "props": PROPS[kind]}))
    assert event.kind.wire_name == kind
    assert event.ts == 1_700_000_000.0 and isinstance(event.ts, float)
    assert decode_event(encode_event(event)) == event


def test_context_and_unknown_fields() -> None:
    raw = {
        **BASE,
        "type": "feature_clicked",
        "props": {"feature": "x", "extra": 1},
        "context": {"device_type": "mobile", "locale": "de-DE", "screen": "4k"},
        "unknown": True,
    }
    event = decode_event(encode_event(raw))
    assert isinstance(event, FeatureClicked)
    assert event.context is not None and event.context.device_type == "mobile"
    assert event.context.locale == "de-DE"


def test_profile_traits_beyond_the_known_set_are_not_kept() -> None:
    event = decode_event(
        encode_event({**BASE, "type": "profile_updated", "props": {"role": "pm", "email": "a@b.c"}})
    )
    assert isinstance(event, ProfileUpdated)
    assert not hasattr(event.props, "email")


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"\xc1", "malformed"),
        (encode_event([1, 2, 3]), "malformed"),
        (encode_event({**BASE, "type": "teleported"}), "unknown_type"),
        (encode_event({**BASE}), "missing_field"),
        (encode_event({**BASE, "type": "step_viewed"}), "missing_field"),
        (encode_event({**BASE, "type": "step_viewed", "props": {"step": 3}}), "invalid_field"),
        (encode_event({**BASE, "ts": 1.7e12, "type": "onboarding_started"}), "invalid_field"),
        (encode_event({**BASE, "ts": -1, "type": "onboarding_started"}), "invalid_field"),
        (encode_event({**BASE, "event_id": "", "type": "onboarding_started"}), "invalid_field"),
        (encode_event({**BASE, "type": "step_viewed", "props": {"step": "x" * 500}}), "invalid_field"),
        (encode_event({**BASE, "v": 2, "type": "onboarding_started"}), "unsupported_version"),
    ],
)
def test_bad_messages_are_rejected_with_a_reason(payload: bytes, reason: str) -> None:
    with pytest.raises(InvalidEvent) as info:
        decode_event(payload)
    assert info.value.reason == reason
    assert info.value.detail


def test_event_from_object_accepts_json_shapes() -> None:
    event = event_from_object({**BASE, "type": "step_completed", "props": {"step": "profile"}})
    assert event.kind is EventKind.STEP_COMPLETED
    with pytest.raises(InvalidEvent):
        event_from_object({**BASE, "type": "step_completed"})


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_decoder_never_fails_otherwise_on_arbitrary_bytes(data: bytes) -> None:
    with contextlib.suppress(InvalidEvent):
        decode_event(data)


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["event_id", "user_id", "type", "ts", "props", "context", "v"]),
        st.one_of(
            st.none(),
            st.integers(min_value=-(2**63), max_value=2**63 - 1),
            st.floats(allow_nan=True),
            st.text(max_size=20),
            st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=3),
        ),
    )
)
def test_decoder_never_fails_otherwise_on_arbitrary_maps(obj: dict[str, object]) -> None:
    with contextlib.suppress(InvalidEvent):
        decode_event(msgspec.msgpack.encode(obj))


@pytest.mark.parametrize(
    ("kind", "props", "where"),
    [
        ("surface_shown", {"surface": "popup", "id": "intro"}, "$.props.surface"),
        ("surface_dismissed", {"surface": "tour"}, "$.props"),
        ("tour_step_viewed", {"tutorial": "intro", "variant": "tour", "index": -1}, "$.props.index"),
        ("tour_step_skipped", {"tutorial": "intro", "index": 0}, "$.props"),
    ],
)
def test_flow_events_are_checked_at_the_edge(kind: str, props: dict[str, object], where: str) -> None:
    with pytest.raises(InvalidEvent) as caught:
        event_from_object({**BASE, "type": kind, "props": props})
    assert where in str(caught.value)


def test_flow_events_are_typed_structs() -> None:
    event = event_from_object({**BASE, "type": "surface_dismissed", "props": PROPS["surface_dismissed"]})
    assert event.kind is EventKind.SURFACE_DISMISSED
    assert event.props.surface == "tooltip" and event.props.index == 0  # type: ignore[attr-defined]
    assert event.props.decision_id == "d1"  # type: ignore[attr-defined]
