"""The Segment-compatible tracking API: Segment calls in, Headstart events out.

Existing Segment or RudderStack instrumentation feeds Headstart by changing only its host to
``http://<headstart>/segment``: ``POST /segment/v1/batch|track|identify|page|screen`` (also
``alias`` and ``group``), the write key a frontend key sent as the HTTP Basic user, bodies
optionally gzip-encoded, fields Headstart does not use ignored, 200 on success. This module is
the mapping, pure logic; the ingress routes and publishes (:mod:`actors.ingress.segment`).

- ``track`` calls named in the catalog's ``segment_api.track`` become that event type (a
  built-in one or one the catalog's ``schema`` declares), props from the call's properties;
  ``identify`` keeps the allowed traits (built-in or declared) as ``profile_updated``;
  ``page`` and ``screen`` become ``step_viewed``; anything else is counted and dropped.
- ``messageId`` makes the event id (a retried call is stored once), ``userId`` else
  ``anonymousId`` the user (an anonymous id seen with a user id is an alias of it: later
  anonymous calls go to the user); ``timestamp`` the time.
- Context: ``device.type`` (phones are ``mobile``), ``os.name``, ``locale``,
  ``location.country``, ``campaign.source`` or the referrer's host, ``app.version``.

>>> from engine.catalog import DEFAULT_CATALOG, load_catalog
>>> mapper = SegmentMapper(load_catalog(DEFAULT_CATALOG).segment_api)
>>> call = {"type": "track", "event": "Feature Used", "userId": "u1", "messageId": "m-1",
...         "timestamp": "2026-11-29T10:00:00Z", "properties": {"feature": "export", "plan": "pro"},
...         "context": {"device": {"type": "ios"}, "locale": "de-DE"}}
>>> mapped = mapper.map(call)
>>> mapped.event["type"], mapped.event["props"], mapped.event["context"], mapped.user_id
('feature_clicked', {'feature': 'export'}, {'device_type': 'mobile', 'locale': 'de-DE'}, 'u1')
>>> mapper.map({**call, "event": "Checkout"}).dropped
'unmapped track "Checkout"'

A declared type's props keep their JSON type (the catalog's schema validates them):

>>> from engine.schema import EventSchema, SchemaSection
>>> schema = EventSchema(SchemaSection.model_validate({"events": {"created_board": {"props": {
...     "template": {"type": "string"}, "cards": {"type": "number"}}}}}))
>>> settings = SegmentApi(track=[{"event": "Board Created", "type": "created_board",
...                               "props": {"template": "kind", "cards": "cards"}}])
>>> board = SegmentMapper(settings, schema).map(
...     {**call, "event": "Board Created", "properties": {"kind": "kanban", "cards": 3}})
>>> board.event["type"], board.event["props"]
('created_board', {'template': 'kanban', 'cards': 3})
"""

from __future__ import annotations

import datetime as dt
import gzip
import hashlib
import json
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

from engine.catalog import SegmentApi
from engine.schema import BUILTIN_SCHEMA, EventSchema, PropSpec, TraitSpec

#: The calls of the Segment HTTP Tracking API.
CALL_TYPES = ("track", "identify", "page", "screen", "alias", "group")
#: A decompressed body at most (a gzip bomb is refused, not inflated).
MAX_BODY_BYTES = 4 * 1024 * 1024
#: Segment device types that are phones.
PHONES = frozenset({"ios", "android", "mobile", "phone", "iphone"})


class SegmentPayloadError(ValueError):
    """A body that is not a Segment call: the caller's mistake (400)."""


@dataclass
class Mapped:
    """One call mapped: the Headstart ``event`` (user id still raw: the ingress pseudonymizes),
    or why it was ``dropped``; aliases it revealed (raw anonymous id -> raw user id)."""

    event: dict[str, Any] | None = None
    dropped: str | None = None
    invalid: str | None = None
    user_id: str | None = None
    anonymous_id: str | None = None
    aliases: list[tuple[str, str]] = field(default_factory=list)


def decode_body(raw: bytes, content_encoding: str | None) -> bytes:
    """The body, gunzipped if it says so (bounded)."""
    if (content_encoding or "").strip().lower() != "gzip":
        return raw
    try:
        inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        out = inflater.decompress(raw, MAX_BODY_BYTES + 1)
    except (zlib.error, gzip.BadGzipFile) as exc:
        raise SegmentPayloadError(f"Content-Encoding is gzip but the body is not: {exc}") from None
    if len(out) > MAX_BODY_BYTES or inflater.unconsumed_tail:
        raise SegmentPayloadError(f"the decompressed body is over {MAX_BODY_BYTES} bytes")
    return out


