"""A replica's accepted keys without NATS: the keys given until a key set is served, each newer
set swapped in whole, an older one ignored, a grace period carried into the authenticator."""

from __future__ import annotations

import time

import msgspec

from actors.ingress.live_keys import LiveKeys
from engine.api_keys import KeySet, hash_key

GIVEN = {"frontend": [hash_key("f1")], "admin": [hash_key("a1")]}


def stored(keys: KeySet, version: int) -> KeySet:
    return msgspec.structs.replace(keys, version=version)


def test_the_keys_given_stay_until_a_set_is_served_then_only_the_sets_keys_work() -> None:
    live = LiveKeys(GIVEN, expiries={hash_key("a1"): 1e12})
    assert live.version == 0 and live.authenticator.role_of("Bearer f1") == "frontend"
    seeded, _ = KeySet().seeded({"frontend": hash_key("f2"), "admin": hash_key("a1")}, who="t", now=0)
    assert live.serve(stored(seeded, 1))
    assert live.authenticator.role_of("Bearer f1") is None  # not in the set: refused
    assert live.authenticator.role_of("Bearer f2") == "frontend"
    # A rotation with a grace: the old key works until the grace's end, by the clock.
    now = time.time()
    rotated, _ = seeded.rotated("frontend", hash_key("f3"), grace_s=3600, who="t", now=now)
    assert live.serve(stored(rotated, 2))
    assert live.authenticator.role_of("Bearer f2", now=now + 3599) == "frontend"
    assert live.authenticator.role_of("Bearer f2", now=now + 3600) is None
    # A set not newer than the one served (a late delivery) changes nothing.
    assert not live.serve(stored(seeded, 1)) and live.version == 2
    assert live.authenticator.role_of("Bearer f3") == "frontend"


def test_uses_are_noted_by_hash_with_the_latest_time() -> None:
    live = LiveKeys(GIVEN)
    identity = live.authenticator.identify("Bearer a1")
    assert identity is not None
    live.used(identity[1])
    first = live.last_used[hash_key("a1")]
    live.used(identity[1])
    assert live.last_used[hash_key("a1")] >= first and set(live.last_used) == {hash_key("a1")}
