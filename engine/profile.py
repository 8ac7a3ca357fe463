"""Live state of one user, updated in place by each event.

State is kept compact on purpose (the target is under 1 kB per user): counters live in one
``array('I')``, names (features, steps, tutorials) are small integers from a per-partition
:class:`Vocabulary`, step progress is a bitmask and attribute strings are interned. Every
update depends only on the event (its time, never the wall clock), so replaying the same
events gives the same state.

>>> from engine.events import FeatureClicked, FeatureProps, SessionStarted
>>> vocab = Vocabularies()
>>> user = UserState.new(1_700_000_000.0)
>>> changed = user.apply(SessionStarted(event_id="e1", user_id="k", ts=1_700_000_000.0), vocab)
>>> bool(changed & NEW_SESSION), bool(changed & FIRST_USE)
(True, False)
>>> changed = user.apply(FeatureClicked(event_id="e2", user_id="k", ts=1_700_000_060.0,
...                                     props=FeatureProps(feature="export")), vocab)
>>> bool(changed & NEW_SESSION), bool(changed & FIRST_USE)  # the same session; a first use
(False, True)
>>> view = user.view(vocab, now=1_700_000_100.0)
>>> view["sessions"], view["features"], view["events_5m"], view["session_seconds"]
(1, {'export': 1}, 2, 60.0)
"""

from __future__ import annotations

import math
import sys
from array import array
from operator import attrgetter, itemgetter
from typing import Any, Protocol

from engine.events import (
    CONTEXT_FIELDS,
    COUNTED_BUILTIN_KINDS,
    FLOW_KINDS,
    ConsentUpdated,
    CustomEvent,
    Event,
    EventKind,
    FeatureClicked,
    ProfileUpdated,
    StepCompleted,
    StepViewed,
    SurfaceDismissed,
    SurfaceShown,
    TourStepSkipped,
    TourStepViewed,
    TutorialCompleted,
    TutorialStarted,
)
from engine.schema import BUILTIN_SCHEMA, EventSchema

#: An inactivity gap after which the next event starts a new session (the common analytics
#: convention, used by GA and Segment-style sessionization).
SESSION_GAP_S = 30 * 60
#: Engagement halves every week without activity: onboarding is judged over days, not minutes.
ENGAGEMENT_HALF_LIFE_S = 7 * 86400
_DECAY_TAU = ENGAGEMENT_HALF_LIFE_S / math.log(2)
#: Sliding windows are kept as a ring of event-time buckets: bounded memory per user, exact to
#: the bucket. 10 buckets of 30 s give the 5-minute window.
WINDOW_BUCKET_S = 30
WINDOW_BUCKETS = 10
WINDOW_S = WINDOW_BUCKET_S * WINDOW_BUCKETS

#: How much each event type says about engagement. Completing things counts more than looking.
ENGAGEMENT_WEIGHTS: dict[EventKind, float] = {
    EventKind.SESSION_STARTED: 1.0,
    EventKind.ONBOARDING_STARTED: 1.0,
    EventKind.ONBOARDING_COMPLETED: 5.0,
    EventKind.STEP_VIEWED: 0.5,
    EventKind.STEP_COMPLETED: 2.0,
    EventKind.FEATURE_CLICKED: 1.5,
    EventKind.TUTORIAL_STARTED: 1.0,
    EventKind.TUTORIAL_COMPLETED: 3.0,
    EventKind.PROFILE_UPDATED: 1.0,
    EventKind.CONSENT_UPDATED: 0.0,
    # The product's own events: as much as a click, whatever they are.
    EventKind.CUSTOM: 1.5,
    # The in-app kit's: looking at a tour step is looking; being shown or closing something
    # is not engagement.
    EventKind.TOUR_STEP_VIEWED: 0.5,
    EventKind.TOUR_STEP_SKIPPED: 0.0,
    EventKind.SURFACE_SHOWN: 0.0,
    EventKind.SURFACE_DISMISSED: 0.0,
}
_WEIGHTS = [ENGAGEMENT_WEIGHTS[k] for k in EventKind]

# Layout of UserState.counters: a counter per kind before the flow events (those are counted
# in the flow records, which only users of the in-app kit have).
_N_KINDS = N_KINDS = int(EventKind.CUSTOM) + 1
_FIRST_FLOW = int(EventKind.TOUR_STEP_VIEWED)
C_SESSIONS = _N_KINDS
C_HOURS = _N_KINDS + 1  # bit h set: active in UTC hour h
C_DAYS = _N_KINDS + 2  # bit d set: active on weekday d (Monday = 0)
C_WIN_HEAD = _N_KINDS + 3  # newest window bucket number seen
C_WIN = _N_KINDS + 4  # WINDOW_BUCKETS bucket counts, slot = bucket % WINDOW_BUCKETS
# Sums kept as events come (live segments read them after every event; summing the counters
# each time cost more than the rules): events of every kind, events in the window's buckets.
# Last, so that counters of an older snapshot are a prefix (see UserState.restore).
C_EVENTS = C_WIN + WINDOW_BUCKETS
C_WIN_EVENTS = C_EVENTS + 1
_N_COUNTERS = C_WIN_EVENTS + 1
_ZERO_COUNTERS = array("I", [0] * _N_COUNTERS)
# A user's custom events and counts by value follow, in the same array (an array costs 64
# bytes before its first item): C_X_TYPES holds how many custom types the user sent, then a
# quad per type from _X_AT, then a triple per counted value to the end. Users without custom
# events have none of it; snapshots keep the fixed counters and the rest apart, as before.
C_X_TYPES = _N_COUNTERS
_X_AT = _N_COUNTERS + 1

# Feature entries are triples (feature id, count, last bucket); tutorial entries are quads
# (tutorial id, variant id, starts, completions). Users touch few of each, so a linear scan of
# a flat array beats a dict in both time and memory.
_F_STRIDE = 3
_T_STRIDE = 4
# Custom event entries are quads (type id, count, first second, last second); counts by a
# prop's value are triples (type-and-prop id, value id, count), both in UserState.counters past
# the fixed counters. Ids are the partition's (Vocabularies.custom_*), so they outlive schema
# changes.
_X_STRIDE = 4
_V_STRIDE = 3

