"""A document kept as the messages of one JetStream subject: each message a whole version, its
number the stream sequence. What the catalog (:mod:`.catalog_store`) and the API keys
(:mod:`.key_store`) share: a write that is a compare-and-set on the stream's last sequence, and
a watch that hands over the newest version whenever one is stored.

Example::

    seq = await append_expecting(js, "HS_KEYS", "hs.keys.set", payload, expected_last=7)
    watch = await watch_latest(js, "HS_KEYS", "hs.keys.set", after=7, latest_number=..., serve_latest=...)
    await watch.stop()
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy
from nats.js.errors import APIError

log = logging.getLogger(__name__)

#: JetStream's error code for a publish whose expected last sequence is not the stream's.
WRONG_LAST_SEQUENCE = 10071


class SequenceConflict(RuntimeError):
    """The stream's last sequence was not the one a write expected: another version was stored."""

    def __init__(self, expected: int) -> None:
        super().__init__(f"the stream is no longer at sequence {expected}")
        self.expected = expected


async def append_expecting(
    js: JetStreamContext, stream: str, subject: str, payload: bytes, expected_last: int
) -> int:
    """Store ``payload`` as the next version if ``expected_last`` is the stream's last sequence
    (``Nats-Expected-Last-Sequence``), and return its sequence; :class:`SequenceConflict` if not."""
    headers = {"Nats-Expected-Last-Sequence": str(expected_last)}
    try:
        ack = await js.publish(subject, payload, stream=stream, headers=headers)
    except APIError as exc:
        if exc.err_code != WRONG_LAST_SEQUENCE:
            raise
        raise SequenceConflict(expected_last) from None
    return int(ack.seq)


class Watch:
    """A running watch (:func:`watch_latest`); :meth:`stop` ends it."""

    def __init__(self, task: asyncio.Task[None]) -> None:
        self._task = task

    async def stop(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._task


async def watch_latest(
    js: JetStreamContext,
    stream: str,
    subject: str,
    after: int,
    latest_number: Callable[[], Awaitable[int]],
    serve_latest: Callable[[], Awaitable[int]],
    poll_s: float = 5.0,
    what: str = "document",
) -> Watch:
    """Call ``serve_latest`` (which reads the newest version, serves it, and returns its number)
    whenever ``latest_number()`` is above ``after`` or the last number served; versions stored
    in a burst may be skipped to the last.

    An ordered push consumer signals each new message within milliseconds; a poll every
    ``poll_s`` seconds catches anything a reconnect lost. A failing ``serve_latest`` is logged
    and tried again with the next delivery or poll.
    """
    state = {"served": after}
    wake = asyncio.Event()

    async def deliver(msg: Msg) -> None:
        wake.set()

    sub = await js.subscribe(
        subject,
        stream=stream,
        cb=deliver,
        ordered_consumer=True,
        deliver_policy=DeliverPolicy.NEW,
        headers_only=True,
    )

    async def follow() -> None:
        try:
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), poll_s)
                wake.clear()
                try:
                    # Each version is the whole document: only the newest needs serving.
                    if await latest_number() > state["served"]:
                        state["served"] = await serve_latest()
                except Exception as exc:  # noqa: BLE001 - the next delivery or poll retries
                    log.warning("%s watch: %s", what, exc)
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    return Watch(asyncio.get_running_loop().create_task(follow()))
