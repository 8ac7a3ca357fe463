from __future__ import annotations

import pytest

from engine.errors import InvalidEvent
from engine.events import EventKind, encode_event
from engine.partition import PartitionSetup, PartitionState
from engine.shard import NotOwned, ShardState


def raw(i: int, key: str = "k1", kind: str = "feature_clicked") -> bytes:
    return encode_event(
        {"event_id": f"e{i}", "user_id": key, "type": kind, "ts": 1000 + i, "props": {"feature": "export"}}
    )


def test_redelivered_sequences_change_nothing() -> None:
    part = PartitionState(0)
    for seq in range(1, 6):
        part.apply_message(seq, "k1", raw(seq))
    before = part.view("k1", 2000)
    for seq in (1, 3, 5):
        part.apply_message(seq, "k1", raw(seq))
    assert part.view("k1", 2000) == before
    assert part.applied == 5 and part.last_seq == 5


def test_invalid_message_is_rejected_once_and_its_sequence_consumed() -> None:
    part = PartitionState(0)
    with pytest.raises(InvalidEvent):
        part.apply_message(1, "k1", b"\xc1")
    part.apply_message(1, "k1", b"\xc1")  # replayed: already handled, not dead-lettered twice
    assert part.last_seq == 1 and part.applied == 0


def test_payload_key_must_match_subject_key() -> None:
    part = PartitionState(0)
    with pytest.raises(InvalidEvent) as info:
        part.apply_message(1, "otherkey", raw(1, key="k1"))
    assert info.value.reason == "key_mismatch"
    assert "k1" not in part.users


def test_snapshot_round_trip_then_continue() -> None:
    straight = PartitionState(3)
    for seq in range(1, 21):
        straight.apply_message(seq, f"k{seq % 4}", raw(seq, key=f"k{seq % 4}"))
    first = PartitionState(3)
    for seq in range(1, 11):
        first.apply_message(seq, f"k{seq % 4}", raw(seq, key=f"k{seq % 4}"))
    resumed = PartitionState.build(3, first.snapshot())
    for seq in range(5, 21):  # a replay overlapping the snapshot is harmless
        resumed.apply_message(seq, f"k{seq % 4}", raw(seq, key=f"k{seq % 4}"))
    assert resumed.last_seq == straight.last_seq == 20
    assert resumed.applied == straight.applied == 20
    assert {k: resumed.view(k, 5000) for k in resumed.users} == {
        k: straight.view(k, 5000) for k in straight.users
    }


def test_restore_refuses_unknown_versions() -> None:
    import msgspec

    with pytest.raises(ValueError):
        PartitionState.restore(msgspec.msgpack.encode({"version": 99}))


def test_shard_routes_by_partition_and_refuses_foreign_ones() -> None:
    shard = ShardState.build({0: None, 5: None})
    shard.apply(1, 5, "k1", raw(1))
    assert shard.view(5, "k1", 2000) is not None
    assert shard.view(0, "k1", 2000) is None
    with pytest.raises(NotOwned):
        shard.apply(2, 7, "k1", raw(2))
    assert shard.users == 1 and shard.applied == 1


def consent_event(
    n: int, ts: float, analytics: bool | None = None, personalization: bool | None = None
) -> bytes:
    props = {
        k: v for k, v in (("analytics", analytics), ("personalization", personalization)) if v is not None
    }
    return encode_event(
        {"event_id": f"c{n}", "user_id": "k", "type": "consent_updated", "ts": ts, "props": props}
    )


def click(n: int, ts: float) -> bytes:
    return encode_event(
        {
            "event_id": f"e{n}",
            "user_id": "k",
            "type": "feature_clicked",
            "ts": ts,
            "props": {"feature": "export"},
        }
    )


def test_withdrawing_analytics_consent_forgets_the_user_but_their_consent() -> None:
    from engine.catalog import DEFAULT_CATALOG, load_catalog
    from engine.segments import SegmentIndex

    part = PartitionState(0, PartitionSetup(segment_index=SegmentIndex(load_catalog(DEFAULT_CATALOG))))
    part.apply_message(1, "k", click(1, 100.0))
    assert part.users["k"].features is not None and part.segments is not None
    part.segments.take()
    part.apply_message(2, "k", consent_event(2, 110.0, analytics=False, personalization=False))
    part.apply_message(3, "k", click(3, 120.0))
    assert "k" not in part.users and part.view("k", 130.0) is None
    assert part.consent_of("k") is not None  # the refusal itself is kept
    assert part.anonymous == {"consent_updated": 1, "feature_clicked": 1}
    exits = part.segments.take()
    assert exits and {r[2] for r in exits} == {"exit"}  # left every segment it was in
    # A restart (snapshot + replay of the same messages) does not bring the user back.
    again = PartitionState.restore(part.snapshot())
    for seq, data in ((1, click(1, 100.0)), (2, consent_event(2, 110.0, False)), (3, click(3, 120.0))):
        again.apply_message(seq, "k", data)
    assert "k" not in again.users and again.anonymous == part.anonymous
    # Granting again starts a new profile from the grant on; personalization stays refused.
    part.apply_message(4, "k", consent_event(4, 140.0, analytics=True))
    part.apply_message(5, "k", click(5, 150.0))
    user = part.users["k"]
    assert user.count(EventKind.FEATURE_CLICKED) == 1  # the click after the grant only
    assert part.consent_of("k") is None
    assert user.consent_given("analytics", True) and not user.consent_given("personalization", True)


