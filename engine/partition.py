"""Partitions: the unit of data. A partition holds its users' state and the last stream
sequence applied to it, which is what makes replay exactly-once.

>>> from engine.events import encode_event
>>> part = PartitionState(partition=3)
>>> raw = encode_event({"event_id": "e1", "user_id": "k1", "type": "session_started", "ts": 10})
>>> part.apply_message(seq=1, user_key="k1", data=raw)
>>> part.apply_message(seq=1, user_key="k1", data=raw)  # redelivered: ignored
>>> part.last_seq, part.users["k1"].sessions
(1, 1)
>>> PartitionState.restore(part.snapshot()).users["k1"].sessions
1
"""

from __future__ import annotations

from typing import Any

import msgspec

from engine.errors import InvalidEvent
from engine.events import ConsentUpdated, Event, decode_event
from engine.experiments import ExperimentPlan, PartitionExperiments, exposure_decoder
from engine.learning import Learner, PartitionLearning, RewardRecord, decision_decoder, reward_decoder
from engine.pii import PiiSealer
from engine.profile import FIRST_USE, UserState, Vocabularies, consent_allows, with_consent
from engine.segments import PartitionSegments, SegmentIndex

SNAPSHOT_VERSION = 1

#: What :meth:`PartitionState.checkpoint_mark` returns: (last sequence applied, expiries,
#: segment revisions); every part only grows.
CheckpointMark = tuple[int, int, int]

_snapshot_encoder = msgspec.msgpack.Encoder()


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