def messages_of(call: str, body: Any) -> list[Any]:
    """The calls in a body: a batch's list, or the one call of ``/v1/<call>``."""
    if not isinstance(body, dict):
        raise SegmentPayloadError("the body must be a JSON object")
    if call == "batch":
        batch = body.get("batch")
        if not isinstance(batch, list):
            raise SegmentPayloadError("a batch needs a 'batch' list")
        return batch
    return [{**body, "type": body.get("type") or call}]


def _time(message: dict[str, Any]) -> float:
    for name in ("timestamp", "originalTimestamp", "sentAt", "receivedAt"):
        value = message.get(name)
        if isinstance(value, str) and value:
            try:
                return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
            except ValueError:
                continue
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    return time.time()


def _text(value: Any, limit: int = 128) -> str | None:
    if isinstance(value, str) and value.strip():
        return value.strip()[:limit]
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return None


def context_of(message: dict[str, Any]) -> dict[str, str]:
    """Headstart's context from a call's Segment context."""
    context = message.get("context")
    if not isinstance(context, dict):
        return {}

    def nested(*path: str) -> Any:
        value: Any = context
        for part in path:
            value = value.get(part) if isinstance(value, dict) else None
        return value

    out: dict[str, str] = {}
    device = (_text(nested("device", "type")) or "").lower()
    if device:
        out["device_type"] = "mobile" if device in PHONES else "tablet" if device == "tablet" else "desktop"
    for name, path in (
        ("os", ("os", "name")),
        ("locale", ("locale",)),
        ("country", ("location", "country")),
        ("app_version", ("app", "version")),
    ):
        value = _text(nested(*path), 64)
        if value:
            out[name] = value.lower() if name == "os" else value
    referrer = _text(nested("campaign", "source"), 64)
    if referrer is None:
        link = _text(nested("referrer", "link"), 500) or _text(nested("page", "referrer"), 500)
        referrer = (urlparse(link).hostname or None) if link else None
    if referrer:
        out["referrer"] = referrer[:64]
    return out


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def event_id_of(message_id: str) -> str:
    """Headstart's event id for a Segment ``messageId`` (the same id gives the same event id)."""
    return "seg-" + hashlib.blake2b(message_id.encode(), digest_size=16).hexdigest()


def _value(value: Any, spec: PropSpec | TraitSpec | None, limit: int = 128) -> Any:
    """A call's property or trait as an event's prop: text for strings (numbers as text, as
    for built-in props); a declared number or boolean as sent, for the schema to check."""
    if spec is None or spec.type == "string":
        return _text(value, spec.max_length if spec is not None else limit)
    return value if isinstance(value, str | int | float | bool) else None


def _needed(spec: PropSpec | None) -> bool:
    return spec is None or spec.required


class SegmentMapper:
    """Maps Segment calls with the catalog's ``segment_api`` settings and its ``schema``."""

    def __init__(self, settings: SegmentApi, schema: EventSchema = BUILTIN_SCHEMA) -> None:
        self.settings = settings
        self.schema = schema
        self.tracks = {t.event: t for t in settings.track}

    def map(self, message: Any) -> Mapped:
        if not isinstance(message, dict):
            return Mapped(invalid="a call must be a JSON object")
        kind = message.get("type")
        if kind not in CALL_TYPES:
            return Mapped(invalid=f"unknown call type {str(kind)[:40]!r}")
        user_id = _text(message.get("userId"), 256)
        anonymous_id = _text(message.get("anonymousId"), 256)
        mapped = Mapped(user_id=user_id, anonymous_id=anonymous_id)
        if kind == "alias":
            previous = _text(message.get("previousId"), 256)
            if not (previous and user_id):
                return Mapped(invalid="alias needs previousId and userId")
            mapped.aliases.append((previous, user_id))
            mapped.dropped = "alias (recorded, no event)"
            return mapped
        if user_id is None and anonymous_id is None:
            return Mapped(invalid="a call needs a userId or an anonymousId")
        if user_id is not None and anonymous_id is not None:
            mapped.aliases.append((anonymous_id, user_id))
        message_id = _text(message.get("messageId"), 200)
        if message_id is None:
            return Mapped(invalid="a call needs a messageId (it deduplicates retries)")
        type_, props = self._type_and_props(kind, message)
        if type_ is None:
            mapped.dropped = props  # the reason
            return mapped
        event: dict[str, Any] = {
            "event_id": event_id_of(message_id),
            "user_id": user_id or anonymous_id,
            "type": type_,
            "ts": _time(message),
        }
        if props:
            event["props"] = props
        context = context_of(message)
        if context:
            event["context"] = context
        mapped.event = event
        return mapped

    def _type_and_props(self, kind: str, message: dict[str, Any]) -> tuple[str | None, Any]:
        properties = _mapping(message.get("properties"))
        if kind == "track":
            name = _text(message.get("event"), 200)
            track = self.tracks.get(name or "")
            if track is None:
                return None, f"unmapped track {name!r}".replace("'", '"')
            specs = {ours: self.schema.prop(track.type, ours) for ours in track.props}
            props = {
                ours: _value(properties.get(theirs), specs[ours]) for ours, theirs in track.props.items()
            }
            # A built-in type's mapped props are all needed; a declared type's, its required ones.
            missing = [ours for ours, value in props.items() if value is None and _needed(specs[ours])]
            if missing:
                return None, f"track {name!r}: no {', '.join(missing)} in its properties".replace("'", '"')
            return track.type, {ours: value for ours, value in props.items() if value is not None}
        if kind == "identify":
            traits = _mapping(message.get("traits"))
            declared = self.schema.section.traits
            kept = {t: _value(traits.get(t), declared.get(t), 256) for t in self.settings.identify_traits}
            kept = {t: v for t, v in kept.items() if v is not None}
            if not kept:
                return None, "identify without any allowed trait"
            return "profile_updated", kept
        if kind in ("page", "screen"):
            if not self.settings.pages_are_steps:
                return None, f"{kind} calls are not mapped"
            step = _text(properties.get(self.settings.step_property)) or _text(message.get("name"))
            if step is None:
                return None, f"{kind} without a step name"
            return "step_viewed", {"step": step}
        return None, f"{kind} calls are not mapped"


