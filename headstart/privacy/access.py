"""Data access requests: everything Headstart holds on one user, as JSON.

``GET /v1/users/{id}/export`` gathers the user's live profile (with segments, cluster and
consent) from the owning shard and the decision and reward records still retained in the
decisions and rewards logs, and audits the request on ``hs.audit.export`` (pseudonymized key).
Segment change batches (many users per message) and aggregate statistics are not personal
records of the user and are not part of it.
"""

from __future__ import annotations

import json
import time
from typing import Any

import msgspec
from nats.js import JetStreamContext

from engine.experiments import exposure_decoder
from engine.keys import partition_of
from engine.learning import decision_decoder, reward_decoder
from headstart.adapters.audit import audit
from headstart.adapters.rpc import ShardClient, UserRequest, is_error
from headstart.adapters.topology import (
    DECISIONS_STREAM,
    EXPOSURES_STREAM,
    REWARDS_STREAM,
    record_log_subject,
)

#: Records read per log at most (a user's decisions within the retention).
MAX_RECORDS = 10_000


async def read_subject(
    js: JetStreamContext, stream: str, subject: str, limit: int = MAX_RECORDS
) -> list[bytes]:
    """The payloads stored on ``subject`` in ``stream``, oldest first (at most ``limit``)."""
    info = await js.stream_info(stream, subjects_filter=subject)
    count = min(int((info.state.subjects or {}).get(subject, 0)), limit)
    if not count:
        return []
    sub = await js.subscribe(subject, stream=stream, ordered_consumer=True)
    try:
        return [(await sub.next_msg(timeout=5.0)).data for _ in range(count)]
    finally:
        await sub.unsubscribe()


async def export_user(
    js: JetStreamContext, shards: ShardClient, user_key: str, partitions: int, who: str
) -> dict[str, Any]:
    partition = partition_of(user_key, partitions)
    reply = await shards.call_raw(UserRequest(key=user_key))
    profile = None if is_error(reply) else json.loads(reply)

    def log(kind: str) -> str:
        return record_log_subject(kind, partition, user_key)

    decisions = [
        msgspec.to_builtins(decision_decoder.decode(data))
        for data in await read_subject(js, DECISIONS_STREAM, log("decision"))
    ]
    rewards = [
        msgspec.to_builtins(reward_decoder.decode(data))
        for data in await read_subject(js, REWARDS_STREAM, log("reward"))
    ]
    exposures = [
        msgspec.to_builtins(exposure_decoder.decode(data))
        for data in await read_subject(js, EXPOSURES_STREAM, log("exposure"))
    ]
    await audit(js, "export", who=who, user_key=user_key)
    return {
        "user_key": user_key,
        "exported_at": time.time(),
        "profile": profile,
        "decisions": decisions,
        "rewards": rewards,
        "exposures": exposures,
    }