def test_with_opt_in_nothing_is_kept_before_analytics_consent() -> None:
    part = PartitionState(0, PartitionSetup(consent_by_default=False))
    part.apply_message(1, "k", click(1, 100.0))
    assert "k" not in part.users and part.anonymous == {"feature_clicked": 1}
    part.apply_message(2, "k", consent_event(2, 110.0, personalization=True))  # not analytics
    assert "k" not in part.users
    part.apply_message(3, "k", consent_event(3, 120.0, analytics=True))
    part.apply_message(4, "k", click(4, 130.0))
    user = part.users["k"]
    assert user.consent_given("analytics", False) and user.consent_given("personalization", False)
    assert part.anonymous == {"feature_clicked": 1, "consent_updated": 1}


def named(n: int, ts: float, name: str) -> bytes:
    return encode_event(
        {"event_id": f"p{n}", "user_id": "k", "type": "profile_updated", "ts": ts, "props": {"name": name}}
    )


@pytest.mark.parametrize("opt_out", [True, False])
def test_a_name_is_held_only_while_personalization_is_granted(opt_out: bool) -> None:
    part = PartitionState(0, PartitionSetup(consent_by_default=opt_out))
    part.apply_message(1, "k", consent_event(1, 100.0, analytics=True))
    part.apply_message(2, "k", named(2, 101.0, "Alice"))
    assert part.users["k"].name == ("Alice" if opt_out else None)  # opt_in: not granted yet
    part.apply_message(3, "k", consent_event(3, 102.0, personalization=True))
    part.apply_message(4, "k", named(4, 103.0, "Alice"))
    assert part.users["k"].name == "Alice"
    part.apply_message(5, "k", consent_event(5, 104.0, personalization=False))
    assert part.users["k"].name is None  # withdrawal clears it at once
    part.apply_message(6, "k", named(6, 105.0, "Alice"))
    assert part.users["k"].name is None


def test_a_name_is_sealed_in_snapshots_and_left_out_without_a_sealer() -> None:
    from engine.pii import PiiSealer

    sealer = PiiSealer(b"instance secret")
    part = PartitionState(0, PartitionSetup(sealer=sealer))
    part.apply_message(1, "k", named(1, 100.0, "Alice"))
    sealed = part.snapshot()
    assert b"Alice" not in sealed
    assert PartitionState.restore(sealed, PartitionSetup(sealer=sealer)).users["k"].name == "Alice"
    assert (
        PartitionState.restore(sealed, PartitionSetup(sealer=PiiSealer(b"another"))).users["k"].name is None
    )
    assert PartitionState.restore(sealed).users["k"].name is None
    bare = PartitionState(0)
    bare.apply_message(1, "k", named(1, 100.0, "Alice"))
    assert b"Alice" not in bare.snapshot() and bare.users["k"].name == "Alice"  # kept in memory only


def test_an_erase_record_forgets_the_user_in_stream_order_and_on_every_replay() -> None:
    from engine.catalog import DEFAULT_CATALOG, load_catalog
    from engine.segments import SegmentIndex

    index = SegmentIndex(load_catalog(DEFAULT_CATALOG))
    part = PartitionState(0, PartitionSetup(segment_index=index))
    part.apply_message(1, "k", click(1, 100.0))
    early = part.snapshot()  # a checkpoint from before the erasure
    part.apply_message(2, "k", consent_event(2, 110.0, personalization=False))
    part.apply_message(3, "k-erase", b"")
    assert "k" not in part.users and part.consent_of("k") is None
    assert part.segments is not None and not [r for r in part.segments.take() if r[0] == "k"]
    # Recovery from the old checkpoint replays what the purge left: the erase record.
    recovered = PartitionState.restore(early, PartitionSetup(segment_index=index))
    recovered.apply_message(3, "k-erase", b"")
    assert "k" not in recovered.users
    # Events after the erasure are a new life, kept as any others.
    part.apply_message(4, "k", click(4, 120.0))
    assert part.users["k"].count(EventKind.FEATURE_CLICKED) == 1


def test_profiles_inactive_past_the_retention_are_deleted_by_event_time() -> None:
    part = PartitionState(0)
    for seq, (key, ts) in enumerate(
        (("old", 100.0), ("new", 100.0 + 5 * 86400), ("new", 100.0 + 10 * 86400)), 1
    ):
        part.apply_message(
            seq,
            key,
            encode_event({"event_id": f"e{seq}", "user_id": key, "type": "session_started", "ts": ts}),
        )
    assert part.expire_inactive(max_inactive_s=7 * 86400) == 1
    assert sorted(part.users) == ["new"]
    assert part.expire_inactive(max_inactive_s=7 * 86400) == 0
