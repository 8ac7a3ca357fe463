"""Live segment membership: which segments each user is in, kept current event by event.

Every segment Headstart can track without a request is a rule (:mod:`engine.rules`): the
catalog's rule segments, and the built-in engagement tiers, device segments, new/returning
users and behavioural clusters written as rules. A :class:`SegmentIndex` gives each one a bit
of the user's ``segments`` mask and compiles, per kind of change, one function that
re-evaluates only the segments whose fields that change moved:

- every event moves time, counts and engagement, so segments reading ``events_total`` or a
  time field (``events_5m``, ``engagement``, ``days_inactive``...);
- what :meth:`UserState.apply <engine.profile.UserState.apply>` reports it changed: a new
  session ``session_count``, a context or trait value that differs from the user's its field
  (built-in or declared in the catalog's ``schema:``), a step completed for the first time the
  steps; a feature click also feature counts, a new cluster assignment ``cluster``;
- an event of a type some rule counts (``event_count("created_board")``) the rules counting
  that type, and only those: each counted custom type has its own evaluators;
- right after the user's newest event, nothing has decayed and the user has been inactive for
  no time: those evaluators read less and fold ``days_inactive`` away;
- a sweep (:meth:`PartitionSegments.sweep`) re-evaluates the time-based segments of every user
  as time passes, so "inactive for 3 days" exits happen without an event.

Each enter and exit is queued in the partition's outbox, in the order it happened, for the
shard to publish to ``hs.segments.<partition>`` (in batches, see
:mod:`headstart.adapters.membership`): one entry per evaluation that changed something (the user's
masks before and after), spelled out as one row per change only when taken for publishing.
The outbox is part of the partition's snapshot, so a change is published even if the shard
dies before sending it. Every change has an :attr:`~SegmentChange.id`
that a replay after a crash reproduces, for consumers to drop one they already have.

>>> from engine.catalog import DEFAULT_CATALOG, load_catalog
>>> from engine.events import event_from_object
>>> from engine.partition import PartitionSetup, PartitionState
>>> index = SegmentIndex(load_catalog(DEFAULT_CATALOG))
>>> part = PartitionState(0, PartitionSetup(segment_index=index))
>>> event = {"event_id": "e1", "user_id": "k", "type": "session_started", "ts": 100.0,
...          "context": {"device_type": "mobile"}}
>>> part.apply_event("k", event_from_object(event), seq=1)
>>> sorted(index.names(part.users["k"].segments))
['device_mobile', 'engagement_low', 'mobile_newcomer', 'new_user']
>>> [(segment, change) for _, segment, change, *_ in part.segments.take()][:2]
[('engagement_low', 'enter'), ('new_user', 'enter')]
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Protocol

import msgspec

from engine.catalog import DEVICE_TYPES, Catalog, cluster_segment, locale_segment
from engine.events import CONTEXT_FIELDS, Event, EventKind
from engine.profile import (
    CONTEXT_CHANGED,
    NEW_SESSION,
    NEW_STEP,
    TRAITS_CHANGED,
    UserState,
    Vocabularies,
)
from engine.rules import BUILTIN_TYPES, TIME_FIELDS, MaskFunction, Rule, compile_mask, parse_rule

if TYPE_CHECKING:
    from engine.clusters import ClusterAssigner

#: What every event changes: time (every time field but ``features_5m``: only a feature click
#: adds to it, and its decrease as the window slides is time passing, which sweeps apply) and
#: the event counts.
EVERY_EVENT = (TIME_FIELDS - {"features_5m"}) | {"events_total"}
#: What else an event changed, by what :meth:`UserState.apply` reports (``completed`` stands for
#: the rule function of that name).
CHANGED_BY_FLAG: dict[int, frozenset[str]] = {
    NEW_SESSION: frozenset({"session_count"}),
    CONTEXT_CHANGED: frozenset(CONTEXT_FIELDS),
    NEW_STEP: frozenset({"steps_completed", "completed"}),
    TRAITS_CHANGED: frozenset({"role", "company_size", "age_band"}),
}
#: The bits of an evaluator's key (see :meth:`SegmentIndex.evaluator`): what ``apply`` reported,
#: then whether the evaluation is right after the user's newest event, the cluster changed, and
#: a feature click was of a feature some rule counts; the event's kind above them (5 bits),
#: and above it, for a custom event of a type some rule counts, that type's number
#: (:attr:`SegmentIndex.counted_types`).
MOVED = NEW_SESSION | CONTEXT_CHANGED | NEW_STEP | TRAITS_CHANGED
FRESH, CLUSTER_CHANGED, FEATURE_READ = 1 << 5, 1 << 6, 1 << 7
KIND_SHIFT = 8
KIND_MASK = 0b11111
COUNTED_SHIFT = KIND_SHIFT + 5
_FEATURE_CLICKED = EventKind.FEATURE_CLICKED
_CUSTOM = EventKind.CUSTOM


def _counted(event_type: str) -> str:
    """What a rule reading ``event_count(event_type, ...)`` reads, among the names of fields
    that events change (see :meth:`SegmentIndex.evaluator`)."""
    return f"event_count:{event_type}"


#: Events after which a user's cluster is assigned again: a new session (what the previous one
#: did is in the vector by then) and finishing onboarding, not every click (assigning costs a
#: few microseconds); sweeps assign everyone again when a new model is published.
REASSIGN_KINDS = frozenset({EventKind.SESSION_STARTED, EventKind.ONBOARDING_COMPLETED})
#: Changes an outbox holds at most (the broker unreachable for long): the oldest go first and
#: are counted as dropped; membership itself is never lost.
OUTBOX_LIMIT = 100_000
#: Distinct membership transitions spelled out and kept (see :meth:`SegmentIndex.transition`).
TRANSITIONS_KEPT = 65_536


def set_bits(mask: int) -> Iterator[int]:
    """The positions of the bits set in ``mask``, lowest first.

    >>> list(set_bits(0b10110))
    [1, 2, 4]
    """
    while mask:
        low = mask & -mask
        mask ^= low
        yield low.bit_length() - 1


class SegmentChange(msgspec.Struct, frozen=True, array_like=True):
    """One user entering or leaving one segment, as published on ``hs.segments.>`` (a msgpack
    array in this field order: shards encode their queued tuples without building these)."""

    user_id: str
    segment: str
    change: str  # "enter" or "exit"
    ts: float
    #: What caused it: the stream sequence of the event, ``"t<time>"`` for a sweep
    #: (``"t<time>.m<version>"`` when it assigned clusters with that model version), or
    #: ``"x<time>"`` for profiles expired at that (event) time, or ``"catalog:<fingerprint>"``
    #: for segments a new catalog version added or changed, evaluated for every user.
    origin: int | str
    partition: int

    @property
    def id(self) -> str:
        """The same for a change made again by a replay after a crash: consumers deduplicate by it."""
        return change_id(self.partition, self.origin, self.user_id, self.segment, self.change)


def change_id(partition: int, origin: int | str, user_id: str, segment: str, change: str) -> str:
    return f"{partition}.{origin}.{user_id}.{segment}.{change}"


#: A change as queued and published: (user key, segment, "enter"/"exit", time, origin, partition).
ChangeRow = tuple[str, str, str, float, int | str, int]
#: A queued evaluation that changed a user's membership: (user key, mask before, mask after,
#: time, origin).
OutboxEntry = tuple[str, int, int, float, int | str]
#: The changes of one transition of a user's membership: (segment id, "enter" or "exit").
Transition = tuple[tuple[str, str], ...]

change_encoder = msgspec.msgpack.Encoder()
#: A published batch: the changes of one segment, in the order they happened.
batch_decoder = msgspec.msgpack.Decoder(list[SegmentChange])


def builtin_rules(catalog: Catalog) -> list[tuple[str, str]]:
    """The built-in segments that live state decides, as rules (ids as in ``/v1/decide``)."""
    tiers = catalog.engagement_tiers
    rules = [
        ("engagement_high", f"engagement >= {tiers.high!r}"),
        ("engagement_medium", f"engagement >= {tiers.medium!r} and engagement < {tiers.high!r}"),
        ("engagement_low", f"engagement < {tiers.medium!r}"),
        ("new_user", "session_count <= 1"),
        ("returning_user", "session_count > 1"),
        *((f"device_{d}", f'device_type == "{d}"') for d in DEVICE_TYPES),
    ]
    if catalog.clusters.enabled:
        rules += [(cluster_segment(i), f"cluster == {i}") for i in range(catalog.clusters.k)]
    return rules


def rule_fingerprint(rule: str) -> str:
    """A short, stable name of a segment's rule text: what a partition records each segment was
    evaluated under, to tell a changed rule after a catalog change.

    >>> rule_fingerprint("session_count > 1") == rule_fingerprint("session_count > 1")
    True
    """
    return hashlib.sha256(rule.encode()).hexdigest()[:12]


class SegmentIndex:
    """The segments tracked live for one catalog: a bit each, and the compiled evaluators.

    Shared by a shard's partitions. ``assigner`` is the served cluster model (None until one
    is published, see :mod:`engine.clusters`).
    """

    @staticmethod
    def definition_of(catalog: Catalog) -> tuple[object, ...]:
        """What an index of ``catalog`` is built from (its :attr:`definition`), without building
        it: an index with an equal one serves in its place."""
        definitions = builtin_rules(catalog) + [(s.id, s.rule) for s in catalog.segments]
        return (
            tuple(definitions),
            catalog.event_schema.fingerprint,
            catalog.membership.clock,
            catalog.clusters.sample_every,
        )

    def __init__(self, catalog: Catalog) -> None:
        definitions = builtin_rules(catalog) + [(s.id, s.rule) for s in catalog.segments]
        schema = catalog.event_schema
        self.ids: list[str] = [segment for segment, _ in definitions]
        self.bit: dict[str, int] = {segment: i for i, segment in enumerate(self.ids)}
        self.rules: list[Rule] = [parse_rule(rule, schema) for _, rule in definitions]
        #: Each segment's rule, by a fingerprint of its text (see :func:`rule_fingerprint`).
        self.fingerprints: dict[str, str] = {segment: rule_fingerprint(rule) for segment, rule in definitions}
        #: Everything this index is built from: an equal one can serve in its place (its
        #: compiled evaluators and the partitions' state with it), see :mod:`engine.runtime`.
        self.definition = self.definition_of(catalog)
        self.sweep_clock = catalog.membership.clock
        self.sample_every = catalog.clusters.sample_every
        self.assigner: ClusterAssigner | None = None
        self._reads = [
            rule.fields
            | ({"feature_count"} if rule.features else set())
            | ({"completed"} if rule.steps else set())
            | {_counted(event_type) for event_type, _, _ in rule.event_counts}
            for rule in self.rules
        ]
        #: What a flag of ``apply`` says moved: the built-in fields and the declared ones.
        self.changed_by_flag = {
            **CHANGED_BY_FLAG,
            CONTEXT_CHANGED: CHANGED_BY_FLAG[CONTEXT_CHANGED] | set(schema.context),
            TRAITS_CHANGED: CHANGED_BY_FLAG[TRAITS_CHANGED] | set(schema.traits),
        }
        #: The custom types some rule counts, numbered from 1 (their number is in the evaluator's
        #: key): an event of another custom type changes no count a rule reads.
        self.counted_types: dict[str, int] = {
            event_type: i
            for i, event_type in enumerate(
                sorted({t for rule in self.rules for t, _, _ in rule.event_counts} - BUILTIN_TYPES.keys()),
                start=1,
            )
        }
        self._counted_names = {i: event_type for event_type, i in self.counted_types.items()}
        self._evaluators: dict[tuple[frozenset[str], bool], tuple[int, MaskFunction]] = {}
        #: :meth:`transition`'s answers by key.
        self.transitions: dict[int, Transition] = {}
        #: :meth:`evaluator`'s answers by key; the event path reads it directly (a method call
        #: per event cost more than the lookup).
        self.by_key: dict[int, tuple[int, MaskFunction]] = {}
        #: Features some rule counts: a click of another one changes no rule's feature count.
        self.rule_features = frozenset(f for rule in self.rules for f in rule.features)
        self.time_based = self._evaluator(TIME_FIELDS)
        self.time_based_and_cluster = self._evaluator(TIME_FIELDS | {"cluster"})

    def names(self, mask: int) -> list[str]:
        """The segment ids of a membership mask."""
        return [self.ids[i] for i in range(min(mask.bit_length(), len(self.ids))) if mask >> i & 1]

    @staticmethod
    def key(
        kind: EventKind,
        changed: int = 0,
        *,
        fresh: bool = False,
        cluster: bool = False,
        feature_read: bool = False,
        counted_type: int = 0,
    ) -> int:
        """The key of :meth:`evaluator` for an event of ``kind`` after which ``apply`` reported
        ``changed``; ``fresh``: evaluated at the time of the user's newest event (nothing has
        decayed yet); ``cluster``: the user's cluster changed; ``feature_read``: a click of a
        feature some rule counts; ``counted_type``: a custom event of this type number of
        :attr:`counted_types`."""
        return (
            counted_type << COUNTED_SHIFT
            | kind << KIND_SHIFT
            | changed & MOVED
            | (FRESH if fresh else 0)
            | (CLUSTER_CHANGED if cluster else 0)
            | (FEATURE_READ if feature_read else 0)
        )

    def evaluator(self, key: int) -> tuple[int, MaskFunction]:
        """(the bits it decides, the function) for what the event of ``key`` (:meth:`key`) can
        have changed: only the segments reading it are evaluated."""
        found = self.by_key.get(key)
        if found is not None:
            return found
        changed = set(EVERY_EVENT)
        for flag, fields in self.changed_by_flag.items():
            if key & flag:
                changed |= fields
        kind = EventKind(key >> KIND_SHIFT & KIND_MASK)
        if kind is _CUSTOM:
            event_type = self._counted_names.get(key >> COUNTED_SHIFT)
            if event_type is not None:
                changed.add(_counted(event_type))
        else:  # event_count() of a built-in type reads that kind's counter
            changed.add(_counted(kind.wire_name))
        if kind is EventKind.FEATURE_CLICKED:
            changed |= {"features_5m", "feature_count"} if key & FEATURE_READ else {"features_5m"}
        elif kind is EventKind.TUTORIAL_COMPLETED:
            changed.add("tutorials_completed")
        if key & CLUSTER_CHANGED:
            changed.add("cluster")
        found = self.by_key[key] = self._evaluator(frozenset(changed), fresh=bool(key & FRESH))
        return found

    def _evaluator(self, changed: frozenset[str], fresh: bool = False) -> tuple[int, MaskFunction]:
        found = self._evaluators.get((changed, fresh))
        if found is None:
            # A rule reading nothing (constants only) never changes: every evaluator decides it.
            chosen = [
                (bit, rule)
                for bit, (rule, reads) in enumerate(zip(self.rules, self._reads, strict=True))
                if reads & changed or not reads
            ]
            decides = sum(1 << bit for bit, _ in chosen)
            found = self._evaluators[changed, fresh] = (decides, compile_mask(chosen, fresh=fresh))
        return found

    def transition(self, old: int, new: int) -> tuple[int, Transition]:
        """(its key, the changes) of a user's membership going from mask ``old`` to ``new``:
        (segment id, "enter" or "exit") by segment bit. Users go through the same few hundred
        transitions (a new user entering the same half dozen segments...): each is spelled out
        once and kept, up to :data:`TRANSITIONS_KEPT`."""
        diff = old ^ new
        key = diff << len(self.ids) | new & diff
        found = self.transitions.get(key)
        if found is None:
            found = tuple((self.ids[bit], "enter" if new >> bit & 1 else "exit") for bit in set_bits(diff))
            if len(self.transitions) < TRANSITIONS_KEPT:
                self.transitions[key] = found
        return key, found

    def remap(self, mask: int, ids: list[str]) -> int:
        """A mask recorded under segment ids ``ids`` (an older catalog) in this index's bits."""
        if ids == self.ids:
            return mask
        out = 0
        for i, segment in enumerate(ids):
            if mask >> i & 1 and segment in self.bit:
                out |= 1 << self.bit[segment]
        return out


