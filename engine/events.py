"""The typed event model and its msgpack wire format.

Events are msgpack maps with ``event_id``, ``user_id``, ``type``, ``ts`` (UTC epoch seconds)
and optional ``v``, ``props`` and ``context``. They are decoded and validated exactly once, at
the edge, straight into typed structs: msgspec does both in C, which matters because decoding
is on the hottest path of the engine.

>>> raw = encode_event({"event_id": "e1", "user_id": "u1", "type": "feature_clicked",
...                     "ts": 1_700_000_000, "props": {"feature": "export"}})
>>> event = decode_event(raw)
>>> event.kind is EventKind.FEATURE_CLICKED, event.props.feature, event.ts
(True, 'export', 1700000000.0)
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from typing import Annotated, Any, ClassVar, Literal

import msgspec
from msgspec import Meta

from engine.errors import InvalidEvent

#: The only schema version this build understands; older or newer versions are dead-lettered
#: rather than guessed at.
SUPPORTED_VERSIONS = frozenset({1})

# Bounds that keep one hostile or buggy producer from bloating state: names are ids, not prose.
Name = Annotated[str, Meta(min_length=1, max_length=128)]
ShortText = Annotated[str, Meta(max_length=256)]
# 1e11 s is the year 5138: anything beyond is a unit mistake (milliseconds), not a timestamp.
Timestamp = Annotated[float, Meta(ge=0, lt=1e11)]


class EventKind(enum.IntEnum):
    """Every event type the engine understands, numbered for compact per-type counters."""

    SESSION_STARTED = 0
    ONBOARDING_STARTED = 1
    ONBOARDING_COMPLETED = 2
    STEP_VIEWED = 3
    STEP_COMPLETED = 4
    FEATURE_CLICKED = 5
    TUTORIAL_STARTED = 6
    TUTORIAL_COMPLETED = 7
    PROFILE_UPDATED = 8
    CONSENT_UPDATED = 9
    #: Any of the product's own types declared in the catalog's ``schema:`` section
    #: (:mod:`engine.schema`); counted per declared type beside this total.
    CUSTOM = 10
    #: The in-app kit's flow events (issue 22): tour progress and interruptions shown or
    #: dismissed. A user's flow state counts these (:mod:`engine.profile`), not the per-kind
    #: counters every user carries: most users never send one.
    TOUR_STEP_VIEWED = 11
    TOUR_STEP_SKIPPED = 12
    SURFACE_SHOWN = 13
    SURFACE_DISMISSED = 14

    @property
    def wire_name(self) -> str:
        return self.name.lower()


#: The built-in types, by wire name (a declared type may not shadow one).
BUILTIN_KINDS: tuple[EventKind, ...] = tuple(k for k in EventKind if k is not EventKind.CUSTOM)
#: The flow events of the in-app kit, counted in a user's flow state.
FLOW_KINDS: tuple[EventKind, ...] = tuple(k for k in EventKind if k > EventKind.CUSTOM)
#: The types with a counter of their own in every user's state (the built-in ones before the
#: flow events, and all custom events together).
COUNTED_KINDS: tuple[EventKind, ...] = tuple(k for k in EventKind if k <= EventKind.CUSTOM)
#: Built-in types counted per type in every user's state (rules' ``event_count`` reads them).
COUNTED_BUILTIN_KINDS: tuple[EventKind, ...] = tuple(k for k in BUILTIN_KINDS if k in COUNTED_KINDS)


class Context(msgspec.Struct, omit_defaults=True, forbid_unknown_fields=False):
    """Where the event happened: device, locale, acquisition. Unknown keys are ignored."""

    device_type: ShortText | None = None
    os: ShortText | None = None
    locale: ShortText | None = None
    country: ShortText | None = None
    referrer: ShortText | None = None
    app_version: ShortText | None = None


#: The context's fields, in order: user state, rules, exports and the client's flag requests
#: share them (here, not in :mod:`engine.profile`, so the client imports no server code).
CONTEXT_FIELDS: tuple[str, ...] = Context.__struct_fields__
#: Context a request may give that no profile keeps: the user's IANA time zone, for pacing's
#: quiet hours and per-day caps (``Europe/Berlin``; the browser's, sent by the JS SDK).
REQUEST_CONTEXT_FIELDS: tuple[str, ...] = ("timezone",)


class NoProps(msgspec.Struct, frozen=True, omit_defaults=True):
    """Props of event types that carry none of their own."""


class SessionProps(msgspec.Struct, frozen=True, omit_defaults=True):
    session_id: ShortText | None = None


class StepProps(msgspec.Struct):
    step: Name


class FeatureProps(msgspec.Struct):
    feature: Name


class TutorialProps(msgspec.Struct):
    tutorial: Name
    variant: Name


#: The surfaces of the in-app kit that interrupt a user.
Surface = Literal["tour", "tooltip", "banner"]
#: A tour step's position (0-based).
StepIndex = Annotated[int, Meta(ge=0, lt=1000)]
#: The ``decision_id`` of the ``/v1/decide`` answer that showed what the event is about: the
#: learning loop credits that decision (a dismissal 0).
DecisionRef = Annotated[str, Meta(min_length=1, max_length=64)]


class TourStepProps(msgspec.Struct, omit_defaults=True):
    tutorial: Name
    variant: Name
    index: StepIndex
    decision_id: DecisionRef | None = None


class TourSkipProps(msgspec.Struct, omit_defaults=True):
    tutorial: Name
    variant: Name
    index: StepIndex
    #: Why the step was skipped (``timeout``: its target never appeared).
    reason: ShortText = ""
    decision_id: DecisionRef | None = None


class SurfaceProps(msgspec.Struct, omit_defaults=True):
    surface: Surface
    #: What was shown: the tutorial's id for a tour or tooltip, ``welcome`` for the banner.
    id: Name
    decision_id: DecisionRef | None = None


class DismissProps(msgspec.Struct, omit_defaults=True):
    surface: Surface
    id: Name
    #: The tour step open when the user closed it.
    index: StepIndex | None = None
    decision_id: DecisionRef | None = None


class ProfileTraits(msgspec.Struct, frozen=True, omit_defaults=True):
    """Profile traits Headstart keeps. Others are ignored: state holds only what it uses."""

    name: ShortText | None = None
    age_band: ShortText | None = None
    role: ShortText | None = None
    company_size: ShortText | None = None


class ConsentProps(msgspec.Struct, omit_defaults=True):
    analytics: bool | None = None
    personalization: bool | None = None


class Event(msgspec.Struct, tag_field="type", kw_only=True, omit_defaults=True):
    """Fields common to every event. Concrete types below add typed ``props``."""

    kind: ClassVar[EventKind]
    event_id: Name
    user_id: Name
    ts: Timestamp
    v: int = 1
    context: Context | None = None

    @property
    def type_name(self) -> str:
        """The event's type as on the wire (``feature_clicked``, ``created_board``)."""
        return self.__struct_config__.tag  # type: ignore[return-value]


