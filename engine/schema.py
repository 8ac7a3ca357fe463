"""A product's own vocabulary: the catalog's ``schema:`` section and the event decoder it makes.

A team declares its own event types (typed props), traits (sent in ``profile_updated`` like
``role``) and context fields; :class:`EventSchema` compiles the declaration into msgspec
structs, one per declared type, so that a custom event is decoded and validated once, at the
edge, in C, exactly like a built-in one. Built-in types, traits and context fields are always
there; a declared name may not shadow one.

>>> section = SchemaSection.model_validate({
...     "events": {"created_board": {"props": {"template": {"type": "string",
...                                                        "values": ["kanban", "blank"]}}}},
...     "traits": {"plan": {"type": "string", "values": ["free", "pro"]}},
... })
>>> schema = EventSchema(section)
>>> event = schema.from_object({"event_id": "e1", "user_id": "k", "type": "created_board",
...                             "ts": 1, "props": {"template": "kanban"}})
>>> event.type_name, event.props.template, event.kind.name
('created_board', 'kanban', 'CUSTOM')
>>> schema.from_object({"event_id": "e2", "user_id": "k", "type": "profile_updated",
...                     "ts": 1, "props": {"plan": "pro", "role": "pm"}}).props.plan
'pro'
>>> schema.from_object({"event_id": "e3", "user_id": "k", "type": "created_bord", "ts": 1})
Traceback (most recent call last):
engine.errors.InvalidEvent: unknown_type: unknown event type (declared types: consent_updated, ...
"""

from __future__ import annotations

import hashlib
import json
import keyword
from functools import cached_property
from typing import Annotated, Any, Literal, Union

import msgspec
from pydantic import BaseModel, ConfigDict, Field, model_validator

from engine.batches import batch_decoder, decode_batch
from engine.errors import InvalidEvent
from engine.events import (
    CONTEXT_FIELDS,
    EVENT_CLASSES,
    REQUEST_CONTEXT_FIELDS,
    AnyEvent,
    Context,
    CustomEvent,
    Event,
    ProfileTraits,
    ProfileUpdated,
    convert_with,
    decode_event,
    decode_with,
    event_from_object,
)

#: A declared name: rules read traits and context fields by their bare name, so names are
#: identifiers (lower case, digits, underscores).
FieldName = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[a-z][a-z0-9_]*$")]
FieldType = Literal["string", "number", "boolean"]

#: Built-in trait names (props of ``profile_updated``).
BUILTIN_TRAITS: tuple[str, ...] = ProfileTraits.__struct_fields__
#: Names no declared field may take: the event envelope's own keys and words a rule cannot
#: use as a bare name.
RESERVED = frozenset(
    {
        "type",
        "props",
        "context",
        "event_id",
        "user_id",
        "user_key",
        "ts",
        "v",
        "true",
        "false",
        "none",
        "null",
    }
    | {k.lower() for k in keyword.kwlist}
)
#: Values a ``count_by`` prop may take per user before further values count as "(other)".
MAX_COUNT_BY_VALUES = 256


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Typed(_Model):
    type: FieldType
    #: Strings only: the values allowed (anything else is refused at the edge).
    values: list[Annotated[str, Field(min_length=1, max_length=256)]] | None = Field(
        None, min_length=1, max_length=1000
    )
    #: Strings only: the longest value accepted.
    max_length: int = Field(256, ge=1, le=4096)
    description: str = Field("", max_length=500)

    @model_validator(mode="after")
    def _values_for_strings(self) -> _Typed:
        if self.values is not None and self.type != "string":
            raise ValueError("'values' applies to strings only")
        if self.values is not None and len(set(self.values)) != len(self.values):
            raise ValueError("'values' lists a value twice")
        return self


class PropSpec(_Typed):
    """One prop of a custom event type."""

    required: bool = False
    #: Keep per-user counts per value of this prop (``event_count("t", prop="value")``).
    count_by: bool = False
    #: With ``count_by``: distinct values counted per user; further ones count as "(other)".
    max_values: int = Field(20, ge=1, le=MAX_COUNT_BY_VALUES)

    @model_validator(mode="after")
    def _count_strings(self) -> PropSpec:
        if self.count_by and self.type != "string":
            raise ValueError("'count_by' applies to string props only")
        return self


