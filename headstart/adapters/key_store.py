"""The API keys an instance accepts, stored in JetStream and changed live.

The key set (:class:`engine.api_keys.KeySet`: every key's hash, role, creator, and when it
stopped or stops working, never a key) is one document: each message of the stream ``HS_KEYS``
(subject ``hs.keys.set``) is the whole set, its stream sequence the set's version; the last
few hundred versions are kept. Every change is a compare-and-set on the stream's last sequence
(``Nats-Expected-Last-Sequence``), read again and retried when another change came first, then
audited on ``hs.audit.keys`` (the key's id and role, who, what; never key material). Ingress
replicas follow the set (:meth:`KeyStore.watch`) and serve each new version within
milliseconds.

No version stored (a store never seeded, as in tests that hand the ingress its keys directly)
means the keys the ingress was given stay; once a version is stored, it alone decides.

When each key was last used is kept apart, in the key-value bucket ``HS_KEY_USAGE`` (key: the
key's id; value: Unix seconds), written every few seconds by each replica (:class:`KeyUsage`).

Example::

    store = await KeyStore.open(js)
    await store.seed(keys_json, who="keys.json")            # every key of keys.json known
    created = await store.create("server", who="cli:3f2a...")  # created.key: shown once
    await store.revoke(created.record.id, who="cli:3f2a...")
    rotated = await store.rotate("frontend", grace_s=86400, who="cli:3f2a...")
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import msgspec
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import KeyNotFoundError, NotFoundError
from nats.js.kv import KeyValue

from engine.api_keys import KeyChange, KeyRecord, KeyRefused, KeySet, hash_key, new_key
from headstart.adapters.audit import audit
from headstart.adapters.streams import bucket_keys, file_bucket
from headstart.adapters.topology import KEY_USAGE_BUCKET, KEYS_STREAM, KEYS_SUBJECT
from headstart.adapters.versioned import SequenceConflict, Watch, append_expecting, watch_latest

__all__ = [
    "KeyRecord",
    "KeyRefused",
    "KeySet",
    "KeyStore",
    "KeyUsage",
    "NewKey",
    "Watch",
    "keys_stream_config",
]

#: Versions of the key set kept: each is a few hundred bytes per key, and the history is for
#: looking back at recent changes (the audit log keeps every change for a year).
KEY_SET_HISTORY = 500
#: Tries of a change that keeps meeting another change stored first: changes are rare and
#: quick, so even a burst of concurrent CLI calls gets through well within this.
CHANGE_TRIES = 20
#: Who added the keys of ``<home>/keys.json`` (the runtime seeds them at each ``up``).
KEYS_FILE = "keys.json"


class NewKey(msgspec.Struct, frozen=True, kw_only=True):
    """A key just created: the key itself (shown once, stored nowhere), its record, and for a
    rotation the keys it replaces (with when they stop)."""

    key: str
    record: KeyRecord
    replaced: tuple[KeyRecord, ...] = ()


def keys_stream_config(replicas: int = 1) -> StreamConfig:
    return StreamConfig(
        name=KEYS_STREAM,
        description="Headstart: the API keys accepted (hashes only; each message the whole set)",
        subjects=[KEYS_SUBJECT],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        max_msgs=KEY_SET_HISTORY,
        discard=DiscardPolicy.OLD,
        num_replicas=replicas,
    )


_set_decoder = msgspec.json.Decoder(KeySet)
_encoder = msgspec.json.Encoder()


class KeyStore:
    """The stored key set (see the module's docstring)."""

    def __init__(self, js: JetStreamContext, replicas: int = 1) -> None:
        self.js = js
        self.replicas = replicas

    @classmethod
    async def open(cls, js: JetStreamContext, replicas: int = 1) -> KeyStore:
        """The store, its stream created if missing."""
        try:
            await js.stream_info(KEYS_STREAM)
        except NotFoundError:
            await js.add_stream(keys_stream_config(replicas))
        return cls(js, replicas)

    # ------------------------------------------------------------------ reading

    async def latest_number(self) -> int:
        """The latest version's number (0: none stored)."""
        info = await self.js.stream_info(KEYS_STREAM)
        return int(info.state.last_seq or 0)

    async def latest(self) -> KeySet | None:
        """The key set now (None: none stored yet)."""
        try:
            msg = await self.js.get_last_msg(KEYS_STREAM, KEYS_SUBJECT)
        except NotFoundError:
            return None
        assert msg.seq is not None and msg.data is not None
        return msgspec.structs.replace(_set_decoder.decode(msg.data), version=msg.seq)

    # ------------------------------------------------------------------ changing

    async def seed(self, keys: dict[str, str], who: str = KEYS_FILE) -> KeySet:
        """Every key of ``keys`` (the home's ``keys.json``: role -> key) known, as the file's key
        of its role (see :meth:`KeySet.seeded`); returns the set now."""
        hashes = {role: hash_key(key) for role, key in keys.items()}
        stored, _ = await self._change(lambda keys_now, now: keys_now.seeded(hashes, who, now), who)
        return stored

    async def create(self, role: str, who: str) -> NewKey:
        """A new key of ``role``; the key itself is returned once and stored nowhere."""
        key = new_key(role)
        stored, _ = await self._change(lambda keys, now: keys.created(role, hash_key(key), who, now), who)
        return NewKey(key=key, record=stored.find(hash_key(key)))

    async def revoke(self, id_or_prefix: str, who: str) -> KeyRecord:
        """The key named (its id, or a prefix of at least 6 characters) stops working now.
        :class:`KeyRefused` for an unknown or ambiguous id, and for the key ``keys.json`` holds
        for its role (rotate that one)."""
        stored, _ = await self._change(lambda keys, now: keys.revoked(id_or_prefix, who, now), who)
        return stored.find(id_or_prefix)

    async def rotate(self, role: str, grace_s: float, who: str) -> NewKey:
        """A new key for ``role`` in place of the one ``keys.json`` holds, which keeps working
        for ``grace_s`` seconds (0: stops now). The caller writes the new key into the file."""
        key = new_key(role)
        key_hash = hash_key(key)
        stored, changes = await self._change(
            lambda keys, now: keys.rotated(role, key_hash, grace_s, who, now), who
        )
        replaced = tuple(done.record for done in changes if done.action == "expire")
        return NewKey(key=key, record=stored.find(key_hash), replaced=replaced)

    async def _change(
        self, change: Callable[[KeySet, float], tuple[KeySet, list[KeyChange]]], who: str
    ) -> tuple[KeySet, list[KeyChange]]:
        """Apply ``change`` to the latest set and store the result if ``change`` changed
        anything, as a compare-and-set, read again and retried while another change comes first.
        Each change is audited once stored."""
        for _ in range(CHANGE_TRIES):
            current = await self.latest()
            last = current.version if current is not None else 0
            changed, changes = change(current or KeySet(), time.time())
            if not changes:
                return current or KeySet(), []
            try:
                version = await append_expecting(
                    self.js, KEYS_STREAM, KEYS_SUBJECT, _encoder.encode(changed), last
                )
            except SequenceConflict:
                continue
            for index, done in enumerate(changes):
                await audit(
                    self.js,
                    "keys",
                    who=who,
                    msg_id=f"audit-keys:{version}:{index}",
                    action=done.action,
                    key_id=done.record.id,
                    role=done.record.role,
                    version=version,
                    expires_at=done.record.expires_at,
                )
            return msgspec.structs.replace(changed, version=version), changes
        raise KeyRefused(f"the key set kept changing meanwhile ({CHANGE_TRIES} tries): try again")

    # ------------------------------------------------------------------ following

    async def watch(
        self, after: int, on_keys: Callable[[KeySet], Awaitable[None]], poll_s: float = 5.0
    ) -> Watch:
        """Call ``on_keys`` with the newest set whenever one newer than ``after`` (or than the
        last one given) is stored (:func:`headstart.adapters.versioned.watch_latest`)."""

        async def serve_latest() -> int:
            keys = await self.latest()
            assert keys is not None
            await on_keys(keys)
            return keys.version

        return await watch_latest(
            self.js, KEYS_STREAM, KEYS_SUBJECT, after, self.latest_number, serve_latest, poll_s, what="keys"
        )


class KeyUsage:
    """When each key was last used, in the bucket ``HS_KEY_USAGE`` (by key id, Unix seconds).

    Each ingress replica keeps its own last uses in memory and writes those that changed every
    few seconds; a write never moves a key's time back (another replica may have seen a later
    use), so the bucket holds the latest use any replica reported.
    """

    def __init__(self, js: JetStreamContext, bucket: KeyValue) -> None:
        self.js = js
        self.bucket = bucket

    @classmethod
    async def open(cls, js: JetStreamContext, replicas: int = 1) -> KeyUsage:
        """The bucket, created if missing."""
        description = "Headstart: when each API key was last used (key id -> Unix seconds)"
        return cls(js, await file_bucket(js, KEY_USAGE_BUCKET, description, replicas))

    async def record(self, last_used: dict[str, float]) -> None:
        """Store ``last_used`` (key id -> Unix seconds) where it is later than what is stored."""
        for key, at in last_used.items():
            stored = await self._get(key)
            if stored is None or stored < at:
                await self.bucket.put(key, repr(at).encode())

    async def read(self) -> dict[str, float]:
        """Every key's last use (key id -> Unix seconds)."""
        found = {}
        for key in await bucket_keys(self.js, KEY_USAGE_BUCKET):
            at = await self._get(key)
            if at is not None:
                found[key] = at
        return found

    async def _get(self, key: str) -> float | None:
        try:
            entry = await self.bucket.get(key)
        except KeyNotFoundError:
            return None
        return float(entry.value) if entry.value else None
