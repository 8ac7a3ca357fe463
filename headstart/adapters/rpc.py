"""Requests to the shard that owns a partition, over NATS request/reply.

Each shard subscribes ``hs.rpc.<partition>.<method>`` for the partitions it owns, so NATS routes
a request to the current owner: callers need only the user key, not the partition → shard map,
and a partition that is moving simply has no responder for a moment.

Every method is a member of :class:`Method`, and its request a :class:`Request` Struct
(:data:`REQUESTS`), sent as a msgpack map. Replies are JSON, ready to be an HTTP response body
as they are: the value itself, or ``{"error": {"code": ..., "message": ...}}``; the HTTP ingress
passes them through without decoding and re-encoding.

>>> request = DecideRequest(key="k" * 26, context={"device_type": "mobile"})
>>> request.method, rpc_subject(3, request.method)
(<Method.DECIDE: 'decide'>, 'hs.rpc.3.decide')
>>> decode_request(Method.DECIDE, encode_request(request)) == request
True
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping
from enum import StrEnum
from typing import Any, ClassVar, cast

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from engine.errors import HeadstartError
from engine.keys import partition_of
from headstart.adapters.topology import batch_subject, rpc_subject

_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder().decode
_json_encode = msgspec.json.Encoder().encode
_json_decode = msgspec.json.Decoder().decode
ERROR_PREFIX = b'{"error":'


class Method(StrEnum):
    """Every request a shard answers: the last token of its subject."""

    DECIDE = "decide"
    TUTORIAL = "tutorial"
    FLAGS = "flags"
    USER = "user"
    PING = "ping"
    STATS = "stats"
    SNAPSHOT_THROUGH = "snapshot_through"
    SEGMENT_SIZES = "segment_sizes"
    TUTORIAL_STATS = "tutorial_stats"
    PROFILE_SAMPLE = "profile_sample"
    PROFILES = "profiles"
    EXPERIMENT_MOMENTS = "experiment_moments"
    LEARNED = "learned"


class ErrorCode(StrEnum):
    """The ``code`` of an error reply."""

    NOT_OWNED = "not_owned"
    BAD_REQUEST = "bad_request"
    UNKNOWN_METHOD = "unknown_method"


class Request(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A request to a shard. ``key``: the user's key (``""`` for a shard-wide request);
    ``now``: the time to answer as of (the shard's clock by default)."""

    method: ClassVar[Method]
    key: str
    now: float | None = None


class DecideRequest(Request):
    """The next step, tutorial variant, message and flags (``/v1/decide``)."""

    method = Method.DECIDE
    context: dict[str, Any] | None = None


class TutorialRequest(Request):
    """Which variant of the tutorial for ``step`` or ``feature`` (``/v1/tutorials/select``)."""

    method = Method.TUTORIAL
    context: dict[str, Any] | None = None
    step: str | None = None
    feature: str | None = None


class FlagsRequest(Request):
    """Every flag's value for the user, with why (``/v1/flags``)."""

    method = Method.FLAGS
    context: dict[str, Any] | None = None


class UserRequest(Request):
    """The user's live state and the models' insights, or ``null``."""

    method = Method.USER


class PingRequest(Request):
    """Which shard owns the partition: ``{"shard", "partition"}``."""

    method = Method.PING


class StatsRequest(Request):
    """The shard's stats (what ``headstart status`` shows)."""

    method = Method.STATS


class SnapshotThroughRequest(Request):
    """Whether the partition's stored snapshot is past ``seq`` (writing one if it is applied):
    ``{"snapshotted": bool}``."""

    method = Method.SNAPSHOT_THROUGH
    seq: int


class SegmentSizesRequest(Request):
    """Segment sizes over the shard's users (:class:`engine.queries.SegmentSizes`)."""

    method = Method.SEGMENT_SIZES


class TutorialStatsRequest(Request):
    """Tutorial starts and completions by segment (:class:`engine.queries.TutorialStats`)."""

    method = Method.TUTORIAL_STATS


class ProfileSampleRequest(Request):
    """Up to ``size`` users' numeric fields (:class:`engine.queries.ProfileSample`)."""

    method = Method.PROFILE_SAMPLE
    size: int = 2000


class ProfilesRequest(Request):
    """A page of the partition's profiles after key ``after`` (:class:`engine.queries.ProfilesPage`)."""

    method = Method.PROFILES
    after: str | None = None
    limit: int = 1000