# Flow records (the in-app kit's state: tour progress, interruptions shown, what the user
# accepted and declined) share the tutorials array, in quads like the tutorial entries, told
# apart by a tag in their first word's top bits (vocabulary ids stay far below it). A user who
# never sent a flow event has none: their state is the size it was.
_TAG = 0xF000_0000
#: (TOUR | tutorial id, variant id, resume index | flags << 16, second of the last step seen)
_TOUR = 0x1000_0000
#: (SHOWN | surface codes 2 bits each, three seconds shown at; 0: an empty place)
_SHOWN = 0x2000_0000
#: (TALLY | steps skipped, interruptions shown, dismissed, tour steps viewed)
_TALLY = 0x3000_0000
#: (TOLERANCE, then accepted and declined interruptions by depth, a byte each)
_TOLERANCE = 0x4000_0000
#: Where a TALLY record counts each flow kind (skips: in its head).
_TALLY_SLOTS: dict[int, int] = {
    EventKind.SURFACE_SHOWN: 1,
    EventKind.SURFACE_DISMISSED: 2,
    EventKind.TOUR_STEP_VIEWED: 3,
}
#: Tour flags: a step seen since the tour was last finished or closed; dismissed; completed.
TOUR_VIEWED, TOUR_DISMISSED, TOUR_COMPLETED = 1, 2, 4
#: Surfaces by code (0: an empty place in a SHOWN record).
SURFACE_CODES = {"tour": 1, "tooltip": 2, "banner": 3}
SURFACE_NAMES = {code: name for name, code in SURFACE_CODES.items()}
#: Interruptions kept: those of the two days before the newest (a per-day cap in any time zone
#: and the depth of a show need no more), at most this many.
SHOWS_KEPT_S = 2 * 86400
MAX_SHOWS_KEPT = 30
#: A show's depth: the interruptions in the day before it, counted up to this (5: 5 or more).
MAX_DEPTH = 5
DEPTH_WINDOW_S = 86400
#: A tour whose last step was seen this recently is in progress: showing its next step (on
#: another page, after a reload) is no new interruption.
TOUR_ACTIVE_S = SESSION_GAP_S

TRAIT_FIELDS = ("name", "age_band", "role", "company_size")
#: Profile fields that identify a person; logs and exports treat them as PII.
PII_FIELDS = frozenset({"name"})
#: Where the name sits in a snapshot's context-and-traits list.
_NAME_AT = (CONTEXT_FIELDS + TRAIT_FIELDS).index("name")


class Sealer(Protocol):
    """What a snapshot needs to keep PII sealed: :class:`engine.pii.PiiSealer` (which reads
    :data:`PII_FIELDS` from here, so this module names only the shape)."""

    def seal(self, user_key: str, value: str) -> bytes: ...

    def unseal(self, user_key: str, sealed: bytes) -> str | None: ...


#: What :meth:`UserState.apply` reports it changed, beyond what every event changes (counts,
#: time, engagement): bits of its result. Live membership re-evaluates only the segments that
#: read what moved (:mod:`engine.segments`), so these are exact: a context repeating the
#: values the user has already reports nothing.
FIRST_USE = 1  # the user's first use of a feature
NEW_SESSION = 2  # the session count grew
CONTEXT_CHANGED = 4  # a context field took a new value
NEW_STEP = 8  # a step completed for the first time
TRAITS_CHANGED = 16  # a trait (role, company size, age band) took a new value

# Consent bits: recorded and granted, per purpose.
_ANALYTICS_SET, _ANALYTICS_ON, _PERSONAL_SET, _PERSONAL_ON = 1, 2, 4, 8
#: The personalization bits (recorded, granted), for a check on every event without a call.
PERSONALIZATION_BITS = (_PERSONAL_SET, _PERSONAL_ON)


class Vocabulary:
    """Names to small ids, bounded so that hostile input cannot grow state without limit.

    >>> v = Vocabulary(limit=2)
    >>> v.id("a"), v.id("b"), v.id("a"), v.id("c"), v.name(v.id("zzz"))
    (1, 2, 1, 0, '(other)')
    """

    OTHER = "(other)"

    def __init__(self, names: list[str] | None = None, limit: int = 4096) -> None:
        self.names: list[str] = names if names is not None else [self.OTHER]
        #: Name to id, for readers (add names with :meth:`id`).
        self.ids = {name: i for i, name in enumerate(self.names)}
        self.limit = limit

    def id(self, name: str) -> int:
        found = self.ids.get(name)
        if found is not None:
            return found
        if len(self.names) > self.limit:
            return 0
        new = len(self.names)
        self.names.append(name)
        self.ids[name] = new
        return new

    def name(self, ident: int) -> str:
        return self.names[ident]

    def find(self, name: str) -> int | None:
        """The id of ``name`` if it was ever seen, without adding it."""
        return self.ids.get(name)


class Vocabularies:
    """The vocabularies one partition's users share."""

    NAMES = (
        "custom_fields",
        "custom_keys",
        "custom_types",
        "custom_values",
        "features",
        "steps",
        "tutorials",
        "variants",
    )
    __slots__ = (*NAMES, "schema_ids")

    def __init__(self, snapshot: dict[str, list[str]] | None = None) -> None:
        snap = snapshot or {}
        self.features = Vocabulary(snap.get("features"))
        # Steps are bits of a mask: the journey has tens of steps, so 256 leaves room.
        self.steps = Vocabulary(snap.get("steps"), limit=256)
        self.tutorials = Vocabulary(snap.get("tutorials"))
        self.variants = Vocabulary(snap.get("variants"))
        #: Every custom event type this partition ever held (a type the catalog later drops
        #: is still known here: its stored events are skipped on replay, not dead-lettered).
        self.custom_types = Vocabulary(snap.get("custom_types"))
        #: Custom traits and context fields: a user's value of one sits at its id.
        self.custom_fields = Vocabulary(snap.get("custom_fields"))
        #: ``<type>.<prop>`` of the ``count_by`` props, and their values.
        self.custom_keys = Vocabulary(snap.get("custom_keys"))
        self.custom_values = Vocabulary(snap.get("custom_values"), limit=65_536)
        #: The ids of what the last schema applied declares (:func:`schema_ids`; not kept).
        self.schema_ids: SchemaIds | None = None

    def snapshot(self) -> dict[str, list[str]]:
        # The custom vocabularies only once used: a partition without custom events snapshots
        # as it did before they existed.
        return {
            name: vocab.names
            for name in self.NAMES
            if len((vocab := getattr(self, name)).names) > 1 or not name.startswith("custom_")
        }


class SchemaIds:
    """What one schema declares, as one partition's ids, looked up once rather than per event
    (each id is still given on first use, as :class:`Vocabulary` does: a snapshot holds the
    names used, in the order used). Kept by :func:`schema_ids`."""

    __slots__ = (
        "context",
        "context_at",
        "context_end",
        "context_none",
        "context_of",
        "schema",
        "traits",
        "types",
    )

    def __init__(self, schema: EventSchema) -> None:
        self.schema = schema
        #: [field name, field id (None until a value comes), whether its text is interned] of
        #: the declared context fields and traits. A PII trait's value is one person's: it is
        #: shared by no one, so interning it would only add an entry to the interned table.
        self.context: list[list[Any]] = [[name, None, True] for name in schema.context]
        self.traits: list[list[Any]] = [[name, None, name not in schema.pii_traits] for name in schema.traits]
        #: Per custom event class: its type id and its ``count_by`` props as
        #: [prop, "<type>.<prop>", max values, key id (None until a value comes)].
        self.types: dict[type, tuple[int, list[list[Any]]]] = {}
        # Every event's context is compared with the user's values in two C calls: the
        # declared fields of the context, the user's values at their places in extras (once
        # each has an id). Equal, or none of them sent, is the usual case; else _set_extras,
        # field by field.
        self.context_of: Any = attrgetter(*schema.context) if schema.context else None
        self.context_none: Any = (None,) * len(schema.context) if len(schema.context) > 1 else None
        self.context_at: Any = None
        self.context_end = 0

    def placed(self) -> None:
        """Note the context fields' places in a user's extras, once every one has an id."""
        if self.context_at is None and all(field[1] is not None for field in self.context):
            places = [field[1] for field in self.context]
            self.context_at, self.context_end = itemgetter(*places), max(places)

    def of_type(self, event: CustomEvent, vocab: Vocabularies) -> tuple[int, list[list[Any]]]:
        found = self.types.get(type(event))
        if found is None:
            name = event.type_name
            by = [[prop, f"{name}.{prop}", most, None] for prop, most in self.schema.count_by.get(name, ())]
            found = self.types[type(event)] = (vocab.custom_types.id(name), by)
        return found


