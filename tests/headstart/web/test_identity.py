"""Identity verification's pure rules: modes, anonymous ids, links, batches, Segment calls."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from engine.errors import ConfigError
from headstart.web.identity import (
    BatchRefused,
    IdentityRefused,
    IdentityVerifier,
    batch_user,
    user_hash,
    verify_segment_call,
)

SECRET = b"a unit test identity secret, long enough"
ANONYMOUS_HASH = user_hash(SECRET, "anon-1")


def verifier(mode: str) -> IdentityVerifier:
    return IdentityVerifier(mode, SECRET)  # type: ignore[arg-type]


def refusal(call: object) -> str:
    with pytest.raises(IdentityRefused) as refused:
        call()  # type: ignore[operator]
    return refused.value.code


def test_the_hash_is_hex_hmac_sha256_of_the_id_as_a_backend_computes_it() -> None:
    expected = hmac.new(SECRET, b"alice@example.com", hashlib.sha256).hexdigest()
    assert user_hash(SECRET, "alice@example.com") == expected
    assert verifier("required").matches("alice@example.com", expected.upper())
    assert not verifier("required").matches("alice@example.com", user_hash(SECRET, "bob@example.com"))


def test_required_needs_a_valid_hash_for_identified_users_only() -> None:
    v = verifier("required")
    v.verify("alice", user_hash(SECRET, "alice"))
    v.verify("anon-3f2a", None)
    assert refusal(lambda: v.verify("alice", None)) == "user_hash_required"
    assert refusal(lambda: v.verify("alice", user_hash(SECRET, "bob"))) == "user_hash_mismatch"
    assert refusal(lambda: v.verify("alice", "0" * 64)) == "user_hash_mismatch"


def test_optional_checks_a_hash_only_when_one_is_given_and_off_checks_nothing() -> None:
    optional, off = verifier("optional"), verifier("off")
    optional.verify("alice", None)
    assert refusal(lambda: optional.verify("alice", user_hash(SECRET, "bob"))) == "user_hash_mismatch"
    off.verify("alice", user_hash(SECRET, "bob"))
    off.verify_link("alice", None)


def test_a_link_needs_the_identified_users_hash_in_every_mode_but_off() -> None:
    for mode in ("optional", "required"):
        v = verifier(mode)
        v.verify_link("alice", user_hash(SECRET, "alice"))
        assert refusal(lambda v=v: v.verify_link("alice", None)) == "link_needs_user_hash"
        assert refusal(lambda v=v: v.verify_link("alice", user_hash(SECRET, "bob"))) == "link_needs_user_hash"
        assert refusal(lambda v=v: v.verify_link("anon-1", ANONYMOUS_HASH)) == "link_needs_user_hash"


def test_a_frontend_batch_is_one_users_and_a_link_is_to_one_identified_user() -> None:
    v = verifier("required")
    signed = user_hash(SECRET, "alice")
    assert batch_user(v, True, ["alice", "alice"], signed, None) == "alice"
    assert batch_user(v, True, ["anon-1"], None, None) == "anon-1"
    assert refusal(lambda: batch_user(v, True, ["alice", "bob"], signed, None)) == "one_user_per_batch"
    assert refusal(lambda: batch_user(v, True, ["alice"], None, None)) == "user_hash_required"
    assert batch_user(v, False, ["alice", "bob"], None, None) is None  # a server key: any users
    assert batch_user(v, True, ["alice"], signed, "anon-1") == "alice"
    with pytest.raises(BatchRefused, match="anonymous prefix"):
        batch_user(v, False, ["alice"], None, "bob")
    with pytest.raises(BatchRefused, match="one identified user"):
        batch_user(v, False, ["alice", "bob"], None, "anon-1")
    with pytest.raises(BatchRefused, match="one identified user"):
        batch_user(v, False, ["anon-2"], None, "anon-1")
    # Ids the event validation refuses are left to it (a 400 with the event's index).
    assert batch_user(v, True, [None], None, None) is None


def test_optional_batches_without_a_hash_are_not_checked_but_links_are() -> None:
    v = verifier("optional")
    assert batch_user(v, True, ["alice", "bob"], None, None) is None
    assert refusal(lambda: batch_user(v, True, ["alice", "bob"], user_hash(SECRET, "alice"), None)) == (
        "one_user_per_batch"
    )
    assert refusal(lambda: batch_user(v, True, ["alice"], None, "anon-1")) == "link_needs_user_hash"


def test_segment_calls_carry_the_hash_where_segments_intercom_destination_does() -> None:
    v = verifier("required")
    signed = {"integrations": {"Headstart": {"user_hash": user_hash(SECRET, "alice")}}}
    verify_segment_call(v, {"type": "track", "userId": "alice", "event": "x", **signed})
    verify_segment_call(v, {"type": "page", "anonymousId": "a1"})
    unsigned = {"type": "track", "userId": "alice"}
    assert refusal(lambda: verify_segment_call(v, unsigned)) == "user_hash_required"
    identify = {"type": "identify", "userId": "alice", "anonymousId": "a1"}
    assert refusal(lambda: verify_segment_call(verifier("optional"), identify)) == "link_needs_user_hash"
    verify_segment_call(verifier("optional"), {**identify, **signed})
    with pytest.raises(BatchRefused):
        verify_segment_call(v, {**unsigned, "integrations": {"Headstart": {"user_hash": 1}}})


def test_bad_configurations_fail_at_start_and_the_secret_is_never_shown() -> None:
    with pytest.raises(ConfigError, match="one of off, optional, required"):
        IdentityVerifier("sometimes", SECRET)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="at least 16 bytes"):
        IdentityVerifier("required", b"short")
    with pytest.raises(ConfigError, match="anonymous prefix"):
        IdentityVerifier("required", SECRET, "")
    IdentityVerifier("off", b"")  # off needs no secret
    assert SECRET.decode() not in repr(verifier("required"))
