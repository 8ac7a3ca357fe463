"""Every question the ingress asks a shard, and the local answers when no shard answers in time.

One function per shard RPC method and one per local :class:`~engine.decision.Decider` call:
the routes call these and never the RPC client or the decider directly. The path to a shard is
one NATS request/reply to ``hs.rpc.<partition>.<method>`` (see :mod:`headstart.adapters.rpc`);
its JSON answer is passed through as it is.
"""

from __future__ import annotations

import os
import time
from typing import Any

import msgspec

from actors.ingress.schemas import RequestContext, TutorialBody
from engine.decision import Decider
from headstart.adapters.rpc import (
    DecideRequest,
    FlagsRequest,
    Request,
    ShardClient,
    TutorialRequest,
    UserRequest,
    context_of,
)

#: A decision waits this long for the shard before the default flow is served instead.
DECIDE_DEADLINE_S = 0.25
#: Coalesce concurrent decisions for the same shard into one NATS message (HEADSTART_COALESCE=0: off).
COALESCE = os.environ.get("HEADSTART_COALESCE", "1") == "1"


async def decide(shards: ShardClient, key: str, context: RequestContext) -> bytes:
    """The user's shard's decision (JSON). Raises :class:`ShardUnavailable` past the deadline."""
    request = DecideRequest(key=key, context=context_of(context))
    if COALESCE:
        return await shards.call_coalesced(request, DECIDE_DEADLINE_S)
    return await shards.call_raw(request, DECIDE_DEADLINE_S)


def default_decision(decider: Decider, key: str, context: RequestContext) -> bytes:
    """The catalog's default flow for a user no shard answered for (JSON), saying so; like a
    shard's answer it names the catalog version it comes from (the decider's)."""
    fallback = decider.decide(
        key, None, None, msgspec.structs.asdict(context), time.time(), personalize=False
    ).answer
    fallback.personalized = False
    fallback.explain.insert(0, "shard unavailable within the deadline: safe default flow")
    return msgspec.json.encode(fallback)


async def select_tutorial(shards: ShardClient, key: str, body: TutorialBody) -> bytes:
    """The shard's tutorial choice (JSON, ``null`` for none). Raises :class:`ShardUnavailable`."""
    request = TutorialRequest(key=key, context=context_of(body.context), step=body.step, feature=body.feature)
    return await shards.call_raw(request, DECIDE_DEADLINE_S)


def default_tutorial(decider: Decider, body: TutorialBody) -> bytes:
    """The default variant when no shard answered (JSON, ``null`` for none)."""
    choice = decider.select_tutorial(
        None, msgspec.structs.asdict(body.context), time.time(), step=body.step, feature=body.feature
    )
    if choice is None:
        return b"null"
    choice.answer.explain.insert(0, "shard unavailable within the deadline: default variant")
    return msgspec.json.encode(choice.answer)


async def flags(shards: ShardClient, key: str, context: RequestContext) -> dict[str, Any]:
    """The user's flags and segments from the shard. Raises ShardUnavailable or ShardError."""
    reply: dict[str, Any] = await shards.call(
        FlagsRequest(key=key, context=context_of(context)), DECIDE_DEADLINE_S
    )
    return reply


def default_flags(decider: Decider, key: str, context: RequestContext) -> dict[str, Any]:
    """The flags from the request's context alone (no shard answered)."""
    segments = decider.segments(None, msgspec.structs.asdict(context), time.time())
    return {"flags": decider.flags(key, segments), "segments": segments}


async def user(shards: ShardClient, key: str) -> bytes:
    """The live profile the user's shard holds (JSON, ``null`` for none)."""
    return await shards.call_raw(UserRequest(key=key))


async def ask_each_shard(
    shards: ShardClient, request: Request, timeout: float
) -> tuple[list[Any], list[int]]:
    """``request`` asked of every shard once (through a partition it owns): the decoded answers,
    and the shards that did not answer."""
    each = await shards.ask_each_shard(request, timeout)
    return each.answers, each.missing
