"""The shard's RPC: one handler per :class:`~headstart.adapters.rpc.Method`, over engine functions.

A request is decoded into its method's Struct, its partition looked up (a partition not owned
here answers ``not_owned``), and its handler answers with a value sent as JSON. Handlers are a
few lines each: decisions are made in :mod:`engine.answers`, reports in :mod:`engine.queries`.
No Ray and no NATS here: :class:`actors.shard.ShardActor` feeds requests in and publishes what
an answer must log, and tests drive the table with a :class:`~engine.shard.ShardState` alone.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import msgspec

from engine import queries
from engine.answers import Answers, Logs
from engine.decision import Decider
from engine.learning import Learner
from engine.partition import PartitionState
from engine.shard import NotOwned, ShardState
from headstart.adapters.rpc import (
    DecideRequest,
    ErrorCode,
    ExperimentMomentsRequest,
    FlagsRequest,
    Method,
    Ping,
    ProfileSampleRequest,
    ProfilesRequest,
    Request,
    Snapshotted,
    SnapshotThroughRequest,
    TutorialRequest,
    decode_batch,
    decode_request,
    encode_batch,
    encode_error,
    encode_reply,
    request_from_item,
)

#: A handler: the partition asked through, the request, and the time to answer as of.
Handler = Callable[[PartitionState, Any, float], Awaitable[Any]]


def _bad_request(exc: Exception) -> bytes:
    return encode_error(ErrorCode.BAD_REQUEST, f"{type(exc).__name__}: {exc}")


class ShardRpc:
    """Answers a shard's requests (:attr:`handlers`: method -> handler).

    ``consumed`` gives the partitions the shard consumes (reports run over them), ``stats`` and
    ``snapshot_through`` are the actor's own, and ``log`` takes what an answer must publish.
    """

    def __init__(
        self,
        shard_id: int,
        state: ShardState,
        answers: Answers,
        consumed: Callable[[], Mapping[int, PartitionState]],
        stats: Callable[[], Awaitable[Any]],
        snapshot_through: Callable[[PartitionState, int], Awaitable[bool]],
        log: Callable[[Logs], None],
    ) -> None:
        self.shard_id = shard_id
        self.state = state
        #: The served catalog version's answers (replaced when the shard switches versions);
        #: the decider and learner are read through it, so a request sees one version.
        self.answers = answers
        self._consumed = consumed
        self._stats = stats
        self._snapshot_through = snapshot_through
        self._log = log
        self.handlers: dict[Method, Handler] = {
            Method.DECIDE: self._decide,
            Method.TUTORIAL: self._tutorial,
            Method.FLAGS: self._flags,
            Method.USER: self._user,
            Method.PING: self._ping,
            Method.STATS: self._stats_of,
            Method.SNAPSHOT_THROUGH: self._snapshotted,
            Method.SEGMENT_SIZES: self._segment_sizes,
            Method.TUTORIAL_STATS: self._tutorial_stats,
            Method.PROFILE_SAMPLE: self._profile_sample,
            Method.PROFILES: self._profiles,
            Method.EXPERIMENT_MOMENTS: self._experiment_moments,
            Method.LEARNED: self._learned,
        }

    @property
    def decider(self) -> Decider:
        return self.answers.decider

    @property
    def learner(self) -> Learner:
        return self.answers.learner

    # ------------------------------------------------------------------ dispatch

    async def on_request(self, partition: int, method: str, data: bytes) -> bytes:
        """The reply to a request on ``hs.rpc.<partition>.<method>``."""
        try:
            known = Method(method)
        except ValueError:
            return encode_error(ErrorCode.UNKNOWN_METHOD, f"no method {method!r}")
        try:
            request = decode_request(known, data)
        except msgspec.DecodeError as exc:
            return _bad_request(exc)
        return await self.answer(partition, request)

    async def on_batch(self, data: bytes) -> bytes:
        """The replies, in order, to several requests in one message (``hs.rpc.shard.<id>.batch``)."""
        try:
            items = decode_batch(data)
        except (ValueError, msgspec.DecodeError) as exc:
            return encode_batch([_bad_request(exc)])
        return encode_batch([await self._item(item) for item in items])

    async def _item(self, item: dict[str, Any]) -> bytes:
        method = str(item.get("method"))
        try:
            known = Method(method)
        except ValueError:
            return encode_error(ErrorCode.UNKNOWN_METHOD, f"no method {method!r}")
        try:
            partition = int(item.get("partition", -1))
            request = request_from_item(known, item)
        except (ValueError, TypeError, msgspec.ValidationError) as exc:
            return _bad_request(exc)
        return await self.answer(partition, request)

    async def answer(self, partition: int, request: Request) -> bytes:
        """The reply to a decoded request for ``partition``."""
        try:
            part = self.state.part(partition)
            value = await self.handlers[request.method](part, request, request.now or time.time())
            return encode_reply(value)
        except NotOwned as exc:
            return encode_error(ErrorCode.NOT_OWNED, str(exc))
        except (KeyError, ValueError, TypeError) as exc:
            return _bad_request(exc)

    # ------------------------------------------------------------------ one user

    async def _decide(self, part: PartitionState, request: DecideRequest, now: float) -> Any:
        decided = self.answers.decide(part, request.key, request.context, now)
        self._log(decided.logs)
        return decided.answer

    async def _tutorial(self, part: PartitionState, request: TutorialRequest, now: float) -> Any:
        chosen = self.answers.tutorial(part, request.key, request.context, now, request.step, request.feature)
        self._log(chosen.logs)
        return chosen.answer

    async def _flags(self, part: PartitionState, request: FlagsRequest, now: float) -> Any:
        return self.answers.flags(part, request.key, request.context, now)

    async def _user(self, part: PartitionState, request: Request, now: float) -> Any:
        return self.answers.user_view(part, request.key, now)

    # ------------------------------------------------------------------ the shard

    async def _ping(self, part: PartitionState, request: Request, now: float) -> Any:
        return Ping(self.shard_id, part.partition, self.decider.version)

    async def _stats_of(self, part: PartitionState, request: Request, now: float) -> Any:
        return await self._stats()

    async def _snapshotted(self, part: PartitionState, request: SnapshotThroughRequest, now: float) -> Any:
        return Snapshotted(await self._snapshot_through(part, request.seq))

    async def _segment_sizes(self, part: PartitionState, request: Request, now: float) -> Any:
        return await queries.segment_sizes(self._consumed(), self.decider, self.learner, now, self.shard_id)

    async def _tutorial_stats(self, part: PartitionState, request: Request, now: float) -> Any:
        return await queries.tutorial_stats(self._consumed(), self.shard_id)

    async def _profile_sample(self, part: PartitionState, request: ProfileSampleRequest, now: float) -> Any:
        return queries.profile_sample(self._consumed(), request.size, now, self.shard_id)

    async def _profiles(self, part: PartitionState, request: ProfilesRequest, now: float) -> Any:
        return queries.profiles_page(
            part, request.after or "", request.limit, now, self.decider, self.learner
        )

    async def _experiment_moments(
        self, part: PartitionState, request: ExperimentMomentsRequest, now: float
    ) -> Any:
        plan = self.decider.experiments
        return await queries.experiment_moments(
            self._consumed(), plan, request.experiment, request.cuts or [], self.shard_id
        )

    async def _learned(self, part: PartitionState, request: Request, now: float) -> Any:
        return queries.learned(self.learner)
