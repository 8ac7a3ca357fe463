"""Live segment membership: which segments each user is in, kept current event by event.

Every segment Headstart can track without a request is a rule (:mod:`engine.rules`): the
catalog's rule segments, and the built-in engagement tiers, device segments, new/returning
users and behavioural clusters written as rules. A :class:`SegmentIndex` gives each one a bit
of the user's ``segments`` mask and compiles, per kind of change, one function that
re-evaluates only the segments whose fields that change can move:

- every event moves time, counts and engagement, so segments reading ``session_count``,
  ``events_total`` or a time field (``events_5m``, ``engagement``, ``days_inactive``...);
- a feature click also feature counts, a completed step the steps, a profile update the traits,
  an event with context the context fields, a new cluster assignment ``cluster``;
- a sweep (:meth:`PartitionSegments.sweep`) re-evaluates the time-based segments of every user
  as time passes, so "inactive for 3 days" exits happen without an event.

Each enter and exit is queued in the partition's outbox, in the order it happened, for the
shard to publish to ``hs.segments.<segment>`` (in batches, see
:mod:`headstart.membership`); the outbox is part of the partition's snapshot, so a change is
published even if the shard dies before sending it. Every change has an :attr:`~SegmentChange.id`
that a replay after a crash reproduces, for consumers to drop one they already have.

>>> from engine.catalog import DEFAULT_CATALOG, load_catalog
>>> from engine.events import event_from_object
>>> from engine.partition import PartitionState
>>> index = SegmentIndex(load_catalog(DEFAULT_CATALOG))
>>> part = PartitionState(0, segments=index)
>>> event = {"event_id": "e1", "user_id": "k", "type": "session_started", "ts": 100.0,
...          "context": {"device_type": "mobile"}}
>>> part.apply_event("k", event_from_object(event), seq=1)
>>> sorted(index.names(part.users["k"].segments))
['device_mobile', 'engagement_low', 'mobile_newcomer', 'new_user']
>>> [(c.segment, c.change) for c in part.segments.outbox][:2]
[('engagement_low', 'enter'), ('new_user', 'enter')]
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

import msgspec

from engine.catalog import Catalog, cluster_segment
from engine.events import Event, EventKind
from engine.profile import CONTEXT_FIELDS, UserState, Vocabularies
from engine.rules import TIME_FIELDS, MaskFunction, Rule, compile_mask, parse_rule

if TYPE_CHECKING:
    from engine.clusters import ClusterAssigner

#: Fields every event can change (and time, which every event moves).
EVERY_EVENT = TIME_FIELDS | {"session_count", "events_total"}
#: What else each kind of event can change. ``feature_count`` and ``completed`` stand for the
#: rule functions of the same names.
CHANGED_BY_KIND: dict[EventKind, frozenset[str]] = {
    EventKind.FEATURE_CLICKED: frozenset({"feature_count"}),
    EventKind.STEP_COMPLETED: frozenset({"steps_completed", "completed"}),
    EventKind.TUTORIAL_COMPLETED: frozenset({"tutorials_completed"}),
    EventKind.PROFILE_UPDATED: frozenset({"role", "company_size", "age_band"}),
}
#: Events after which a user's cluster is assigned again: the ones that change what the
#: behavioural vector summarizes (sessions, progress), not every click; sweeps do the rest.
REASSIGN_KINDS = frozenset(
    {
        EventKind.SESSION_STARTED,
        EventKind.ONBOARDING_STARTED,
        EventKind.ONBOARDING_COMPLETED,
        EventKind.STEP_COMPLETED,
        EventKind.TUTORIAL_COMPLETED,
    }
)
#: Changes an outbox holds at most (the broker unreachable for long): the oldest go first and
#: are counted as dropped; membership itself is never lost.
OUTBOX_LIMIT = 100_000


class SegmentChange(msgspec.Struct, frozen=True):
    """One user entering or leaving one segment, as published on ``hs.segments.>``."""

    user_id: str
    segment: str
    change: str  # "enter" or "exit"
    ts: float
    #: What caused it: ``"<stream sequence>"`` of the event, or ``"t<time>"`` for a sweep.
    origin: str
    partition: int

    @property
    def id(self) -> str:
        """The same for a change made again by a replay after a crash: consumers deduplicate by it."""
        return f"{self.partition}.{self.origin}.{self.user_id}.{self.segment}.{self.change}"


change_encoder = msgspec.msgpack.Encoder()
change_decoder = msgspec.msgpack.Decoder(SegmentChange)
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
        *((f"device_{d}", f'device_type == "{d}"') for d in ("mobile", "desktop", "tablet")),
    ]
    if catalog.clusters.enabled:
        rules += [(cluster_segment(i), f"cluster == {i}") for i in range(catalog.clusters.k)]
    return rules


class SegmentIndex:
    """The segments tracked live for one catalog: a bit each, and the compiled evaluators.

    Shared by a shard's partitions. ``assigner`` is the served cluster model (None until one
    is published, see :mod:`engine.clusters`).
    """

    def __init__(self, catalog: Catalog) -> None:
        definitions = builtin_rules(catalog) + [(s.id, s.rule) for s in catalog.segments]
        self.ids: list[str] = [segment for segment, _ in definitions]
        self.bit: dict[str, int] = {segment: i for i, segment in enumerate(self.ids)}
        self.rules: list[Rule] = [parse_rule(rule) for _, rule in definitions]
        self.sweep_clock = catalog.membership.clock
        self.sample_every = catalog.clusters.sample_every
        self.assigner: ClusterAssigner | None = None
        self._reads = [
            rule.fields
            | ({"feature_count"} if rule.features else set())
            | ({"completed"} if rule.steps else set())
            for rule in self.rules
        ]
        self._evaluators: dict[frozenset[str], tuple[int, MaskFunction]] = {}
        self.time_based = self._evaluator(frozenset(EVERY_EVENT & TIME_FIELDS), sweep=True)
        self.time_based_and_cluster = self._evaluator(
            frozenset((EVERY_EVENT & TIME_FIELDS) | {"cluster"}), sweep=True
        )

    def names(self, mask: int) -> list[str]:
        """The segment ids of a membership mask."""
        return [self.ids[i] for i in range(min(mask.bit_length(), len(self.ids))) if mask >> i & 1]

    def evaluator(
        self, kind: EventKind, has_context: bool, cluster_changed: bool
    ) -> tuple[int, MaskFunction]:
        """(the bits it decides, the function) for what an event of ``kind`` changed."""
        changed = EVERY_EVENT | CHANGED_BY_KIND.get(kind, frozenset())
        if has_context:
            changed |= frozenset(CONTEXT_FIELDS)
        if cluster_changed:
            changed |= {"cluster"}
        return self._evaluator(frozenset(changed))

    def _evaluator(self, changed: frozenset[str], sweep: bool = False) -> tuple[int, MaskFunction]:
        found = self._evaluators.get(changed)
        if found is None:
            # A rule reading nothing (constants only) is decided with the first event.
            chosen = [
                (bit, rule)
                for bit, (rule, reads) in enumerate(zip(self.rules, self._reads, strict=True))
                if reads & changed or (not reads and not sweep)
            ]
            decides = sum(1 << bit for bit, _ in chosen)
            found = self._evaluators[changed] = (decides, compile_mask(chosen))
        return found

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

    __slots__ = ("clock", "dropped", "entered", "exited", "index", "outbox", "samples", "seen")

    def __init__(self, index: SegmentIndex) -> None:
        self.index = index
        #: Membership is evaluated at no time earlier than this (the last sweep, or event time):
        #: a late event does not bring back a segment that time already ended.
        self.clock = 0.0
        self.outbox: deque[SegmentChange] = deque()
        self.entered = [0] * len(index.ids)
        self.exited = [0] * len(index.ids)
        self.dropped = 0
        #: Users of recent events, one in ``clusters.sample_every``: the cluster model's sample.
        self.samples: deque[str] = deque(maxlen=256)
        self.seen = 0

    def on_event(
        self, user_key: str, user: UserState, event: Event, seq: int, vocab: Vocabularies, partition: int
    ) -> None:
        """Re-evaluate what ``event`` (already applied to ``user``) can have changed."""
        now = event.ts if event.ts > self.clock else self.clock
        self.clock = now
        self.seen += 1
        if self.seen % self.index.sample_every == 0:
            self.samples.append(user_key)
        kind = event.kind
        cluster_changed = False
        assigner = self.index.assigner
        if assigner is not None and (kind in REASSIGN_KINDS or user.cluster < 0):
            cluster_changed = assigner.reassign(user, now)
        decides, evaluate = self.index.evaluator(kind, event.context is not None, cluster_changed)
        old = user.segments
        new = (old & ~decides) | evaluate(user, now, vocab)
        if new != old:
            user.segments = new
            self._changed(user_key, old, new, now, str(seq), partition)

    def sweep(
        self, users: Iterable[tuple[str, UserState]], now: float, vocab: Vocabularies, partition: int
    ) -> int:
        """Re-evaluate the time-based segments (and clusters) of ``users`` as of ``now``;
        returns the number of changes. Chunk ``users`` to keep an event loop responsive."""
        now = max(now, self.clock)
        self.clock = now
        assigner = self.index.assigner
        origin = f"t{now:.3f}"
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
                changes += self._changed(key, old, new, now, origin, partition)
        return changes

    def _changed(self, user_key: str, old: int, new: int, now: float, origin: str, partition: int) -> int:
        diff = old ^ new
        ids, outbox = self.index.ids, self.outbox
        n = 0
        while diff:
            low = diff & -diff
            bit = low.bit_length() - 1
            diff ^= low
            entered = bool(new & low)
            (self.entered if entered else self.exited)[bit] += 1
            outbox.append(
                SegmentChange(user_key, ids[bit], "enter" if entered else "exit", now, origin, partition)
            )
            n += 1
        while len(outbox) > OUTBOX_LIMIT:
            outbox.popleft()
            self.dropped += 1
        return n

    def take(self, limit: int = 10_000) -> list[SegmentChange]:
        """Up to ``limit`` of the oldest queued changes, removed from the outbox."""
        outbox = self.outbox
        return [outbox.popleft() for _ in range(min(limit, len(outbox)))]

    def give_back(self, changes: list[SegmentChange]) -> None:
        """Changes taken but not published: first in line again, in their order."""
        self.outbox.extendleft(reversed(changes))

    def counts(self) -> dict[str, tuple[int, int]]:
        """Entries and exits per segment in this partition since it started (snapshots keep them)."""
        return {
            s: (self.entered[i], self.exited[i])
            for i, s in enumerate(self.index.ids)
            if self.entered[i] or self.exited[i]
        }

    def members(self, users: Iterable[UserState]) -> Iterator[tuple[UserState, list[str]]]:
        for user in users:
            yield user, self.index.names(user.segments)

    # ------------------------------------------------------------------ snapshots

    def snapshot(self) -> dict[str, Any]:
        return {
            "ids": self.index.ids,
            "clock": self.clock,
            "counts": self.counts(),
            "dropped": self.dropped,
            "outbox": [change_encoder.encode(c) for c in self.outbox],
        }

    @classmethod
    def restore(cls, index: SegmentIndex, snap: dict[str, Any] | None) -> tuple[PartitionSegments, list[str]]:
        """The bookkeeping, and the segment ids the snapshot's user masks were recorded under."""
        out = cls(index)
        if not snap:
            return out, index.ids
        out.clock = snap["clock"]
        out.dropped = snap.get("dropped", 0)
        for segment, (entered, exited) in snap["counts"].items():
            bit = index.bit.get(segment)
            if bit is not None:
                out.entered[bit], out.exited[bit] = entered, exited
        out.outbox.extend(change_decoder.decode(c) for c in snap["outbox"])
        return out, list(snap["ids"])
