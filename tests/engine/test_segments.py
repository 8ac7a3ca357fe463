"""Live segment membership: evaluation, enter/exit order, time-based exits, snapshots."""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from engine.catalog import DEFAULT_CATALOG, Catalog, load_catalog
from engine.clusters import ClusterAssigner
from engine.events import EventKind, event_from_object
from engine.partition import PartitionSetup, PartitionState
from engine.profile import CONTEXT_CHANGED, NEW_SESSION, NEW_STEP, TRAITS_CHANGED, UserState, Vocabularies
from engine.rules import compile_mask, parse_rule, rule_input
from engine.segments import PartitionSegments, SegmentIndex

NOW = 1_767_571_200.0
RULES = {
    "mobile_newcomer": 'session_count < 3 and device_type == "mobile"',
    "dach": 'country in ("DE", "AT", "CH")',
    "busy": "events_5m >= 3",
    "exporter": 'feature_count("export") >= 2',
    "profile_done": 'completed("profile")',
    "dormant": "days_inactive >= 3",
    "technical": 'role == "engineer"',
    "second_cluster": "cluster == 1",
    "wide": "engagement >= 1 and features_5m >= 2",
    "browsing": "features_5m >= 2",
}


def catalog_with(rules: dict[str, str], **membership: Any) -> Catalog:
    data = load_catalog(DEFAULT_CATALOG).model_dump()
    data["segments"] = [{"id": k, "rule": v} for k, v in rules.items()]
    data["membership"] = {**data["membership"], **membership}
    return Catalog.model_validate(data)


def event(n: int, kind: str, ts: float, key: str = "k", **extra: Any) -> Any:
    return event_from_object({"event_id": f"e{n}", "user_id": key, "type": kind, "ts": ts, **extra})


def changes(part: PartitionState) -> list[tuple[str, str]]:
    assert part.segments is not None
    return [(row[1], row[2]) for row in part.segments.take()]


EVENTS = st.sampled_from(
    [
        ("session_started", {"context": {"device_type": "mobile", "country": "DE"}}),
        ("session_started", {"context": {"device_type": "desktop", "country": "FR"}}),
        ("session_started", {}),
        ("feature_clicked", {"props": {"feature": "export"}}),
        ("feature_clicked", {"props": {"feature": "share"}, "context": {"country": "DE"}}),
        ("feature_clicked", {"props": {"feature": "search"}, "context": {"device_type": "mobile"}}),
        ("step_completed", {"props": {"step": "profile"}}),
        ("step_viewed", {"props": {"step": "welcome"}}),
        ("profile_updated", {"props": {"role": "engineer"}}),
        ("profile_updated", {"props": {"role": "designer"}}),
        ("tutorial_completed", {"props": {"tutorial": "first_project", "variant": "video"}}),
    ]
)


@settings(max_examples=200, deadline=None)
@given(
    steps=st.lists(
        st.tuples(st.sampled_from(["a", "b"]), EVENTS, st.floats(0, 5 * 86400)), min_size=1, max_size=30
    ),
    in_order=st.booleans(),
    cluster=st.integers(-1, 2),
)
def test_live_membership_equals_evaluating_every_rule_after_every_event(
    steps: list[tuple[str, tuple[str, dict[str, Any]], float]], in_order: bool, cluster: int
) -> None:
    """Re-evaluating only what an event can change gives the same membership as evaluating
    every segment from scratch (the rules' own per-user evaluation) after every event: for
    events in time order or not (late events), for a user whose event is the partition's
    newest or not, contexts repeating or changing, sessions started by an event or by a gap."""
    index = SegmentIndex(catalog_with(RULES))
    part = PartitionState(0, PartitionSetup(segment_index=index))
    ordered = sorted(steps, key=lambda s: s[2]) if in_order else steps
    for n, (key, (kind, extra), gap) in enumerate(ordered):
        part.apply_event(key, event(n, kind, NOW + gap, key=key, **extra), seq=n + 1)
        user = part.users[key]
        if user.cluster != cluster:  # as an assigner would; reassigned kinds re-read it
            user.cluster = cluster
            user.segments &= ~(1 << index.bit["second_cluster"])
        assert part.segments is not None
        facts = rule_input(user, part.vocab, part.segments.clock)  # the time it was evaluated at
        expected = {name for name, rule in zip(index.ids, index.rules, strict=True) if rule.matches(facts)}
        tracked = set(index.names(user.segments))
        # The cluster is set by hand here, outside an event: only its own rules may lag.
        lagging = {"second_cluster", "cluster_0", "cluster_1", "cluster_2", "cluster_3"}
        if kind != "feature_clicked":
            # Only a click adds to features_5m; its decrease as the window slides is applied by
            # sweeps (test_a_feature_window_is_entered_by_clicks_and_left_by_a_sweep).
            lagging.add("browsing")
        assert tracked - lagging == expected - lagging


