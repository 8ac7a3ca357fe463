"""What the ingress answers while the broker is down: a 503 with ``Retry-After`` at once for
what must be stored (events), never a request left hanging; decisions keep being answered (the
default flow, :mod:`actors.ingress.shards`) and ``/readyz`` says not ready.

A client that sends the same batch again after ``Retry-After`` loses nothing and duplicates
nothing: event ids are message ids, so a batch stored just before the broker went is stored once.

>>> error = unavailable("the event stream did not store the batch")
>>> error.status, error.headers
(503, {'Retry-After': '1'})
"""

from __future__ import annotations

from nats.aio.client import Client as NATS
from nats.errors import ConnectionReconnectingError
from nats.js import JetStreamContext
from nats.js.api import PubAck

from actors.ingress.errors import ApiError
from headstart.adapters.streams import publish_events

#: What a 503 asks a client to wait before sending again: the supervisor starts a dead
#: embedded broker again at once and the ingress reconnects within a second.
RETRY_AFTER_S = 1
#: How long publishes of one request are retried (a leader election on a cluster, a broker
#: that went in the middle of a batch). Each attempt waits up to 2 s for its ack, so a request
#: waits at most about this plus 2 s: bounded, and short beside a client's timeout.
STORE_RETRY_S = 1.0


def unavailable(message: str) -> ApiError:
    """A 503 telling the client when to send the same request again."""
    return ApiError(503, "unavailable", message, headers={"Retry-After": str(RETRY_AFTER_S)})


def require_connected(nc: NATS) -> None:
    """Raise at once while the connection to the broker is down (nats-py is reconnecting):
    a publish would otherwise wait in its buffer until the retries run out."""
    if not nc.is_connected:
        raise ConnectionReconnectingError()


async def store(js: JetStreamContext, prepared: list[tuple[str, bytes, dict[str, str]]]) -> list[PubAck]:
    """A request's events stored, batched per user (:func:`~headstart.adapters.streams.publish_events`),
    retried for :data:`STORE_RETRY_S`; one ack per event."""
    return await publish_events(js, prepared, retry_for=STORE_RETRY_S)
