"""The contract every partition component meets (each one in ``engine.partition.COMPONENTS``,
found automatically, so a new component is tested the moment it is registered): a snapshot
restores to the same state, also mid-stream with the rest applied after; a replay of the same
stream ends in the same snapshot; an erased user leaves no trace; unknown input (an event of a
user never seen, a record of another component, an empty or older snapshot, None) is no error.
And a partition snapshot written before components had one contract still restores, byte for
byte."""

from __future__ import annotations

import copy
import inspect
import pickle
from collections import deque
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest

from engine.catalog import DEFAULT_CATALOG, Catalog, load_catalog
from engine.component import PartitionComponent
from engine.decision import Decider
from engine.events import BUILTIN_KINDS, EventKind, encode_event, event_from_object
from engine.experiments import ExperimentPlan, ExposureRecord, encode_exposure
from engine.learning import Learner, RewardRecord, encode_record
from engine.partition import COMPONENTS, PartitionSetup, PartitionState
from engine.profile import UserState, Vocabularies
from engine.segments import SegmentIndex
from tests.engine.test_learning import decision_record

NAMES = list(COMPONENTS)
NOW = 1_767_600_000.0
POINT = "tutorial:first_project"
#: A partition snapshot as the code before the component protocol wrote it, of
#: :func:`reference_stream` applied with :func:`full_setup`.
REFERENCE = Path(__file__).parent / "snapshots" / "partition_v1.msgpack"
Message = tuple[int, str, bytes]


def reference_catalog() -> Catalog:
    data = load_catalog(DEFAULT_CATALOG).model_dump()
    data["experiments"] = [
        {
            "id": "welcome_copy",
            "salt": "copy-1",
            "arms": [{"id": "control"}, {"id": "short"}],
            "metric": {"event": "onboarding_completed", "within_days": 7},
            "guardrails": [{"event": "step_completed", "name": "profile", "within_days": 7}],
        }
    ]
    return Catalog.model_validate(data)


def full_setup() -> PartitionSetup:
    """A setup that builds every registered component (a fresh, seeded learner each time: a
    learner is shared state, so two partitions compared must not share one)."""
    catalog = reference_catalog()
    return PartitionSetup(
        learner=Learner(catalog, Decider(catalog), seed=3),
        segment_index=SegmentIndex(catalog),
        experiment_plan=ExperimentPlan(catalog.experiments, catalog.holdout),
    )


def reference_stream(long_keys: bool = False) -> list[Message]:
    """One partition's messages touching every component: events of five users, decisions,
    an explicit reward, exposures, a consent withdrawal and an erasure. ``long_keys``: user keys
    long enough to be searched for in a snapshot's bytes."""
    out: list[Message] = []

    def user(name: str) -> str:
        return name * 13 if long_keys else name

    def add(tail: str, data: bytes) -> None:
        out.append((len(out) + 1, tail, data))

    def event(name: str, kind: str, ts: float, **body: Any) -> None:
        key = user(name)
        add(key, encode_event({"event_id": f"e{len(out)}", "user_id": key, "type": kind, "ts": ts, **body}))

    def decision(name: str, ts: float, arm: str = "video") -> str:
        key = user(name)
        decision_id = f"{key}d{len(out):08d}"  # decision ids begin with the user's key
        add(f"{key}-decision", encode_record(decision_record(decision_id, key, ts, arm, POINT)))
        return decision_id

    def exposure(name: str, arm: str, ts: float, pre: float = 0.0) -> None:
        key = user(name)
        record = ExposureRecord(experiment="welcome_copy", arm=arm, user_id=key, ts=ts, pre=pre)
        add(f"{key}-exposure", encode_exposure(record))

    event("ka", "session_started", NOW, context={"device_type": "mobile", "country": "DE"})
    decision("ka", NOW + 1)
    event("ka", "feature_clicked", NOW + 2, props={"feature": "export"})
    event("ka", "feature_clicked", NOW + 3, props={"feature": "share"})
    event("ka", "tutorial_completed", NOW + 4, props={"tutorial": "first_project", "variant": "video"})
    event("kb", "session_started", NOW + 5, context={"device_type": "desktop"})
    kb = decision("kb", NOW + 6, "interactive")
    add(f"{user('kb')}-reward", encode_record(RewardRecord(decision_id=kb, reward=0.5, ts=NOW + 7)))
    exposure("ka", "short", NOW + 8, pre=1.5)
    event("ka", "step_completed", NOW + 9, props={"step": "profile"})
    event("kc", "session_started", NOW + 10)
    exposure("kc", "control", NOW + 11)
    event("kc", "consent_updated", NOW + 12, props={"analytics": False})
    event("kc", "feature_clicked", NOW + 13, props={"feature": "export"})
    event("kb", "onboarding_completed", NOW + 14)
    event("kd", "session_started", NOW + 15)
    decision("kd", NOW + 16)
    add(f"{user('kd')}-erase", b"")
    event("ke", "session_started", NOW + 17, context={"device_type": "tablet"})
    decision("ke", NOW + 18)
    event("ke", "profile_updated", NOW + 19, props={"role": "dev"})
    return out


