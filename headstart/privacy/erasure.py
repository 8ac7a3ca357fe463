"""Erasure of one user everywhere Headstart keeps them, resumable after a crash.

Steps, each idempotent, with the progress in the ``HS_ERASURE`` key-value bucket (the user's
pseudonymized key, never the raw id) so that :meth:`Eraser.resume` finishes what a crash
interrupted:

1. record the erasure as pending;
2. publish an erase record to the user's partition (``hs.events.<p>.<key>-erase``): the shard
   forgets the user in stream order, and every later replay of the stream meets the record
   after whatever it re-applies, so nothing resurrects the user;
3. wait until the partition's owner applied it and wrote a new snapshot (the previous one
   still had the user);
4. purge the user's subjects from the events stream (events, decision and reward records) and
   from the decisions and rewards logs; the erase record itself stays (it holds nothing but
   the key);
5. write an audit record (``hs.audit.erasure``: who, what, when, the pseudonymized key) and
   mark the erasure done.

Not covered: segment change batches already published on ``hs.segments.>`` (each batch holds
many users; they expire with the stream's retention) — the key there is pseudonymized.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from nats.js import JetStreamContext
from nats.js.errors import BucketNotFoundError, KeyDeletedError, KeyNotFoundError, NotFoundError
from nats.js.kv import KeyValue

from engine.keys import partition_of
from headstart.adapters.audit import audit
from headstart.adapters.rpc import ShardClient, ShardUnavailable, SnapshotThroughRequest, is_error
from headstart.adapters.streams import bucket_keys, file_bucket, publish_prepared
from headstart.adapters.topology import (
    ALIASES_BUCKET,
    ERASURE_BUCKET,
    EVENTS_STREAM,
    RECORD_KINDS,
    record_log_subject,
    user_subject,
)
from headstart.web.segment_api import erase_aliases

#: How long to wait for the partition's owner to apply the erase record and snapshot.
APPLY_TIMEOUT_S = 60.0


async def erasure_bucket(js: JetStreamContext, replicas: int = 1) -> KeyValue:
    description = "Headstart: erasures in progress, by pseudonymized user key"
    return await file_bucket(js, ERASURE_BUCKET, description, replicas)


class Eraser:
    """Erases users; the ingress runs it for ``DELETE /v1/users/{id}``.

    Example::

        eraser = Eraser(js, shards, partitions=64)
        report = await eraser.erase(user_key, who="admin")
        await eraser.resume()   # after a restart: finish interrupted erasures
    """

    def __init__(self, js: JetStreamContext, shards: ShardClient, partitions: int, replicas: int = 1) -> None:
        self.js = js
        self.shards = shards
        self.partitions = partitions
        self.replicas = replicas

    async def erase(self, user_key: str, who: str) -> dict[str, Any]:
        kv = await erasure_bucket(self.js, self.replicas)
        partition = partition_of(user_key, self.partitions)
        try:
            entry = await kv.get(user_key)
            progress = json.loads(entry.value or b"{}")
        except (KeyNotFoundError, KeyDeletedError):
            progress = {"partition": partition, "requested_at": time.time(), "who": who, "step": "pending"}
            await kv.put(user_key, json.dumps(progress).encode())
        if "erase_seq" not in progress:
            subject = user_subject(partition, user_key, "-erase")
            ack = (
                await publish_prepared(
                    self.js, [(subject, b"", {"Nats-Msg-Id": f"erase:{user_key}"})], retry_for=5.0
                )
            )[0]
            progress.update(erase_seq=ack.seq, step="recorded")
            await kv.put(user_key, json.dumps(progress).encode())
        await self._wait_applied(partition, progress["erase_seq"])
        purged = await self._purge(partition, user_key)
        await audit(
            self.js,
            "erasure",
            who=progress.get("who", who),
            msg_id=f"audit-erasure:{user_key}:{progress['erase_seq']}",
            user_key=user_key,
        )
        await kv.delete(user_key)
        return {"partition": partition, "erase_seq": progress["erase_seq"], "purged": purged}

    async def resume(self) -> list[str]:
        """Finish every erasure a crash interrupted; returns the keys finished."""
        kv = await erasure_bucket(self.js, self.replicas)
        done = []
        for key in await bucket_keys(self.js, ERASURE_BUCKET):
            try:
                entry = await kv.get(key)
            except (KeyNotFoundError, KeyDeletedError):
                continue  # finished meanwhile
            if entry.value:
                await self.erase(key, json.loads(entry.value).get("who", "resumed"))
                done.append(key)
        return done

    async def _wait_applied(self, partition: int, seq: int) -> None:
        """Until the partition's owner applied ``seq`` and wrote a snapshot after it."""
        deadline = time.monotonic() + APPLY_TIMEOUT_S
        while True:
            try:
                reply = await self.shards.call_raw_partition(
                    partition, SnapshotThroughRequest(key="", seq=seq), timeout=5.0
                )
                if not is_error(reply) and json.loads(reply).get("snapshotted"):
                    return
            except ShardUnavailable:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"partition {partition} did not apply the erasure in {APPLY_TIMEOUT_S} s")
            await asyncio.sleep(0.1)

    async def _purge(self, partition: int, user_key: str) -> dict[str, bool]:
        out = {}
        # The user's events, then their records in the partition, then in the logs.
        kinds = RECORD_KINDS.items()
        targets = [(EVENTS_STREAM, user_subject(partition, user_key))]
        targets += [(EVENTS_STREAM, user_subject(partition, user_key, f"-{kind}")) for kind, _ in kinds]
        targets += [(log, record_log_subject(kind, partition, user_key)) for kind, (log, _) in kinds]
        for stream, subject in targets:
            try:
                out[subject] = bool(await self.js.purge_stream(stream, subject=subject))
            except NotFoundError:
                out[subject] = False
        # The Segment API's aliases link the user's key to anonymous ones: they go too.
        try:
            aliases = await self.js.key_value(ALIASES_BUCKET)
        except (BucketNotFoundError, NotFoundError):
            aliases = None
        out[ALIASES_BUCKET] = bool(aliases is not None and await erase_aliases(aliases, user_key))
        return out