class CustomEvent(Event, kw_only=True):
    """An event of a type the catalog declares: :mod:`engine.schema` builds one subclass per
    declared type, tagged with its name, with its typed ``props``."""

    kind = EventKind.CUSTOM


class SessionStarted(Event, tag="session_started"):
    kind = EventKind.SESSION_STARTED
    props: SessionProps = SessionProps()


class OnboardingStarted(Event, tag="onboarding_started"):
    kind = EventKind.ONBOARDING_STARTED
    props: NoProps = NoProps()


class OnboardingCompleted(Event, tag="onboarding_completed"):
    kind = EventKind.ONBOARDING_COMPLETED
    props: NoProps = NoProps()


class StepViewed(Event, tag="step_viewed"):
    kind = EventKind.STEP_VIEWED
    props: StepProps


class StepCompleted(Event, tag="step_completed"):
    kind = EventKind.STEP_COMPLETED
    props: StepProps


class FeatureClicked(Event, tag="feature_clicked"):
    kind = EventKind.FEATURE_CLICKED
    props: FeatureProps


class TutorialStarted(Event, tag="tutorial_started"):
    kind = EventKind.TUTORIAL_STARTED
    props: TutorialProps


class TutorialCompleted(Event, tag="tutorial_completed"):
    kind = EventKind.TUTORIAL_COMPLETED
    props: TutorialProps


class ProfileUpdated(Event, tag="profile_updated"):
    kind = EventKind.PROFILE_UPDATED
    props: ProfileTraits = ProfileTraits()


class ConsentUpdated(Event, tag="consent_updated"):
    kind = EventKind.CONSENT_UPDATED
    props: ConsentProps


