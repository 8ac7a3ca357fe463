"""Partitions: the unit of data. A partition holds its users' state and the last stream
sequence applied to it, which is what makes replay exactly-once; the rest of its state is in
its components (:mod:`engine.component`), built from one :class:`PartitionSetup`.

>>> from engine.events import encode_event
>>> part = PartitionState(partition=3)
>>> raw = encode_event({"event_id": "e1", "user_id": "k1", "type": "session_started", "ts": 10})
>>> part.apply_message(seq=1, user_key="k1", data=raw)
>>> part.apply_message(seq=1, user_key="k1", data=raw)  # redelivered: ignored
>>> part.last_seq, part.users["k1"].sessions
(1, 1)
>>> PartitionState.restore(part.snapshot()).users["k1"].sessions
1

A message may carry several events of its user (a batch, :mod:`engine.batches`), applied in
order under the message's sequence; an event already applied to its user inside another
batch is skipped (:mod:`engine.recent`):

>>> from engine.batches import join_encoded
>>> e2, e3 = (encode_event({"event_id": f"e{n}", "user_id": "k1", "type": "session_started", "ts": 10 * n})
...           for n in (2, 3))
>>> part.apply_message(seq=2, user_key="k1", data=join_encoded([e2]))
>>> part.apply_message(seq=3, user_key="k1", data=join_encoded([e2, e3]))  # e2 again, and e3
>>> part.applied, part.replayed
(3, 1)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import msgspec

from engine.batches import batch_items
from engine.component import PartitionComponent
from engine.errors import InvalidEvent, InvalidEvents
from engine.events import ConsentUpdated, Event
from engine.experiments import ExperimentPlan, PartitionExperiments, exposure_decoder
from engine.learning import Learner, PartitionLearning, decision_decoder, reward_decoder
from engine.pii import PiiSealer
from engine.profile import PERSONALIZATION_BITS, UserState, Vocabularies, consent_allows, with_consent
from engine.recent import RecentEventIds
from engine.schema import BUILTIN_SCHEMA, EventSchema
from engine.segments import PartitionSegments, SegmentIndex

SNAPSHOT_VERSION = 1

#: What :meth:`PartitionState.checkpoint_mark` returns: (last sequence applied, expiries,
#: segment revisions); every part only grows.
CheckpointMark = tuple[int, int, int]

_snapshot_encoder = msgspec.msgpack.Encoder()
_PERSONAL_SET, _PERSONAL_ON = PERSONALIZATION_BITS


class _TypeOnly(msgspec.Struct):
    type: str = ""


_type_decoder = msgspec.msgpack.Decoder(_TypeOnly)

#: The first byte of a msgpack array: a batched message (a single event is a map).
_BATCH_FIRST_BYTES = frozenset([*range(0x90, 0xA0), 0xDC, 0xDD])


class _SnapshotHead(msgspec.Struct):
    last_seq: int


_head_decoder = msgspec.msgpack.Decoder(_SnapshotHead)


def snapshot_position(snapshot: bytes | None) -> int:
    """The last applied sequence a partition snapshot records (0: none), without restoring it:
    the decoder skips every other field.

    >>> snapshot_position(PartitionState(1).snapshot()), snapshot_position(None)
    (0, 0)
    """
    return _head_decoder.decode(snapshot).last_seq if snapshot else 0


@dataclass(frozen=True, slots=True)
class PartitionSetup:
    """What every partition of a shard is built with: what its components need (None: that
    component is left out) and the consent and PII settings.

    >>> from engine.catalog import DEFAULT_CATALOG, load_catalog
    >>> setup = PartitionSetup(segment_index=SegmentIndex(load_catalog(DEFAULT_CATALOG)))
    >>> list(PartitionState(0, setup).components)
    ['segments']
    """

    #: The shard's learner: decisions, rewards and what they teach (:mod:`engine.learning`).
    learner: Learner | None = None
    #: The segments tracked live (:mod:`engine.segments`).
    segment_index: SegmentIndex | None = None
    #: The catalog's experiments, whose exposures and outcomes are kept (none: not kept).
    experiment_plan: ExperimentPlan | None = None
    #: Whether a purpose a user said nothing about is granted (the catalog's
    #: ``consent_mode``: ``opt_out`` yes, ``opt_in`` no); the same for both purposes.
    consent_by_default: bool = True
    #: Seals PII (a name) in snapshots; without one, snapshots leave it out.
    sealer: PiiSealer | None = None
    #: The event types, traits and context fields the catalog declares (:mod:`engine.schema`).
    schema: EventSchema = BUILTIN_SCHEMA


def _learning(
    setup: PartitionSetup, partition: int, old: PartitionComponent | None = None
) -> PartitionComponent | None:
    learner = setup.learner
    if learner is None:
        return None
    if isinstance(old, PartitionLearning) and old.rebind(learner):
        return old
    return PartitionLearning(learner)


def _segments(
    setup: PartitionSetup, partition: int, old: PartitionComponent | None = None
) -> PartitionComponent | None:
    index = setup.segment_index
    if index is None:
        return None
    if isinstance(old, PartitionSegments) and old.index is index:
        return old  # the same segments, rules and settings: the runtime kept the index
    return PartitionSegments(index, partition)


def _experiments(
    setup: PartitionSetup, partition: int, old: PartitionComponent | None = None
) -> PartitionComponent | None:
    plan = setup.experiment_plan
    if not plan:
        return None
    if isinstance(old, PartitionExperiments):
        old.plan = plan  # exposures are kept by experiment id under any plan
        return old
    return PartitionExperiments(plan)


#: Every kind of component a partition can hold, by the key its state has in a snapshot, each
#: built from the setup (None: the setup leaves it out). Components see each event in this
#: order, and their keys are written in it (snapshots keep the layout of version 1). Given the
#: component of the catalog version served until now (``old``), a builder returns it, re-bound,
#: when its state has exactly the shape the new setup gives (a catalog switch then moves no
#: state and builds nothing); otherwise a fresh one, which the partition loads from ``old``'s
#: snapshot. A new component: its class (see :class:`~engine.component.PartitionComponent`),
#: what it needs in :class:`PartitionSetup`, and an entry here.
COMPONENTS: dict[
    str, Callable[[PartitionSetup, int, PartitionComponent | None], PartitionComponent | None]
] = {
    "learning": _learning,
    "segments": _segments,
    "experiments": _experiments,
}

_NO_SETUP = PartitionSetup()


class PartitionState:
    """State of one partition: users, vocabularies, last applied stream sequence, and its
    components (:data:`COMPONENTS` the setup enables)."""

    __slots__ = (
        "_components",
        "anonymous",
        "applied",
        "components",
        "consent_by_default",
        "last_seq",
        "partition",
        "pii_fields",
        "recent",
        "records",
        "replayed",
        "retired",
        "revision",
        "schema",
        "sealer",
        "users",
        "vocab",
        "watermark",
        "withheld",
    )

    def __init__(self, partition: int, setup: PartitionSetup | None = None) -> None:
        setup = setup or _NO_SETUP
        self.partition = partition
        #: Seals PII (a name) in snapshots; without one, snapshots leave it out.
        self.sealer = setup.sealer
        self.users: dict[str, UserState] = {}
        #: What the catalog declares: how events decode and which custom fields are kept.
        self.schema = setup.schema
        self.vocab = Vocabularies()
        #: The ids of the PII custom traits (sealed in snapshots, dropped with consent).
        self.pii_fields: frozenset[int] = frozenset()
        self._declare()
        #: Stored events of custom types the catalog no longer declares, skipped, by type.
        self.retired: dict[str, int] = {}
        #: Every message of this partition with a stream sequence at or below this one has been
        #: applied (or dead-lettered). Redeliveries at or below it change nothing.
        self.last_seq = 0
        self.applied = 0
        #: Recent event ids of the users whose events come in batches, and how many events
        #: they recognized as applied already (retried inside another message).
        self.recent = RecentEventIds()
        self.replayed = 0
        #: Decision and reward records applied (the learning loop's messages in the stream).
        self.records = 0
        #: The newest event time seen in this partition.
        self.watermark = 0.0
        #: The components the setup enables, by snapshot key, in :data:`COMPONENTS`' order.
        self.components: dict[str, PartitionComponent] = {}
        self._components: tuple[PartitionComponent, ...] = ()  # the event path iterates this
        self._build_components(setup)
        #: Whether a purpose a user said nothing about is granted (see :class:`PartitionSetup`).
        self.consent_by_default = setup.consent_by_default
        #: Users without analytics consent: nothing but their consent record is kept.
        self.withheld: dict[str, int] = {}
        #: Their events, counted by type and dropped.
        self.anonymous: dict[str, int] = {}
        #: Counts what changes this state without a stream message (profiles expired); see
        #: :meth:`checkpoint_mark`.
        self.revision = 0

    def _build_components(
        self, setup: PartitionSetup, before: Mapping[str, PartitionComponent] | None = None
    ) -> list[str]:
        """The components ``setup`` enables, each kept from ``before`` where it still fits (see
        :data:`COMPONENTS`); the names of those built fresh."""
        before = before or {}
        self.components, fresh = {}, []
        for name, build in COMPONENTS.items():
            old = before.get(name)
            component = build(setup, self.partition, old)
            if component is not None:
                self.components[name] = component
                if component is not old:
                    fresh.append(name)
        self._components = tuple(self.components.values())
        return fresh

    def _restore_components(self, snap: Mapping[str, Any], names: Iterable[str] | None = None) -> None:
        """Load each component (of ``names``; None: all) from its key of ``snap`` (a decoded
        partition snapshot); then the segments new or changed since it are evaluated for every
        user."""
        chosen = self.components.keys() if names is None else set(names)
        for name, component in self.components.items():
            if name in chosen:
                component.restore(snap.get(name), self.users)
        segments = self.segments
        if segments is not None:
            segments.evaluate_stale(self.users, self.vocab)

    def reconfigure(self, setup: PartitionSetup) -> None:
        """Serve another catalog version's ``setup`` from now on, in one synchronous step.

        The users' profiles, vocabularies and stream position stay; each component is rebuilt
        from ``setup`` and loads its own snapshot, as a restore does (learning reads its
        statistics, open decisions and paths by arm and feature name, segments move by segment
        id and evaluate new or changed rules for every user, exposures stay); the schema is
        swapped (types it declares get their ids). This partition object stays the same: what
        holds it (its consumer) keeps working.

        >>> from engine.catalog import DEFAULT_CATALOG, load_catalog
        >>> part = PartitionState(0)
        >>> part.reconfigure(PartitionSetup(segment_index=SegmentIndex(load_catalog(DEFAULT_CATALOG))))
        >>> list(part.components)
        ['segments']
        """
        before = self.components
        self.sealer = setup.sealer
        self.schema = setup.schema
        self.consent_by_default = setup.consent_by_default
        self._declare()
        # A component whose state has the new shape serves on as it is (most catalog changes:
        # a pause of microseconds, nothing built); a fresh one loads the old one's state
        # through bytes, exactly as a checkpoint is read back: one path with restore.
        fresh = self._build_components(setup, before)
        moved = {name: before[name].snapshot() for name in fresh if name in before}
        snap = msgspec.msgpack.decode(_snapshot_encoder.encode(moved)) if moved else {}
        self._restore_components(snap, fresh)

    def _declare(self) -> None:
        # Every declared type gets its id now, so a type the catalog drops later is still
        # known to this partition (its stored events are then skipped, see apply_message).
        vocab, schema = self.vocab, self.schema
        for name in schema.custom_types:
            vocab.custom_types.id(name)
        self.pii_fields = frozenset(vocab.custom_fields.id(name) for name in sorted(schema.pii_traits))

    # ------------------------------------------------------------------ components by type

    @property
    def learning(self) -> PartitionLearning | None:
        """Decisions, rewards and what they taught (None: this partition does not learn)."""
        found = self.components.get("learning")
        assert found is None or isinstance(found, PartitionLearning)
        return found

    @property
    def segments(self) -> PartitionSegments | None:
        """Live segment membership and its changes (None: not tracked)."""
        found = self.components.get("segments")
        assert found is None or isinstance(found, PartitionSegments)
        return found

    @property
    def experiments(self) -> PartitionExperiments | None:
        """Experiment exposures, one per user and experiment, and their outcomes."""
        found = self.components.get("experiments")
        assert found is None or isinstance(found, PartitionExperiments)
        return found

    def apply_message(self, seq: int, user_key: str, data: bytes) -> None:
        """Decode, validate and apply one stream message, once.

        ``user_key`` is the subject's tail: the user's key for an event, ``<key>-decision`` or
        ``<key>-reward`` for the learning loop's records. Raises :class:`InvalidEvent` for a
        message that must be dead-lettered; the sequence still counts as handled so that a
        replay does not dead-letter it again. A batch's valid events are applied whatever its
        invalid ones; then :class:`~engine.errors.InvalidEvents` names those.
        """
        if seq <= self.last_seq:
            return
        self.last_seq = seq
        if "-" in user_key:  # keys are base32: no "-" in an event's tail
            user_key, kind = user_key.split("-", 1)
            self._apply_record(seq, user_key, kind, data)
            return
        if data and data[0] in _BATCH_FIRST_BYTES:
            self._apply_batch(seq, user_key, data)
            return
        try:
            event = self.schema.decode(data)
        except InvalidEvent as exc:
            retired = self._retired_type(exc, data)
            if retired is None:
                raise
            # Stored under an earlier schema that declared it: history, not a mistake.
            self.retired[retired] = self.retired.get(retired, 0) + 1
            return
        if event.user_id != user_key:
            raise InvalidEvent("key_mismatch", "payload user_id does not match the subject's user key")
        recent = self.recent.by_user
        if recent and user_key in recent and self.recent.seen(user_key, event.event_id):
            self.replayed += 1
            return
        self.apply_event(user_key, event, seq)

    def _apply_batch(self, seq: int, user_key: str, data: bytes) -> None:
        """A batched message's events in order, each once for its user (see :mod:`engine.recent`)."""
        rejected: list[tuple[int, InvalidEvent]] = []
        seen = self.recent.seen
        for i, event in enumerate(self.schema.decode_batch(data)):
            if isinstance(event, InvalidEvent):
                retired = self._retired_type(event, batch_items(data)[i])
                if retired is None:
                    rejected.append((i, event))
                else:
                    self.retired[retired] = self.retired.get(retired, 0) + 1
            elif event.user_id != user_key:
                problem = "payload user_id does not match the subject's user key"
                rejected.append((i, InvalidEvent("key_mismatch", problem)))
            elif seen(user_key, event.event_id):
                self.replayed += 1
            else:
                self.apply_event(user_key, event, seq)
        if rejected:
            raise InvalidEvents(rejected)

    def _retired_type(self, error: InvalidEvent, data: bytes) -> str | None:
        """The type of an event whose type the catalog no longer declares but this partition
        once held (None: any other invalid message)."""
        if error.reason != "unknown_type":
            return None
        try:
            name = _type_decoder.decode(data).type
        except msgspec.DecodeError:
            return None
        return name if self.vocab.custom_types.find(name) is not None else None

    def apply_event(self, user_key: str, event: Event, seq: int = 0) -> None:
        user = self.users.get(user_key)
        if (user is None or isinstance(event, ConsentUpdated)) and not self._admit(
            user_key, user, event, seq
        ):
            self.anonymous[event.type_name] = self.anonymous.get(event.type_name, 0) + 1
            return
        if user is None:
            user = self.users[user_key] = UserState.new(event.ts)
            user.consent = self.withheld.pop(user_key, 0)
        changed = user.apply(event, self.vocab, self.schema)
        # Personalization consent, tested inline: this runs for every event of a user holding a
        # name or declared traits (a call here cost ~4% of a custom event's apply).
        bits = user.consent
        if (user.name is not None or (self.pii_fields and user.extras is not None)) and not (
            bits & _PERSONAL_ON if bits & _PERSONAL_SET else self.consent_by_default
        ):
            # The name (and PII traits) are held for messages only, so only while
            # personalization is granted.
            user.name = None
            if self.pii_fields:
                user.drop_extras(self.pii_fields)
        self.applied += 1
        self.watermark = max(self.watermark, event.ts)
        vocab = self.vocab
        for component in self._components:
            component.on_event(user_key, user, event, seq, vocab, changed)

    def _admit(self, user_key: str, user: UserState | None, event: Event, seq: int) -> bool:
        """Whether analytics consent lets this event be kept (the cheap path, a known user's
        ordinary event, never gets here). Refusing it forgets the user but their consent."""
        if isinstance(event, ConsentUpdated):
            bits = user.consent if user is not None else self.withheld.get(user_key, 0)
            bits = with_consent(bits, event.props.analytics, event.props.personalization)
            if consent_allows(bits, "analytics", self.consent_by_default):
                return True  # a new user starts from the record (apply_event), then this event
            self.withheld[user_key] = bits
            if user is not None:
                self.forget_user(user_key, event.ts, seq)
            return False
        # A user never seen: kept unless consent must come first; a refusal on record: dropped.
        recorded = self.withheld.get(user_key)
        return consent_allows(recorded or 0, "analytics", self.consent_by_default)

    def forget_user(self, user_key: str, now: float, seq: int | str = 0, erase: bool = False) -> bool:
        """Remove a user's state: profile, open decisions, path, insights, exposures; their
        segments are left (published as exits, caused by ``seq``: the message's sequence, or what
        else did; with ``erase``, no exits). What the policies already learned is aggregate and
        stays. Whether the user had a profile here."""
        user = self.users.pop(user_key, None)
        self.recent.forget(user_key)
        for component in self._components:
            component.forget_user(user_key, user, now, seq, erase)
        return user is not None

    def erase_user(self, user_key: str, seq: int = 0) -> None:
        """Erasure (``hs.events.<p>.<key>-erase``, applied in stream order, so a replay erases
        again whatever it re-applies before it): the user's state, consent record and queued
        segment changes go; no exits are published for them."""
        self.forget_user(user_key, self.watermark, seq, erase=True)
        self.withheld.pop(user_key, None)

    def expire_inactive(self, max_inactive_s: float) -> int:
        """Delete the profiles of users inactive for ``max_inactive_s`` by this partition's event
        time (its newest event): deterministic, and a replay expires the same users. Returns
        how many."""
        cutoff = self.watermark - max_inactive_s
        stale = [key for key, user in self.users.items() if user.last_seen < cutoff]
        # Their exits are named by the expiry's time: a user who comes back and expires again
        # exits under other ids.
        origin = f"x{self.watermark:.3f}"
        for key in stale:
            self.forget_user(key, self.watermark, origin)
        if stale:
            self.revision += 1
        return len(stale)

    def checkpoint_mark(self) -> CheckpointMark:
        """Equal to an earlier mark while nothing changed this state: the last sequence applied,
        and what changed it without a message (a sweep moving users in or out of segments, a
        batch of changes published, profiles expired). A partition nobody sends events to still
        changes: its snapshot must follow, or a restart would redo a sweep's exits (under new
        ids) and bring expired profiles back until the next expiry.

        >>> from engine.events import encode_event
        >>> part = PartitionState(0)
        >>> raw = encode_event({"event_id": "e1", "user_id": "k", "type": "session_started", "ts": 10})
        >>> part.apply_message(seq=1, user_key="k", data=raw)
        >>> part.checkpoint_mark()
        (1, 0, 0)
        >>> part.watermark += 400 * 86400  # a year later, nothing heard of "k": expired
        >>> part.expire_inactive(365 * 86400), part.checkpoint_mark()
        (1, (1, 1, 0))
        """
        segments = self.segments
        swept = segments.revision if segments is not None else 0
        return (self.last_seq, self.revision, swept)

    def consent_of(self, user_key: str) -> int | None:
        """The consent bits of a user the partition keeps nothing else about (None: not one)."""
        return self.withheld.get(user_key)

    def sweep_segments(self, now: float, keys: list[str], reassign: bool = True) -> int:
        """Re-evaluate the time-based segments of the users ``keys`` as of ``now`` (a chunk of a
        sweep, see :meth:`engine.segments.PartitionSegments.sweep`); the number of changes."""
        segments = self.segments
        if segments is None:
            return 0
        users = self.users
        chosen = ((k, users[k]) for k in keys if k in users)
        return segments.sweep(chosen, now, self.vocab, reassign)

    def _apply_record(self, seq: int, user_key: str, kind: str, data: bytes) -> None:
        if kind == "erase":
            self.records += 1
            self.erase_user(user_key, seq)
            return
        if kind == "exposure":
            self._apply_exposure(seq, user_key, data)
            return
        decoder = decision_decoder if kind == "decision" else reward_decoder if kind == "reward" else None
        if decoder is None:
            raise InvalidEvent("unknown_kind", f"no record kind {kind[:40]!r}")
        try:
            record = decoder.decode(data)
        except msgspec.DecodeError as exc:
            raise InvalidEvent("invalid_record", f"{kind}: {exc}") from None
        self.records += 1
        for component in self._components:
            component.on_record(user_key, record, seq)

    def _apply_exposure(self, seq: int, user_key: str, data: bytes) -> None:
        try:
            record = exposure_decoder.decode(data)
        except msgspec.DecodeError as exc:
            raise InvalidEvent("invalid_record", f"exposure: {exc}") from None
        if record.user_id != user_key:
            raise InvalidEvent("key_mismatch", "exposure user_id does not match the subject's user key")
        self.records += 1
        if user_key not in self.users and not consent_allows(
            self.withheld.get(user_key) or 0, "analytics", self.consent_by_default
        ):
            return  # consent withdrawn since the decision: nothing is kept about them
        for component in self._components:
            component.on_record(user_key, record, seq)

    def view(self, user_key: str, now: float) -> dict[str, Any] | None:
        user = self.users.get(user_key)
        if user is None:
            return None
        view = user.view(self.vocab, now, self.schema)
        segments = self.segments
        if segments is not None:
            # Live membership as of the last event or sweep (a decision works its own out now).
            view["segments"] = segments.index.names(user.segments)
            view["cluster"] = user.cluster if user.cluster >= 0 else None
        return view

    # ------------------------------------------------------------------ snapshots

    def snapshot(self) -> bytes:
        snap: dict[str, Any] = {
            "version": SNAPSHOT_VERSION,
            "partition": self.partition,
            "last_seq": self.last_seq,
            "applied": self.applied,
            "records": self.records,
            "watermark": self.watermark,
            "vocab": self.vocab.snapshot(),
            "users": {
                key: user.snapshot(key, self.sealer, self.pii_fields) for key, user in self.users.items()
            },
        }
        # Every known component's key, None when left out: the layout does not depend on the setup.
        for name in COMPONENTS:
            component = self.components.get(name)
            snap[name] = component.snapshot() if component is not None else None
        snap["withheld"] = self.withheld
        snap["anonymous"] = self.anonymous
        if self.recent.by_user:
            snap["recent"] = self.recent.snapshot()
            snap["replayed"] = self.replayed
        if self.retired:
            snap["retired"] = self.retired
        return _snapshot_encoder.encode(snap)

    @classmethod
    def restore(cls, data: bytes, setup: PartitionSetup | None = None) -> PartitionState:
        snap = msgspec.msgpack.decode(data)
        if snap.get("version") != SNAPSHOT_VERSION:
            raise ValueError(f"unsupported partition snapshot version {snap.get('version')!r}")
        part = cls(snap["partition"], setup)
        part.withheld = dict(snap.get("withheld") or {})
        part.anonymous = dict(snap.get("anonymous") or {})
        part.last_seq = snap["last_seq"]
        part.applied = snap["applied"]
        part.records = snap.get("records", 0)
        part.watermark = snap["watermark"]
        part.vocab = Vocabularies(snap["vocab"])
        part._declare()  # types declared since the snapshot; the ones it knew stay known
        part.retired = dict(snap.get("retired") or {})
        part.recent = RecentEventIds(snap.get("recent"))
        part.replayed = snap.get("replayed", 0)
        part.users = {key: UserState.restore(value, key, part.sealer) for key, value in snap["users"].items()}
        part._restore_components(snap)
        return part

    @classmethod
    def build(
        cls, partition: int, snapshot: bytes | None, setup: PartitionSetup | None = None
    ) -> PartitionState:
        """Cold start and recovery are one path: restore if there is a snapshot."""
        if snapshot is None:
            return cls(partition, setup)
        return cls.restore(snapshot, setup)
