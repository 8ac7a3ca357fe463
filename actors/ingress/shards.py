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
from headstart.adapters.rpc import ShardClient, ShardUnavailable, is_error

#: A decision waits this long for the shard before the default flow is served instead.
DECIDE_DEADLINE_S = 0.25
#: Coalesce concurrent decisions for the same shard into one NATS message (HEADSTART_COALESCE=0: off).
COALESCE = os.environ.get("HEADSTART_COALESCE", "1") == "1"


async def decide(shards: ShardClient, key: str, context: RequestContext) -> bytes:
    """The user's shard's decision (JSON). Raises :class:`ShardUnavailable` past the deadline."""
    if COALESCE:
        return await shards.call_coalesced(key, "decide", timeout=DECIDE_DEADLINE_S, context=context)
    return await shards.call_raw(key, "decide", timeout=DECIDE_DEADLINE_S, context=context)


def default_decision(decider: Decider, key: str, context: RequestContext) -> bytes:
    """The catalog's default flow for a user no shard answered for (JSON), saying so."""
    fallback = decider.decide(
        key, None, None, msgspec.structs.asdict(context), time.time(), personalize=False
    )
    fallback["personalized"] = False
    fallback["explain"].insert(0, "shard unavailable within the deadline: safe default flow")
    return msgspec.json.encode(fallback)


async def select_tutorial(shards: ShardClient, key: str, body: TutorialBody) -> bytes:
    """The shard's tutorial choice (JSON, ``null`` for none). Raises :class:`ShardUnavailable`."""
    return await shards.call_raw(
        key, "tutorial", timeout=DECIDE_DEADLINE_S, context=body.context, step=body.step, feature=body.feature
    )


def default_tutorial(decider: Decider, body: TutorialBody) -> bytes:
    """The default variant when no shard answered (JSON, ``null`` for none)."""
    choice = decider.select_tutorial(
        None, msgspec.structs.asdict(body.context), time.time(), step=body.step, feature=body.feature
    )
    if choice is not None:
        choice["explain"].insert(0, "shard unavailable within the deadline: default variant")
    return msgspec.json.encode(choice)


async def flags(shards: ShardClient, key: str, context: RequestContext) -> dict[str, Any]:
    """The user's flags and segments from the shard. Raises ShardUnavailable or ShardError."""
    reply: dict[str, Any] = await shards.call(key, "flags", timeout=DECIDE_DEADLINE_S, context=context)
    return reply


def default_flags(decider: Decider, key: str, context: RequestContext) -> dict[str, Any]:
    """The flags from the request's context alone (no shard answered)."""
    segments = decider.segments(None, msgspec.structs.asdict(context), time.time())
    return {"flags": decider.flags(key, segments), "segments": segments}


async def user(shards: ShardClient, key: str) -> bytes:
    """The live profile the user's shard holds (JSON, ``null`` for none)."""
    return await shards.call_raw(key, "user")


async def ask_each_shard(
    shards: ShardClient, method: str, timeout: float, **args: Any
) -> tuple[list[Any], list[int]]:
    """``method`` asked of every shard once (through a partition it owns): the decoded answers,
    and the shards that did not answer."""
    first_partition: dict[int, int] = {}
    for partition, shard in enumerate(shards.owners):
        if shard is not None:
            first_partition.setdefault(shard, partition)
    answers, missing = [], []
    for shard, partition in sorted(first_partition.items()):
        try:
            reply = await shards.call_raw_partition(partition, method, timeout=timeout, key="", **args)
        except ShardUnavailable:
            missing.append(shard)
            continue
        if is_error(reply):
            missing.append(shard)
        else:
            answers.append(msgspec.json.decode(reply))
    return answers, missing
