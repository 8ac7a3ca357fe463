from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.events import BUILTIN_KINDS, Event, EventKind, event_from_object
from engine.profile import (
    C_EVENTS,
    C_WIN,
    C_WIN_EVENTS,
    ENGAGEMENT_HALF_LIFE_S,
    ENGAGEMENT_WEIGHTS,
    SESSION_GAP_S,
    WINDOW_BUCKET_S,
    WINDOW_BUCKETS,
    UserState,
    Vocabularies,
    Vocabulary,
)

T0 = 1_767_571_200.0  # a Monday 00:00 UTC, on a window bucket boundary


def ev(kind: str, ts: float, **props: Any) -> Event:
    body: dict[str, Any] = {"event_id": f"{kind}-{ts}", "user_id": "k", "type": kind, "ts": ts}
    if props:
        body["props"] = props
    return event_from_object(body)


def play(*events: Event) -> tuple[UserState, Vocabularies]:
    vocab = Vocabularies()
    user = UserState.new(events[0].ts)
    for event in events:
        user.apply(event, vocab)
    return user, vocab


def test_window_counts_expire_with_event_time() -> None:
    user, _ = play(
        ev("onboarding_started", T0),
        ev("step_viewed", T0 + 100, step="a"),
        ev("step_viewed", T0 + 250, step="b"),
    )
    assert user.events_in_window(T0 + 250) == 3
    # T0's bucket leaves the 10 x 30 s window once the newest bucket is T0 + 300.
    assert user.events_in_window(T0 + 299) == 3
    assert user.events_in_window(T0 + 300) == 2
    assert user.events_in_window(T0 + 400) == 1
    assert user.events_in_window(T0 + 600) == 0


def test_window_ring_reuses_slots_after_a_long_gap() -> None:
    user, _ = play(
        ev("onboarding_started", T0),
        ev("onboarding_started", T0 + 10 * WINDOW_BUCKET_S),
        ev("onboarding_started", T0 + 3600),
    )
    assert user.events_in_window(T0 + 3600) == 1


def test_late_events_count_in_window_only_if_inside_it() -> None:
    user, _ = play(
        ev("onboarding_started", T0 + 1000),
        ev("step_viewed", T0 + 900, step="a"),
        ev("step_viewed", T0, step="b"),
    )
    assert user.count(EventKind.STEP_VIEWED) == 2
    assert user.events_in_window(T0 + 1000) == 2
    assert user.first_seen == T0 and user.last_seen == T0 + 1000


def test_distinct_features_in_window() -> None:
    user, vocab = play(
        ev("feature_clicked", T0, feature="a"),
        ev("feature_clicked", T0 + 200, feature="b"),
        ev("feature_clicked", T0 + 210, feature="b"),
    )
    assert user.features_in_window(T0 + 210) == 2
    assert user.features_in_window(T0 + 500) == 1
    assert user.view(vocab, T0 + 500)["features"] == {"a": 1, "b": 2}


def test_engagement_decays_by_half_life() -> None:
    user, _ = play(ev("tutorial_completed", T0, tutorial="t", variant="v"))
    weight = ENGAGEMENT_WEIGHTS[EventKind.TUTORIAL_COMPLETED]
    assert user.engagement_at(T0) == pytest.approx(weight)
    assert user.engagement_at(T0 + ENGAGEMENT_HALF_LIFE_S) == pytest.approx(weight / 2)
    # Reading in the past does not inflate the score.
    assert user.engagement_at(T0 - 1000) == pytest.approx(weight)


def test_engagement_does_not_depend_on_arrival_order() -> None:
    a, _ = play(ev("step_completed", T0, step="s"), ev("feature_clicked", T0 + 5000, feature="f"))
    b, _ = play(ev("feature_clicked", T0 + 5000, feature="f"), ev("step_completed", T0, step="s"))
    assert a.engagement_at(T0 + 9000) == pytest.approx(b.engagement_at(T0 + 9000))