def test_enter_and_exit_changes_are_queued_in_order() -> None:
    part = PartitionState(0, PartitionSetup(segment_index=SegmentIndex(catalog_with(RULES))))
    mobile = {"context": {"device_type": "mobile", "country": "DE"}}
    part.apply_event("k", event(1, "session_started", NOW, **mobile), seq=1)
    assert set(changes(part)) == {
        ("engagement_low", "enter"),
        ("new_user", "enter"),
        ("device_mobile", "enter"),
        ("mobile_newcomer", "enter"),
        ("dach", "enter"),
    }
    part.apply_event("k", event(2, "session_started", NOW + 3600), seq=2)
    assert changes(part) == [("new_user", "exit"), ("returning_user", "enter")]
    part.apply_event("k", event(3, "session_started", NOW + 7200), seq=3)
    assert changes(part) == [("mobile_newcomer", "exit")]
    for n in range(4, 7):
        part.apply_event("k", event(n, "feature_clicked", NOW + 7200 + n, props={"feature": "export"}), seq=n)
    got = changes(part)
    assert got.index(("busy", "enter")) < got.index(("exporter", "enter"))
    assert part.segments is not None and part.segments.counts()["new_user"] == (1, 1)


def test_an_event_re_evaluates_only_the_segments_whose_fields_it_can_change() -> None:
    index = SegmentIndex(catalog_with(RULES))
    bits = {name: 1 << index.bit[name] for name in index.ids}
    click = index.key(EventKind.FEATURE_CLICKED, feature_read=True)
    decides, _ = index.evaluator(click)
    assert decides & bits["exporter"] and decides & bits["busy"] and decides & bits["browsing"]
    for untouched in ("dach", "technical", "profile_done", "device_mobile", "second_cluster"):
        assert not decides & bits[untouched], untouched
    assert not decides & bits["mobile_newcomer"]  # a click in the same session
    # A click that starts a new session moves the session count too.
    decides, _ = index.evaluator(index.key(EventKind.FEATURE_CLICKED, NEW_SESSION, feature_read=True))
    assert decides & bits["mobile_newcomer"] and decides & bits["new_user"]
    # A click of a feature no rule counts moves no feature count.
    decides, _ = index.evaluator(index.key(EventKind.FEATURE_CLICKED))
    assert not decides & bits["exporter"] and decides & bits["browsing"]
    moved = CONTEXT_CHANGED | TRAITS_CHANGED
    decides, _ = index.evaluator(index.key(EventKind.PROFILE_UPDATED, moved, cluster=True))
    assert decides & bits["technical"] and decides & bits["dach"] and decides & bits["second_cluster"]
    assert not decides & bits["exporter"] and not decides & bits["profile_done"]
    # The same context and traits again: nothing of theirs is evaluated.
    decides, _ = index.evaluator(index.key(EventKind.PROFILE_UPDATED))
    assert not decides & (bits["technical"] | bits["dach"] | bits["device_mobile"])
    decides, _ = index.evaluator(index.key(EventKind.STEP_COMPLETED, NEW_STEP))
    assert decides & bits["profile_done"]
    assert not index.evaluator(index.key(EventKind.STEP_COMPLETED))[0] & bits["profile_done"]


def test_right_after_an_event_rules_that_cannot_hold_are_folded_away() -> None:
    """Evaluated at the time of the user's newest event, ``days_inactive`` is 0: "dormant" is
    decided (it exits) without being evaluated, and gives the same answer as the general path."""
    index = SegmentIndex(catalog_with(RULES))
    part = PartitionState(0, PartitionSetup(segment_index=index))
    part.apply_event("k", event(1, "session_started", NOW), seq=1)
    user = part.users["k"]
    fresh_decides, fresh = index.evaluator(index.key(EventKind.SESSION_STARTED, fresh=True))
    general_decides, general = index.evaluator(index.key(EventKind.SESSION_STARTED))
    assert fresh_decides == general_decides
    assert fresh(user, user.last_seen, part.vocab) == general(user, user.last_seen, part.vocab)
    assert not fresh(user, user.last_seen, part.vocab) & (1 << index.bit["dormant"])


