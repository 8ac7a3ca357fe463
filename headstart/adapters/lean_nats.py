"""A nats-py client for a connection that carries partition consumers' deliveries only.

JetStream delivers each stored message with the headers it was published with: ours carry
``Nats-Msg-Id`` (the duplicate window's key). nats-py parses every header block into a dict,
in Python, before the message reaches its subscription; the partition consumer
(:mod:`headstart.adapters.consumer`) never reads a delivered message's headers, only those of
the server's status messages (408 and 409 ending a pull, 100 heartbeats). On that connection
the parse was the largest cost left per message in a shard's consume loop (figures:
bench/RESULTS.md, "lean consume path").

:class:`LeanClient` skips it: a header block that is not a status (``NATS/1.0`` followed by a
line end, not by a space and a code) leaves the message with ``headers=None``; a status is
parsed as before. This overrides one private method of nats-py's ``Client``
(``_process_headers``), so the nats-py version is pinned in pyproject.toml and
``tests/headstart/adapters/test_lean_nats_integration.py`` checks what this relies on: that
``_process_msg`` takes a message's headers from that method alone, and that on a real server
data messages arrive without headers while statuses keep theirs. Use it only for a connection
whose subscriptions read no headers of data messages.

Example::

    nc = await connect_nats(url, auth, client=LeanClient)
"""

from __future__ import annotations

from typing import Any

from nats.aio.client import Client

#: ``NATS/1.0`` is 8 bytes; a status has a space and its code right after, headers a line end.
_AFTER_VERSION = 8
_SPACE = ord(" ")


class LeanClient(Client):
    """nats-py's client, leaving the headers of data messages unparsed (``None``)."""

    async def _process_headers(self, headers: Any) -> dict[str, str] | None:
        if headers and len(headers) > _AFTER_VERSION and headers[_AFTER_VERSION] != _SPACE:
            return None
        result: dict[str, str] | None = await super()._process_headers(headers)
        return result