class EventSpec(_Model):
    """A custom event type: what it means and its props."""

    description: str = Field("", max_length=500)
    props: dict[FieldName, PropSpec] = Field(default_factory=dict)


class TraitSpec(_Typed):
    """A custom trait: sent as a prop of ``profile_updated``, kept on the profile."""

    #: Identifies a person (a phone number): sealed in snapshots, never logged, erased with
    #: the user, like ``name``.
    pii: bool = False


class ContextSpec(_Typed):
    """A custom context field, sent in an event's or a request's ``context``."""


class SchemaSection(_Model):
    """The catalog's ``schema:`` section (docs/catalog.md, "Custom schema")."""

    events: dict[FieldName, EventSpec] = Field(default_factory=dict)
    traits: dict[FieldName, TraitSpec] = Field(default_factory=dict)
    context: dict[FieldName, ContextSpec] = Field(default_factory=dict)

    def clashes(self) -> list[tuple[str, str]]:
        """(field path, why) for every declared name that shadows a built-in, a reserved word
        or another declared field (a trait and a context field are read by the same bare name)."""
        problems: list[tuple[str, str]] = []
        for name in self.events:
            if name in EVENT_CLASSES:
                problems.append((f"schema.events.{name}", f"{name!r} is a built-in event type"))
            elif name in RESERVED:
                problems.append((f"schema.events.{name}", f"{name!r} is a reserved word"))
        for section, names in (("traits", self.traits), ("context", self.context)):
            for name in names:
                where = f"schema.{section}.{name}"
                if name in BUILTIN_TRAITS or name in CONTEXT_FIELDS or name in REQUEST_CONTEXT_FIELDS:
                    problems.append((where, f"{name!r} is a built-in trait or context field"))
                elif name in RESERVED:
                    problems.append((where, f"{name!r} is a reserved word"))
                elif section == "context" and name in self.traits:
                    problems.append(
                        (where, f"{name!r} is declared as a trait too (one bare name, one field)")
                    )
        return problems


def _python_type(spec: _Typed, required: bool = False) -> Any:
    if spec.type == "number":
        base: Any = float
    elif spec.type == "boolean":
        base = bool
    elif spec.values is not None:
        base = Literal[tuple(spec.values)]
    else:
        base = Annotated[str, msgspec.Meta(max_length=spec.max_length)]
    return base if required else base | None


def _fields(specs: dict[str, Any]) -> list[Any]:
    # Required props first: msgspec wants fields without a default before those with one.
    out: list[Any] = []
    for name, spec in specs.items():
        if isinstance(spec, PropSpec) and spec.required:
            out.insert(0, (name, _python_type(spec, required=True)))
        else:
            out.append((name, _python_type(spec), None))
    return out