def test_sessions_by_explicit_start_and_by_inactivity() -> None:
    user, _ = play(
        ev("session_started", T0),
        ev("feature_clicked", T0 + 60, feature="f"),
        ev("feature_clicked", T0 + 120, feature="f"),
        ev("feature_clicked", T0 + 120 + SESSION_GAP_S + 1, feature="f"),  # inferred new session
        ev("session_started", T0 + 2 * 86400),
    )
    assert user.sessions == 3
    assert user.session_seconds == pytest.approx(120)


def test_active_hours_and_weekdays() -> None:
    user, vocab = play(
        ev("onboarding_started", T0 + 9 * 3600), ev("onboarding_started", T0 + 86400 + 18 * 3600)
    )
    view = user.view(vocab, T0)
    assert view["active_hours_utc"] == [9, 18]
    assert view["active_weekdays"] == [0, 1]  # Monday, Tuesday


def test_steps_tutorials_profile_context_consent() -> None:
    events = [
        event_from_object(
            {
                "event_id": "1",
                "user_id": "k",
                "type": "step_viewed",
                "ts": T0,
                "props": {"step": "welcome"},
                "context": {"device_type": "mobile", "locale": "de-DE"},
            }
        ),
        ev("step_completed", T0 + 1, step="profile"),
        ev("tutorial_started", T0 + 2, tutorial="intro", variant="video"),
        ev("tutorial_completed", T0 + 3, tutorial="intro", variant="video"),
        ev("tutorial_started", T0 + 4, tutorial="intro", variant="checklist"),
        ev("profile_updated", T0 + 5, role="engineer", name="Ada"),
        ev("consent_updated", T0 + 6, analytics=True, personalization=False),
        event_from_object(
            {
                "event_id": "2",
                "user_id": "k",
                "type": "onboarding_started",
                "ts": T0 + 7,
                "context": {"country": "DE"},
            }
        ),
    ]
    user, vocab = play(*events)
    view = user.view(vocab, T0 + 10)
    assert view["steps_viewed"] == ["profile", "welcome"]
    assert view["steps_completed"] == ["profile"]
    assert view["tutorials"] == [
        {"tutorial": "intro", "variant": "video", "started": 1, "completed": 1},
        {"tutorial": "intro", "variant": "checklist", "started": 1, "completed": 0},
    ]
    assert view["traits"] == {"role": "engineer", "name": "Ada"}
    assert view["context"] == {"device_type": "mobile", "locale": "de-DE", "country": "DE"}
    assert view["consent"] == {"analytics": True, "personalization": False}
    assert user.consent_given("personalization", default=True) is False
    assert UserState.new(T0).consent_given("personalization", default=True) is True


def test_a_users_steps_are_listed_in_the_same_order_whatever_other_users_did_first() -> None:
    """The partition numbers steps in the order any of its users first sent them: a user's
    steps_viewed and steps_completed must not depend on it (a replay after a fault, or clients
    interleaved differently, changes it), nor on a snapshot and restore in between."""
    mine = [
        ev("step_viewed", T0, step="welcome"),
        ev("step_completed", T0 + 1, step="welcome"),
        ev("step_viewed", T0 + 2, step="profile"),
        ev("step_completed", T0 + 3, step="connect_data"),
    ]
    other = [ev("step_completed", T0, step="connect_data"), ev("step_viewed", T0, step="profile")]
    views = []
    for others_first in (False, True):
        vocab = Vocabularies()
        if others_first:
            someone = UserState.new(T0)
            for event in other:
                someone.apply(event, vocab)
        user = UserState.new(T0)
        for i, event in enumerate(mine):
            user.apply(event, vocab)
            if i == 1:  # a restore from a snapshot in the middle
                user, vocab = UserState.restore(user.snapshot()), Vocabularies(vocab.snapshot())
        views.append(user.view(vocab, T0 + 10))
    assert views[0] == views[1]
    assert views[0]["steps_viewed"] == ["connect_data", "profile", "welcome"]
    assert views[0]["steps_completed"] == ["connect_data", "welcome"]


