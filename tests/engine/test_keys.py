from __future__ import annotations

import pytest

from engine.errors import ConfigError
from engine.keys import Pseudonymizer, fnv1a_32, is_user_key, partition_of


def test_fnv1a_32_known_vectors() -> None:
    # Published FNV-1a test vectors.
    assert fnv1a_32(b"") == 0x811C9DC5
    assert fnv1a_32(b"a") == 0xE40C292C
    assert fnv1a_32(b"foobar") == 0xBF9CF968


def test_keys_are_stable_secret_dependent_and_subject_safe() -> None:
    a, b = Pseudonymizer(b"k" * 32), Pseudonymizer(b"j" * 32)
    key = a.key("alice@example.com")
    assert key == a.key("alice@example.com")
    assert key != b.key("alice@example.com")
    assert key != a.key("bob@example.com")
    assert is_user_key(key)
    assert not any(c in key for c in ".*> @")


def test_short_secrets_are_refused() -> None:
    with pytest.raises(ConfigError):
        Pseudonymizer(b"short")


def test_partitions_spread_evenly() -> None:
    p = Pseudonymizer(b"k" * 32)
    counts = [0] * 16
    for i in range(16_000):
        counts[partition_of(p.key(f"user{i}"), 16)] += 1
    assert min(counts) > 800 and max(counts) < 1200


def test_keys_are_lowercase_unpadded_base32_of_the_first_128_bits_of_the_hmac() -> None:
    import base64
    import hashlib
    import hmac

    secret = b"k" * 32
    p = Pseudonymizer(secret)
    for raw in ("alice@example.com", "", "ünïcødé", "x" * 300):
        digest = hmac.new(secret, raw.encode(), hashlib.sha256).digest()[:16]
        assert p.key(raw) == base64.b32encode(digest).decode().rstrip("=").lower()