class ExperimentMomentsRequest(Request):
    """An experiment's statistics at ``cuts`` (:class:`engine.queries.ExperimentMoments`)."""

    method = Method.EXPERIMENT_MOMENTS
    experiment: str
    cuts: list[float] | None = None


class LearnedRequest(Request):
    """What the served policies learned (:class:`engine.queries.LearnedPoint` per point)."""

    method = Method.LEARNED


#: The request Struct of every method.
REQUESTS: dict[Method, type[Request]] = {
    cls.method: cls
    for cls in (
        DecideRequest,
        TutorialRequest,
        FlagsRequest,
        UserRequest,
        PingRequest,
        StatsRequest,
        SnapshotThroughRequest,
        SegmentSizesRequest,
        TutorialStatsRequest,
        ProfileSampleRequest,
        ProfilesRequest,
        ExperimentMomentsRequest,
        LearnedRequest,
    )
}
_DECODERS = {method: msgspec.msgpack.Decoder(cls) for method, cls in REQUESTS.items()}


class Ping(msgspec.Struct):
    """The reply to :class:`PingRequest`."""

    shard: int
    partition: int
    #: The catalog version the shard serves (0: a catalog given directly, not stored).
    catalog_version: int = 0


class Snapshotted(msgspec.Struct):
    """The reply to :class:`SnapshotThroughRequest`."""

    snapshotted: bool


class Each(msgspec.Struct):
    """A request asked of every shard (:meth:`ShardClient.ask_each_shard`): the decoded answers
    in shard order, by shard, and the shards that did not answer."""

    answers: list[Any]
    by_shard: dict[int, Any]
    missing: list[int]


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


def context_of(context: Mapping[str, Any] | msgspec.Struct | None) -> dict[str, Any] | None:
    """A request's ``context`` as given: a Struct (the ingress's validated body) encodes as the
    same map the shard decodes as a dict, so it is sent as it is, with no conversion on the
    decision path."""
    return cast(dict[str, Any] | None, context)


def _resolve(future: asyncio.Future[bytes], reply: bytes) -> None:
    if not future.done():
        future.set_result(reply)


def _expire(future: asyncio.Future[bytes]) -> None:
    if not future.done():
        future.set_exception(TimeoutError())


def encode_request(request: Request) -> bytes:
    return _encode(request)


def decode_request(method: Method, data: bytes) -> Request:
    """The request of ``method`` in ``data``; raises :class:`msgspec.DecodeError` (a
    :class:`msgspec.ValidationError` for a map that is not a valid request)."""
    return _DECODERS[method].decode(data)


def request_from_item(method: Method, item: Mapping[str, Any]) -> Request:
    """The request of ``method`` in one item of a batch (whose other keys are ignored)."""
    return msgspec.convert(item, REQUESTS[method])


def batch_item(partition: int, request: Request) -> dict[str, Any]:
    """One request of a batch: its fields, with its partition and method."""
    item: dict[str, Any] = {"partition": partition, "method": request.method.value}
    for name in request.__struct_fields__:
        value = getattr(request, name)
        if value is not None:
            item[name] = value
    return item


def encode_reply(value: Any) -> bytes:
    return _json_encode(value)


def encode_error(code: ErrorCode, message: str) -> bytes:
    return _json_encode({"error": {"code": code.value, "message": message}})


def decode_batch(data: bytes) -> list[dict[str, Any]]:
    items = _decode(data)
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise ValueError("a batch is a list of maps")
    return items


def encode_batch(replies: list[bytes]) -> bytes:
    return _encode(replies)


def is_error(reply: bytes) -> bool:
    return reply.startswith(ERROR_PREFIX)


def decode_reply(reply: bytes) -> Any:
    """A JSON reply decoded; raises :class:`ShardError` for an error reply."""
    value = _json_decode(reply)
    if is_error(reply):
        raise ShardError(f"{value['error']['code']}: {value['error']['message']}")
    return value