def test_vocabulary_is_bounded() -> None:
    vocab = Vocabulary(limit=3)
    ids = [vocab.id(f"f{i}") for i in range(10)]
    assert ids[:3] == [1, 2, 3] and set(ids[3:]) == {0}
    assert vocab.name(0) == Vocabulary.OTHER


EVENT_STRATEGY = st.builds(
    lambda kind, dt, name: ev(kind, T0 + dt, **_props(kind, name)),
    st.sampled_from([k.wire_name for k in BUILTIN_KINDS]),
    st.floats(min_value=0, max_value=10 * 86400, allow_nan=False),
    st.sampled_from(["a", "b", "c"]),
)


def _props(kind: str, name: str) -> dict[str, Any]:
    return {
        "step_viewed": {"step": name},
        "step_completed": {"step": name},
        "feature_clicked": {"feature": name},
        "tutorial_started": {"tutorial": name, "variant": "v"},
        "tutorial_completed": {"tutorial": name, "variant": "v"},
        "consent_updated": {"analytics": name == "a"},
        "profile_updated": {"role": name},
        "tour_step_viewed": {"tutorial": name, "variant": "v", "index": len(name)},
        "tour_step_skipped": {"tutorial": name, "variant": "v", "index": 0, "reason": "timeout"},
        "surface_shown": {"surface": "banner" if name == "c" else "tour", "id": name},
        "surface_dismissed": {"surface": "tooltip" if name == "b" else "tour", "id": name},
    }.get(kind, {})


@settings(max_examples=150, deadline=None)
@given(st.lists(EVENT_STRATEGY, min_size=1, max_size=40), st.integers(min_value=0, max_value=40))
def test_snapshot_restore_mid_stream_equals_uninterrupted(events: list[Event], cut: int) -> None:
    """Recovery contract: snapshot after any prefix, restore, apply the rest == apply all."""
    straight, vocab = play(*events)
    first, vocab2 = play(*events[: max(cut, 1)])
    restored = UserState.restore(first.snapshot())
    vocab3 = Vocabularies(vocab2.snapshot())
    for event in events[max(cut, 1) :]:
        restored.apply(event, vocab3)
    now = T0 + 11 * 86400
    assert restored.view(vocab3, now) == straight.view(vocab, now)


@settings(max_examples=150, deadline=None)
@given(st.lists(EVENT_STRATEGY, min_size=1, max_size=40), st.floats(min_value=0, max_value=400))
def test_the_kept_sums_equal_the_counts_they_sum(events: list[Event], later: float) -> None:
    """Events of every kind and events in the window are kept as sums, whatever the order the
    events came in (late ones too); the window's sum is what the window holds."""
    user, _ = play(*events)
    c = user.counters
    assert user.events_total == sum(user.count(k) for k in EventKind) == len(events)
    newest = max(e.ts for e in events)
    assert c[C_WIN_EVENTS] == sum(c[C_WIN : C_WIN + WINDOW_BUCKETS])
    assert user.events_in_window(newest) == sum(1 for e in events if int(e.ts) // 30 > int(newest) // 30 - 10)
    assert user.events_in_window(newest + later) == sum(
        1 for e in events if int(e.ts) // 30 > int(newest + later) // 30 - 10
    )


def test_a_snapshot_from_before_the_sums_restores_with_them() -> None:
    user, vocab = play(*[ev("feature_clicked", T0 + 20 * n, feature="a") for n in range(12)])
    old = user.snapshot()
    # Counters as they were then: without the sums, and without a count of custom events.
    c = user.counters
    old[0] = (c[: EventKind.CUSTOM] + c[EventKind.CUSTOM + 1 : C_EVENTS]).tobytes()
    restored = UserState.restore(old)
    assert restored.counters == user.counters
    assert restored.view(vocab, T0 + 300) == user.view(vocab, T0 + 300)