def test_time_based_segments_change_when_time_passes_without_an_event() -> None:
    part = PartitionState(0, PartitionSetup(segment_index=SegmentIndex(catalog_with(RULES))))
    for n in range(3):
        part.apply_event("k", event(n, "feature_clicked", NOW + n, props={"feature": "share"}), seq=n + 1)
    changes(part)
    assert part.sweep_segments(NOW + 60, ["k"]) == 0  # still in the 5-minute window
    part.sweep_segments(NOW + 600, ["k"])
    assert changes(part) == [("busy", "exit")]
    part.sweep_segments(NOW + 3 * 86400 + 10, ["k"])
    swept = part.segments.take() if part.segments else []
    # Three days on, engagement has decayed a tier too.
    assert [(row[1], row[2]) for row in swept] == [
        ("engagement_medium", "exit"),
        ("engagement_low", "enter"),
        ("dormant", "enter"),
    ]
    assert all(str(row[4]).startswith("t") and row[3] == NOW + 3 * 86400 + 10 for row in swept)
    # A late event does not bring back what time ended: membership is as of the newest clock.
    part.apply_event("k", event(9, "feature_clicked", NOW + 5, props={"feature": "share"}), seq=9)
    assert ("busy", "enter") not in changes(part)


def test_the_checkpoint_mark_moves_with_sweeps_that_change_membership_and_with_publishing() -> None:
    part = PartitionState(0, PartitionSetup(segment_index=SegmentIndex(catalog_with(RULES))))
    for n in range(3):
        part.apply_event("k", event(n, "feature_clicked", NOW + n, props={"feature": "share"}), seq=n + 1)
    assert part.segments is not None
    part.segments.next_batch()
    mark = part.checkpoint_mark()
    assert part.sweep_segments(NOW + 60, ["k"]) == 0 and part.checkpoint_mark() == mark  # nothing moved
    part.segments.published()  # the outbox a snapshot holds changed
    assert part.checkpoint_mark() != mark
    mark = part.checkpoint_mark()
    assert part.sweep_segments(NOW + 600, ["k"]) == 1  # left "busy": no event, a new state
    assert part.checkpoint_mark() != mark and part.checkpoint_mark()[0] == mark[0]


def test_a_feature_window_is_entered_by_clicks_and_left_by_a_sweep() -> None:
    part = PartitionState(0, PartitionSetup(segment_index=SegmentIndex(catalog_with(RULES))))
    for n, feature in enumerate(("share", "export")):
        part.apply_event("k", event(n, "feature_clicked", NOW + n, props={"feature": feature}), seq=n + 1)
    assert {("wide", "enter"), ("browsing", "enter")} <= set(changes(part))
    # Ten minutes later another kind of event: the window has slid past both clicks. "wide"
    # also reads engagement, which the event changed, so it is evaluated (as of now) and left;
    # "browsing" reads only the window, which only clicks add to: the sweep applies the time.
    part.apply_event("k", event(5, "step_viewed", NOW + 600, props={"step": "welcome"}), seq=6)
    assert changes(part) == [("wide", "exit")]
    part.sweep_segments(NOW + 601, ["k"])
    assert changes(part) == [("browsing", "exit")]


def test_a_restored_partition_continues_exactly_as_one_that_never_stopped() -> None:
    index = SegmentIndex(catalog_with(RULES))
    stream = [
        event(n, kind, NOW + n * 40, key=f"u{n % 3}", **extra)
        for n, (kind, extra) in enumerate(
            [("session_started", {"context": {"device_type": "mobile", "country": "DE"}})] * 3
            + [("feature_clicked", {"props": {"feature": "export"}})] * 6
            + [("step_completed", {"props": {"step": "profile"}}), ("session_started", {})] * 3
        )
    ]
    straight = PartitionState(0, PartitionSetup(segment_index=index))
    for seq, e in enumerate(stream, 1):
        straight.apply_event(e.user_id, e, seq)
    first = PartitionState(0, PartitionSetup(segment_index=index))
    for seq, e in enumerate(stream[:7], 1):
        first.apply_event(e.user_id, e, seq)
        first.last_seq = seq
    resumed = PartitionState.restore(first.snapshot(), PartitionSetup(segment_index=index))
    for seq, e in enumerate(stream[7:], 8):
        resumed.apply_event(e.user_id, e, seq)
    assert {k: u.segments for k, u in resumed.users.items()} == {
        k: u.segments for k, u in straight.users.items()
    }
    assert straight.segments is not None and resumed.segments is not None
    assert list(resumed.segments.outbox) == list(straight.segments.outbox)  # unpublished ones kept
    assert resumed.segments.take() == straight.segments.take()
    assert resumed.segments.counts() == straight.segments.counts()


