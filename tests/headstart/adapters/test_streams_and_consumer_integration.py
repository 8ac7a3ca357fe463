"""The NATS side with a real nats-server: partition mapping, publishing, the pull consumer."""

from __future__ import annotations

import asyncio
import contextlib
import time

import msgspec
import nats
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nats.aio.client import Client as NATS

from engine.errors import InvalidEvent
from engine.events import decode_event, encode_event
from engine.keys import Pseudonymizer, partition_of
from engine.partition import PartitionState
from headstart.adapters.consumer import PartitionConsumer
from headstart.adapters.provision import ensure_streams
from headstart.adapters.streams import EventPublisher, bucket_keys, file_bucket
from headstart.adapters.topology import DLQ_STREAM, EVENTS_STREAM
from tests.conftest import TEST_PARTITIONS, reset_streams

pytestmark = pytest.mark.integration


def event(i: int, user: str = "alice@example.com", kind: str = "feature_clicked") -> dict[str, object]:
    return {
        "event_id": f"ev-{i}",
        "user_id": user,
        "type": kind,
        "ts": 1_767_571_200 + i,
        "props": {"feature": f"f{i % 3}"},
    }


async def wait_for(predicate, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


async def test_server_partition_mapping_matches_python(
    fresh_streams: str, nc: NATS, pseudonymizer: Pseudonymizer
) -> None:
    js = nc.jetstream()
    publisher = EventPublisher(js, pseudonymizer)
    for i in range(200):
        ack = await publisher.publish(event(i, user=f"user-{i}"))
        stored = await js.get_msg(EVENTS_STREAM, ack.seq)
        key = pseudonymizer.key(f"user-{i}")
        assert stored.subject == f"hs.events.{partition_of(key, TEST_PARTITIONS)}.{key}"


async def test_raw_ids_never_reach_the_stream(
    fresh_streams: str, nc: NATS, pseudonymizer: Pseudonymizer
) -> None:
    js = nc.jetstream()
    ack = await EventPublisher(js, pseudonymizer).publish(event(1, user="alice@example.com"))
    stored = await js.get_msg(EVENTS_STREAM, ack.seq)
    assert b"alice" not in stored.data and "alice" not in stored.subject


async def test_retried_publish_is_stored_once(
    fresh_streams: str, nc: NATS, pseudonymizer: Pseudonymizer
) -> None:
    publisher = EventPublisher(nc.jetstream(), pseudonymizer)
    first = await publisher.publish(event(7))
    again = await publisher.publish(event(7))
    assert not first.duplicate and again.duplicate and again.seq == first.seq


async def test_partitions_are_fixed_for_a_streams_life(fresh_streams: str, nc: NATS) -> None:
    from engine.errors import ConfigError

    with pytest.raises(ConfigError, match="partitions"):
        await ensure_streams(nc.jetstream(), TEST_PARTITIONS * 2)


async def test_each_store_keeps_what_it_holds_as_long_as_configured(fresh_streams: str, nc: NATS) -> None:
    from engine.datamap import Retention
    from headstart.adapters.topology import AUDIT_STREAM, DECISIONS_STREAM, REWARDS_STREAM, SEGMENTS_STREAM

    js = nc.jetstream()
    retention = Retention(
        events_days=2, decisions_days=3, segment_changes_days=0.5, dead_letters_days=4, audit_days=5
    )
    await ensure_streams(js, TEST_PARTITIONS, retention)  # an update in place
    ages = {
        name: (await js.stream_info(name)).config.max_age
        for name in (
            EVENTS_STREAM,
            DECISIONS_STREAM,
            REWARDS_STREAM,
            SEGMENTS_STREAM,
            DLQ_STREAM,
            AUDIT_STREAM,
        )
    }
    day = 86400
    assert ages == {
        EVENTS_STREAM: 2 * day,
        DECISIONS_STREAM: 3 * day,
        REWARDS_STREAM: 3 * day,
        SEGMENTS_STREAM: day / 2,
        DLQ_STREAM: 4 * day,
        AUDIT_STREAM: 5 * day,
    }
    await ensure_streams(js, TEST_PARTITIONS)  # back to the defaults for the other tests


async def test_consumer_applies_dead_letters_and_goes_on(
    fresh_streams: str, nc: NATS, pseudonymizer: Pseudonymizer
) -> None:
    js = nc.jetstream()
    key = pseudonymizer.key("alice@example.com")
    partition = partition_of(key, TEST_PARTITIONS)
    await EventPublisher(js, pseudonymizer).publish_many([event(i) for i in range(5)])
    await nc.publish(f"hs.ingest.{key}", b"\x92not a map")
    await nc.publish(
        f"hs.ingest.{key}", encode_event({"event_id": "x", "user_id": key, "type": "teleported", "ts": 1})
    )
    await EventPublisher(js, pseudonymizer).publish_many([event(i) for i in range(5, 8)])
    part = PartitionState(partition)
    consumer = PartitionConsumer(nc, partition=partition, handler=part.apply_message)
    await consumer.start(0)
    try:
        # Two batches of alice's events (publish_many batches a user's events), two bad messages.
        await wait_for(lambda: consumer.handled == 4)
        view = part.view(key, 1e10)
        assert view is not None and view["events_total"] == 8
        assert consumer.dead_lettered == 2
        dlq = await js.stream_info(DLQ_STREAM)
        assert dlq.state.messages == 2
        first = await js.get_msg(DLQ_STREAM, dlq.state.first_seq)
        assert first.data == b"\x92not a map"
        assert first.headers is not None and first.headers["Hs-Reason"] == "malformed"
        second = await js.get_msg(DLQ_STREAM, dlq.state.last_seq)
        assert second.headers is not None and second.headers["Hs-Reason"] == "unknown_type"
        # Live events after the bad ones keep flowing.
        await EventPublisher(js, pseudonymizer).publish(event(100))
        await wait_for(lambda: (part.view(key, 1e10) or {}).get("events_total") == 9)
    finally:
        await consumer.stop(delete=True)


async def test_dead_letters_keep_no_pii(fresh_streams: str, nc: NATS, pseudonymizer: Pseudonymizer) -> None:
    js = nc.jetstream()
    key = pseudonymizer.key("alice@example.com")
    partition = partition_of(key, TEST_PARTITIONS)
    bad = {
        "event_id": "p1",
        "user_id": key,
        "type": "profile_updated",
        "ts": "soon",
        "props": {"name": "Alice", "email": "alice@example.com"},
    }
    await js.publish(f"hs.ingest.{key}", msgspec.msgpack.encode(bad))
    part = PartitionState(partition)
    consumer = PartitionConsumer(nc, partition=partition, handler=part.apply_message)
    await consumer.start(0)
    try:
        await wait_for(lambda: consumer.dead_lettered == 1)
        letter = await js.get_last_msg(DLQ_STREAM, f"hs.dlq.events.{partition}")
        assert b"Alice" not in letter.data and b"example.com" not in letter.data
        assert letter.headers is not None
        assert letter.headers["Hs-Redacted"] == "props" and letter.headers["Hs-Reason"] == "invalid_field"
        assert msgspec.msgpack.decode(letter.data)["ts"] == "soon"  # the rest as it was sent
    finally:
        await consumer.stop(delete=True)


async def test_redelivered_messages_are_not_applied_twice(
    fresh_streams: str, nc: NATS, pseudonymizer: Pseudonymizer
) -> None:
    """JetStream redelivers everything after an earlier position: state must not change."""
    js = nc.jetstream()
    key = pseudonymizer.key("alice@example.com")
    partition = partition_of(key, TEST_PARTITIONS)
    await EventPublisher(js, pseudonymizer).publish_many([event(i) for i in range(50)])
    part = PartitionState(partition)
    consumer = PartitionConsumer(nc, partition=partition, handler=part.apply_message, batch=16)
    await consumer.start(0)
    await wait_for(lambda: part.applied == 50)
    before, messages = part.view(key, 1e10), consumer.handled
    await consumer.stop()
    # Restart from the beginning: all the messages come again from the server.
    await consumer.start(0)
    await wait_for(lambda: consumer.handled == 2 * messages)
    assert part.view(key, 1e10) == before
    assert part.applied == 50
    await consumer.stop(delete=True)


async def test_a_broker_restart_during_ingest_loses_nothing(tmp_path, pseudonymizer: Pseudonymizer) -> None:  # type: ignore[no-untyped-def]
    """nats-server restarted (JetStream on disk, the shipped sync setting) while events are
    being published and consumed: every event stored once and applied once."""
    import nats

    from headstart.adapters.broker import EmbeddedNats

    broker = EmbeddedNats(tmp_path)
    broker.start()
    conn = await nats.connect(broker.url, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
    try:
        js = conn.jetstream()
        await ensure_streams(js, 1)
        publisher = EventPublisher(js, pseudonymizer)
        key = pseudonymizer.key("alice@example.com")
        part = PartitionState(0)
        consumer = PartitionConsumer(conn, partition=0, handler=part.apply_message, batch=32)
        await consumer.start(0)

        async def produce() -> None:
            for start in range(0, 2000, 100):
                # Retried across the restart; the event id makes a retry a duplicate, not a copy.
                await publisher.publish_many([event(i) for i in range(start, start + 100)])
                await asyncio.sleep(0.02)

        producing = asyncio.create_task(produce())
        await wait_for(lambda: part.applied >= 300)
        assert not producing.done()  # the restart happens mid-ingest
        broker.stop()
        broker.start()  # same port, same store
        await asyncio.wait_for(producing, 60)
        await wait_for(lambda: part.applied >= 2000, timeout=30)
        await asyncio.sleep(0.5)  # nothing more arrives: none applied twice
        view = part.view(key, 1e10)
        assert part.applied == 2000
        assert view is not None and view["events_total"] == 2000
        await consumer.stop(delete=True)
    finally:
        await conn.close()
        broker.stop()


KINDS = ["feature_clicked", "step_completed", "profile_updated", "consent_updated", "session_started", "x"]
FUZZ_KEY = "alicekey"


def fuzzed_payloads() -> st.SearchStrategy[bytes]:
    """Arbitrary bytes, arbitrary msgpack maps, and maps shaped like events with wrong parts."""
    # msgpack's integer range: what a producer could put on the wire.
    ints = st.integers(min_value=-(2**63), max_value=2**64 - 1)
    value = st.one_of(
        st.none(),
        st.booleans(),
        ints,
        st.floats(),
        st.text(max_size=30),
        st.lists(ints, max_size=3),
        st.dictionaries(st.text(max_size=8), st.one_of(ints, st.text(max_size=10)), max_size=3),
    )
    near_events = st.fixed_dictionaries(
        {
            "event_id": st.one_of(st.text(min_size=1, max_size=20), value),
            "user_id": st.one_of(st.just(FUZZ_KEY), value),
            "type": st.one_of(st.sampled_from(KINDS), value),
            "ts": st.one_of(st.floats(min_value=0, max_value=4e9), value),
        },
        optional={"props": value, "context": value, "surprise": value},
    )
    maps = st.dictionaries(st.text(max_size=10), value, max_size=6)
    return st.one_of(
        st.binary(max_size=120), maps.map(msgspec.msgpack.encode), near_events.map(msgspec.msgpack.encode)
    )


@given(payloads=st.lists(fuzzed_payloads(), min_size=1, max_size=40))
@settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck))
def test_fuzzed_messages_never_stop_the_consumer_and_none_is_lost(
    nats_url: str, payloads: list[bytes]
) -> None:
    """Hypothesis-generated messages, straight onto a partition between valid events: every one
    is either applied (or counted without consent) or dead-lettered, and the consumer goes on."""

    def verdict(data: bytes) -> bool:
        try:
            return decode_event(data).user_id == FUZZ_KEY
        except InvalidEvent:
            return False

    async def scenario() -> None:
        await reset_streams(nats_url)
        conn = await nats.connect(nats_url)
        partition = partition_of(FUZZ_KEY, TEST_PARTITIONS)
        subject = f"hs.events.{partition}.{FUZZ_KEY}"
        js = conn.jetstream()
        valid = [encode_event({**event(i), "user_id": FUZZ_KEY}) for i in range(3)]
        sent = [valid[0], *payloads, valid[1], valid[2]]
        for data in sent:
            await js.publish(subject, data)
        part = PartitionState(partition)
        consumer = PartitionConsumer(conn, partition=partition, handler=part.apply_message)
        await consumer.start(0)
        try:
            # A dead letter is counted once stored, after its message was handled: wait for both.
            await wait_for(
                lambda: (
                    consumer.handled == len(sent)
                    and consumer.dead_lettered + part.applied + sum(part.anonymous.values()) == len(sent)
                )
            )
            kept = part.applied + sum(part.anonymous.values())
            assert kept == sum(verdict(d) for d in sent)
            assert consumer.dead_lettered == len(sent) - kept
            assert (await js.stream_info(DLQ_STREAM)).state.messages == consumer.dead_lettered
        finally:
            await consumer.stop(delete=True)
            await conn.close()

    asyncio.run(scenario())


async def test_bucket_keys_lists_live_keys_every_time(nc: NATS) -> None:
    # nats-py's KeyValue.keys() can answer "no keys" for a bucket whose first entry is a
    # delete marker (its watcher signals the end before it received what the server sent);
    # bucket_keys() reads the stream's state instead, so it never misses a live key.
    js = nc.jetstream()
    bucket = "hs_test_bucket_keys"
    with contextlib.suppress(nats.js.errors.NotFoundError):
        await js.delete_key_value(bucket)
    kv = await file_bucket(js, bucket, "bucket_keys test")
    assert await bucket_keys(js, bucket) == []
    for round_ in range(30):
        await kv.put("gone", b"x")
        await kv.delete("gone")
        await kv.put(f"live-{round_}", b"y")
        await kv.put("purged", b"z")
        await kv.purge("purged")
        assert await bucket_keys(js, bucket) == [f"live-{round_}"]
        await kv.delete(f"live-{round_}")
    await js.delete_key_value(bucket)