class TourStepViewed(Event, tag="tour_step_viewed"):
    """The in-app kit showed step ``index`` of a tutorial variant's tour."""

    kind = EventKind.TOUR_STEP_VIEWED
    props: TourStepProps


class TourStepSkipped(Event, tag="tour_step_skipped"):
    """A tour step was skipped (its target never appeared...): the tour goes on after it."""

    kind = EventKind.TOUR_STEP_SKIPPED
    props: TourSkipProps


class SurfaceShown(Event, tag="surface_shown"):
    """An interruption was shown (pacing counts these)."""

    kind = EventKind.SURFACE_SHOWN
    props: SurfaceProps


class SurfaceDismissed(Event, tag="surface_dismissed"):
    """The user closed an interruption before finishing it (Esc, the close button)."""

    kind = EventKind.SURFACE_DISMISSED
    props: DismissProps


AnyEvent = (
    SessionStarted
    | OnboardingStarted
    | OnboardingCompleted
    | StepViewed
    | StepCompleted
    | FeatureClicked
    | TutorialStarted
    | TutorialCompleted
    | ProfileUpdated
    | ConsentUpdated
    | TourStepViewed
    | TourStepSkipped
    | SurfaceShown
    | SurfaceDismissed
)

EVENT_CLASSES: dict[str, type[Event]] = {
    cls.__struct_config__.tag: cls  # type: ignore[misc]
    for cls in AnyEvent.__args__  # type: ignore[attr-defined]
}

_decoder = msgspec.msgpack.Decoder(AnyEvent)
_encoder = msgspec.msgpack.Encoder()
_json_decoder = msgspec.json.Decoder(AnyEvent)


def _check(event: Event) -> Event:
    if event.v not in SUPPORTED_VERSIONS:
        raise InvalidEvent("unsupported_version", f"schema version {event.v} is not supported")
    return event


def decode_event(data: bytes) -> Event:
    """Decode and validate one msgpack-encoded event; raise :class:`InvalidEvent` if bad."""
    return decode_with(_decoder, data, EVENT_CLASSES)


def event_from_object(obj: Any, strict: bool = False) -> Event:
    """Validate an already-parsed mapping (e.g. one JSON event of an HTTP batch). ``strict``:
    no lax conversions (a number or boolean given as a string, a boolean as 0 or 1)."""
    return convert_with(AnyEvent, obj, strict, EVENT_CLASSES)


def decode_with(decoder: msgspec.msgpack.Decoder[Any], data: bytes, known: Iterable[str]) -> Event:
    """Decode with ``decoder`` (of a union of event types, ``known`` by name), as
    :func:`decode_event` does: :mod:`engine.schema` passes the catalog's own union."""
    try:
        event: Event = decoder.decode(data)
    except msgspec.ValidationError as exc:
        raise _invalid(str(exc), known) from None
    except msgspec.DecodeError as exc:
        raise InvalidEvent("malformed", str(exc)) from None
    return _check(event)


def convert_with(union: Any, obj: Any, strict: bool, known: Iterable[str]) -> Event:
    """Validate a parsed mapping against ``union``, as :func:`event_from_object` does."""
    try:
        event: Event = msgspec.convert(obj, union, strict=strict)
    except msgspec.ValidationError as exc:
        raise _invalid(str(exc), known) from None
    return _check(event)


def _invalid(message: str, known: Iterable[str]) -> InvalidEvent:
    reason = _reason_of(message)
    if reason == "unknown_type":
        # The caller's fix is one of these names: say them (a typo is the usual cause).
        message = f"{unknown_type_message(known)}: {message}"
    return InvalidEvent(reason, message)


def unknown_type_message(known: Iterable[str]) -> str:
    return f"unknown event type (declared types: {', '.join(sorted(known))})"


def encode_event(obj: Event | dict[str, Any]) -> bytes:
    """Encode an event (typed or a plain mapping) to the msgpack wire format."""
    return _encoder.encode(obj)


def _reason_of(message: str) -> str:
    # msgspec reports an unknown tag as "Invalid value 'x' - at `$.type`"; name it plainly
    # so dead-letter readers can group by reason.
    if "$.type" in message:
        return "unknown_type"
    if " - at `" not in message and "missing required field" not in message:
        return "malformed"  # the top level is not a map at all
    if "missing required field" in message:
        return "missing_field"
    return "invalid_field"
