"""Batched messages with a real nats-server: the publisher's batching and linger, a retried
batch stored once, an event retried inside another batch applied once, a bad event inside a
batch dead-lettered alone, and erasure by subject."""

from __future__ import annotations

import asyncio

import msgspec
import pytest
from nats.aio.client import Client as NATS

from engine.batches import is_batch
from engine.keys import Pseudonymizer, partition_of
from engine.partition import PartitionState
from headstart.adapters.consumer import PartitionConsumer
from headstart.adapters.streams import EventPublisher, batch_messages, publish_events
from headstart.adapters.topology import DLQ_STREAM, EVENTS_STREAM, ingest_subject
from tests.conftest import TEST_PARTITIONS
from tests.headstart.adapters.test_streams_and_consumer_integration import event, wait_for

pytestmark = pytest.mark.integration

USER = "alice@example.com"


async def stored_messages(nc: NATS) -> list[bytes]:
    js = nc.jetstream()
    info = await js.stream_info(EVENTS_STREAM)
    return [(await js.get_msg(EVENTS_STREAM, seq)).data for seq in range(1, info.state.last_seq + 1)]


async def test_publish_many_sends_each_users_events_as_batches_of_at_most_max_events(
    fresh_streams: str, nc: NATS, pseudonymizer: Pseudonymizer
) -> None:
    publisher = EventPublisher(nc.jetstream(), pseudonymizer, max_events=4)
    events = [event(i) for i in range(10)] + [event(100, user="bob@example.com")]
    acks = await publisher.publish_many(events)
    assert [ack.seq for ack in acks] == [1] * 4 + [2] * 4 + [3] * 2 + [4]
    stored = await stored_messages(nc)
    assert [is_batch(data) for data in stored] == [True, True, True, False]
    assert [e["event_id"] for e in msgspec.msgpack.decode(stored[2])] == ["ev-8", "ev-9"]
    assert msgspec.msgpack.decode(stored[3])["event_id"] == "ev-100"  # alone: a plain map
    # The same events again (a retried request): every batch is a duplicate, stored once.
    again = await publisher.publish_many(events)
    assert all(ack.duplicate for ack in again) and [a.seq for a in again] == [a.seq for a in acks]


async def test_publish_holds_a_users_events_for_the_linger_and_sends_them_together(
    fresh_streams: str, nc: NATS, pseudonymizer: Pseudonymizer
) -> None:
    publisher = EventPublisher(nc.jetstream(), pseudonymizer, linger_s=0.05)
    acks = await asyncio.gather(*(publisher.publish(event(i)) for i in range(5)))
    assert {ack.seq for ack in acks} == {1}
    alone = await publisher.publish(event(5))  # nothing joined it: a single-event message
    again = await publisher.publish(event(5))
    assert again.duplicate and again.seq == alone.seq == 2
    stored = await stored_messages(nc)
    assert is_batch(stored[0]) and len(msgspec.msgpack.decode(stored[0])) == 5 and not is_batch(stored[1])
    # Without a linger each event goes at once, in a message of its own.
    eager = EventPublisher(nc.jetstream(), pseudonymizer, linger_s=0)
    seqs = {ack.seq for ack in await asyncio.gather(*(eager.publish(event(i)) for i in range(10, 13)))}
    assert len(seqs) == 3


async def test_a_publish_refused_by_validation_holds_nothing_back(
    fresh_streams: str, nc: NATS, pseudonymizer: Pseudonymizer
) -> None:
    from engine.errors import InvalidEvent

    publisher = EventPublisher(nc.jetstream(), pseudonymizer, linger_s=0.05)
    good = asyncio.ensure_future(publisher.publish(event(1)))
    with pytest.raises(InvalidEvent):
        await publisher.publish({**event(2), "type": "teleported"})
    assert (await good).seq == 1
    await publisher.flush()


async def consume(nc: NATS, part: PartitionState) -> PartitionConsumer:
    consumer = PartitionConsumer(nc, partition=part.partition, handler=part.apply_message)
    await consumer.start(0)
    return consumer


async def test_an_event_retried_inside_a_different_batch_is_applied_once(
    fresh_streams: str, nc: NATS, pseudonymizer: Pseudonymizer
) -> None:
    """The publisher regrouped its retries: the stream stores both batches (different
    messages), the partition applies each event once."""
    publisher = EventPublisher(nc.jetstream(), pseudonymizer)
    await publisher.publish_many([event(1), event(2), event(3)])
    await publisher.publish_many([event(2), event(3), event(4)])  # 2 and 3 retried, with 4
    await publisher.publish(event(1))  # and 1 alone
    key = pseudonymizer.key(USER)
    part = PartitionState(partition_of(key, TEST_PARTITIONS))
    consumer = await consume(nc, part)
    try:
        await wait_for(lambda: consumer.handled == 3)
        assert part.applied == 4 and part.replayed == 3
        assert (part.view(key, 1e10) or {})["events_total"] == 4
    finally:
        await consumer.stop(delete=True)


async def test_a_bad_event_inside_a_batch_is_dead_lettered_alone_and_the_others_apply(
    fresh_streams: str, nc: NATS, pseudonymizer: Pseudonymizer
) -> None:
    key = pseudonymizer.key(USER)
    partition = partition_of(key, TEST_PARTITIONS)
    publisher = EventPublisher(nc.jetstream(), pseudonymizer)
    good = [publisher.prepare(event(i)) for i in range(3)]
    fields = {"event_id": "x", "user_id": key, "type": "profile_updated", "ts": "soon"}
    bad = msgspec.msgpack.encode({**fields, "props": {"email": "a@b.c"}})
    prepared = [good[0], (ingest_subject(key), bad, {"Nats-Msg-Id": "x"}), good[1], good[2]]
    messages, _ = batch_messages(prepared)
    ack = (await publish_events(nc.jetstream(), prepared))[0]
    assert len(messages) == 1
    part = PartitionState(partition)
    consumer = await consume(nc, part)
    try:
        await wait_for(lambda: consumer.dead_lettered == 1)
        assert part.applied == 3 and consumer.position == ack.seq
        letter = await nc.jetstream().get_last_msg(DLQ_STREAM, f"hs.dlq.events.{partition}")
        assert letter.headers is not None
        assert letter.headers["Hs-Reason"] == "invalid_field"
        assert letter.headers["Hs-Source-Seq"] == str(ack.seq) and letter.headers["Hs-Batch-Index"] == "1"
        assert letter.headers["Hs-Redacted"] == "props" and b"a@b.c" not in letter.data
        assert msgspec.msgpack.decode(letter.data)["ts"] == "soon"  # that event's bytes, alone
    finally:
        await consumer.stop(delete=True)
    # Replayed from the start (a restart before any checkpoint): nothing dead-lettered twice.
    dlq = await nc.jetstream().stream_info(DLQ_STREAM)
    again = PartitionState(partition)
    consumer = await consume(nc, again)
    try:
        await wait_for(lambda: consumer.handled == 1 and consumer.dead_lettered == 1)
        await asyncio.sleep(0.2)
        assert (await nc.jetstream().stream_info(DLQ_STREAM)).state.messages == dlq.state.messages
    finally:
        await consumer.stop(delete=True)
