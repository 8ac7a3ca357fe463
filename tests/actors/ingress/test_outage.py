"""While the broker is down the ingress answers at once: 503 with Retry-After for what must be
stored, the default flow for decisions (no shard can be asked). A connection that is not
connected stands in for nats-py reconnecting; the integration test kills a real broker
(tests/headstart/test_healing_integration.py)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from nats.errors import ConnectionReconnectingError

from actors.ingress import shards
from actors.ingress.outage import RETRY_AFTER_S, require_connected, unavailable
from actors.ingress.schemas import RequestContext
from headstart.adapters.rpc import DecideRequest, ShardClient, ShardUnavailable


class Reconnecting:
    """What the ingress sees of nats-py between a broker's death and the reconnect."""

    is_connected = False

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"nothing may be sent while reconnecting (called {name})")


def test_a_503_says_when_to_send_again() -> None:
    error = unavailable("the event stream did not store the batch: ConnectionReconnectingError")
    assert error.status == 503 and error.code == "unavailable"
    assert error.headers == {"Retry-After": str(RETRY_AFTER_S)}


def test_nothing_is_published_while_reconnecting() -> None:
    with pytest.raises(ConnectionReconnectingError):
        require_connected(Reconnecting())  # type: ignore[arg-type]


def test_a_decision_falls_back_at_once_while_reconnecting() -> None:
    client = ShardClient(Reconnecting(), partitions=8)  # type: ignore[arg-type]
    client.owners = [0] * 8  # as learned before the broker went: the coalesced path is taken

    async def ask() -> None:
        with pytest.raises(ShardUnavailable):
            await shards.decide(client, "k" * 26, RequestContext())
        with pytest.raises(ShardUnavailable):
            await client.call_raw(DecideRequest(key="k" * 26, context={}), timeout=5.0)

    started = time.monotonic()
    asyncio.run(ask())
    assert time.monotonic() - started < 0.1  # not the deadline: nothing waited for a reply