def test_a_snapshot_from_another_catalog_keeps_membership_by_segment_id() -> None:
    old = SegmentIndex(catalog_with(RULES))
    part = PartitionState(0, PartitionSetup(segment_index=old))
    part.apply_event("k", event(1, "session_started", NOW, context={"country": "DE"}), seq=1)
    assert "dach" in old.names(part.users["k"].segments)
    new = SegmentIndex(catalog_with({"technical": RULES["technical"], "dach": RULES["dach"]}))
    restored = PartitionState.restore(part.snapshot(), PartitionSetup(segment_index=new))
    assert "dach" in new.names(restored.users["k"].segments)
    assert "busy" not in new.ids


def restored_segments(
    index: SegmentIndex, snap: dict[str, Any], users: dict[str, UserState] | None = None
) -> PartitionSegments:
    out = PartitionSegments(index)
    out.restore(snap, users or {})
    return out


def test_queued_changes_survive_a_snapshot_from_another_catalog_or_an_older_format() -> None:
    """Queued changes are kept as masks: restored under another catalog they are published by
    segment id (a segment gone drops out); an outbox written one change per entry, as before
    masks, is read and counted once."""
    old = SegmentIndex(catalog_with(RULES))
    part = PartitionState(0, PartitionSetup(segment_index=old))
    part.apply_event("k", event(1, "session_started", NOW, context={"country": "DE"}), seq=1)
    assert part.segments is not None
    snap = part.segments.snapshot()
    rows = restored_segments(old, snap).take()
    assert ("k", "dach", "enter", NOW, 1, 0) in rows
    new = SegmentIndex(catalog_with({"dach": RULES["dach"], "technical": RULES["technical"]}))
    users = {"k": copy.copy(part.users["k"])}
    restored = restored_segments(new, snap, users)
    # The user's mask, recorded under the old catalog's bits, is moved to the new ones.
    assert users["k"].segments == new.remap(part.users["k"].segments, old.ids) != part.users["k"].segments
    assert "dach" in new.names(users["k"].segments)
    assert restored.take() == [row for row in rows if row[1] in new.bit]
    assert restored.counts()["dach"] == (1, 0)

    former = {
        **snap,
        "outbox": [[k, segment, change == "enter", ts, origin] for k, segment, change, ts, origin, _ in rows],
        "counts": {row[1]: (1, 0) for row in rows},  # counted when queued, then
    }
    restored = restored_segments(old, former)
    assert restored.queued == len(rows) and not restored.counts()
    assert restored.take() == rows == part.segments.take()
    assert restored.counts() == part.segments.counts()


def test_an_outbox_over_its_limit_drops_the_oldest_changes_and_counts_them(monkeypatch: Any) -> None:
    monkeypatch.setattr("engine.segments.OUTBOX_LIMIT", 5)
    index = SegmentIndex(catalog_with(RULES))
    part = PartitionState(0, PartitionSetup(segment_index=index))
    assert part.segments is not None
    for n in range(4):
        part.segments.record_change(f"u{n}", 0, 0b11, NOW, n)  # two changes each
    assert part.segments.queued == 4 and part.segments.dropped == 4
    assert [row[0] for row in part.segments.take()] == ["u2", "u2", "u3", "u3"]
    assert part.segments.queued == 0


def test_a_cluster_assignment_moves_cluster_segments_and_rules_reading_the_cluster() -> None:
    index = SegmentIndex(catalog_with(RULES))
    features = 7
    # Two centers: "few" near the origin and "many" far out; unit variances.
    index.assigner = ClusterAssigner(
        [[0.0] * features, [5.0] * features, [50.0] * features, [90.0] * features], [1.0] * features, 1
    )
    part = PartitionState(0, PartitionSetup(segment_index=index))
    part.apply_event("k", event(1, "session_started", NOW), seq=1)
    user = part.users["k"]
    assert user.cluster == 0 and "cluster_0" in index.names(user.segments)
    user.engagement = 1e6  # a user whose behaviour moved toward the second center
    user.counters[EventKind.TUTORIAL_COMPLETED] = 200
    user.completed_steps = (1 << 6) - 1
    part.apply_event("k", event(2, "session_started", NOW + 60), seq=2)
    names = index.names(user.segments)
    assert (
        user.cluster == 1 and "cluster_1" in names and "second_cluster" in names and "cluster_0" not in names
    )


