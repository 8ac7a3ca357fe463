"""Requests to the shard that owns a partition, over NATS request/reply.

Each shard subscribes ``hs.rpc.<partition>.<method>`` for the partitions it owns, so NATS routes
a request to the current owner: callers need only the user key, not the partition → shard map,
and a partition that is moving simply has no responder for a moment.

Requests are msgpack maps. Replies are JSON, ready to be an HTTP response body as they are:
the value itself, or ``{"error": {"code": ..., "message": ...}}``; the HTTP ingress passes
them through without decoding and re-encoding.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from engine.errors import HeadstartError
from engine.keys import partition_of

RPC_PREFIX = "hs.rpc"

_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder().decode
_json_encode = msgspec.json.Encoder().encode
_json_decode = msgspec.json.Decoder().decode
ERROR_PREFIX = b'{"error":'


class ShardUnavailable(HeadstartError):
    """No shard answered for the partition in time (starting, moving, or down)."""


class ShardError(HeadstartError):
    """The shard answered with an error."""


#: How often a client relearns which shard owns each partition (also at once after a miss).
OWNER_REFRESH_S = 5.0
#: How often a request for a partition without an owner (moving, restarting) is asked again.
RETRY_EVERY_S = 0.01


def _not_owned(reply: bytes) -> bool:
    return reply.startswith(ERROR_PREFIX) and b'"not_owned"' in reply


def _resolve(future: asyncio.Future[bytes], reply: bytes) -> None:
    if not future.done():
        future.set_result(reply)


def _expire(future: asyncio.Future[bytes]) -> None:
    if not future.done():
        future.set_exception(TimeoutError())


def rpc_subject(partition: int, method: str) -> str:
    return f"{RPC_PREFIX}.{partition}.{method}"


def batch_subject(shard: int) -> str:
    """Where a shard takes several requests in one message (see :meth:`ShardClient.call_coalesced`)."""
    return f"{RPC_PREFIX}.shard.{shard}.batch"


def encode_request(**fields: Any) -> bytes:
    return _encode(fields)


def encode_reply(value: Any) -> bytes:
    return _json_encode(value)


def encode_error(code: str, message: str) -> bytes:
    return _json_encode({"error": {"code": code, "message": message}})


def decode_batch(data: bytes) -> list[dict[str, Any]]:
    items = _decode(data)
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise ValueError("a batch is a list of maps")
    return items


def encode_batch(replies: list[bytes]) -> bytes:
    return _encode(replies)


def is_error(reply: bytes) -> bool:
    return reply.startswith(ERROR_PREFIX)


def decode_request(data: bytes) -> dict[str, Any]:
    request = _decode(data)
    if not isinstance(request, dict):
        raise ValueError("request must be a map")
    return request


class ShardClient:
    """Calls shards by user key.

    Requests are multiplexed over one reply subscription with counter tokens and a timer per
    request. nats-py's ``request()`` does the same job with a random token (a syscall) and an
    ``asyncio.wait_for`` (a task) per call, which showed up on the decision path's profile.

    Example::

        client = ShardClient(nc, partitions=64)
        await client.get_user(key)
    """

    def __init__(self, nc: NATS, partitions: int, timeout: float = 2.0) -> None:
        self._nc = nc
        self.partitions = partitions
        self.timeout = timeout
        self._prefix = ""
        self._pending: dict[str, asyncio.Future[bytes]] = {}
        self._next = 0
        self._sub: Any = None
        #: partition -> shard id, learned from the shards' ping replies; None: not known.
        self.owners: list[int | None] = [None] * partitions
        self._owners_task: asyncio.Task[None] | None = None
        self._relearning: asyncio.Task[None] | None = None
        self._batches: dict[int, list[tuple[dict[str, Any], asyncio.Future[bytes]]]] = {}
        self.coalesced_calls = 0
        self.coalesced_messages = 0

    async def _ensure_inbox(self) -> None:
        if self._sub is None:
            self._prefix = self._nc.new_inbox()
            self._sub = await self._nc.subscribe(f"{self._prefix}.*", cb=self._on_reply)

    async def _on_reply(self, msg: Msg) -> None:
        future = self._pending.pop(msg.subject.rsplit(".", 1)[1], None)
        if future is None or future.done():
            return  # a reply that came after its timeout
        if not msg.data and msg.headers and msg.headers.get("Status") == "503":
            future.set_exception(NoRespondersError())  # nobody subscribed: fail fast
        else:
            future.set_result(msg.data)

    async def call_raw(self, user_key: str, method: str, timeout: float | None = None, **args: Any) -> bytes:
        """The shard's JSON reply as bytes (a value, or an error object: see :func:`is_error`)."""
        return await self.call_raw_partition(
            partition_of(user_key, self.partitions), method, timeout, key=user_key, **args
        )

    async def call_raw_partition(
        self, partition: int, method: str, timeout: float | None = None, *, wait: bool = True, **args: Any
    ) -> bytes:
        """One request to whoever owns ``partition``.

        With ``wait``, a partition without an owner (it is moving, or its shard is restarting)
        is asked again every few milliseconds until the timeout: a move pauses a partition for
        a fraction of a second, and the caller should see an answer, not an error.
        """
        budget = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + budget
        payload = _encode(args)
        while True:
            try:
                reply = await self._request(rpc_subject(partition, method), payload, budget)
            except (TimeoutError, NatsTimeout) as exc:
                raise ShardUnavailable(f"no shard answered for partition {partition} in time") from exc
            except NoRespondersError as exc:
                if not wait:
                    raise ShardUnavailable(f"no shard owns partition {partition}") from exc
            else:
                if not (wait and _not_owned(reply)):
                    return reply
            # Nobody owns it, or its owner just gave it up: it is moving. Ask again shortly.
            budget = deadline - time.monotonic()
            if budget < RETRY_EVERY_S:
                raise ShardUnavailable(f"partition {partition} found no owner in time")
            await asyncio.sleep(RETRY_EVERY_S)

    async def _request(self, subject: str, payload: bytes, timeout: float | None) -> bytes:
        await self._ensure_inbox()
        self._next += 1
        token = str(self._next)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[bytes] = loop.create_future()
        self._pending[token] = future
        timer = loop.call_later(self.timeout if timeout is None else timeout, _expire, future)
        try:
            await self._nc.publish(subject, payload, reply=f"{self._prefix}.{token}")
            return await future
        finally:
            timer.cancel()
            self._pending.pop(token, None)

    # ------------------------------------------------------------------ coalescing

    def start_owner_refresh(self, every: float = OWNER_REFRESH_S) -> None:
        """Learn which shard owns each partition now and every ``every`` seconds."""
        if self._owners_task is None:
            self._owners_task = asyncio.get_running_loop().create_task(self._refresh_owners_forever(every))

    async def _refresh_owners_forever(self, every: float) -> None:
        while True:
            with contextlib.suppress(Exception):
                await self.refresh_owners()
            await asyncio.sleep(every)

    async def refresh_owners(self) -> None:
        async def owner(partition: int) -> int | None:
            try:
                reply = await self.call_raw_partition(partition, "ping", timeout=1.0, wait=False, key="")
            except ShardUnavailable:
                return None
            return None if is_error(reply) else int(_json_decode(reply)["shard"])

        self.owners = list(await asyncio.gather(*(owner(p) for p in range(self.partitions))))

    async def call_coalesced(self, user_key: str, method: str, timeout: float, **args: Any) -> bytes:
        """Like :meth:`call_raw`, but requests for the same shard made within one turn of the event
        loop travel as one NATS message: under load this saves most of the per-message work
        (nats-py on both sides, nats-server routing). The first caller yields once, then sends
        for everyone who joined meanwhile; a lone request goes as a plain call."""
        partition = partition_of(user_key, self.partitions)
        shard = self.owners[partition]
        if shard is None:
            return await self.call_raw(user_key, method, timeout, **args)
        started = time.monotonic()
        try:
            reply = await self._join_batch(shard, partition, user_key, method, args, timeout)
        except ShardUnavailable:
            reply = b""  # the shard is gone (retired, restarting): ask the partition directly
        if reply and not _not_owned(reply):
            return reply
        # Moved since we last learned the owners: relearn, and ask the partition's subject.
        self._forget_owners()
        remaining = timeout - (time.monotonic() - started)
        if remaining < RETRY_EVERY_S:
            raise ShardUnavailable(f"no shard answered for partition {partition} in time")
        return await self.call_raw(user_key, method, remaining, **args)

    async def _join_batch(
        self, shard: int, partition: int, user_key: str, method: str, args: dict[str, Any], timeout: float
    ) -> bytes:
        request = {"partition": partition, "key": user_key, "method": method, **args}
        waiting = self._batches.get(shard)
        if waiting is not None:
            future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
            waiting.append((request, future))
            try:
                return await future
            except (NoRespondersError, NatsTimeout, TimeoutError) as exc:
                raise ShardUnavailable(f"no shard answered for partition {partition}") from exc
        batch: list[tuple[dict[str, Any], asyncio.Future[bytes]]] = []
        self._batches[shard] = batch
        try:
            await asyncio.sleep(0)  # one turn of the loop: concurrent callers join the batch
        finally:
            del self._batches[shard]
        self.coalesced_calls += 1 + len(batch)
        self.coalesced_messages += 1
        if not batch:
            return await self.call_raw(user_key, method, timeout, **args)
        items = [request, *(r for r, _ in batch)]
        try:
            replies = _decode(await self._request(batch_subject(shard), _encode(items), timeout))
        except Exception as exc:
            for _, waiter in batch:
                if not waiter.done():
                    waiter.set_exception(exc)
            if isinstance(exc, (NoRespondersError, NatsTimeout, TimeoutError)):
                raise ShardUnavailable(f"no shard answered for shard {shard}") from exc
            raise
        for (_, waiter), reply in zip(batch, replies[1:], strict=True):
            _resolve(waiter, reply)
        return bytes(replies[0])

    def _forget_owners(self) -> None:
        """A partition moved: relearn the owners now (plain calls meanwhile), not at the next refresh."""
        if self._relearning is None or self._relearning.done():
            self.owners = [None] * self.partitions
            self._relearning = asyncio.get_running_loop().create_task(self.refresh_owners())

    async def call(self, user_key: str, method: str, timeout: float | None = None, **args: Any) -> Any:
        reply = await self.call_raw(user_key, method, timeout, **args)
        value = _json_decode(reply)
        if is_error(reply):
            raise ShardError(f"{value['error']['code']}: {value['error']['message']}")
        return value

    async def get_user(self, user_key: str, now: float | None = None) -> dict[str, Any] | None:
        result: dict[str, Any] | None = await self.call(user_key, "user", now=now)
        return result