class PartitionState:
    """State of one partition: users, vocabularies, last applied stream sequence."""

    __slots__ = (
        "anonymous",
        "applied",
        "consent_by_default",
        "experiments",
        "last_seq",
        "learning",
        "partition",
        "records",
        "revision",
        "sealer",
        "segments",
        "users",
        "vocab",
        "watermark",
        "withheld",
    )

    def __init__(
        self,
        partition: int,
        learner: Learner | None = None,
        segments: SegmentIndex | None = None,
        consent_by_default: bool = True,
        sealer: PiiSealer | None = None,
        experiments: ExperimentPlan | None = None,
    ) -> None:
        self.partition = partition
        #: Seals PII (a name) in snapshots; without one, snapshots leave it out.
        self.sealer = sealer
        self.users: dict[str, UserState] = {}
        self.vocab = Vocabularies()
        #: Every message of this partition with a stream sequence at or below this one has been
        #: applied (or dead-lettered). Redeliveries at or below it change nothing.
        self.last_seq = 0
        self.applied = 0
        #: Decision and reward records applied (the learning loop's messages in the stream).
        self.records = 0
        #: The newest event time seen in this partition.
        self.watermark = 0.0
        #: Decisions, rewards and what they taught (None: this partition does not learn).
        self.learning = PartitionLearning(learner) if learner is not None else None
        #: Live segment membership and its changes (None: not tracked).
        self.segments = PartitionSegments(segments, partition) if segments is not None else None
        #: Experiment exposures, one per user and experiment, and their outcomes.
        self.experiments = PartitionExperiments(experiments) if experiments else None
        #: Whether a purpose a user said nothing about is granted (the catalog's
        #: ``consent_mode``: ``opt_out`` yes, ``opt_in`` no); the same for both purposes.
        self.consent_by_default = consent_by_default
        #: Users without analytics consent: nothing but their consent record is kept.
        self.withheld: dict[str, int] = {}
        #: Their events, counted by type and dropped.
        self.anonymous: dict[str, int] = {}
        #: Counts what changes this state without a stream message (profiles expired); see
        #: :meth:`checkpoint_mark`.
        self.revision = 0

    def apply_message(self, seq: int, user_key: str, data: bytes) -> None:
        """Decode, validate and apply one stream message, once.

        ``user_key`` is the subject's tail: the user's key for an event, ``<key>-decision`` or
        ``<key>-reward`` for the learning loop's records. Raises :class:`InvalidEvent` for a
        message that must be dead-lettered; the sequence still counts as handled so that a
        replay does not dead-letter it again.
        """
        if seq <= self.last_seq:
            return
        self.last_seq = seq
        if "-" in user_key:  # keys are base32: no "-" in an event's tail
            user_key, kind = user_key.split("-", 1)
            self._apply_record(seq, user_key, kind, data)
            return
        event = decode_event(data)
        if event.user_id != user_key:
            raise InvalidEvent("key_mismatch", "payload user_id does not match the subject's user key")
        self.apply_event(user_key, event, seq)

    def apply_event(self, user_key: str, event: Event, seq: int = 0) -> None:
        user = self.users.get(user_key)
        if (user is None or isinstance(event, ConsentUpdated)) and not self._admit(
            user_key, user, event, seq
        ):
            self.anonymous[event.kind.wire_name] = self.anonymous.get(event.kind.wire_name, 0) + 1
            return
        if user is None:
            user = self.users[user_key] = UserState.new(event.ts)
            user.consent = self.withheld.pop(user_key, 0)
        changed = user.apply(event, self.vocab)
        if user.name is not None and not user.consent_given("personalization", self.consent_by_default):
            # The name is held for messages only, so only while personalization is granted.
            user.name = None
        self.applied += 1
        self.watermark = max(self.watermark, event.ts)
        if self.learning is not None:
            self.learning.on_event(user_key, user, event, self.vocab, seq, bool(changed & FIRST_USE))
        if self.segments is not None:
            self.segments.on_event(user_key, user, event, seq, self.vocab, changed)
        experiments = self.experiments
        if experiments is not None and experiments.exposed:
            experiments.on_event(user_key, event)

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

    def forget_user(self, user_key: str, now: float, seq: int | str = 0) -> bool:
        """Remove a user's state: profile, open decisions, path, insights; their segments are
        left (published as exits, caused by ``seq``: the message's sequence, or what else did).
        What the policies already learned is aggregate and stays."""
        self.forget_exposures(user_key)
        user = self.users.pop(user_key, None)
        if user is None:
            return False
        if self.learning is not None:
            self.learning.forget_user(user_key)
        if self.segments is not None:
            self.segments.forget(user_key, user, now, seq)
        return True

    def forget_exposures(self, user_key: str) -> None:
        if self.experiments is not None:
            self.experiments.forget(user_key)

    def erase_user(self, user_key: str, seq: int = 0) -> None:
        """Erasure (``hs.events.<p>.<key>-erase``, applied in stream order, so a replay erases
        again whatever it re-applies before it): the user's state, consent record and queued
        segment changes go; no exits are published for them."""
        self.forget_user(user_key, self.watermark, seq)
        self.withheld.pop(user_key, None)
        if self.segments is not None:
            self.segments.drop_queued(user_key)

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
        swept = self.segments.revision if self.segments is not None else 0
        return (self.last_seq, self.revision, swept)

    def consent_of(self, user_key: str) -> int | None:
        """The consent bits of a user the partition keeps nothing else about (None: not one)."""
        return self.withheld.get(user_key)

    def sweep_segments(self, now: float, keys: list[str], reassign: bool = True) -> int:
        """Re-evaluate the time-based segments of the users ``keys`` as of ``now`` (a chunk of a
        sweep, see :meth:`engine.segments.PartitionSegments.sweep`); the number of changes."""
        if self.segments is None:
            return 0
        users = self.users
        chosen = ((k, users[k]) for k in keys if k in users)
        return self.segments.sweep(chosen, now, self.vocab, reassign)

    def _apply_record(self, seq: int, user_key: str, kind: str, data: bytes) -> None:
        if kind == "erase":
            self.records += 1
            self.erase_user(user_key, seq)
            return
        if kind == "exposure":
            self._apply_exposure(user_key, data)
            return
        decoder = decision_decoder if kind == "decision" else reward_decoder if kind == "reward" else None
        if decoder is None:
            raise InvalidEvent("unknown_kind", f"no record kind {kind[:40]!r}")
        try:
            record = decoder.decode(data)
        except msgspec.DecodeError as exc:
            raise InvalidEvent("invalid_record", f"{kind}: {exc}") from None
        self.records += 1
        learning = self.learning
        if learning is None:
            return
        if isinstance(record, RewardRecord):
            learning.on_reward(user_key, record, seq)
        else:
            if record.user_id != user_key:
                raise InvalidEvent("key_mismatch", "decision user_id does not match the subject's user key")
            learning.on_decision(user_key, record, seq)

    def _apply_exposure(self, user_key: str, data: bytes) -> None:
        try:
            record = exposure_decoder.decode(data)
        except msgspec.DecodeError as exc:
            raise InvalidEvent("invalid_record", f"exposure: {exc}") from None
        if record.user_id != user_key:
            raise InvalidEvent("key_mismatch", "exposure user_id does not match the subject's user key")
        self.records += 1
        if self.experiments is None:
            return
        if user_key not in self.users and not consent_allows(
            self.withheld.get(user_key) or 0, "analytics", self.consent_by_default
        ):
            return  # consent withdrawn since the decision: nothing is kept about them
        self.experiments.on_exposure(user_key, record)

    def view(self, user_key: str, now: float) -> dict[str, Any] | None:
        user = self.users.get(user_key)
        if user is None:
            return None
        view = user.view(self.vocab, now)
        if self.segments is not None:
            # Live membership as of the last event or sweep (a decision works its own out now).
            view["segments"] = self.segments.index.names(user.segments)
            view["cluster"] = user.cluster if user.cluster >= 0 else None
        return view

    # ------------------------------------------------------------------ snapshots

    def snapshot(self) -> bytes:
        return _snapshot_encoder.encode(
            {
                "version": SNAPSHOT_VERSION,
                "partition": self.partition,
                "last_seq": self.last_seq,
                "applied": self.applied,
                "records": self.records,
                "watermark": self.watermark,
                "vocab": self.vocab.snapshot(),
                "users": {key: user.snapshot(key, self.sealer) for key, user in self.users.items()},
                "learning": self.learning.snapshot() if self.learning is not None else None,
                "segments": self.segments.snapshot() if self.segments is not None else None,
                "experiments": self.experiments.snapshot() if self.experiments is not None else None,
                "withheld": self.withheld,
                "anonymous": self.anonymous,
            }
        )

    @classmethod
    def restore(
        cls,
        data: bytes,
        learner: Learner | None = None,
        segments: SegmentIndex | None = None,
        consent_by_default: bool = True,
        sealer: PiiSealer | None = None,
        experiments: ExperimentPlan | None = None,
    ) -> PartitionState:
        snap = msgspec.msgpack.decode(data)
        if snap.get("version") != SNAPSHOT_VERSION:
            raise ValueError(f"unsupported partition snapshot version {snap.get('version')!r}")
        part = cls(snap["partition"], consent_by_default=consent_by_default, sealer=sealer)
        part.withheld = dict(snap.get("withheld") or {})
        part.anonymous = dict(snap.get("anonymous") or {})
        part.last_seq = snap["last_seq"]
        part.applied = snap["applied"]
        part.records = snap.get("records", 0)
        part.watermark = snap["watermark"]
        part.vocab = Vocabularies(snap["vocab"])
        part.users = {key: UserState.restore(value, key, sealer) for key, value in snap["users"].items()}
        if learner is not None:
            part.learning = PartitionLearning.restore(learner, snap.get("learning"))
        if segments is not None:
            part.segments, recorded = PartitionSegments.restore(
                segments, snap.get("segments"), part.partition
            )
            if recorded != segments.ids:  # the catalog's segments changed since the snapshot
                for user in part.users.values():
                    user.segments = segments.remap(user.segments, recorded)
        if experiments:
            part.experiments = PartitionExperiments.restore(experiments, snap.get("experiments"))
        return part

    @classmethod
    def build(
        cls,
        partition: int,
        snapshot: bytes | None,
        learner: Learner | None = None,
        segments: SegmentIndex | None = None,
        consent_by_default: bool = True,
        sealer: PiiSealer | None = None,
        experiments: ExperimentPlan | None = None,
    ) -> PartitionState:
        """Cold start and recovery are one path: restore if there is a snapshot."""
        if snapshot is None:
            return cls(partition, learner, segments, consent_by_default, sealer, experiments)
        return cls.restore(snapshot, learner, segments, consent_by_default, sealer, experiments)
