"""The key set's rules, as pure data: seeding from keys.json, create, revoke, rotate with a grace
period, what works when; and the authenticator honouring a grace period's end by the clock."""

from __future__ import annotations

import pytest

from engine.api_keys import KeyRefused, KeySet, hash_key, key_id, parse_duration
from headstart.web.auth import Authenticator

FILE = {"frontend": hash_key("f1"), "server": hash_key("s1"), "admin": hash_key("a1")}


def seeded(now: float = 100.0) -> KeySet:
    keys, changes = KeySet().seeded(FILE, who="keys.json", now=now)
    assert [c.action for c in changes] == ["add", "add", "add"]
    return keys


def test_seeding_adds_the_files_keys_once_marked_as_the_files() -> None:
    keys = seeded()
    assert {(r.role, r.hash, r.in_keys_file, r.created_by) for r in keys.records} == {
        (role, h, True, "keys.json") for role, h in FILE.items()
    }
    assert keys.records[0].id == key_id("f1")
    again, changes = keys.seeded(FILE, who="keys.json", now=200.0)
    assert changes == [] and again == keys


def test_an_operators_new_key_in_the_file_is_added_and_the_old_one_keeps_working() -> None:
    keys = seeded()
    edited = {**FILE, "frontend": hash_key("f-by-hand")}
    after, changes = keys.seeded(edited, who="keys.json", now=200.0)
    assert [(c.action, c.record.hash, c.record.in_keys_file) for c in changes] == [
        ("add", hash_key("f-by-hand"), True),
        ("keys_file", hash_key("f1"), False),
    ]
    works = {h for _, h, _ in after.active(now=300.0)}
    assert {hash_key("f1"), hash_key("f-by-hand")} <= works
    # No longer the file's key: it can be revoked now.
    revoked, _ = after.revoked(key_id("f1"), who="cli:x", now=300.0)
    assert hash_key("f1") not in {h for _, h, _ in revoked.active(now=300.0)}


def test_a_revoked_or_expired_key_is_never_brought_back_by_seeding() -> None:
    keys, _ = seeded().created("server", hash_key("s2"), who="cli:x", now=110.0)
    keys, _ = keys.revoked(key_id("s2"), who="cli:x", now=120.0)
    keys, _ = keys.rotated("admin", hash_key("a2"), grace_s=0, who="cli:x", now=130.0)
    # An old file that still has the old admin key, and the revoked key under its role.
    old_file = {**FILE, "server": hash_key("s2")}
    after, _ = keys.seeded(old_file, who="keys.json", now=140.0)
    states = {r.hash: r.state(now=150.0) for r in after.records}
    assert states[hash_key("s2")] == "revoked" and states[hash_key("a1")] == "expired"


def test_revoke_refuses_the_files_key_unknown_short_and_ambiguous_ids() -> None:
    keys = seeded()
    with pytest.raises(KeyRefused, match="rotate it instead"):
        keys.revoked(key_id("f1"), who="cli:x", now=1.0)
    with pytest.raises(KeyRefused, match="no key with id 'ffffffffffff'"):
        keys.revoked("ffffffffffff", who="cli:x", now=1.0)
    with pytest.raises(KeyRefused, match="too short"):
        keys.revoked(key_id("f1")[:5], who="cli:x", now=1.0)
    # Two keys whose ids share their first 6 characters: those name neither, 7 name one.
    for last in "01":
        keys, _ = keys.created("server", "abcdef" + last * 58, who="cli:x", now=2.0)
    with pytest.raises(KeyRefused, match="'abcdef' names 2 keys"):
        keys.revoked("abcdef", who="cli:x", now=3.0)
    revoked, [change] = keys.revoked("ABCDEF1", who="cli:x", now=3.0)
    assert change.action == "revoke" and change.record.id == "abcdef111111"
    assert revoked.find("abcdef1").revoked_by == "cli:x"
    # Revoking it again changes nothing (and is not an error).
    assert revoked.revoked("abcdef1", who="cli:y", now=4.0) == (revoked, [])


