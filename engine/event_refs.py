"""Events the catalog names: a step's ``completed_by``, an experiment's metric and guardrails,
the journey reward's ``learning.journey.event``.

Each names an event type, built in or declared in the catalog's ``schema:`` section, and for a
declared type optionally ``props`` that the event must have (every listed prop equal). One
place says what such a reference may name (:func:`reference_problems`, for ``check-config``),
whether an event matches it (:func:`props_match`) and whether a user's live state shows one
(:func:`seen`, which can answer only for props counted per value: ``count_by: true``).

>>> from engine.schema import EventSchema, SchemaSection
>>> section = SchemaSection.model_validate({"events": {"connected_integration": {"props": {
...     "integration": {"type": "string", "values": ["slack", "github"], "count_by": True}}}}})
>>> reference_problems(section, "connected_integration", {"integration": "slak"}, builtin=())
[('props.integration', "'slak' is not one of the declared values (slack, github)")]
>>> event = EventSchema(section).from_object({"event_id": "e1", "user_id": "k", "ts": 1,
...     "type": "connected_integration", "props": {"integration": "slack"}})
>>> props_match(event, {"integration": "slack"}), props_match(event, {"integration": "github"})
(True, False)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Annotated, Any

from pydantic import Field

from engine.events import EVENT_CLASSES, Event
from engine.profile import UserState, Vocabularies
from engine.schema import FieldName, SchemaSection

#: A prop's value in a reference: a string, a number or a boolean, as the prop is declared.
PropValue = str | bool | float
#: The props a reference matches: each must equal the event's (YAML ``{integration: slack}``).
PropMatches = Annotated[dict[FieldName, PropValue], Field(max_length=16)]

_TYPE_NAMES = {str: "string", bool: "boolean", float: "number", int: "number"}


def reference_problems(
    section: SchemaSection,
    event_type: str,
    props: Mapping[str, PropValue],
    builtin: Iterable[str],
    counted: bool = False,
    type_field: str = "type",
) -> list[tuple[str, str]]:
    """(path below the reference, why) for each problem of a reference to ``event_type`` with
    ``props``: a type neither in ``builtin`` (the built-in types this reference accepts) nor
    declared (the path is ``type_field``), props on a built-in type, an undeclared prop, a
    value of the wrong type or outside the prop's declared ``values``; with ``counted``, a prop
    the live state does not count per value (the reference is answered from live state, not
    from one event)."""
    builtin = tuple(builtin)
    declared = section.events
    if event_type in builtin:
        return [("props", "props apply to declared event types only")] if props else []
    if event_type not in declared:
        listed = f"declared: {', '.join(sorted(declared)) or 'none'}; built in: {', '.join(builtin)}"
        if event_type in EVENT_CLASSES:
            return [(type_field, f"{event_type!r} cannot be used here ({listed})")]
        return [(type_field, f"unknown event type {event_type!r} ({listed})")]
    problems: list[tuple[str, str]] = []
    spec = declared[event_type]
    for prop, value in props.items():
        where = f"props.{prop}"
        prop_spec = spec.props.get(prop)
        if prop_spec is None:
            known = ", ".join(sorted(spec.props)) or "none"
            problems.append((where, f"{event_type!r} has no prop {prop!r} (declared: {known})"))
            continue
        given = _TYPE_NAMES.get(type(value), type(value).__name__)
        if given != prop_spec.type:
            problems.append((where, f"{prop!r} is a {prop_spec.type}; {value!r} is a {given}"))
        elif prop_spec.values is not None and value not in prop_spec.values:
            problems.append(
                (where, f"{value!r} is not one of the declared values ({', '.join(prop_spec.values)})")
            )
        elif counted and not prop_spec.count_by:
            problems.append(
                (
                    where,
                    f"{prop!r} is not counted per value: declare it with 'count_by: true' "
                    "(live state keeps only the values of count_by props)",
                )
            )
    return problems


def props_match(event: Event, props: Mapping[str, PropValue]) -> bool:
    """Whether every one of ``props`` equals the event's prop of that name."""
    have = getattr(event, "props", None)
    return all(getattr(have, name, None) == value for name, value in props.items())


def seen(user: UserState, vocab: Vocabularies, event_type: str, props: Mapping[str, Any]) -> bool:
    """Whether ``user`` sent an event of the declared ``event_type`` with each of ``props``
    (``count_by`` props: each value counted, in the same event or not)."""
    if user.custom_count(vocab.custom_types.find(event_type)) == 0:
        return False
    keys, values = vocab.custom_keys, vocab.custom_values
    for prop, value in props.items():
        value_id = values.find(value) if isinstance(value, str) else None
        if not value_id or user.value_count(keys.find(f"{event_type}.{prop}"), value_id) == 0:
            return False
    return True