def schema_ids(vocab: Vocabularies, schema: EventSchema) -> SchemaIds:
    """The partition's ids of what ``schema`` declares (built again when the schema changes)."""
    ids = vocab.schema_ids
    if ids is None or ids.schema is not schema:
        ids = vocab.schema_ids = SchemaIds(schema)
    return ids


#: Profile fields held in :attr:`UserState.counters` past the fixed counters, read as attributes.
COUNTER_FIELDS = ("custom", "custom_values")


def _with(data: tuple[Any, ...] | None, at: int, value: Any) -> tuple[Any, ...]:
    """``data`` (a user's extras) with ``value`` at ``at``, grown if need be."""
    data = data or ()
    if at >= len(data):
        data += (None,) * (at + 1 - len(data))
    return (*data[:at], value, *data[at + 1 :])


def _intern(value: str | None, current: str | None) -> str | None:
    # Context values repeat across users (device types, locales...): interning stores each
    # distinct string once per process instead of once per user.
    return current if value is None else sys.intern(value)


class UserState:
    """Everything Headstart knows live about one user. See the module docstring."""

    __slots__ = (
        "counters",
        "features",
        "tutorials",
        "viewed_steps",
        "completed_steps",
        "first_seen",
        "last_seen",
        "engagement",
        "session_seconds",
        "consent",
        "segments",
        "cluster",
        "extras",
        *CONTEXT_FIELDS,
        *TRAIT_FIELDS,
    )

    counters: array[int]
    features: array[int] | None
    tutorials: array[int] | None
    viewed_steps: int
    completed_steps: int
    first_seen: float
    last_seen: float
    engagement: float
    session_seconds: float
    consent: int
    #: Live segment membership, one bit per segment of the partition's
    #: :class:`engine.segments.SegmentIndex` (kept current by :mod:`engine.segments`).
    segments: int
    #: The behavioural cluster the user was last assigned to (-1: none yet).
    cluster: int
    #: Custom trait and context values (interned text, numbers, booleans), each at its field's
    #: id in ``Vocabularies.custom_fields`` (None: none set). A tuple: no room kept for more.
    extras: tuple[Any, ...] | None
    device_type: str | None
    os: str | None
    locale: str | None
    country: str | None
    referrer: str | None
    app_version: str | None
    name: str | None
    age_band: str | None
    role: str | None
    company_size: str | None

    @classmethod
    def new(cls, ts: float) -> UserState:
        user = cls.__new__(cls)
        user.counters = array("I", _ZERO_COUNTERS)
        user.features = None
        user.tutorials = None
        user.viewed_steps = 0
        user.completed_steps = 0
        user.first_seen = ts
        user.last_seen = ts
        user.engagement = 0.0
        user.session_seconds = 0.0
        user.consent = 0
        user.segments = 0
        user.cluster = -1
        user.extras = None
        for field in CONTEXT_FIELDS + TRAIT_FIELDS:
            setattr(user, field, None)
        return user

    @property
    def custom(self) -> array[int] | None:
        """Custom events: (type id, count, first second, last second) quads (None: none yet);
        a copy."""
        c = self.counters
        if len(c) <= _N_COUNTERS:
            return None
        return c[_X_AT : _X_AT + _X_STRIDE * c[C_X_TYPES]] or None

    @custom.setter
    def custom(self, value: array[int] | None) -> None:
        self._set_custom(value, self.custom_values)

    @property
    def custom_values(self) -> array[int] | None:
        """Counts by the value of ``count_by`` props: (key id, value id, count) triples (None:
        none yet); a copy."""
        c = self.counters
        if len(c) <= _N_COUNTERS:
            return None
        return c[_X_AT + _X_STRIDE * c[C_X_TYPES] :] or None

    @custom_values.setter
    def custom_values(self, value: array[int] | None) -> None:
        self._set_custom(self.custom, value)

    def _set_custom(self, quads: array[int] | None, values: array[int] | None) -> None:
        fixed = self.counters[:_N_COUNTERS]
        if not quads and not values:
            self.counters = fixed
            return
        types = array("I", (len(quads) // _X_STRIDE if quads else 0,))
        self.counters = fixed + types + (quads or array("I")) + (values or array("I"))

    # ------------------------------------------------------------------ updates

    def apply(self, event: Event, vocab: Vocabularies, schema: EventSchema = BUILTIN_SCHEMA) -> int:
        """Fold one event into the state; what it changed as bits (:data:`FIRST_USE`,
        :data:`NEW_SESSION`, ...). ``schema``: what the catalog declares beyond the built-ins."""
        ts = event.ts
        kind = event.kind
        c = self.counters
        if kind < _FIRST_FLOW:
            c[kind] += 1
        c[C_EVENTS] += 1
        changed = 0
        gap = ts - self.last_seen
        if gap >= 0:
            if kind is EventKind.SESSION_STARTED or gap > SESSION_GAP_S or c[C_SESSIONS] == 0:
                c[C_SESSIONS] += 1
                changed = NEW_SESSION
            else:
                self.session_seconds += gap
            self.engagement = self.engagement * math.exp(-gap / _DECAY_TAU) + _WEIGHTS[kind]
            self.last_seen = ts
        else:
            # A late event: count it, decayed to the newest time we hold, without moving time
            # backwards (sessions and recency stay as the newest events made them).
            self.engagement += _WEIGHTS[kind] * math.exp(gap / _DECAY_TAU)
            self.first_seen = min(self.first_seen, ts)
        seconds = int(ts)
        c[C_HOURS] |= 1 << (seconds // 3600 % 24)
        c[C_DAYS] |= 1 << ((seconds // 86400 + 3) % 7)  # 1970-01-01 was a Thursday
        bucket = seconds // WINDOW_BUCKET_S
        self._count_in_window(bucket)

        ctx = event.context
        # A value is stored (interned) only when it differs: contexts mostly repeat the user's.
        # Written out field by field: a loop with getattr/setattr took 430 instead of 155 ns,
        # on every event.
        if ctx is not None:
            value = ctx.device_type
            if value is not None and value != self.device_type:
                self.device_type = sys.intern(value)
                changed |= CONTEXT_CHANGED
            value = ctx.os
            if value is not None and value != self.os:
                self.os = sys.intern(value)
                changed |= CONTEXT_CHANGED
            value = ctx.locale
            if value is not None and value != self.locale:
                self.locale = sys.intern(value)
                changed |= CONTEXT_CHANGED
            value = ctx.country
            if value is not None and value != self.country:
                self.country = sys.intern(value)
                changed |= CONTEXT_CHANGED
            value = ctx.referrer
            if value is not None and value != self.referrer:
                self.referrer = sys.intern(value)
                changed |= CONTEXT_CHANGED
            value = ctx.app_version
            if value is not None and value != self.app_version:
                self.app_version = sys.intern(value)
                changed |= CONTEXT_CHANGED
            if schema.context:
                ids = vocab.schema_ids
                if ids is None or ids.schema is not schema:
                    ids = schema_ids(vocab, schema)
                data = self.extras
                at = ids.context_at
                sent = ids.context_of(ctx)
                if (
                    sent != ids.context_none
                    and (at is None or data is None or len(data) <= ids.context_end or at(data) != sent)
                    and self._set_extras(ctx, ids.context, vocab)
                ):
                    changed |= CONTEXT_CHANGED

        if kind is EventKind.CUSTOM:
            assert isinstance(event, CustomEvent)
            ids = vocab.schema_ids
            if ids is None or ids.schema is not schema:
                ids = schema_ids(vocab, schema)
            changed |= self._count_custom(event, seconds, vocab, ids)
        elif kind is EventKind.FEATURE_CLICKED:
            assert isinstance(event, FeatureClicked)
            if self._count_feature(vocab.features.id(event.props.feature), bucket):
                changed |= FIRST_USE
        elif kind is EventKind.STEP_VIEWED:
            assert isinstance(event, StepViewed)
            self.viewed_steps |= 1 << vocab.steps.id(event.props.step)
        elif kind is EventKind.STEP_COMPLETED:
            assert isinstance(event, StepCompleted)
            bit = 1 << vocab.steps.id(event.props.step)
            self.viewed_steps |= bit
            if not self.completed_steps & bit:
                self.completed_steps |= bit
                changed |= NEW_STEP
        elif kind is EventKind.TUTORIAL_STARTED or kind is EventKind.TUTORIAL_COMPLETED:
            assert isinstance(event, (TutorialStarted, TutorialCompleted))
            props = event.props
            tutorial_id = vocab.tutorials.id(props.tutorial)
            self._count_tutorial(
                tutorial_id,
                vocab.variants.id(props.variant),
                completed=kind is EventKind.TUTORIAL_COMPLETED,
            )
            if kind is EventKind.TUTORIAL_COMPLETED:
                self._tour_finished(tutorial_id, vocab.variants.id(props.variant), seconds)
        elif kind is EventKind.PROFILE_UPDATED:
            assert isinstance(event, ProfileUpdated)
            traits = event.props
            self.name = traits.name if traits.name is not None else self.name
            before = (self.age_band, self.role, self.company_size)
            self.age_band = _intern(traits.age_band, self.age_band)
            self.role = _intern(traits.role, self.role)
            self.company_size = _intern(traits.company_size, self.company_size)
            if (self.age_band, self.role, self.company_size) != before:
                changed |= TRAITS_CHANGED
            if schema.traits and self._set_extras(traits, schema_ids(vocab, schema).traits, vocab):
                changed |= TRAITS_CHANGED
        elif kind is EventKind.CONSENT_UPDATED:
            assert isinstance(event, ConsentUpdated)
            self._set_consent(event.props.analytics, event.props.personalization)
        elif kind >= _FIRST_FLOW:
            self._apply_flow(event, seconds, vocab)
        return changed

    def _set_extras(self, source: Any, fields: list[list[Any]], vocab: Vocabularies) -> bool:
        """Store the declared fields ``source`` (a context or traits struct) sets; whether any
        took a new value. ``fields``: :attr:`SchemaIds.context` or ``.traits``."""
        data = self.extras or ()
        new: list[Any] | None = None  # data as a list, once a field changes (one tuple made)
        for field in fields:
            value = getattr(source, field[0])
            if value is None:
                continue
            at = field[1]
            if at is None:
                at = field[1] = vocab.custom_fields.id(field[0])
                vocab.schema_ids.placed()  # type: ignore[union-attr]  # fields come from it
            held = data if new is None else new
            if at < len(held) and held[at] == value:
                continue  # the usual case: the value the user has
            if new is None:
                new = list(data)
            if at >= len(new):
                new += [None] * (at + 1 - len(new))
            new[at] = sys.intern(value) if field[2] and type(value) is str else value
        if new is None:
            return False
        self.extras = tuple(new)
        return True

    def _count_custom(self, event: CustomEvent, seconds: int, vocab: Vocabularies, ids: SchemaIds) -> int:
        """Count a custom event (and its ``count_by`` props' values); FIRST_USE if it is the
        user's first of its type."""
        known = ids.types.get(type(event))
        type_id, by = known if known is not None else ids.of_type(event, vocab)
        c = self.counters
        if len(c) > _N_COUNTERS:
            end = _X_AT + _X_STRIDE * c[C_X_TYPES]  # where the counts by value start
            # The type's entry found in C (a strided slice, then index), not by a Python loop.
            types = c[_X_AT:end:_X_STRIDE]
            if type_id in types:
                i = _X_AT + types.index(type_id) * _X_STRIDE
                c[i + 1] += 1
                if seconds > c[i + 3]:
                    c[i + 3] = seconds
                elif seconds < c[i + 2]:  # a late event
                    c[i + 2] = seconds
                first = 0
            else:
                # A new array of the exact size (in place, the array would keep room for more).
                c = self.counters = c[:end] + array("I", (type_id, 1, seconds, seconds)) + c[end:]
                c[C_X_TYPES] += 1
                end += _X_STRIDE
                first = FIRST_USE
        else:
            c = self.counters = c + array("I", (1, type_id, 1, seconds, seconds))
            end = len(c)
            first = FIRST_USE
        if by:
            props = event.props  # type: ignore[attr-defined]
            for key in by:
                value = getattr(props, key[0])
                if value is not None:
                    key_id = key[3]
                    if key_id is None:
                        key_id = key[3] = vocab.custom_keys.id(key[1])
                    grown = _count_value(c, end, key_id, vocab.custom_values.id(value), key[2])
                    if grown is not None:
                        c = self.counters = grown
        return first

    def _count_in_window(self, bucket: int) -> None:
        c = self.counters
        head = c[C_WIN_HEAD]
        if bucket > head:
            if bucket - head >= WINDOW_BUCKETS:
                for slot in range(C_WIN, C_WIN + WINDOW_BUCKETS):
                    c[slot] = 0
                c[C_WIN_EVENTS] = 0
            else:
                for b in range(head + 1, bucket + 1):
                    slot = C_WIN + b % WINDOW_BUCKETS
                    c[C_WIN_EVENTS] -= c[slot]
                    c[slot] = 0
            c[C_WIN_HEAD] = head = bucket
        if bucket > head - WINDOW_BUCKETS:
            c[C_WIN + bucket % WINDOW_BUCKETS] += 1
            c[C_WIN_EVENTS] += 1

    def _count_feature(self, feature_id: int, bucket: int) -> bool:
        """Count a use of a feature; True if it is the first."""
        f = self.features
        if f is None:
            self.features = array("I", (feature_id, 1, bucket))
            return True
        for i in range(0, len(f), _F_STRIDE):
            if f[i] == feature_id:
                f[i + 1] += 1
                f[i + 2] = max(f[i + 2], bucket)
                return False
        f.extend((feature_id, 1, bucket))
        return True

    def _count_tutorial(self, tutorial_id: int, variant_id: int, *, completed: bool) -> None:
        t = self.tutorials
        if t is None:
            t = self.tutorials = array("I")
        for i in range(0, len(t), _T_STRIDE):
            if t[i] == tutorial_id and t[i + 1] == variant_id:
                break
        else:
            i = len(t)
            t.extend((tutorial_id, variant_id, 0, 0))
        t[i + (3 if completed else 2)] += 1

    # ------------------------------------------------------------------ flow state

    def _apply_flow(self, event: Event, seconds: int, vocab: Vocabularies) -> None:
        """A flow event of the in-app kit: tour progress, an interruption shown or dismissed."""
        if isinstance(event, TourStepViewed | TourStepSkipped):
            props = event.props
            skipped = isinstance(event, TourStepSkipped)
            self._tally(_TALLY_SLOTS[EventKind.TOUR_STEP_VIEWED], 1, skipped=skipped)
            resume = props.index + 1 if skipped else props.index
            self._set_tour(
                vocab.tutorials.id(props.tutorial), vocab.variants.id(props.variant), resume, seconds
            )
        elif isinstance(event, SurfaceShown):
            props_shown = event.props
            code = SURFACE_CODES[props_shown.surface]
            self._tally(_TALLY_SLOTS[EventKind.SURFACE_SHOWN], 1)
            if props_shown.surface != "banner":
                found = vocab.tutorials.find(props_shown.id)
                if found is not None and self._tour_active(found, seconds):
                    return  # the next step of a tour the user is in: no new interruption
            shows = [s for s in self.shows() if s[1] > seconds - SHOWS_KEPT_S]
            shows.append((code, seconds))
            shows.sort(key=itemgetter(1))
            self._set_shows(shows[-MAX_SHOWS_KEPT:])
        elif isinstance(event, SurfaceDismissed):
            props_dismissed = event.props
            self._tally(_TALLY_SLOTS[EventKind.SURFACE_DISMISSED], 1)
            # Closing the banner is how a banner ends (it has nothing to complete): only a tour
            # or tooltip closed before its end is a declined interruption.
            if props_dismissed.surface != "banner":
                self._learn_tolerance(SURFACE_CODES[props_dismissed.surface], seconds, accepted=False)
                self._tour_closed(vocab.tutorials.id(props_dismissed.id), seconds)

    def _records(self, tag: int) -> list[int]:
        """Where the flow records tagged ``tag`` start in the tutorials array."""
        t = self.tutorials
        if t is None:
            return []
        return [i for i in range(0, len(t), _T_STRIDE) if t[i] & _TAG == tag]

    def _new_record(self, head: int, a: int = 0, b: int = 0, c: int = 0) -> int:
        if self.tutorials is None:
            self.tutorials = array("I")
        t = self.tutorials
        t.extend((head, a, b, c))
        return len(t) - _T_STRIDE

    def _tally(self, slot: int, n: int, skipped: bool = False) -> None:
        """Count a flow event: slot 1 shown, 2 dismissed, 3 steps viewed (skips in the head)."""
        i = self._find_tagged(_TALLY)
        if i < 0:
            i = self._new_record(_TALLY)
        t = self.tutorials
        assert t is not None
        if skipped:
            t[i] += n
        else:
            t[i + slot] += n

    def _find_tagged(self, tag: int) -> int:
        found = self._records(tag)
        return found[0] if found else -1

    def flow_count(self, kind: EventKind | int) -> int:
        """How many flow events of ``kind`` the user sent (steps viewed and skipped,
        interruptions shown and dismissed)."""
        i = self._find_tagged(_TALLY)
        if i < 0:
            return 0
        t = self.tutorials
        assert t is not None
        if kind == EventKind.TOUR_STEP_SKIPPED:
            return t[i] & ~_TAG
        return t[i + _TALLY_SLOTS[kind]]

    def _set_tour(self, tutorial_id: int, variant_id: int, resume: int, seconds: int) -> None:
        i = self._tour_at(tutorial_id, variant_id)
        if i < 0:
            i = self._new_record(_TOUR | tutorial_id, variant_id)
        t = self.tutorials
        assert t is not None
        flags = t[i + 2] >> 16
        t[i + 2] = min(resume, 0xFFFF) | (flags | TOUR_VIEWED) << 16
        t[i + 3] = max(t[i + 3], seconds)

    def _tour_at(self, tutorial_id: int, variant_id: int) -> int:
        t = self.tutorials
        if t is not None:
            head = _TOUR | tutorial_id
            for i in range(0, len(t), _T_STRIDE):
                if t[i] == head and t[i + 1] == variant_id:
                    return i
        return -1

    def _tour_active(self, tutorial_id: int, seconds: int) -> bool:
        t = self.tutorials
        if t is None:
            return False
        head = _TOUR | tutorial_id
        return any(
            t[i] == head and t[i + 2] >> 16 & TOUR_VIEWED and seconds - t[i + 3] < TOUR_ACTIVE_S
            for i in range(0, len(t), _T_STRIDE)
        )

    def _tour_finished(self, tutorial_id: int, variant_id: int, seconds: int) -> None:
        """A tutorial completed: its tour starts over if shown again; the interruption that
        showed it was accepted."""
        t = self.tutorials
        if t is None or not self._has_flow():
            return  # no flow state: completed outside the in-app kit
        i = self._tour_at(tutorial_id, variant_id)
        if i < 0 or not t[i + 2] >> 16 & TOUR_VIEWED:
            return  # not a tour the kit was showing
        t[i + 2] = ((t[i + 2] >> 16 & ~TOUR_VIEWED) | TOUR_COMPLETED) << 16
        self._learn_tolerance(SURFACE_CODES["tour"], seconds, accepted=True, also=SURFACE_CODES["tooltip"])

    def _tour_closed(self, tutorial_id: int, seconds: int) -> None:
        """The user dismissed a tutorial's tour or tooltip (every variant of it)."""
        t = self.tutorials
        head = _TOUR | tutorial_id
        found = False
        if t is not None:
            for i in range(0, len(t), _T_STRIDE):
                if t[i] == head:
                    t[i + 2] = ((t[i + 2] >> 16 & ~TOUR_VIEWED) | TOUR_DISMISSED) << 16
                    found = True
        if not found:
            self._new_record(head, 0, TOUR_DISMISSED << 16, seconds)

    def shows(self) -> list[tuple[int, int]]:
        """The interruptions kept, (surface code, second), oldest first."""
        t = self.tutorials
        out: list[tuple[int, int]] = []
        for i in self._records(_SHOWN):
            assert t is not None
            codes = t[i] & ~_TAG
            for k in range(3):
                if t[i + 1 + k]:
                    out.append((codes >> 2 * k & 3, t[i + 1 + k]))
        out.sort(key=itemgetter(1))
        return out

    def _set_shows(self, shows: list[tuple[int, int]]) -> None:
        t = self.tutorials
        kept = array("I")
        if t is not None:
            for i in range(0, len(t), _T_STRIDE):
                if t[i] & _TAG != _SHOWN:
                    kept.extend(t[i : i + _T_STRIDE])
        for start in range(0, len(shows), 3):
            group = shows[start : start + 3]
            codes = sum(code << 2 * k for k, (code, _) in enumerate(group))
            seconds = [second for _, second in group] + [0] * (3 - len(group))
            kept.extend((_SHOWN | codes, *seconds))
        self.tutorials = kept or None

    def _learn_tolerance(self, code: int, seconds: int, accepted: bool, also: int = -1) -> None:
        """Count the user's answer to their last interruption on this surface (shown in the
        day before): accepted (completed) or declined (dismissed), by how deep into the day it
        came (:func:`show_depth`). Nothing without such an interruption."""
        shows = self.shows()
        shown = [s for c, s in shows if c in (code, also) and seconds - DEPTH_WINDOW_S < s <= seconds]
        if not shown:
            return
        depth = show_depth(shows, shown[-1])
        i = self._find_tagged(_TOLERANCE)
        if i < 0:
            i = self._new_record(_TOLERANCE)
        t = self.tutorials
        assert t is not None
        byte = depth + (0 if accepted else MAX_DEPTH + 1)  # 12 bytes: accepted, then declined
        word, shift = i + 1 + byte // 4, 8 * (byte % 4)
        if (t[word] >> shift) & 0xFF < 0xFF:
            t[word] += 1 << shift

    def tolerance(self) -> tuple[list[int], list[int]]:
        """Interruptions the user accepted and declined, by depth 0..:data:`MAX_DEPTH`."""
        i = self._find_tagged(_TOLERANCE)
        counts = [0] * (2 * MAX_DEPTH + 2)
        if i >= 0:
            t = self.tutorials
            assert t is not None
            counts = [(t[i + 1 + b // 4] >> 8 * (b % 4)) & 0xFF for b in range(2 * MAX_DEPTH + 2)]
        return counts[: MAX_DEPTH + 1], counts[MAX_DEPTH + 1 :]

    def tour_state(self, tutorial_id: int | None, variant_id: int | None) -> tuple[int, int, int] | None:
        """(resume index, flags, second of the last step seen) of a tutorial variant's tour;
        None: the user never saw a step of it."""
        if tutorial_id is None or variant_id is None:
            return None
        i = self._tour_at(tutorial_id, variant_id)
        if i < 0:
            return None
        t = self.tutorials
        assert t is not None
        return t[i + 2] & 0xFFFF, t[i + 2] >> 16, t[i + 3]

    def tutorial_flags(self, tutorial_id: int | None) -> int:
        """The tour flags of every variant of a tutorial together (:data:`TOUR_DISMISSED`...)."""
        t = self.tutorials
        if t is None or tutorial_id is None:
            return 0
        head = _TOUR | tutorial_id
        flags = 0
        for i in range(0, len(t), _T_STRIDE):
            if t[i] == head:
                flags |= t[i + 2] >> 16
        return flags

    def _has_flow(self) -> bool:
        t = self.tutorials
        return t is not None and any(t[i] & _TAG for i in range(0, len(t), _T_STRIDE))

    def tutorial_entries(self) -> list[tuple[int, int, int, int]]:
        """(tutorial id, variant id, starts, completions) of every tutorial the user started or
        completed (the flow records left out)."""
        t = self.tutorials
        if t is None:
            return []
        return [(t[i], t[i + 1], t[i + 2], t[i + 3]) for i in range(0, len(t), _T_STRIDE) if not t[i] & _TAG]

    def flow_view(self, vocab: Vocabularies) -> dict[str, Any]:
        """The in-app kit's state as JSON: tours, interruptions kept and the tolerance counts."""
        t = self.tutorials
        tours = []
        for i in self._records(_TOUR):
            assert t is not None
            flags = t[i + 2] >> 16
            tours.append(
                {
                    "tutorial": vocab.tutorials.name(t[i] & ~_TAG),
                    "variant": vocab.variants.name(t[i + 1]) if t[i + 1] else None,
                    "resume_at": t[i + 2] & 0xFFFF,
                    "in_progress": bool(flags & TOUR_VIEWED),
                    "dismissed": bool(flags & TOUR_DISMISSED),
                    "completed": bool(flags & TOUR_COMPLETED),
                    "last_step_seen": t[i + 3] or None,
                }
            )
        accepted, declined = self.tolerance()
        return {
            "tours": tours,
            "shown": [
                {"surface": SURFACE_NAMES.get(code, "?"), "ts": second} for code, second in self.shows()
            ],
            "accepted_by_depth": accepted,
            "declined_by_depth": declined,
        }

    def _set_consent(self, analytics: bool | None, personalization: bool | None) -> None:
        self.consent = with_consent(self.consent, analytics, personalization)

    # ------------------------------------------------------------------ reads

    @property
    def sessions(self) -> int:
        return self.counters[C_SESSIONS]

    @property
    def events_total(self) -> int:
        return self.counters[C_EVENTS]

    def count(self, kind: EventKind | int) -> int:
        """Events of ``kind`` the user sent."""
        return self.counters[kind] if kind < _FIRST_FLOW else self.flow_count(kind)

    def engagement_at(self, now: float) -> float:
        """The decayed engagement score as of ``now`` (never grows with time)."""
        gap = max(0.0, now - self.last_seen)
        return self.engagement * math.exp(-gap / _DECAY_TAU)

    def events_in_window(self, now: float) -> int:
        """Events whose time falls in the 5-minute window ending at ``now``."""
        c = self.counters
        head = c[C_WIN_HEAD]
        newest = int(now) // WINDOW_BUCKET_S
        if newest == head:  # the usual case, right after an event: the whole ring is the window
            return c[C_WIN_EVENTS]
        total = 0
        for b in range(newest - WINDOW_BUCKETS + 1, newest + 1):
            if head - WINDOW_BUCKETS < b <= head:
                total += c[C_WIN + b % WINDOW_BUCKETS]
        return total

    def features_in_window(self, now: float) -> int:
        """Distinct features used in the 5-minute window ending at ``now``."""
        f = self.features
        if f is None:
            return 0
        oldest = int(now) // WINDOW_BUCKET_S - WINDOW_BUCKETS + 1
        return sum(last >= oldest for last in f[2::_F_STRIDE])

    def feature_ids(self) -> set[int]:
        """The ids of every feature the user has used."""
        f = self.features
        return set(f[0::_F_STRIDE]) if f is not None else set()

    def feature_count(self, feature_id: int | None) -> int:
        return feature_count(self.features, feature_id)

    def _custom_at(self, type_id: int | None) -> int:
        """Where the custom type's quad starts in the counters (-1: the user never sent it)."""
        c = self.counters
        if type_id is None or len(c) <= _N_COUNTERS:
            return -1
        for i in range(_X_AT, _X_AT + _X_STRIDE * c[C_X_TYPES], _X_STRIDE):
            if c[i] == type_id:
                return i
        return -1

    def custom_count(self, type_id: int | None) -> int:
        """How many events of the custom type with this id the user sent."""
        i = self._custom_at(type_id)
        return self.counters[i + 1] if i >= 0 else 0

    def custom_times(self, type_id: int | None) -> tuple[int, int] | None:
        """(first, last) second the user sent the custom type with this id (None: never)."""
        i = self._custom_at(type_id)
        return (self.counters[i + 2], self.counters[i + 3]) if i >= 0 else None

    def value_count(self, key_id: int | None, value_id: int | None) -> int:
        """How many events of a ``count_by`` key (``<type>.<prop>``) had this value."""
        return value_count(self.custom_values, key_id, value_id)

    def extra(self, field_id: int | None) -> Any:
        """The user's value of the custom trait or context field with this id (None: none)."""
        extras = self.extras
        if extras is None or field_id is None or field_id >= len(extras):
            return None
        return extras[field_id]

    def drop_extras(self, field_ids: frozenset[int]) -> None:
        """Forget these custom fields' values (PII traits when consent goes)."""
        extras = self.extras
        if extras is not None:
            for slot in field_ids:
                if slot < len(extras) and extras[slot] is not None:
                    extras = _with(extras, slot, None)
            self.extras = extras

    def consent_given(self, purpose: str, default: bool) -> bool:
        """Whether the user granted ``purpose`` ("analytics" or "personalization")."""
        return consent_allows(self.consent, purpose, default)

    def view(self, vocab: Vocabularies, now: float, schema: EventSchema = BUILTIN_SCHEMA) -> dict[str, Any]:
        """A JSON-ready picture of the state as of ``now`` (custom traits and context fields
        sorted by ``schema``: a field it no longer declares shows as a trait)."""
        c = self.counters
        extras = {
            vocab.custom_fields.name(i): value
            for i, value in enumerate(self.extras or ())
            if value is not None
        }
        context_extras = {k: v for k, v in extras.items() if k in schema.section.context}
        sessions = c[C_SESSIONS]
        f = self.features or array("I")
        t = self.tutorials or array("I")
        return {
            "first_seen": self.first_seen,
            "last_seen": self.last_seen,
            "sessions": sessions,
            "session_seconds": self.session_seconds,
            "avg_session_seconds": self.session_seconds / sessions if sessions else 0.0,
            "active_hours_utc": [h for h in range(24) if c[C_HOURS] >> h & 1],
            "active_weekdays": [d for d in range(7) if c[C_DAYS] >> d & 1],
            "events_by_type": {
                **{k.wire_name: c[k] for k in COUNTED_BUILTIN_KINDS if c[k]},
                **{k.wire_name: n for k in FLOW_KINDS if (n := self.flow_count(k))},
                **self._custom_counts(vocab),
            },
            "custom_events": self._custom_view(vocab),
            "events_total": self.events_total,
            "features": {vocab.features.name(f[i]): f[i + 1] for i in range(0, len(f), _F_STRIDE)},
            "steps_viewed": _step_names(self.viewed_steps, vocab.steps),
            "steps_completed": _step_names(self.completed_steps, vocab.steps),
            "tutorials": [
                {
                    "tutorial": vocab.tutorials.name(t[i]),
                    "variant": vocab.variants.name(t[i + 1]),
                    "started": t[i + 2],
                    "completed": t[i + 3],
                }
                for i in range(0, len(t), _T_STRIDE)
                if not t[i] & _TAG
            ],
            "engagement": self.engagement_at(now),
            "events_5m": self.events_in_window(now),
            "features_5m": self.features_in_window(now),
            "context": {
                **{k: getattr(self, k) for k in CONTEXT_FIELDS if getattr(self, k) is not None},
                **context_extras,
            },
            "traits": {
                **{k: getattr(self, k) for k in TRAIT_FIELDS if getattr(self, k) is not None},
                **{k: v for k, v in extras.items() if k not in context_extras},
            },
            **({"flow": self.flow_view(vocab)} if self._has_flow() else {}),
            "consent": {
                purpose: (bool(self.consent & on) if self.consent & is_set else None)
                for purpose, is_set, on in (
                    ("analytics", _ANALYTICS_SET, _ANALYTICS_ON),
                    ("personalization", _PERSONAL_SET, _PERSONAL_ON),
                )
            },
        }

    def _custom_counts(self, vocab: Vocabularies) -> dict[str, int]:
        x = self.custom or array("I")
        return {vocab.custom_types.name(x[i]): x[i + 1] for i in range(0, len(x), _X_STRIDE)}

    def _custom_view(self, vocab: Vocabularies) -> dict[str, Any]:
        x = self.custom or array("I")
        out: dict[str, Any] = {}
        for i in range(0, len(x), _X_STRIDE):
            out[vocab.custom_types.name(x[i])] = {
                "count": x[i + 1],
                "first_seen": x[i + 2],
                "last_seen": x[i + 3],
            }
        v = self.custom_values or array("I")
        for i in range(0, len(v), _V_STRIDE):
            type_name, prop = vocab.custom_keys.name(v[i]).split(".", 1)
            entry = out.setdefault(type_name, {"count": 0})
            entry.setdefault("by", {}).setdefault(prop, {})[vocab.custom_values.name(v[i + 1])] = v[i + 2]
        return out

    # ------------------------------------------------------------------ snapshots

    def snapshot(
        self, key: str = "", sealer: Sealer | None = None, pii_fields: frozenset[int] = frozenset()
    ) -> list[Any]:
        """A msgpack-ready list; :meth:`restore` is its inverse. PII (a name, the custom fields
        whose ids are ``pii_fields``) is sealed for ``key`` by ``sealer``, or left out without
        one (:mod:`engine.pii`)."""
        attrs: list[Any] = [getattr(self, k) for k in CONTEXT_FIELDS + TRAIT_FIELDS]
        if self.name is not None:
            attrs[_NAME_AT] = sealer.seal(key, self.name) if sealer is not None else None
        custom: list[Any] | None = None
        xs, values = self.custom, self.custom_values
        if xs is not None or values is not None or self.extras is not None:
            extras = list(self.extras) if self.extras is not None else None
            if extras is not None:
                for slot in pii_fields:
                    if slot < len(extras) and extras[slot] is not None:
                        extras[slot] = sealer.seal(key, extras[slot]) if sealer is not None else None
            custom = [
                xs.tobytes() if xs is not None else None,
                values.tobytes() if values is not None else None,
                extras,
            ]
        return [
            self.counters[:_N_COUNTERS].tobytes(),
            self.features.tobytes() if self.features is not None else None,
            self.tutorials.tobytes() if self.tutorials is not None else None,
            _mask_bytes(self.viewed_steps),
            _mask_bytes(self.completed_steps),
            self.first_seen,
            self.last_seen,
            self.engagement,
            self.session_seconds,
            self.consent,
            attrs,
            _mask_bytes(self.segments),
            self.cluster,
            # Only for users with custom data: the others' snapshots stay as short as before.
            *((custom,) if custom is not None else ()),
        ]

    @classmethod
    def restore(cls, data: list[Any], key: str = "", sealer: Sealer | None = None) -> UserState:
        user = cls.__new__(cls)
        counters, features, tutorials, viewed, completed, *scalars = data[:10]
        attrs = data[10]
        user.counters = c = array("I", counters)
        if len(c) < _N_COUNTERS:  # from before custom events: a zero count for them
            c.insert(EventKind.CUSTOM, 0)
        if len(c) < _N_COUNTERS:  # from before the sums were kept: work them out
            c.extend([sum(c[:_N_KINDS]), sum(c[C_WIN : C_WIN + WINDOW_BUCKETS])])
        user.features = array("I", features) if features is not None else None
        user.tutorials = array("I", tutorials) if tutorials is not None else None
        user.viewed_steps = int.from_bytes(viewed, "little")
        user.completed_steps = int.from_bytes(completed, "little")
        user.first_seen, user.last_seen, user.engagement, user.session_seconds, user.consent = scalars
        # Snapshots from before live membership have neither: evaluated again at the next event.
        user.segments = int.from_bytes(data[11], "little") if len(data) > 11 else 0
        user.cluster = data[12] if len(data) > 12 else -1
        custom = data[13] if len(data) > 13 else None
        user.extras = None
        if custom is not None:
            xs, values, extras = custom
            if xs is not None or values is not None:
                user._set_custom(
                    array("I", xs) if xs is not None else None,
                    array("I", values) if values is not None else None,
                )
            if extras is not None:
                user.extras = tuple(
                    (sealer.unseal(key, v) if sealer is not None else None)
                    if isinstance(v, bytes)
                    else sys.intern(v)
                    if isinstance(v, str)
                    else v
                    for v in extras
                )
        for field, value in zip(CONTEXT_FIELDS + TRAIT_FIELDS, attrs, strict=False):
            setattr(
                user, field, sys.intern(value) if value is not None and field not in PII_FIELDS else value
            )
        if isinstance(user.name, bytes):  # sealed: opened with this instance's secret, or gone
            user.name = sealer.unseal(key, user.name) if sealer is not None else None
        return user


def show_depth(shows: list[tuple[int, int]], second: int) -> int:
    """How deep into the user's day an interruption at ``second`` comes: the interruptions
    shown in the day before it, up to :data:`MAX_DEPTH`.

    >>> show_depth([(1, 100), (3, 5_000), (1, 90_000)], 90_000)  # 100 is more than a day before
    1
    """
    return min(MAX_DEPTH, sum(1 for _, s in shows if second - DEPTH_WINDOW_S <= s < second))


def feature_count(features: array[int] | None, feature_id: int | None) -> int:
    """How many times a user with these feature entries used feature ``feature_id``."""
    if features is None or feature_id is None:
        return 0
    for i in range(0, len(features), _F_STRIDE):
        if features[i] == feature_id:
            return features[i + 1]
    return 0


def custom_count(custom: array[int] | None, type_id: int | None) -> int:
    """How many events of the custom type ``type_id`` a user with these entries sent."""
    if custom is None or type_id is None:
        return 0
    for i in range(0, len(custom), _X_STRIDE):
        if custom[i] == type_id:
            return custom[i + 1]
    return 0


def value_count(values: array[int] | None, key_id: int | None, value_id: int | None) -> int:
    """How many of a user's events of a ``count_by`` key had the value ``value_id``."""
    if values is None or key_id is None or value_id is None:
        return 0
    for i in range(0, len(values), _V_STRIDE):
        if values[i] == key_id and values[i + 1] == value_id:
            return values[i + 2]
    return 0


def _count_value(c: array[int], start: int, key_id: int, value_id: int, max_values: int) -> array[int] | None:
    """Count a value of a ``count_by`` key among the triples of ``c`` from ``start`` (in
    place); the new array when it takes a new entry (of the exact size)."""
    distinct = 0
    other = -1
    for i in range(start, len(c), _V_STRIDE):
        if c[i] == key_id:
            if c[i + 1] == value_id:
                c[i + 2] += 1
                return None
            distinct += 1
            if c[i + 1] == 0:
                other = i
    if distinct >= max_values:  # bounded: values past the bound count together, as "(other)"
        if other >= 0:
            c[other + 2] += 1
            return None
        value_id = 0
    return c + array("I", (key_id, value_id, 1))


def with_consent(bits: int, analytics: bool | None, personalization: bool | None) -> int:
    """Consent bits with a purpose recorded as granted or refused (None: left as it was).

    >>> consent_allows(with_consent(0, False, None), "analytics", True)
    False
    >>> consent_allows(with_consent(0, False, None), "personalization", True)  # not recorded
    True
    """
    if analytics is not None:
        bits = (bits | _ANALYTICS_SET) & ~_ANALYTICS_ON
        bits |= _ANALYTICS_ON if analytics else 0
    if personalization is not None:
        bits = (bits | _PERSONAL_SET) & ~_PERSONAL_ON
        bits |= _PERSONAL_ON if personalization else 0
    return bits


def consent_allows(bits: int, purpose: str, default: bool) -> bool:
    """Whether consent bits allow ``purpose``; ``default`` where none was recorded."""
    is_set, on = (_ANALYTICS_SET, _ANALYTICS_ON) if purpose == "analytics" else (_PERSONAL_SET, _PERSONAL_ON)
    return bool(bits & on) if bits & is_set else default


def _step_names(mask: int, vocab: Vocabulary) -> list[str]:
    """The steps of ``mask`` by name. A step's bit is its id in the partition's vocabulary,
    given in the order the partition first saw each step, from any user: listed in id order,
    one user's steps would depend on the order other users' events reached the partition (a
    replay after a fault, or another interleaving of clients). By name they depend on the
    user's steps alone.

    >>> vocab = Vocabulary()
    >>> mask = 1 << vocab.id("welcome") | 1 << vocab.id("profile")
    >>> _step_names(mask, vocab)
    ['profile', 'welcome']
    """
    return sorted(vocab.name(i) for i in range(mask.bit_length()) if mask >> i & 1)


def _mask_bytes(mask: int) -> bytes:
    return mask.to_bytes((mask.bit_length() + 7) // 8, "little")