def test_models_reassigning_at_one_sweep_time_give_every_change_its_own_id() -> None:
    from engine.segments import change_id

    index = SegmentIndex(catalog_with(RULES))
    features = 7
    near, far = [0.0] * features, [90.0] * features
    index.assigner = ClusterAssigner([near, far], [1.0] * features, 1)
    part = PartitionState(0, PartitionSetup(segment_index=index))
    part.apply_event("k", event(1, "session_started", NOW), seq=1)
    assert part.segments is not None and part.users["k"].cluster == 0
    part.segments.take()
    # A clock that holds still (the event clock after the last event) while models come in:
    # the user goes to cluster 1, back to 0 and to 1 again, all at the same sweep time.
    for version, centers in enumerate([[far, near], [near, far], [far, near]], start=2):
        index.assigner = ClusterAssigner(centers, [1.0] * features, version)
        assert part.sweep_segments(NOW + 60, ["k"], reassign=True) > 0
    rows = part.segments.take()
    assert [(segment, change) for _, segment, change, *_ in rows if segment.startswith("cluster_")] == [
        ("cluster_0", "exit"), ("cluster_1", "enter"),
        ("cluster_0", "enter"), ("cluster_1", "exit"),
        ("cluster_0", "exit"), ("cluster_1", "enter"),
    ]  # fmt: skip
    ids = [change_id(p, origin, key, segment, change) for key, segment, change, _, origin, p in rows]
    assert len(set(ids)) == len(ids)  # consumers deduplicating by id keep every one


def test_a_user_who_expires_twice_exits_under_other_ids_the_second_time() -> None:
    from engine.segments import change_id

    part = PartitionState(0, PartitionSetup(segment_index=SegmentIndex(catalog_with(RULES))))
    week = 7 * 86400
    exits = []
    for n, back in enumerate((NOW, NOW + 9 * 86400)):
        part.apply_event("k", event(2 * n, "session_started", back), seq=2 * n + 1)
        part.apply_event(
            "other", event(2 * n + 1, "session_started", back + 8 * 86400, key="other"), seq=2 * n + 2
        )
        assert part.segments is not None
        part.segments.take()
        assert part.expire_inactive(week) == 1 and "k" not in part.users
        rows = part.segments.take()
        assert rows and all(row[0] == "k" and row[2] == "exit" for row in rows)
        exits += [change_id(p, origin, key, segment, change) for key, segment, change, _, origin, p in rows]
    assert len(set(exits)) == len(exits)  # the second life's exits are not taken for the first's


def test_compiled_masks_match_rule_by_rule_evaluation_on_a_real_user() -> None:
    vocab, user = Vocabularies(), UserState.new(NOW)
    user.apply(event(1, "session_started", NOW, context={"device_type": "mobile", "country": "AT"}), vocab)
    user.apply(event(2, "feature_clicked", NOW + 1, props={"feature": "export"}), vocab)
    rules = [(i, parse_rule(r)) for i, r in enumerate(RULES.values())]
    mask = compile_mask(rules)(user, NOW + 2, vocab)
    facts = rule_input(user, vocab, NOW + 2)
    assert [bool(mask >> i & 1) for i, _ in rules] == [rule.matches(facts) for _, rule in rules]


def test_a_batch_in_flight_is_handed_over_and_published_again_unchanged() -> None:
    from headstart.adapters.membership import encode_batches

    index = SegmentIndex(catalog_with(RULES))
    part = PartitionState(4, PartitionSetup(segment_index=index))
    part.apply_event("k", event(1, "session_started", NOW, context={"country": "DE"}), seq=1)
    assert part.segments is not None
    batch = part.segments.next_batch(3)
    assert len(batch) == 3 and part.segments.next_batch(3) is batch  # retried as it was
    part.apply_event("k", event(2, "session_started", NOW + 7200), seq=2)
    # Handed over mid-publish:
    moved = PartitionState.restore(part.snapshot(), PartitionSetup(segment_index=index))
    assert moved.segments is not None
    again = moved.segments.next_batch(1000)
    assert again == batch  # the same changes, so the same message ids: stored once
    assert [h for _, _, h in encode_batches(again)] == [h for _, _, h in encode_batches(batch)]
    moved.segments.published()
    rest = moved.segments.next_batch(1000)
    assert [r[1:3] for r in rest] == [r[1:3] for r in part.segments.take(1000)]
