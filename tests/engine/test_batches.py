"""Batched messages in a partition: wire format, order, exactly once, dead letters, erasure."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from engine.batches import (
    MAX_EVENTS_PER_MESSAGE,
    array_header,
    batch_items,
    batch_message_id,
    decode_batch,
    is_batch,
    join_encoded,
)
from engine.errors import InvalidEvent, InvalidEvents
from engine.events import encode_event
from engine.partition import PartitionSetup, PartitionState
from engine.recent import WINDOW, RecentEventIds, digest
from engine.schema import EventSchema, SchemaSection
from engine.segments import SegmentIndex
from tests.engine.test_segments import NOW, RULES, catalog_with


def encoded(n: int, key: str = "k", kind: str = "feature_clicked", **fields: Any) -> bytes:
    event: dict[str, Any] = {"event_id": f"e{n}", "user_id": key, "type": kind, "ts": NOW + n}
    if kind == "feature_clicked":
        event["props"] = {"feature": "export"}
    return encode_event({**event, **fields})


def batch(*numbers: int, key: str = "k") -> bytes:
    return join_encoded([encoded(n, key) for n in numbers])


def test_a_batch_is_an_array_of_the_events_maps_and_a_single_event_stays_a_map() -> None:
    items = [encoded(n) for n in range(40)]
    for count in (1, 15, 16, 40):
        message = join_encoded(items[:count])
        assert is_batch(message) and msgspec.msgpack.decode(message) == [
            msgspec.msgpack.decode(item) for item in items[:count]
        ]
        assert batch_items(message) == items[:count]
    assert not is_batch(items[0]) and not is_batch(b"")
    assert array_header(70_000)[:1] == b"\xdd"
    assert [event.event_id for event in decode_batch(join_encoded(items[:3]))] == ["e0", "e1", "e2"]


def test_a_batch_message_id_names_its_user_and_events_whatever_their_order() -> None:
    assert batch_message_id("k", ["e1", "e2"]) == batch_message_id("k", ["e2", "e1"])
    assert batch_message_id("k", ["e1", "e2"]) != batch_message_id("other", ["e1", "e2"])
    assert batch_message_id("k", ["e1", "e2"]) != batch_message_id("k", ["e1", "e2", "e3"])
    # No two id lists run together: ["e1e", "2"] is not ["e1", "e2"].
    assert batch_message_id("k", ["e1", "e2"]) != batch_message_id("k", ["e1e2"])


def test_a_custom_schema_decodes_batches_with_its_own_types() -> None:
    cards = {"cards": {"type": "number"}}
    schema = EventSchema(SchemaSection.model_validate({"events": {"created_board": {"props": cards}}}))
    board = encoded(1, kind="created_board", props={"cards": 3})
    message = join_encoded([board, encoded(2, kind="teleported")])
    good, bad = schema.decode_batch(message)
    assert not isinstance(good, InvalidEvent) and good.type_name == "created_board"
    assert isinstance(bad, InvalidEvent) and bad.reason == "unknown_type"


def test_events_of_a_type_the_catalog_dropped_are_skipped_inside_a_batch_too() -> None:
    section = SchemaSection.model_validate({"events": {"created_board": {}}})
    part = PartitionState(0, PartitionSetup(schema=EventSchema(section)))
    part.apply_message(1, "k", batch(1))
    part.apply_message(2, "k", join_encoded([encoded(2, kind="created_board"), encoded(3)]))
    part.reconfigure(PartitionSetup())  # a catalog version without created_board
    part.apply_message(3, "k", join_encoded([encoded(4, kind="created_board"), encoded(5)]))
    assert part.retired == {"created_board": 1} and part.applied == 4


def test_a_batchs_events_apply_in_order_under_its_sequence_and_a_redelivery_changes_nothing() -> None:
    single, batched = PartitionState(0), PartitionState(0)
    for n in range(1, 11):
        single.apply_message(n, "k", encoded(n))
    batched.apply_message(1, "k", batch(*range(1, 11)))
    assert batched.last_seq == 1 and batched.applied == 10
    assert batched.view("k", NOW + 100) == single.view("k", NOW + 100)
    batched.apply_message(1, "k", batch(*range(1, 11)))  # redelivered
    assert batched.applied == 10 and batched.replayed == 0


def test_an_event_retried_inside_a_different_batch_is_applied_once() -> None:
    part = PartitionState(0)
    part.apply_message(1, "k", batch(1, 2, 3))
    # The producer regrouped: 2 and 3 again, with 4; then 3 alone; then 1 in a larger batch.
    part.apply_message(2, "k", batch(2, 3, 4))
    part.apply_message(3, "k", encoded(3))
    part.apply_message(4, "k", batch(5, 1, 6))
    assert part.applied == 6 and part.replayed == 4
    assert part.view("k", NOW + 100)["features"] == {"export": 6}  # type: ignore[index]


def test_what_holds_for_an_event_retried_outside_the_window() -> None:
    """The documented limits: an event first stored *alone*, before its user sent any batch, is
    not remembered (JetStream's duplicate window covers single-event retries); and a user's
    window holds their last WINDOW events."""
    part = PartitionState(0)
    part.apply_message(1, "k", encoded(1))
    part.apply_message(2, "k", batch(1, 2))  # e1 again, inside a batch: applied a second time
    assert part.applied == 3 and part.replayed == 0
    part.apply_message(3, "k", batch(*range(3, 3 + WINDOW)))  # e1 and e2 leave the window
    part.apply_message(4, "k", batch(2, 100))
    assert part.replayed == 0 and part.applied == 3 + WINDOW + 2


def test_a_bad_event_inside_a_batch_is_rejected_alone_and_the_others_apply() -> None:
    part = PartitionState(0)
    items = [encoded(1), encoded(2, kind="teleported"), encoded(3, key="someone-else"), encoded(4), b"\xc1"]
    message = join_encoded(items[:4])
    with pytest.raises(InvalidEvents) as info:
        part.apply_message(1, "k", message)
    assert [(i, e.reason) for i, e in info.value.rejected] == [(1, "unknown_type"), (2, "key_mismatch")]
    assert part.applied == 2 and part.last_seq == 1
    part.apply_message(1, "k", message)  # replayed: handled already, nothing rejected again
    assert part.applied == 2
    # Not an array of msgpack values at all: the whole message is dead-lettered.
    with pytest.raises(InvalidEvent) as whole:
        part.apply_message(2, "k", b"\x93" + items[0] + b"\xc1")
    assert not isinstance(whole.value, InvalidEvents) and whole.value.reason == "malformed"


def test_a_crash_in_the_middle_of_a_batch_replays_it_whole_from_the_last_snapshot(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """State is snapshotted between messages (a message applies synchronously); a process that
    dies while applying one restores the snapshot before it and applies it again, whole."""
    setup = PartitionSetup(segment_index=SegmentIndex(catalog_with(RULES)))
    straight = PartitionState(0, setup)
    messages = [batch(*range(10 * m + 1, 10 * m + 11)) for m in range(4)]
    for seq, message in enumerate(messages, 1):
        straight.apply_message(seq, "k", message)
    crashing = PartitionState(0, setup)
    crashing.apply_message(1, "k", messages[0])
    snapshot = crashing.snapshot()
    crashing.apply_message(2, "k", messages[1])
    original, applied = PartitionState.apply_event, []

    def dies_at_the_fifth(self: PartitionState, *args: Any, **kwargs: Any) -> None:
        applied.append(args[1].event_id)
        if len(applied) == 5:
            raise SystemExit("killed")
        original(self, *args, **kwargs)

    monkeypatch.setattr(PartitionState, "apply_event", dies_at_the_fifth)
    with pytest.raises(SystemExit):
        crashing.apply_message(3, "k", messages[2])
    monkeypatch.setattr(PartitionState, "apply_event", original)
    resumed = PartitionState.restore(snapshot, setup)
    for seq, message in enumerate(messages, 1):  # the stream from the start: 1 is skipped
        resumed.apply_message(seq, "k", message)
    assert resumed.applied == straight.applied == 40 and resumed.replayed == 0
    assert resumed.view("k", NOW + 100) == straight.view("k", NOW + 100)
    assert resumed.segments is not None and straight.segments is not None
    # The same segment changes, under the same ids (the first message's were in the snapshot).
    assert resumed.segments.take() == straight.segments.take()


def test_segment_changes_of_one_batch_each_have_an_id_of_their_own() -> None:
    """Events of one message share its sequence: the second change it causes is named
    ``<seq>.1``, and so on, the same again on a replay."""
    setup = PartitionSetup(segment_index=SegmentIndex(catalog_with({"dach": RULES["dach"]})))
    de, fr = {"context": {"country": "DE"}}, {"context": {"country": "FR"}}
    message = join_encoded([encoded(n, kind="session_started", **(de if n % 2 else fr)) for n in range(1, 6)])
    first, again = PartitionState(0, setup), PartitionState(0, setup)
    first.apply_message(7, "k", message)
    again.apply_message(7, "k", message)
    assert first.segments is not None and again.segments is not None
    rows = first.segments.take()
    assert [(row[2], row[4]) for row in rows if row[1] == "dach"] == [
        ("enter", 7),
        ("exit", "7.1"),
        ("enter", "7.2"),
        ("exit", "7.3"),
        ("enter", "7.4"),
    ]
    assert len({(row[1], row[2], row[4]) for row in rows}) == len(rows)
    assert again.segments.take() == rows
    first.apply_message(8, "k", encoded(9, kind="session_started", **fr))
    assert {row[4] for row in first.segments.take()} == {8}  # a single event's: its sequence


def test_the_window_survives_a_snapshot_and_erasure_forgets_it() -> None:
    part = PartitionState(0)
    part.apply_message(1, "k", batch(1, 2))
    part.apply_message(2, "other", batch(1, 2, key="other"))
    restored = PartitionState.restore(part.snapshot())
    restored.apply_message(3, "k", batch(2, 3))
    assert restored.replayed == 1 and restored.applied == 5
    erase = b""
    restored.apply_message(4, "k-erase", erase)
    assert "k" not in restored.users and not restored.recent.tracks("k")
    assert restored.recent.tracks("other")


def test_the_window_holds_a_users_last_events_in_8_bytes_each() -> None:
    recent = RecentEventIds()
    assert not any(recent.seen("k", f"e{n}") for n in range(WINDOW + 1))
    assert len(recent.by_user["k"]) == 8 * WINDOW
    assert not recent.seen("k", "e0")  # the oldest left when the window was full
    assert recent.seen("k", f"e{WINDOW}") and not recent.seen("other", f"e{WINDOW}")
    assert WINDOW >= MAX_EVENTS_PER_MESSAGE


def test_a_digest_is_the_same_in_every_process() -> None:
    """Windows travel in snapshots to other processes and machines: the digest must not depend
    on the process (Python's ``hash`` of a string does)."""
    assert digest("e1").hex() == "1eb23379e67b2243"