def test_seeding_refuses_a_known_key_under_another_role() -> None:
    with pytest.raises(KeyRefused, match="its admin key is known with the role frontend"):
        seeded().seeded({**FILE, "admin": hash_key("f1")}, who="keys.json", now=1.0)


def test_create_refuses_an_unknown_role() -> None:
    with pytest.raises(KeyRefused, match="unknown role 'owner': one of frontend, server, admin"):
        seeded().created("owner", hash_key("o"), who="cli:x", now=1.0)


def test_rotation_keeps_the_old_key_for_the_grace_then_only_the_new_one_works() -> None:
    keys, changes = seeded(now=100.0).rotated("frontend", hash_key("f2"), grace_s=60, who="cli:x", now=200.0)
    assert [(c.action, c.record.id) for c in changes] == [("rotate", key_id("f2")), ("expire", key_id("f1"))]
    old, new = keys.find(key_id("f1")), keys.find(key_id("f2"))
    assert (old.in_keys_file, old.expires_at, new.in_keys_file) == (False, 260.0, True)
    assert [r.state(now=259.0) for r in (old, new)] == ["grace", "active"]
    assert [r.state(now=260.0) for r in (old, new)] == ["expired", "active"]
    hashes, expiries = keys.hashes(now=200.0)
    assert hashes["frontend"] == [hash_key("f1"), hash_key("f2")] and expiries == {hash_key("f1"): 260.0}
    assert keys.hashes(now=261.0)[0]["frontend"] == [hash_key("f2")]
    # The other roles are untouched.
    assert keys.hashes(now=261.0)[0]["admin"] == [hash_key("a1")]
    # A second rotation within the grace: the first old key keeps its earlier end.
    again, _ = keys.rotated("frontend", hash_key("f3"), grace_s=3600, who="cli:x", now=210.0)
    assert again.find(key_id("f1")).expires_at == 260.0 and again.find(key_id("f2")).expires_at == 3810.0


def test_rotation_with_no_grace_ends_the_old_key_now_and_refuses_a_negative_one() -> None:
    keys, _ = seeded().rotated("admin", hash_key("a2"), grace_s=0, who="cli:x", now=200.0)
    assert keys.find(key_id("a1")).state(now=200.0) == "expired"
    with pytest.raises(KeyRefused, match="negative"):
        keys.rotated("admin", hash_key("a3"), grace_s=-1, who="cli:x", now=200.0)


def test_a_change_already_stored_is_not_applied_twice() -> None:
    keys, _ = seeded().created("server", hash_key("s2"), who="cli:x", now=1.0)
    assert keys.created("server", hash_key("s2"), who="cli:x", now=2.0) == (keys, [])
    rotated, _ = keys.rotated("server", hash_key("s3"), grace_s=5, who="cli:x", now=3.0)
    assert rotated.rotated("server", hash_key("s3"), grace_s=5, who="cli:x", now=4.0) == (rotated, [])


def test_the_authenticator_ends_a_grace_period_by_the_clock() -> None:
    keys, _ = seeded(now=100.0).rotated("frontend", hash_key("f2"), grace_s=60, who="cli:x", now=200.0)
    auth = Authenticator(*keys.hashes(now=200.0))
    assert auth.identify("Bearer f1", now=259.9) == ("frontend", hash_key("f1"))
    assert auth.identify("Bearer f1", now=260.0) is None
    assert auth.identify("Bearer f2", now=1e12) == ("frontend", hash_key("f2"))
    assert auth.identify("Bearer a1", now=1e12) == ("admin", hash_key("a1"))
    assert auth.identify("Bearer nope") is None and auth.identify("Basic f1") is None
    # Without a time given, the clock decides: the grace ended long ago.
    assert auth.identify("Bearer f1") is None and auth.role_of("Bearer f2") == "frontend"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("15m", 900), ("24h", 86400), ("7d", 604800), ("0", 0), (" 2H ", 7200), ("1.5m", 90)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "h", "-1h", "1w", "1h30m", "soon"])
def test_durations_refused_say_what_to_write(text: str) -> None:
    with pytest.raises(KeyRefused, match=r"write e\.g\. 30s, 15m, 24h or 7d"):
        parse_duration(text)