class PartitionSegments:
    """One partition's live membership bookkeeping: the outbox of changes, counts and clock."""

    __slots__ = (
        "clock",
        "dropped",
        "entered",
        "exited",
        "in_flight",
        "index",
        "outbox",
        "partition",
        "queued",
        "repeated_seq",
        "repeats",
        "revision",
        "samples",
        "seen",
        "since",
        "stale",
        "swept_version",
        "taken",
    )

    def __init__(self, index: SegmentIndex, partition: int = 0) -> None:
        self.index = index
        self.partition = partition
        #: Membership is evaluated at no time earlier than this (the last sweep, or event time):
        #: a late event does not bring back a segment that time already ended.
        self.clock = 0.0
        #: The clock when tracking began here (entry and exit rates are over since..clock).
        self.since = 0.0
        #: Changes not yet published, oldest first: an entry per evaluation that changed a
        #: user's membership (cheap on the event path; :meth:`take` spells out the changes):
        #: (user key, mask before, mask after, time, origin: a stream sequence, or "t<time>" or
        #: "t<time>.m<cluster model version>" for a sweep).
        self.outbox: deque[OutboxEntry] = deque()
        #: How many changes the outbox holds.
        self.queued = 0
        #: The batch being published (taken from the outbox, not yet acknowledged). It is part of
        #: the snapshot, and a failed or interrupted publish is retried as the same batch, so
        #: JetStream's duplicate window drops what was stored the first time.
        self.in_flight: list[ChangeRow] | None = None
        #: Entries and exits per segment bit, counted as changes are taken from the outbox: by
        #: transition (:meth:`SegmentIndex.transition`'s key) until :meth:`counts` asks.
        self.entered = [0] * len(index.ids)
        self.exited = [0] * len(index.ids)
        self.taken: dict[int, int] = {}
        self.dropped = 0
        #: Users of recent events, one in ``clusters.sample_every``: the cluster model's sample.
        self.samples: deque[str] = deque(maxlen=256)
        #: The cluster model version the last complete sweep assigned users with.
        self.swept_version = -1
        self.seen = 0
        #: Counts what changes this state without an event (sweeps that changed a membership,
        #: published batches): a checkpoint compares it, as it compares the last sequence.
        self.revision = 0
        #: The bits of segments new or changed since the state restored was evaluated (a
        #: catalog change): :meth:`evaluate_stale` evaluates them for every user.
        self.stale = 0
        #: The stream sequence that caused the last change, and how many more it caused (see
        #: :meth:`caused_by`).
        self.repeated_seq = -1
        self.repeats = 0

    def on_event(
        self, user_key: str, user: UserState, event: Event, seq: int, vocab: Vocabularies, changed: int
    ) -> None:
        """Re-evaluate what ``event`` (already applied to ``user``; ``apply`` reported
        ``changed``) can have changed."""
        index = self.index
        now = event.ts if event.ts > self.clock else self.clock
        if not self.since:
            self.since = now
        self.clock = now
        self.seen += 1
        if self.seen % index.sample_every == 0:
            self.samples.append(user_key)
        kind = event.kind
        # The evaluator's key as :meth:`SegmentIndex.key` makes it, written out (every event).
        key = kind << KIND_SHIFT | changed & MOVED
        if now == user.last_seen:
            key |= FRESH
        assigner = index.assigner
        if (
            assigner is not None
            and (kind in REASSIGN_KINDS or user.cluster < 0)
            and assigner.reassign(user, now)
        ):
            key |= CLUSTER_CHANGED
        if kind is _FEATURE_CLICKED and event.props.feature in index.rule_features:  # type: ignore[attr-defined]
            key |= FEATURE_READ
        elif kind is _CUSTOM and index.counted_types:
            key |= index.counted_types.get(event.type_name, 0) << COUNTED_SHIFT
        found = index.by_key.get(key)
        decides, evaluate = found if found is not None else index.evaluator(key)
        old = user.segments
        new = (old & ~decides) | evaluate(user, now, vocab)
        if new != old:
            user.segments = new
            self.record_change(user_key, old, new, now, self.caused_by(seq))

    def sweep(
        self, users: Iterable[tuple[str, UserState]], now: float, vocab: Vocabularies, reassign: bool = True
    ) -> int:
        """Re-evaluate the time-based segments of ``users`` as of ``now`` (and, with
        ``reassign``, their clusters: worth it when the model changed since the last sweep);
        returns the number of changes. Chunk ``users`` to keep an event loop responsive."""
        now = max(now, self.clock)
        self.clock = now
        assigner = self.index.assigner if reassign else None
        # A sweep: its time names it, and the cluster model it assigned with. A clock that holds
        # still (``membership.clock: event`` after the last event) sees several models in turn
        # re-assign the same users at the same time: a user can enter one cluster again, and
        # without the version that change would repeat an earlier one's id and be dropped.
        origin = f"t{now:.3f}" if assigner is None else f"t{now:.3f}.m{assigner.version}"
        changes = 0
        for key, user in users:
            cluster_changed = assigner is not None and assigner.reassign(user, now)
            decides, evaluate = (
                self.index.time_based_and_cluster if cluster_changed else self.index.time_based
            )
            old = user.segments
            new = (old & ~decides) | evaluate(user, now, vocab)
            if new != old:
                user.segments = new
                changes += self.record_change(key, old, new, now, origin)
        if changes:
            self.revision += 1
        return changes

    def caused_by(self, origin: int | str) -> int | str:
        """The origin to record a change under: a stream sequence that already caused a
        change (a batched message, whose events share its sequence) causes the next under
        ``<seq>.<n>``. A change's id must name one change, and a replay, which applies whole
        messages again from their first event, names them the same (the count is not kept in
        snapshots, taken between messages)."""
        if origin.__class__ is not int:
            return origin
        if origin == self.repeated_seq:
            self.repeats += 1
            return f"{origin}.{self.repeats}"
        self.repeated_seq, self.repeats = origin, 0  # type: ignore[assignment]
        return origin

    def record_change(self, user_key: str, old: int, new: int, now: float, origin: int | str) -> int:
        """Queue a user's membership going from mask ``old`` to ``new``; the number of changes."""
        n = (old ^ new).bit_count()
        self.outbox.append((user_key, old, new, now, origin))
        self.queued += n
        while self.queued > OUTBOX_LIMIT:
            _, before, after, _, _ = self.outbox.popleft()
            lost = (before ^ after).bit_count()
            self.queued -= lost
            self.dropped += lost
        return n

    def next_batch(self, limit: int = 10_000) -> list[ChangeRow]:
        """The batch to publish: the one in flight (retried as it was), else about ``limit`` of
        the oldest queued changes (see :meth:`take`), now in flight until :meth:`published`."""
        if self.in_flight is None:
            self.in_flight = self.take(limit)
        return self.in_flight

    def published(self) -> None:
        """The batch in flight is stored."""
        self.in_flight = None
        self.revision += 1

    def take(self, limit: int = 10_000) -> list[ChangeRow]:
        """About ``limit`` of the oldest queued changes (an evaluation's changes stay together),
        removed from the outbox, as rows in :class:`SegmentChange`'s field order (what gets
        published); counted by segment (see :meth:`counts`)."""
        outbox, p, transition_of, taken = self.outbox, self.partition, self.index.transition, self.taken
        out: list[ChangeRow] = []
        append = out.append
        while outbox and len(out) < limit:
            key, old, new, ts, origin = outbox.popleft()
            transition, changes = transition_of(old, new)
            for segment, change in changes:
                append((key, segment, change, ts, origin, p))
            self.queued -= len(changes)
            taken[transition] = taken.get(transition, 0) + 1
        if len(taken) > TRANSITIONS_KEPT:
            self._count_taken()
        return out

    def on_record(self, user_key: str, record: object, seq: int) -> None:
        """Records of the learning loop change no membership."""

    def forget_user(
        self, user_key: str, user: UserState | None, now: float, origin: int | str, erase: bool = False
    ) -> None:
        """A user forgotten (consent withdrawn, expired): exits from every segment they were in,
        caused by ``origin``. Erased: not even those, nor any change of theirs still queued."""
        if user is not None:
            if user.segments:
                self.record_change(user_key, user.segments, 0, max(now, self.clock), self.caused_by(origin))
            user.segments = 0
        if erase:
            self.drop_queued(user_key)

    def drop_queued(self, user_key: str) -> None:
        """Forget a user's changes not yet published (erasure); a batch in flight is kept whole
        (its publish is retried as it was) but without them."""
        if any(entry[0] == user_key for entry in self.outbox):
            self.outbox = deque(entry for entry in self.outbox if entry[0] != user_key)
            self.queued = sum((old ^ new).bit_count() for _, old, new, _, _ in self.outbox)
        if self.in_flight is not None and any(row[0] == user_key for row in self.in_flight):
            self.in_flight = [row for row in self.in_flight if row[0] != user_key]

    def counts(self) -> dict[str, tuple[int, int]]:
        """Entries and exits per segment in this partition since it started (snapshots keep
        them), counted as changes are taken for publishing: at most a batch behind."""
        self._count_taken()
        entered, exited = self.entered, self.exited
        return {s: (entered[i], exited[i]) for i, s in enumerate(self.index.ids) if entered[i] or exited[i]}

    def _count_taken(self) -> None:
        """Add the transitions taken since the last count to the counts by segment."""
        width = len(self.index.ids)
        for transition, times in self.taken.items():
            for bit in set_bits(transition >> width):
                (self.entered if transition >> bit & 1 else self.exited)[bit] += times
        self.taken.clear()

    # ------------------------------------------------------------------ snapshots

    def snapshot(self) -> dict[str, Any]:
        return {
            "ids": self.index.ids,
            # What each segment was evaluated under: a restore with another rule re-evaluates it.
            "rules": self.index.fingerprints,
            "clock": self.clock,
            "since": self.since,
            # Of the changes taken: the queued ones are counted when taken after a restore.
            "counts": self.counts(),
            "dropped": self.dropped,
            "outbox": [list(entry) for entry in self.outbox],
            "in_flight": self.in_flight,
        }

    def restore(self, snap: dict[str, Any] | None, users: Mapping[str, UserState]) -> None:
        """Load a :meth:`snapshot` into this fresh state (None: nothing to load). A snapshot taken
        under another catalog's segments keeps membership and queued changes by segment id:
        ``users``' masks are moved to this index's bits."""
        if not snap:
            return
        index = self.index
        recorded = list(snap["ids"])
        self.clock = snap["clock"]
        self.since = snap.get("since", 0.0)
        self.dropped = snap.get("dropped", 0)
        for segment, (entered, exited) in snap["counts"].items():
            bit = index.bit.get(segment)
            if bit is not None:
                self.entered[bit], self.exited[bit] = entered, exited
        for key, before, after, ts, origin in snap["outbox"]:
            if isinstance(before, str):
                # A change as queued before masks were (segment id, entered), already counted.
                bit = index.bit.get(before)
                if bit is None:
                    continue
                (self.entered if after else self.exited)[bit] -= 1
                old, new = (0, 1 << bit) if after else (1 << bit, 0)
            else:
                old, new = index.remap(before, recorded), index.remap(after, recorded)
            if old != new:
                self.record_change(key, old, new, ts, origin)
        in_flight = snap.get("in_flight")
        self.in_flight = [tuple(row) for row in in_flight] if in_flight else None  # type: ignore[misc]
        if recorded != index.ids:  # the catalog's segments changed since the snapshot
            # Users share a few hundred masks: each is moved once.
            moved: dict[int, int] = {}
            for user in users.values():
                mask = user.segments
                found = moved.get(mask)
                if found is None:
                    found = moved[mask] = index.remap(mask, recorded)
                user.segments = found
        # Segments new since the snapshot, or whose rule changed (a snapshot from before rules
        # were recorded: the new ones only), are evaluated for every user (evaluate_stale).
        rules = snap.get("rules")
        known = set(recorded)
        for bit, segment in enumerate(index.ids):
            changed = rules is not None and rules.get(segment) != index.fingerprints[segment]
            if segment not in known or changed:
                self.stale |= 1 << bit

    def evaluate_stale(self, users: Mapping[str, UserState], vocab: Vocabularies) -> int:
        """Evaluate the segments new or changed since the restored state (:attr:`stale`) for
        every user, as of the partition's clock; the number of changes, queued like any other.

        Their origin is ``catalog:<fingerprint of the segments and rules evaluated>``, so doing
        this again from the same snapshot (a crash before the next checkpoint) gives the same
        change ids (:func:`change_id`), which consumers drop. A removed segment's members are
        not sent exits: its id no longer exists in this catalog (its removal is the catalog
        change itself, in the catalog's history), and no change of it is published again.
        """
        stale, self.stale = self.stale, 0
        if not stale:
            return 0
        index = self.index
        chosen = [(bit, index.rules[bit]) for bit in set_bits(stale)]
        evaluate = compile_mask(chosen)
        named = ",".join(f"{index.ids[bit]}={index.fingerprints[index.ids[bit]]}" for bit, _ in chosen)
        origin = f"catalog:{rule_fingerprint(named)}"
        now = self.clock
        changes = 0
        for key, user in users.items():
            old = user.segments
            new = (old & ~stale) | evaluate(user, max(now, user.last_seen), vocab)
            if new != old:
                user.segments = new
                changes += self.record_change(key, old, new, now, origin)
        # The snapshot must record the new rules even when no membership changed.
        self.revision += 1
        return changes


# ---------------------------------------------------------------------- reports


class TracksSegments(Protocol):
    """What :func:`user_segments` reads of a partition (a
    :class:`~engine.partition.PartitionState`): its live membership bookkeeping."""

    @property
    def segments(self) -> PartitionSegments | None: ...


def user_segments(part: TracksSegments, user: UserState) -> list[str]:
    """A user's live segments (and locale segment) as the partition tracks them."""
    assert part.segments is not None
    out = part.segments.index.names(user.segments)
    locale = locale_segment(user.locale)
    return [*out, locale] if locale else out