class ShardClient:
    """Calls shards: one request by user key or partition, coalesced per shard, or one asked
    of every shard (:meth:`ask_each_shard`).

    Requests are multiplexed over one reply subscription with counter tokens and a timer per
    request. nats-py's ``request()`` does the same job with a random token (a syscall) and an
    ``asyncio.wait_for`` (a task) per call, which showed up on the decision path's profile.

    Example::

        client = ShardClient(nc, partitions=64)
        await client.get_user(key)
        reply = await client.call_raw(DecideRequest(key=key, context={}))
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

    async def call_raw(self, request: Request, timeout: float | None = None) -> bytes:
        """The JSON reply (a value, or an error object: see :func:`is_error`) of the shard that
        owns the partition of ``request.key``."""
        return await self.call_raw_partition(partition_of(request.key, self.partitions), request, timeout)

    async def call_raw_partition(
        self, partition: int, request: Request, timeout: float | None = None, *, wait: bool = True
    ) -> bytes:
        """One request to whoever owns ``partition``.

        With ``wait``, a partition without an owner (it is moving, or its shard is restarting)
        is asked again every few milliseconds until the timeout: a move pauses a partition for
        a fraction of a second, and the caller should see an answer, not an error.
        """
        budget = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + budget
        payload = _encode(request)
        subject = rpc_subject(partition, request.method)
        while True:
            try:
                reply = await self._request(subject, payload, budget)
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
        if not self._nc.is_connected:
            # The broker is down or restarting: no shard can answer, and a request buffered
            # until the reconnect would only make the caller wait out its deadline.
            raise ShardUnavailable("not connected to NATS")
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

    # ------------------------------------------------------------------ every shard

    async def ask_each_shard(
        self,
        request: Request,
        timeout: float,
        *,
        via: Mapping[int, int] | None = None,
        wait: bool = True,
    ) -> Each:
        """``request`` asked of every shard once, through a partition it owns (``via``: shard ->
        partition; by default the first partition of each shard in :attr:`owners`), one shard
        after another. A shard that does not answer, or answers an error, is missing."""
        if via is None:
            first: dict[int, int] = {}
            for partition, shard in enumerate(self.owners):
                if shard is not None:
                    first.setdefault(shard, partition)
            via = first
        answers, by_shard, missing = [], {}, []
        for shard, partition in sorted(via.items()):
            try:
                reply = await self.call_raw_partition(partition, request, timeout, wait=wait)
            except ShardUnavailable:
                missing.append(shard)
                continue
            if is_error(reply):
                missing.append(shard)
            else:
                by_shard[shard] = _json_decode(reply)
                answers.append(by_shard[shard])
        return Each(answers, by_shard, missing)

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
                reply = await self.call_raw_partition(partition, PingRequest(key=""), timeout=1.0, wait=False)
            except ShardUnavailable:
                return None
            return None if is_error(reply) else int(_json_decode(reply)["shard"])

        self.owners = list(await asyncio.gather(*(owner(p) for p in range(self.partitions))))

    async def call_coalesced(self, request: Request, timeout: float) -> bytes:
        """Like :meth:`call_raw`, but requests for the same shard made within one turn of the event
        loop travel as one NATS message: under load this saves most of the per-message work
        (nats-py on both sides, nats-server routing). The first caller yields once, then sends
        for everyone who joined meanwhile; a lone request goes as a plain call."""
        partition = partition_of(request.key, self.partitions)
        shard = self.owners[partition]
        if shard is None:
            return await self.call_raw(request, timeout)
        started = time.monotonic()
        try:
            reply = await self._join_batch(shard, partition, request, timeout)
        except ShardUnavailable:
            reply = b""  # the shard is gone (retired, restarting): ask the partition directly
        if reply and not _not_owned(reply):
            return reply
        # Moved since we last learned the owners: relearn, and ask the partition's subject.
        self._forget_owners()
        remaining = timeout - (time.monotonic() - started)
        if remaining < RETRY_EVERY_S:
            raise ShardUnavailable(f"no shard answered for partition {partition} in time")
        return await self.call_raw(request, remaining)

    async def _join_batch(self, shard: int, partition: int, request: Request, timeout: float) -> bytes:
        item = batch_item(partition, request)
        waiting = self._batches.get(shard)
        if waiting is not None:
            future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
            waiting.append((item, future))
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
            return await self.call_raw(request, timeout)
        items = [item, *(i for i, _ in batch)]
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

    async def call(self, request: Request, timeout: float | None = None) -> Any:
        """The decoded reply; raises :class:`ShardError` for an error reply."""
        return decode_reply(await self.call_raw(request, timeout))

    async def get_user(self, user_key: str, now: float | None = None) -> dict[str, Any] | None:
        result: dict[str, Any] | None = await self.call(UserRequest(key=user_key, now=now))
        return result
