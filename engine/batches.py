"""Batched messages: several events of one user in one stream message.

A message on ``hs.events.<partition>.<user key>`` is either one event (a msgpack map, the
format every earlier message in the streams has) or a batch: a msgpack *array* of event maps,
all of the subject's user, applied in array order. The first byte tells them apart (a map is
``0x80``-``0x8f``, ``0xde`` or ``0xdf``; an array ``0x90``-``0x9f``, ``0xdc`` or ``0xdd``), so
no header is needed, and a shard's consumer never parses one. Decoding a batch as one array
with one typed decoder costs less per event than decoding its events one by one (see
bench/RESULTS.md, "batched messages").

A batch's message id (``Nats-Msg-Id``, JetStream's duplicate window) is derived from its user
and its events' ids: a batch published again with the same events is stored once. A single
event's message id stays its event id.

>>> from engine.events import encode_event
>>> a = encode_event({"event_id": "e1", "user_id": "k", "type": "session_started", "ts": 1})
>>> b = encode_event({"event_id": "e2", "user_id": "k", "type": "step_viewed", "ts": 2,
...                   "props": {"step": "profile"}})
>>> message = join_encoded([a, b])
>>> is_batch(message), is_batch(a)
(True, False)
>>> [event.event_id for event in decode_batch(message)]
['e1', 'e2']
>>> batch_message_id("k", ["e1", "e2"]) == batch_message_id("k", ["e2", "e1"])
True
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import msgspec

from engine.errors import InvalidEvent
from engine.events import SUPPORTED_VERSIONS, AnyEvent, Event, decode_event

#: The most events one message carries. A publisher splits a user's larger group into messages
#: of at most this many; the shard's window of recent event ids per user
#: (:mod:`engine.recent`) holds as many, so an event retried inside a differently composed
#: batch of this size is recognized.
MAX_EVENTS_PER_MESSAGE = 32

_ARRAY_FIRST_BYTES = frozenset([*range(0x90, 0xA0), 0xDC, 0xDD])

_raw_items = msgspec.msgpack.Decoder(list[msgspec.Raw])
_builtin_batch = msgspec.msgpack.Decoder(list[AnyEvent])  # type: ignore[valid-type]


def is_batch(data: bytes) -> bool:
    """Whether a stream message is a batch (a msgpack array), not a single event (a map)."""
    return bool(data) and data[0] in _ARRAY_FIRST_BYTES


def array_header(count: int) -> bytes:
    """The msgpack header of an array of ``count`` items (what precedes them, concatenated)."""
    if count < 16:
        return bytes([0x90 | count])
    if count < 1 << 16:
        return b"\xdc" + struct.pack(">H", count)
    return b"\xdd" + struct.pack(">I", count)


def join_encoded(payloads: Sequence[bytes]) -> bytes:
    """A batch from events already encoded one by one (:func:`engine.events.encode_event`): an
    array header and the maps as they are, nothing encoded again."""
    return array_header(len(payloads)) + b"".join(payloads)


def batch_message_id(user_key: str, event_ids: Iterable[str]) -> str:
    """``Nats-Msg-Id`` of a batch: a digest of its user and its events' ids, sorted (the same
    events make the same id whatever their order, so a retry is stored once)."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(user_key.encode())
    for event_id in sorted(event_ids):
        digest.update(b"\x00")
        digest.update(event_id.encode())
    return f"batch:{digest.hexdigest()}"


def batch_decoder(union: Any) -> msgspec.msgpack.Decoder[Any]:
    """A decoder of a batch whose items are of ``union`` (the built-in events, or a catalog's
    union of built-in and declared types: :class:`engine.schema.EventSchema`)."""
    if union is AnyEvent:
        return _builtin_batch
    return msgspec.msgpack.Decoder(list[union])  # type: ignore[valid-type]


def decode_batch(
    data: bytes,
    decoder: msgspec.msgpack.Decoder[Any] = _builtin_batch,
    decode_item: Callable[[bytes], Event] = decode_event,
) -> list[Event | InvalidEvent]:
    """The events of a batch, in order; each item that is not a valid event is the
    :class:`InvalidEvent` saying why instead (its neighbours stay valid). Raises
    :class:`InvalidEvent` when ``data`` is not an array at all.

    One typed decode of the whole array (``decoder``, from :func:`batch_decoder`) when every
    item is valid, the common case; item by item (``decode_item``) only when that fails.
    """
    try:
        events: list[Event] = decoder.decode(data)
    except (msgspec.ValidationError, msgspec.DecodeError):
        return _one_by_one(data, decode_item)
    out: list[Event | InvalidEvent] = list(events)
    for i, event in enumerate(events):
        if event.v not in SUPPORTED_VERSIONS:
            out[i] = InvalidEvent("unsupported_version", f"schema version {event.v} is not supported")
    return out


def _one_by_one(data: bytes, decode_item: Callable[[bytes], Event]) -> list[Event | InvalidEvent]:
    try:
        items = _raw_items.decode(data)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise InvalidEvent("malformed", f"not a batch of events: {exc}") from None
    out: list[Event | InvalidEvent] = []
    for item in items:
        try:
            out.append(decode_item(bytes(item)))
        except InvalidEvent as exc:
            out.append(exc)
    return out


def batch_items(data: bytes) -> list[bytes]:
    """The encoded items of a batch, as they are in the message (a dead letter's bytes)."""
    return [bytes(item) for item in _raw_items.decode(data)]
