"""What :class:`headstart.adapters.lean_nats.LeanClient` relies on in nats-py, checked: the
private method it overrides is where a delivered message's headers come from, data messages
then arrive without headers, and the server's statuses keep theirs (a real nats-server)."""

from __future__ import annotations

import asyncio
import importlib.metadata
import inspect
import json

import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig

from engine.keys import Pseudonymizer, partition_of
from engine.partition import PartitionState
from headstart.adapters.broker import connect_nats
from headstart.adapters.consumer import PartitionConsumer
from headstart.adapters.lean_nats import LeanClient
from headstart.adapters.streams import EventPublisher
from headstart.adapters.topology import EVENTS_STREAM
from tests.conftest import TEST_PARTITIONS
from tests.headstart.adapters.test_streams_and_consumer_integration import event, wait_for

pytestmark = pytest.mark.integration


def test_nats_py_is_the_version_the_override_was_written_for() -> None:
    """An upgrade of nats-py must come with a look at lean_nats.py (pyproject pins the minor)."""
    assert importlib.metadata.version("nats-py").startswith("2.16.")
    process_msg = inspect.getsource(Client._process_msg)
    # The headers a message is built with come from _process_headers and nowhere else.
    assert "hdr = await self._process_headers(headers)" in process_msg
    assert "self._build_message(sid, subject, reply, data, hdr)" in process_msg
    assert inspect.iscoroutinefunction(Client._process_headers)


async def test_data_messages_arrive_without_headers_and_statuses_with_theirs(fresh_streams: str) -> None:
    nc = await connect_nats(fresh_streams, client=LeanClient)
    try:
        js = nc.jetstream()
        await js.publish("hs.ingest.somekey", b"payload", headers={"Nats-Msg-Id": "m1"})
        consumer = "lean-test"
        await js.add_consumer(
            EVENTS_STREAM, ConsumerConfig(name=consumer, durable_name=consumer, ack_policy=AckPolicy.NONE)
        )
        received: list[Msg] = []

        async def on_message(msg: Msg) -> None:
            received.append(msg)

        inbox = nc.new_inbox()
        await nc.subscribe(inbox, cb=on_message)
        # Two messages asked for, one stored: the data message, heartbeats, then a 408 status.
        request = {"batch": 2, "expires": int(0.5e9), "idle_heartbeat": int(0.1e9)}
        await nc.publish(
            f"$JS.API.CONSUMER.MSG.NEXT.{EVENTS_STREAM}.{consumer}", json.dumps(request).encode(), reply=inbox
        )
        await wait_for(lambda: any(m.headers and m.headers.get("Status") == "408" for m in received), 5)
        data = [m for m in received if m.reply]
        statuses = [m.headers.get("Status") for m in received if not m.reply and m.headers]
        assert [(m.data, m.headers) for m in data] == [(b"payload", None)]
        assert "100" in statuses and statuses[-1] == "408"
        final = next(m for m in received if m.headers and m.headers.get("Status") == "408")
        assert final.headers is not None and final.headers.get("Nats-Pending-Messages") == "1"
        await js.delete_consumer(EVENTS_STREAM, consumer)
    finally:
        await nc.close()


async def test_a_partition_consumer_on_a_lean_connection_applies_everything(
    fresh_streams: str, pseudonymizer: Pseudonymizer
) -> None:
    nc = await connect_nats(fresh_streams, client=LeanClient)
    try:
        await EventPublisher(nc.jetstream(), pseudonymizer).publish_many([event(i) for i in range(50)])
        key = pseudonymizer.key("alice@example.com")
        part = PartitionState(partition_of(key, TEST_PARTITIONS))
        consumer = PartitionConsumer(nc, partition=part.partition, handler=part.apply_message, batch=16)
        await consumer.start(0)
        try:
            await wait_for(lambda: part.applied == 50)
            await asyncio.sleep(0.1)
            assert part.applied == 50 and consumer.restarts == 0
        finally:
            await consumer.stop(delete=True)
    finally:
        await nc.close()