# ---------------------------------------------------------------------- dead letters

#: Fields of a dead-lettered call that are kept out: they may hold PII.
REDACTED = ("traits", "properties", "context")


def dead_letter(message: Any, reason: str, key_of: Callable[[str], str]) -> tuple[bytes, dict[str, str]]:
    """An invalid call as a dead letter (payload and headers), kept for whoever fixes the
    sender: its ids pseudonymized with ``key_of``, its traits, properties and context left out.

    >>> payload, headers = dead_letter({"type": "track", "userId": "u1", "traits": {"email": "x"}},
    ...                                "no event name", lambda raw: "key-of-" + raw)
    >>> payload, headers["Hs-Reason"]
    (b'{"type": "track", "userId": "key-of-u1"}', 'no event name')
    """
    kept: dict[str, Any] = {}
    if isinstance(message, dict):
        for name, value in message.items():
            if name in ("userId", "anonymousId", "previousId") and isinstance(value, str) and value:
                kept[name] = key_of(value)
            elif name not in REDACTED:
                kept[name] = value
    payload = json.dumps(kept, default=str).encode()[:65536]
    headers = {"Hs-Reason": reason[:200], "Hs-Source": "segment", "Hs-Redacted": ",".join(REDACTED)}
    return payload, headers


# ---------------------------------------------------------------------- aliases


class AliasStore:
    """Which user an anonymous id belongs to, by pseudonymized keys only (never a raw id):
    ``a.<anonymous key>`` -> user key, and ``u.<user key>.<anonymous key>`` so an erasure finds
    a user's aliases without a scan. Entries expire with the events' retention; reads go
    through a bounded in-memory cache.
    """

    CACHE = 100_000

    def __init__(self, kv: Any) -> None:
        self.kv = kv
        self._cache: dict[str, str | None] = {}

    async def link(self, anonymous_key: str, user_key: str) -> None:
        if anonymous_key == user_key or self._cache.get(anonymous_key) == user_key:
            return
        await self.kv.put(f"a.{anonymous_key}", user_key.encode())
        await self.kv.put(f"u.{user_key}.{anonymous_key}", b"")
        self._remember(anonymous_key, user_key)

    async def resolve(self, anonymous_key: str) -> str | None:
        if anonymous_key in self._cache:
            return self._cache[anonymous_key]
        from nats.js.errors import KeyDeletedError, KeyNotFoundError

        try:
            entry = await self.kv.get(f"a.{anonymous_key}")
            user_key = entry.value.decode() if entry.value else None
        except (KeyNotFoundError, KeyDeletedError):
            user_key = None
        self._remember(anonymous_key, user_key)
        return user_key

    def _remember(self, anonymous_key: str, user_key: str | None) -> None:
        if len(self._cache) >= self.CACHE:
            self._cache.clear()
        self._cache[anonymous_key] = user_key


async def erase_aliases(kv: Any, user_key: str) -> int:
    """Delete every alias of ``user_key`` (and the user's own entry as an anonymous id)."""
    from nats.js.errors import NoKeysError

    try:
        links = await kv.keys(filters=[f"u.{user_key}.*"])
    except NoKeysError:
        links = []
    for link in links:
        anonymous_key = link.rsplit(".", 1)[1]
        await kv.delete(f"a.{anonymous_key}")
        await kv.delete(link)
    await kv.delete(f"a.{user_key}")
    return len(links)
