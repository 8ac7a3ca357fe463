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
from typing import Annotated, Any, ClassVar

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

    @property
    def wire_name(self) -> str:
        return self.name.lower()


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
    try:
        event = _decoder.decode(data)
    except msgspec.ValidationError as exc:
        raise InvalidEvent(_reason_of(str(exc)), str(exc)) from None
    except msgspec.DecodeError as exc:
        raise InvalidEvent("malformed", str(exc)) from None
    return _check(event)


def event_from_object(obj: Any, strict: bool = False) -> Event:
    """Validate an already-parsed mapping (e.g. one JSON event of an HTTP batch). ``strict``:
    no lax conversions (a number or boolean given as a string, a boolean as 0 or 1)."""
    try:
        event = msgspec.convert(obj, AnyEvent, strict=strict)
    except msgspec.ValidationError as exc:
        raise InvalidEvent(_reason_of(str(exc)), str(exc)) from None
    return _check(event)


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
