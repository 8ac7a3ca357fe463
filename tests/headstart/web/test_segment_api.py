"""Segment calls mapped to the catalog's declared types and traits (the contract catalog's
``segment_api``), then validated by its schema as the ingress does."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from engine.catalog import load_catalog
from engine.errors import InvalidEvent
from engine.events import decode_event
from engine.keys import Pseudonymizer
from headstart.adapters.streams import EventPublisher
from headstart.web.segment_api import SegmentMapper
from tests.catalogs import CUSTOM_SCHEMA
from tests.conftest import TEST_SECRET

CATALOG = load_catalog(CUSTOM_SCHEMA)
SCHEMA = CATALOG.event_schema
MAPPER = SegmentMapper(CATALOG.segment_api, SCHEMA)
#: prepare() only: nothing is published.
PUBLISHER = EventPublisher(None, Pseudonymizer(TEST_SECRET), SCHEMA)  # type: ignore[arg-type]


def call(**fields: Any) -> dict[str, Any]:
    return {"userId": "u1", "messageId": f"m-{len(fields)}", "timestamp": "2026-12-01T10:00:00Z", **fields}


def stored(event: dict[str, Any]) -> Any:
    """The event as the ingress validates and encodes it, decoded again with the schema."""
    _, payload, _ = PUBLISHER.prepare(event)
    return SCHEMA.decode(payload)


def test_a_track_becomes_a_declared_event_with_typed_props() -> None:
    mapped = MAPPER.map(call(type="track", event="Board Created", properties={"kind": "scrum", "cards": 7}))
    assert mapped.event is not None and mapped.event["props"] == {"template": "scrum", "cards": 7}
    event = stored(mapped.event)
    assert (event.type_name, event.props.template, event.props.cards) == ("created_board", "scrum", 7.0)
    # An optional prop the call does not carry is left out; a number sent as text is read.
    sparse = MAPPER.map(call(type="track", event="Board Created", properties={"cards": "2"}))
    assert sparse.event is not None and stored(sparse.event).props.cards == 2.0
    assert stored(sparse.event).props.template is None


def test_a_declared_required_prop_missing_drops_the_call_and_a_bad_value_is_refused() -> None:
    missing = MAPPER.map(call(type="track", event="Integration Connected", properties={}))
    assert (
        missing.event is None
        and missing.dropped == 'track "Integration Connected": no integration in its properties'
    )
    bad = MAPPER.map(call(type="track", event="Board Created", properties={"kind": "gantt"}))
    assert bad.event is not None
    with pytest.raises(InvalidEvent) as refused:
        stored(bad.event)
    assert refused.value.reason == "invalid_field" and "props.template" in refused.value.detail
    counted = MAPPER.map(
        call(type="track", event="Integration Connected", properties={"integration": "slack"})
    )
    assert counted.event is not None and stored(counted.event).props.integration == "slack"


def test_identify_keeps_declared_traits_with_their_types_and_drops_the_rest() -> None:
    traits = {"plan": "pro", "seats": 12, "phone": "+49 30 1234", "email": "a@example.com", "industry": "x"}
    mapped = MAPPER.map(call(type="identify", traits=traits))
    assert mapped.event is not None and mapped.event["type"] == "profile_updated"
    assert mapped.event["props"] == {"plan": "pro", "seats": 12, "phone": "+49 30 1234"}
    props = stored(mapped.event).props
    assert (props.plan, props.seats, props.phone) == ("pro", 12.0, "+49 30 1234")
    wrong = MAPPER.map(call(type="identify", traits={"plan": "gold"}))
    assert wrong.event is not None
    with pytest.raises(InvalidEvent):
        stored(wrong.event)


def test_the_built_in_publisher_refuses_a_declared_type_the_catalogs_accepts() -> None:
    event = {"event_id": "e1", "user_id": "u1", "type": "connected_slack", "ts": 1.0}
    builtin = EventPublisher(None, Pseudonymizer(TEST_SECRET))  # type: ignore[arg-type]
    with pytest.raises(InvalidEvent) as refused:
        builtin.prepare(event)
    assert refused.value.reason == "unknown_type"
    subject, payload, headers = PUBLISHER.prepare(event, strict=True)
    assert SCHEMA.decode(payload).type_name == "connected_slack" and headers == {"Nats-Msg-Id": "e1"}
    assert subject.startswith("hs.ingest.") and "u1" not in subject
    # The stored bytes are the wire format: a built-in reader sees an unknown type, not garbage.
    with pytest.raises(InvalidEvent):
        decode_event(payload)
    assert msgspec.msgpack.decode(payload)["type"] == "connected_slack"
