"""The batched drain's stream, as ``bench ingest`` publishes it (a real nats-server, no Ray)."""

from __future__ import annotations

import asyncio

import msgspec
import nats
import pytest

from bench.common import embedded_broker
from bench.ingest import EVENTS_PER_MESSAGE, MALFORMED, SECRET, _batched_messages, _messages, _publish_batched
from bench.population import onboarding_events
from engine.batches import is_batch
from engine.keys import Pseudonymizer
from headstart.adapters.topology import EVENTS_STREAM

pytestmark = pytest.mark.integration


def decoded(message: bytes) -> list[dict[str, object]]:
    try:
        return list(msgspec.msgpack.decode(message))
    except msgspec.DecodeError:
        return []  # one of the malformed messages


def test_the_batched_stream_holds_tens_of_one_users_events_and_its_retries() -> None:
    events = list(onboarding_events(users=50, events=2000, seed=3))
    pseudonymizer = Pseudonymizer(SECRET)
    with embedded_broker() as broker:
        expected, counts = asyncio.run(_publish_batched(broker.url, pseudonymizer, events))

        async def stored() -> list[bytes]:
            nc = await nats.connect(broker.url)
            try:
                js = nc.jetstream()
                last = (await js.stream_info(EVENTS_STREAM)).state.last_seq
                return [(await js.get_msg(EVENTS_STREAM, seq)).data for seq in range(1, last + 1)]
            finally:
                await nc.close()

        messages = asyncio.run(stored())
    assert len(messages) == counts["messages"] + MALFORMED  # the retried batches were dropped
    batches = [msgspec.msgpack.decode(m) for m in messages if is_batch(m) and m[:1] != b"\x92"]
    full = [b for b in batches if len(b) == EVENTS_PER_MESSAGE]
    assert (
        len(full) * EVENTS_PER_MESSAGE == counts["events"] == sum(sum(c.values()) for c in expected.values())
    )
    assert all(len({e["user_id"] for e in batch}) == 1 for batch in batches)
    assert counts["regrouped"] > 0 and counts["retried"] > 0
    # In process, the same grouping.
    in_process, n_events = _batched_messages(_messages(pseudonymizer, events))
    assert n_events == counts["events"] and len(in_process) == len(full)