def replayed(messages: list[Message], part: PartitionState | None = None) -> PartitionState:
    part = part if part is not None else PartitionState(0, full_setup())
    for seq, tail, data in messages:
        part.apply_message(seq, tail, data)
    return part


def plain(value: Any) -> Any:
    """Decoded snapshot values, with what is pickled in them (the River models of
    :mod:`engine.models`) spelled out: a pickle of equal objects need not be the same bytes
    (its memo follows object identity), so state is compared by what the pickle holds."""
    if isinstance(value, bytes) and value[:1] == b"\x80" and value[1:2] in (b"\x04", b"\x05"):
        return {"pickled": plain(pickle.loads(value))}
    if isinstance(value, dict):
        return {k if isinstance(k, str | int) else repr(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | deque):
        return [plain(v) for v in value]
    if isinstance(value, np.ndarray | np.generic):
        return value.tolist()
    if value is None or isinstance(value, bool | int | float | str | bytes):
        return value
    if isinstance(value, type) or inspect.isroutine(value):
        return value.__qualname__
    # What pickle keeps of an object (its attributes; a numpy generator's state).
    return {"type": type(value).__qualname__, "state": plain(value.__getstate__())}


def canonical(snapshot: bytes) -> bytes:
    """A snapshot's bytes with its pickles spelled out (key order and value types kept)."""
    return msgspec.msgpack.encode(plain(msgspec.msgpack.decode(snapshot)))


def state_of(component: PartitionComponent) -> bytes:
    return canonical(msgspec.msgpack.encode(component.snapshot()))


def fresh(name: str) -> PartitionComponent:
    component = COMPONENTS[name](full_setup(), 0)
    assert component is not None
    return component


def test_the_full_setup_builds_every_registered_component() -> None:
    """A component whose setting the contract's setup leaves out would go untested: add it to
    :func:`full_setup`."""
    part = PartitionState(0, full_setup())
    assert list(part.components) == NAMES
    assert all(isinstance(c, PartitionComponent) for c in part.components.values())
    assert list(PartitionState(0).components) == []  # and none without a setup


@pytest.mark.parametrize("name", NAMES)
def test_snapshot_restores_to_the_same_state(name: str) -> None:
    part = replayed(reference_stream())
    component = part.components[name]
    restored = fresh(name)
    snap = msgspec.msgpack.decode(msgspec.msgpack.encode(component.snapshot()))  # as stored
    restored.restore(snap, copy.deepcopy(part.users))
    assert state_of(restored) == state_of(component)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("cut", [1, 6, 10, 14, 18])
def test_a_restored_component_continues_as_the_straight_run(name: str, cut: int) -> None:
    """Snapshot mid-stream, restore (through the partition, as recovery does), apply the rest:
    the component ends where the run without a restart did."""
    messages = reference_stream()
    straight = replayed(messages)
    first = replayed(messages[:cut])
    resumed = replayed(messages[cut:], PartitionState.restore(first.snapshot(), full_setup()))
    assert state_of(resumed.components[name]) == state_of(straight.components[name])


@pytest.mark.parametrize("name", NAMES)
def test_a_replay_of_the_same_stream_gives_the_same_snapshot(name: str) -> None:
    messages = reference_stream()
    once, again = replayed(messages), replayed(messages)
    assert state_of(once.components[name]) == state_of(again.components[name])
    replayed(messages, once)  # redelivered: already applied
    assert state_of(once.components[name]) == state_of(again.components[name])


@pytest.mark.parametrize("name", NAMES)
def test_an_erased_user_leaves_no_trace(name: str) -> None:
    part = replayed(reference_stream(long_keys=True))
    component = part.components[name]
    keys = list(part.users)
    assert keys
    for key in keys:
        user = part.users[key]
        component.forget_user(key, user, part.watermark, "x1")
        after_forget = state_of(component)
        component.forget_user(key, user, part.watermark, "x1")  # forgetting twice: nothing more
        assert state_of(component) == after_forget
        # A plain forget keeps what must still be published (exits); an erasure not even that.
        component.forget_user(key, user, part.watermark, "x1", erase=True)
        assert key.encode() not in state_of(component), key


@pytest.mark.parametrize("name", NAMES)
def test_forgetting_a_user_never_seen_changes_nothing(name: str) -> None:
    part = replayed(reference_stream())
    component = part.components[name]
    before = state_of(component)
    component.forget_user("nobody", None, part.watermark, 99)
    component.forget_user("nobody", None, part.watermark, 99, erase=True)
    assert state_of(component) == before


def one_of_each_kind(key: str) -> list[dict[str, Any]]:
    props: dict[EventKind, dict[str, Any]] = {
        EventKind.STEP_VIEWED: {"step": "profile"},
        EventKind.STEP_COMPLETED: {"step": "profile"},
        EventKind.FEATURE_CLICKED: {"feature": "never_seen"},
        EventKind.TUTORIAL_STARTED: {"tutorial": "unknown", "variant": "video"},
        EventKind.TUTORIAL_COMPLETED: {"tutorial": "unknown", "variant": "video"},
        EventKind.PROFILE_UPDATED: {"role": "dev"},
        EventKind.CONSENT_UPDATED: {"personalization": True},
        EventKind.TOUR_STEP_VIEWED: {"tutorial": "unknown", "variant": "video", "index": 0},
        EventKind.TOUR_STEP_SKIPPED: {"tutorial": "unknown", "variant": "video", "index": 1},
        EventKind.SURFACE_SHOWN: {"surface": "tour", "id": "unknown"},
        EventKind.SURFACE_DISMISSED: {"surface": "tour", "id": "unknown", "decision_id": "nope"},
    }
    return [
        {
            "event_id": f"u{kind}",
            "user_id": key,
            "type": kind.wire_name,
            "ts": NOW + kind,
            "props": props.get(kind, {}),
        }
        for kind in BUILTIN_KINDS
    ]


@pytest.mark.parametrize("name", NAMES)
def test_unknown_input_is_no_error(name: str) -> None:
    component = fresh(name)
    vocab, user = Vocabularies(), UserState.new(NOW)
    # Every kind of event, of a user it never saw.
    for seq, body in enumerate(one_of_each_kind("stranger"), 1):
        event = event_from_object(body)
        component.on_event("stranger", user, event, seq, vocab, user.apply(event, vocab))
    # Records it does not use, or no record at all.
    before = state_of(component)
    for record in (None, object(), "a string", {"decision_id": "x"}):
        component.on_record("stranger", record, 99)
    assert state_of(component) == before
    # Empty snapshots: the state of a fresh component.
    empty: tuple[Any, ...] = (None, {})
    for snap in empty:
        restored = fresh(name)
        restored.restore(snap, {})
        assert state_of(restored) == state_of(fresh(name))


@pytest.mark.parametrize("name", NAMES)
def test_an_older_snapshot_restores_and_catches_up(name: str) -> None:
    """The state an empty component snapshots, restored, takes the whole stream as a fresh one."""
    messages = reference_stream()
    empty = PartitionState(0, full_setup())
    older = PartitionState.restore(empty.snapshot(), full_setup())
    assert state_of(replayed(messages, older).components[name]) == state_of(
        replayed(messages).components[name]
    )


def test_a_snapshot_written_before_the_protocol_restores_with_the_same_layout() -> None:
    """The layout is kept: the same stream snapshots as the code before the component protocol
    wrote it (the same keys in the same order, the same values; only the pickled River models
    may differ in their bytes), and that snapshot restores to a partition that writes it again."""
    written = REFERENCE.read_bytes()
    now = replayed(reference_stream()).snapshot()
    # The changes since: counters hold a count of custom events (zero here), after the
    # built-in kinds' counts (see UserState.restore); statistics name their arms and segments
    # their rules (a catalog change reads them by name).
    assert canonical(now) == canonical(with_custom_counter(with_names(written)))
    restored = PartitionState.restore(written, full_setup())
    assert canonical(restored.snapshot()) == canonical(now)
    assert set(restored.components) == set(NAMES) <= set(msgspec.msgpack.decode(written))


def with_names(snapshot: bytes) -> bytes:
    """A snapshot from before statistics named their arms and segments their rules, as this
    code writes it: each point's arms after the learning contribution's other keys, each
    segment's rule fingerprint after the segment ids."""
    data = msgspec.msgpack.decode(snapshot)
    setup = full_setup()
    assert setup.learner is not None and setup.segment_index is not None
    contributions = msgspec.msgpack.decode(data["learning"]["contributions"])
    contributions["arms"] = setup.learner.points
    data["learning"]["contributions"] = msgspec.msgpack.encode(contributions)
    segments = data["segments"]
    data["segments"] = {"ids": segments.pop("ids"), "rules": setup.segment_index.fingerprints, **segments}
    return msgspec.msgpack.encode(data)


def with_custom_counter(snapshot: bytes) -> bytes:
    """A snapshot from before custom events as this code writes it: a zero inserted in each
    user's counters (uint32s) at the CUSTOM kind's place."""
    data = msgspec.msgpack.decode(snapshot)
    at = int(EventKind.CUSTOM) * 4
    for user in data["users"].values():
        user[0] = user[0][:at] + bytes(4) + user[0][at:]
    return msgspec.msgpack.encode(data)
