"""Reading the events stream for a report ends at the messages it holds, even when an erasure
deleted the stream's last ones."""

from __future__ import annotations

import pytest
from nats.aio.client import Client as NATS

from engine.keys import Pseudonymizer
from headstart.adapters.streams import EventPublisher, publish_prepared
from headstart.adapters.topology import EVENTS_STREAM
from headstart.reports.evaluate import events_of
from tests.conftest import TEST_SECRET, reset_streams

pytestmark = pytest.mark.integration


async def test_a_read_after_the_last_message_was_erased_returns_what_is_held(nats_url: str, nc: NATS) -> None:
    await reset_streams(nats_url)
    js = nc.jetstream()
    publisher = EventPublisher(js, Pseudonymizer(TEST_SECRET))
    events = [
        {"event_id": f"read-{i}", "user_id": f"reader-{i}", "type": "session_started", "ts": 1.0 + i}
        for i in range(3)
    ]
    acks = await publish_prepared(js, [publisher.prepare(e) for e in events])
    await js.delete_msg(EVENTS_STREAM, acks[-1].seq)  # what an erasure of the last user does
    read = await events_of(js, timeout=2.0)
    assert [seq for seq, _, _ in read] == [ack.seq for ack in acks[:-1]]
