"""The key store with a real nats-server: seeding from keys.json, create, revoke, rotate, every
change a compare-and-set (concurrent changes all kept), each audited without key material, the
watch, and the last uses written by several replicas."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import nats
import pytest
from nats.aio.client import Client as NATS

from headstart.adapters.key_store import KeyRefused, KeySet, KeyStore, KeyUsage
from headstart.adapters.topology import AUDIT_STREAM, KEYS_STREAM, KEYS_SUBJECT
from headstart.adapters.versioned import SequenceConflict, append_expecting
from headstart.web.auth import hash_key, key_id
from tests.conftest import reset_streams

pytestmark = pytest.mark.integration

KEYS = {"frontend": "hs_fr_test-frontend", "server": "hs_se_test-server", "admin": "hs_ad_test-admin"}


@pytest.fixture
async def store(nats_url: str, nc: NATS) -> KeyStore:
    await reset_streams(nats_url)
    return await KeyStore.open(nc.jetstream())


async def key_audits(nc: NATS) -> list[dict[str, Any]]:
    """Every audit record of ``hs.audit.keys``, oldest first."""
    js = nc.jetstream()
    state = (await js.stream_info(AUDIT_STREAM)).state
    records = []
    for seq in range(state.first_seq, state.last_seq + 1):
        msg = await js.get_msg(AUDIT_STREAM, seq)
        if msg.subject == "hs.audit.keys":
            assert msg.data is not None
            records.append(json.loads(msg.data))
    return records


async def test_seeding_stores_hashes_once_and_never_the_keys(store: KeyStore, nc: NATS) -> None:
    assert await store.latest() is None
    seeded = await store.seed(KEYS)
    assert seeded.version == 1
    assert {(r.role, r.id, r.hash, r.created_by) for r in seeded.records} == {
        (role, key_id(key), hash_key(key), "keys.json") for role, key in KEYS.items()
    }
    again = await store.seed(KEYS)
    assert again.version == 1 and await store.latest_number() == 1  # nothing new: nothing stored
    stored = (await nc.jetstream().get_last_msg(KEYS_STREAM, KEYS_SUBJECT)).data
    assert stored is not None and not any(key.encode() in stored for key in KEYS.values())
    audits = await key_audits(nc)
    assert [(a["action"], a["role"], a["key_id"], a["who"]) for a in audits] == [
        ("add", role, key_id(key), "keys.json") for role, key in KEYS.items()
    ]


async def test_create_revoke_rotate_and_each_audited(store: KeyStore, nc: NATS) -> None:
    await store.seed(KEYS)
    created = await store.create("server", who="cli:abc")
    assert created.key.startswith("hs_se_") and created.record.id == key_id(created.key)
    revoked = await store.revoke(created.record.id[:7], who="cli:abc")
    assert revoked.revoked_at is not None and revoked.revoked_by == "cli:abc"
    with pytest.raises(KeyRefused, match="rotate it instead"):
        await store.revoke(key_id(KEYS["admin"]), who="cli:abc")
    with pytest.raises(KeyRefused, match="no key with id"):
        await store.revoke("0123456789ab", who="cli:abc")
    before = time.time()
    rotated = await store.rotate("frontend", grace_s=30, who="cli:abc")
    [old] = rotated.replaced
    assert old.id == key_id(KEYS["frontend"]) and old.expires_at is not None
    assert before + 30 <= old.expires_at <= time.time() + 30
    latest = await store.latest()
    assert latest is not None and latest.version == await store.latest_number() == 4
    hashes, expiries = latest.hashes(time.time())
    assert hashes["frontend"] == [hash_key(KEYS["frontend"]), hash_key(rotated.key)]
    assert expiries == {hash_key(KEYS["frontend"]): old.expires_at}
    assert hashes["server"] == [hash_key(KEYS["server"])]  # the revoked one is gone
    # Each change audited: who, what, which key (by id); never a key, never a full hash.
    audits = (await key_audits(nc))[3:]
    assert [(a["action"], a["role"], a["key_id"]) for a in audits] == [
        ("create", "server", created.record.id),
        ("revoke", "server", created.record.id),
        ("rotate", "frontend", rotated.record.id),
        ("expire", "frontend", old.id),
    ]
    assert all(a["who"] == "cli:abc" for a in audits)
    assert audits[-1]["expires_at"] == old.expires_at
    text = json.dumps(audits)
    assert created.key not in text and rotated.key not in text and hash_key(created.key) not in text


async def test_concurrent_changes_from_two_connections_are_all_kept(
    store: KeyStore, nats_url: str, nc: NATS
) -> None:
    await store.seed(KEYS)
    other = await nats.connect(nats_url)
    try:
        elsewhere = await KeyStore.open(other.jetstream())
        created = await asyncio.gather(
            *(s.create("server", who=f"cli:{n}") for n in range(6) for s in (store, elsewhere))
        )
    finally:
        await other.close()
    latest = await store.latest()
    assert latest is not None
    assert {r.id for r in latest.records} >= {c.record.id for c in created}
    assert len(latest.records) == 3 + 12 and latest.version == 1 + 12
    # A write that names a sequence no longer the last is refused, not stored.
    with pytest.raises(SequenceConflict):
        await append_expecting(store.js, KEYS_STREAM, KEYS_SUBJECT, b'{"records":[]}', expected_last=1)
    assert await store.latest_number() == 13


async def test_watch_gives_each_new_set_within_milliseconds(store: KeyStore) -> None:
    await store.seed(KEYS)
    seen: list[tuple[KeySet, float]] = []

    async def on_keys(keys: KeySet) -> None:
        seen.append((keys, time.monotonic()))

    watch = await store.watch(after=1, on_keys=on_keys)
    try:
        for _ in range(3):
            started = time.monotonic()
            created = await store.create("frontend", who="cli:abc")
            deadline = time.monotonic() + 5
            while not seen or not any(r.id == created.record.id for r in seen[-1][0].records):
                assert time.monotonic() < deadline
                await asyncio.sleep(0.005)
            assert seen[-1][1] - started < 1.0
        assert [keys.version for keys, _ in seen] == [2, 3, 4]
    finally:
        await watch.stop()


async def test_last_uses_keep_the_latest_any_replica_reported(store: KeyStore, nc: NATS) -> None:
    usage = await KeyUsage.open(nc.jetstream())
    assert await usage.read() == {}
    await usage.record({"aaaaaaaaaaaa": 200.0, "bbbbbbbbbbbb": 100.0})
    # Another replica that saw an older use of one key and a newer use of the other.
    await (await KeyUsage.open(nc.jetstream())).record({"aaaaaaaaaaaa": 150.0, "bbbbbbbbbbbb": 300.0})
    assert await usage.read() == {"aaaaaaaaaaaa": 200.0, "bbbbbbbbbbbb": 300.0}