class EventSchema:
    """The built-in event model plus what a catalog's ``schema:`` declares, compiled: decode
    and validate events (:meth:`decode`, :meth:`from_object`) and say what is declared."""

    def __init__(self, section: SchemaSection | None = None) -> None:
        self.section = section = section or SchemaSection()
        #: Declared event types, traits and context fields, in declaration order.
        self.custom_types: tuple[str, ...] = tuple(section.events)
        self.traits: tuple[str, ...] = tuple(section.traits)
        self.context: tuple[str, ...] = tuple(section.context)
        #: Traits that identify a person (sealed, erased, never logged).
        self.pii_traits = frozenset(n for n, t in section.traits.items() if t.pii)
        #: Per custom type, its ``count_by`` props and how many values each keeps per user.
        self.count_by: dict[str, tuple[tuple[str, int], ...]] = {
            name: tuple((p, s.max_values) for p, s in spec.props.items() if s.count_by)
            for name, spec in section.events.items()
        }
        self.count_by = {name: props for name, props in self.count_by.items() if props}
        #: The context struct events decode into: the built-in fields and the declared ones.
        self.context_type: type[Context] = Context
        if not (section.events or section.traits or section.context):
            self.classes: dict[str, type[Event]] = dict(EVENT_CLASSES)
            self._union: Any = AnyEvent
            self._decoder: msgspec.msgpack.Decoder[Any] | None = None
            self._batch_decoder = batch_decoder(AnyEvent)
            return
        context_type: type[Context] = Context
        if section.context:
            context_type = msgspec.defstruct(  # type: ignore[assignment]
                "Context",
                _fields(dict(section.context)),
                bases=(Context,),
                omit_defaults=True,
                forbid_unknown_fields=False,
                module=__name__,
            )
            self.context_type = context_type
        classes: dict[str, type[Event]] = {}
        for tag, builtin in EVENT_CLASSES.items():
            extra: list[Any] = []
            cls = builtin
            if builtin is ProfileUpdated and section.traits:
                traits = msgspec.defstruct(
                    "ProfileTraits",
                    _fields(dict(section.traits)),
                    bases=(ProfileTraits,),
                    frozen=True,
                    omit_defaults=True,
                    module=__name__,
                )
                extra.append(("props", traits, traits()))
            if context_type is not Context:
                extra.append(("context", context_type | None, None))
            if extra:
                cls = msgspec.defstruct(  # type: ignore[assignment]
                    cls.__name__, extra, bases=(cls,), tag=tag, kw_only=True, module=__name__
                )
            classes[tag] = cls
        for tag, spec in section.events.items():
            props = msgspec.defstruct(
                f"{tag}_props", _fields(dict(spec.props)), omit_defaults=True, module=__name__
            )
            required = any(p.required for p in spec.props.values())
            fields: list[Any] = [
                ("props", props) if required else ("props", props, msgspec.field(default_factory=props))
            ]
            if context_type is not Context:
                fields.append(("context", context_type | None, None))
            classes[tag] = msgspec.defstruct(  # type: ignore[assignment]
                tag, fields, bases=(CustomEvent,), tag=tag, kw_only=True, module=__name__
            )
        self.classes = classes
        self._union = Union[tuple(classes.values())]  # noqa: UP007 - built from a runtime tuple
        self._decoder = msgspec.msgpack.Decoder(self._union)
        self._batch_decoder = batch_decoder(self._union)

    @property
    def is_builtin(self) -> bool:
        """Whether nothing is declared (events decode with the built-in model alone)."""
        return self._decoder is None

    @property
    def event_types(self) -> tuple[str, ...]:
        """Every type accepted: built-in and declared."""
        return tuple(self.classes)

    def decode(self, data: bytes) -> Event:
        """Decode and validate one msgpack event; :class:`~engine.errors.InvalidEvent` if bad."""
        if self._decoder is None:
            return decode_event(data)
        return decode_with(self._decoder, data, self.classes)

    def decode_batch(self, data: bytes) -> list[Event | InvalidEvent]:
        """The events of a batched message (:mod:`engine.batches`), in order, each invalid item
        as the :class:`~engine.errors.InvalidEvent` saying why; raises it for a message that is
        not an array at all."""
        return decode_batch(data, self._batch_decoder, self.decode)

    def from_object(self, obj: Any, strict: bool = False) -> Event:
        """Validate a parsed mapping (one JSON event), as :func:`engine.events.event_from_object`."""
        if self._decoder is None:
            return event_from_object(obj, strict)
        return convert_with(self._union, obj, strict, self.classes)

    def field_type(self, name: str) -> FieldType | None:
        """The type of a declared trait or context field (None: not declared)."""
        spec = self.section.traits.get(name) or self.section.context.get(name)
        return spec.type if spec is not None else None

    def prop(self, event_type: str, prop: str) -> PropSpec | None:
        spec = self.section.events.get(event_type)
        return spec.props.get(prop) if spec is not None else None

    @cached_property
    def fingerprint(self) -> str:
        """A short hash of the declaration: equal schemas, equal fingerprints."""
        text = json.dumps(self.section.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


#: The schema of a catalog that declares nothing.
BUILTIN_SCHEMA = EventSchema()
