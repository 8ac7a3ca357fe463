"""What Headstart collects, where it keeps it, for how long and under which consent purpose.

Generated from the code's own schema: the event types and their fields are read from the
typed events (:mod:`engine.events`), the profile's fields from :class:`engine.profile.UserState`.
Every field must have an entry in :data:`EVENT_FIELDS` or :data:`PROFILE_FIELDS`;
``tests/engine/test_datamap.py`` fails when one is added without, so the map cannot drift
from the code. What a catalog declares (:mod:`engine.schema`: its event types and their
props, traits, context fields) is listed from its schema, with the description it gives.
``headstart datamap`` prints it with the instance's retention settings and catalog.

>>> rows = datamap(Retention(events_days=30))
>>> row = next(r for r in rows if r["field"] == "props.feature")
>>> row["events"], row["purpose"], "profile" in row["kept_in"]
(['feature_clicked'], 'analytics', True)
>>> from engine.schema import EventSchema, SchemaSection
>>> schema = EventSchema(SchemaSection.model_validate({"traits": {"phone": {"type": "string", "pii": True}}}))
>>> row = next(r for r in datamap(Retention(), schema=schema) if r["field"] == "props.phone")
>>> row["events"], row["purpose"], row["pii"], "redacted" in row["kept_in"]
(['profile_updated'], 'personalization', True, True)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec

from engine.events import EVENT_CLASSES, Context
from engine.profile import COUNTER_FIELDS, PII_FIELDS, UserState
from engine.schema import BUILTIN_SCHEMA, EventSchema

#: What each event field is, what it becomes in the profile (None: nothing), and its purpose.
EVENT_FIELDS: dict[str, tuple[str, str | None, str]] = {
    "event_id": ("the producer's id of the event, for deduplication", None, "analytics"),
    "user_id": (
        "the user, pseudonymized (keyed HMAC) before anything is stored",
        "the partition key",
        "analytics",
    ),
    "ts": ("when it happened", "first_seen, last_seen, sessions, windows, engagement", "analytics"),
    "v": ("schema version", None, "analytics"),
    "context.device_type": ("device type", "device_type", "personalization"),
    "context.os": ("operating system", "os", "personalization"),
    "context.locale": ("locale", "locale", "personalization"),
    "context.country": ("country", "country", "personalization"),
    "context.referrer": ("acquisition channel", "referrer", "personalization"),
    "context.app_version": ("app version", "app_version", "analytics"),
    "props.session_id": ("the client's session id", None, "analytics"),
    "props.step": ("an onboarding step", "steps viewed / completed", "analytics"),
    "props.feature": ("a product feature", "feature use counts", "analytics"),
    "props.tutorial": ("a tutorial", "tutorial starts / completions", "analytics"),
    "props.variant": ("the tutorial variant shown", "tutorial starts / completions", "analytics"),
    "props.name": ("the user's name (PII: messages only)", "name", "personalization"),
    "props.age_band": ("age band", "age_band", "personalization"),
    "props.role": ("job role", "role", "personalization"),
    "props.company_size": ("company size", "company_size", "personalization"),
    "props.analytics": ("consent to analytics", "consent", "legal record"),
    "props.personalization": ("consent to personalization", "consent", "legal record"),
    "props.index": ("a tour step's position", "tour progress (where to resume)", "personalization"),
    "props.reason": ("why a tour step was skipped", None, "analytics"),
    "props.surface": (
        "the in-app kit's surface (tour, tooltip, banner)",
        "interruptions shown (pacing), tolerance counts",
        "personalization",
    ),
    "props.id": (
        "what a surface showed (a tutorial, the welcome banner)",
        "tours dismissed",
        "personalization",
    ),
    "props.decision_id": ("the decision that showed it", None, "analytics"),
}

#: Each profile field: what it holds and its purpose.
PROFILE_FIELDS: dict[str, tuple[str, str]] = {
    "counters": ("events by type, sessions, active hours and weekdays, 5-minute window", "analytics"),
    "features": ("per feature used: uses and last use", "analytics"),
    "tutorials": (
        "per tutorial and variant: starts and completions; the in-app kit's flow state (tour "
        "progress, dismissals, interruptions shown in the last two days, accepted and declined by depth)",
        "analytics",
    ),
    "viewed_steps": ("onboarding steps viewed", "analytics"),
    "completed_steps": ("onboarding steps completed", "analytics"),
    "first_seen": ("first event time", "analytics"),
    "last_seen": ("latest event time", "analytics"),
    "engagement": ("time-decayed engagement score", "analytics"),
    "session_seconds": ("time spent in sessions", "analytics"),
    "consent": ("consent per purpose, as recorded", "legal record"),
    "segments": ("live segment membership", "personalization"),
    "cluster": ("behavioural cluster", "personalization"),
    "custom": ("per custom event type (catalog schema): count, first and last time", "analytics"),
    "custom_values": ("per count_by prop of a custom type: counts per value (bounded)", "analytics"),
    "extras": (
        "the custom traits and context fields the catalog declares (see their rows)",
        "personalization",
    ),
    "device_type": ("latest device type", "personalization"),
    "os": ("latest operating system", "personalization"),
    "locale": ("latest locale", "personalization"),
    "country": ("latest country", "personalization"),
    "referrer": ("first-touch acquisition channel, as last reported", "personalization"),
    "app_version": ("latest app version", "analytics"),
    "name": ("name, for messages (PII)", "personalization"),
    "age_band": ("age band", "personalization"),
    "role": ("job role", "personalization"),
    "company_size": ("company size", "personalization"),
}


def event_fields() -> dict[str, list[str]]:
    """Every field an event can carry (``context.x``, ``props.x``), with the types carrying it."""
    out: dict[str, list[str]] = {}
    for name, cls in EVENT_CLASSES.items():
        for field in msgspec.structs.fields(cls):
            if field.name == "context":
                paths = [f"context.{f.name}" for f in msgspec.structs.fields(Context)]
            elif field.name == "props":
                props_type = field.type
                paths = [f"props.{f.name}" for f in msgspec.structs.fields(props_type)]
            else:
                paths = [field.name]
            for path in paths:
                out.setdefault(path, []).append(name)
    return out


def _kind(spec: Any) -> str:
    values = f": {', '.join(spec.values)}" if getattr(spec, "values", None) else ""
    return f"{spec.type}{values}"


def _row(
    field: str, events: list[str], meaning: str, kept: list[str], purpose: str, pii: bool
) -> dict[str, Any]:
    return {
        "field": field,
        "events": events,
        "meaning": meaning,
        "kept_in": "; ".join(kept),
        "purpose": purpose,
        "pii": pii,
    }


def _declared_rows(
    schema: EventSchema, stream: str, state: str, retention: Retention
) -> list[dict[str, Any]]:
    """The rows of what the catalog's schema declares: each custom type and its props, each
    trait (a prop of ``profile_updated`` and a profile field), each context field."""
    letters = f"dead letters HS_DLQ ({retention.dead_letters_days:g} days) if the event is invalid"
    sealed = "; sealed (AES-GCM, the instance's key) in snapshots, dropped when personalization is withdrawn"
    rows: list[dict[str, Any]] = []
    for name, spec in schema.section.events.items():
        meaning = spec.description or f"the product's own event {name!r} (catalog schema)"
        kept = [stream, letters, "profile: custom (count, first and last time)"]
        rows.append(_row("type", [name], meaning, kept, "analytics", False))
        for prop, prop_spec in spec.props.items():
            meaning = prop_spec.description or f"a prop of {name} ({_kind(prop_spec)})"
            kept = [stream, letters]
            if prop_spec.count_by:
                kept.append(f"profile: custom_values (counts per value, at most {prop_spec.max_values})")
            rows.append(_row(f"props.{prop}", [name], meaning, kept, "analytics", False))
    for name, trait in schema.section.traits.items():
        meaning = trait.description or f"a trait the catalog declares ({_kind(trait)})"
        kept = [stream, letters + (", redacted" if trait.pii else ""), f"profile: {name} (traits)"]
        rows.append(_row(f"props.{name}", ["profile_updated"], meaning, kept, "personalization", trait.pii))
        kept = [state + (sealed if trait.pii else "")]
        rows.append(_row(f"profile.{name}", [], meaning, kept, "personalization", trait.pii))
    every_type = sorted(schema.event_types)
    for name, field in schema.section.context.items():
        meaning = field.description or f"a context field the catalog declares ({_kind(field)})"
        kept = [stream, letters, f"profile: {name} (context)"]
        rows.append(_row(f"context.{name}", every_type, meaning, kept, "personalization", False))
        rows.append(_row(f"profile.{name}", [], meaning, [state], "personalization", False))
    return rows


@dataclass(frozen=True)
class Retention:
    """How long each store keeps what it holds, in days (JetStream ``max_age`` for the streams).

    >>> Retention(events_days=7).seconds("events_days")
    604800.0
    """

    #: Raw events in HS_EVENTS (and the learning loop's records in their partitions).
    events_days: float = 30.0
    #: The decisions and rewards logs (HS_DECISIONS, HS_REWARDS): what evaluation replays.
    decisions_days: float = 90.0
    #: HS_SEGMENTS: a delivery buffer for webhooks and subscribers, not a store, so short.
    segment_changes_days: float = 1.0
    #: HS_DLQ: long enough for someone to look after a holiday.
    dead_letters_days: float = 30.0
    #: HS_AUDIT: the legal record of erasures, exports, consent changes and admin actions.
    audit_days: float = 365.0
    #: A profile inactive this long, by its partition's event time, is deleted.
    profiles_days: float = 365.0

    def seconds(self, field: str) -> float:
        return float(getattr(self, field)) * 86400


def profile_fields() -> list[str]:
    # Custom events and counts by value sit in the counters array, read as two fields.
    return [slot for slot in UserState.__slots__ if slot != "__weakref__"] + list(COUNTER_FIELDS)


def datamap(
    retention: Retention, checkpoint_interval_s: float = 30.0, schema: EventSchema = BUILTIN_SCHEMA
) -> list[dict[str, Any]]:
    """One row per field: which events carry it or the profile holds it, where it is kept, how
    long, and under which purpose; the fields ``schema`` (the catalog's) declares too. Raises
    ``KeyError`` for a built-in field missing from the map."""
    stream = f"events stream HS_EVENTS ({retention.events_days:g} days)"
    state = "profile (shard memory; snapshots in HS_SNAPSHOTS, the latest per partition, rewritten every "
    state += f"{checkpoint_interval_s:g} s) until erased, analytics consent is withdrawn, or "
    state += f"{retention.profiles_days:g} days without activity"
    rows = []
    for path, events in sorted(event_fields().items()):
        meaning, becomes, purpose = EVENT_FIELDS[path]
        pii = path.split(".")[-1] in PII_FIELDS
        letters = f"dead letters HS_DLQ ({retention.dead_letters_days:g} days) if the event is invalid"
        kept = [stream, letters + (", redacted" if pii else "")]
        if becomes is not None:
            kept.append(f"profile: {becomes}")
        rows.append(
            {
                "field": path,
                "events": sorted(events),
                "meaning": meaning,
                "kept_in": "; ".join(kept),
                "purpose": purpose,
                "pii": pii,
            }
        )
    rows += _declared_rows(schema, stream, state, retention)
    for slot in profile_fields():
        meaning, purpose = PROFILE_FIELDS[slot]
        rows.append(
            {
                "field": f"profile.{slot}",
                "events": [],
                "meaning": meaning,
                "kept_in": state
                + ("; sealed (AES-GCM, the instance's key) in snapshots" if slot in PII_FIELDS else ""),
                "purpose": purpose,
                "pii": slot in PII_FIELDS,
            }
        )
    records = (
        (
            "decision and reward records",
            "each learned choice: context vector, arms, propensity; rewards",
            f"HS_DECISIONS, HS_REWARDS ({retention.decisions_days:g} days) and the user's partition of "
            f"HS_EVENTS ({retention.events_days:g} days)",
            "personalization",
        ),
        (
            "experiment exposures",
            "pseudonymized key, experiment, arm, time, engagement score at exposure; then its outcomes",
            f"HS_EXPOSURES ({retention.decisions_days:g} days), the user's partition of HS_EVENTS "
            f"({retention.events_days:g} days), and partition snapshots until erased",
            "personalization",
        ),
        (
            "Segment API aliases",
            "an anonymous id's key linked to its user's key (Segment identify/alias calls)",
            f"HS_ALIASES key-value bucket ({retention.events_days:g} days; removed by erasure)",
            "personalization",
        ),
        (
            "segment changes",
            "pseudonymized key entering or leaving a segment",
            f"HS_SEGMENTS ({retention.segment_changes_days:g} days; an erasure leaves published batches "
            "to expire); webhooks if configured",
            "personalization",
        ),
        (
            "audit records",
            "erasures, exports, consent changes, rescales, catalog versions, API key changes: who, "
            "what, when, pseudonymized key (API keys by id, never the key)",
            f"HS_AUDIT ({retention.audit_days:g} days)",
            "legal record",
        ),
    )
    for field, meaning, kept_in, purpose in records:
        rows.append(
            {
                "field": field,
                "events": [],
                "meaning": meaning,
                "kept_in": kept_in,
                "purpose": purpose,
                "pii": False,
            }
        )
    return rows
