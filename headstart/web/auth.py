"""API keys with roles. ``headstart up`` writes the operator's plaintext copy once into
``<home>/keys.json`` (mode 0600, never regenerated); the server knows only their hashes, in the
key store (:mod:`headstart.adapters.key_store`: keys created, revoked and rotated live).

>>> auth = Authenticator({"frontend": [hash_key("f-key")], "admin": [hash_key("a-key")]})
>>> auth.role_of("Bearer f-key"), auth.role_of("Bearer a-key")
('frontend', 'admin')
>>> auth.role_of("Bearer nope"), auth.role_of(None)
(None, None)

Each key has a request rate limit per ingress replica (see :class:`RateLimits`).
"""

from __future__ import annotations

import base64
import hmac
import math
import time
from typing import NamedTuple

from limits import RateLimitItem, parse
from limits.storage import MemoryStorage
from limits.strategies import FixedWindowRateLimiter

# What a key is and is named by lives in the engine (the key store below the web layer uses it).
from engine.api_keys import KEY_ID_CHARS, ROLES, hash_key, key_id


class Access(NamedTuple):
    """Who may call a route: the roles whose keys it accepts, and whether it names a user that a
    frontend key must prove (``user_hash``, when identity verification is on).

    Every route of the HTTP API declares one of the constants below; a test walks the routes and
    checks each role against each one, so a new route cannot forget its check.

    >>> FOR_USER.allows("server"), FOR_USER.allows("admin"), ADMIN.allows("frontend")
    (True, False, False)
    """

    roles: frozenset[str]
    names_user: bool = False

    def allows(self, role: str) -> bool:
        return role in self.roles

    def describe(self) -> str:
        return " or ".join(role for role in ROLES if role in self.roles)


#: A user's own requests: decisions, tutorial selection, flags, events. Product pages (frontend
#: key, with the user's hash when verification is on) and product backends (server key).
FOR_USER = Access(frozenset({"frontend", "server"}), names_user=True)
#: Consent: also recorded by operators (admin key) for a data subject's request.
CONSENT = Access(frozenset(ROLES), names_user=True)
#: Product traffic that names no user by its id: rewards (by decision id), the signed ruleset,
#: the Segment-compatible write API (which checks the users its calls name itself).
PRODUCT = Access(frozenset({"frontend", "server"}))
#: Operators: profiles, export, erasure, the catalog, reports, scaling, metrics.
ADMIN = Access(frozenset({"admin"}))
#: Any valid key (the API's schema).
ANY_KEY = Access(frozenset(ROLES))


class Caller(NamedTuple):
    """Who called: the key's role and the hash of the key (what its requests are counted by)."""

    role: str
    key_hash: str

    @property
    def who(self) -> str:
        """``<role>:<key id>``: how audit records name the caller (never the key)."""
        return f"{self.role}:{self.key_hash[:KEY_ID_CHARS]}"


__all__ = [
    "ADMIN",
    "ANY_KEY",
    "CONSENT",
    "FOR_USER",
    "KEY_ID_CHARS",
    "PRODUCT",
    "ROLES",
    "Access",
    "Authenticator",
    "Caller",
    "RateLimits",
    "bearer_from_basic",
    "hash_key",
    "key_hashes",
    "key_id",
    "parse_rate_limit",
]


def key_hashes(keys: dict[str, str]) -> dict[str, list[str]]:
    return {role: [hash_key(key)] for role, key in keys.items()}


def bearer_from_basic(authorization: str | None) -> str | None:
    """``Bearer <write key>`` from HTTP Basic (the Segment libraries' write key is the user, the
    password empty); a Bearer header is passed through.

    >>> bearer_from_basic("Basic " + base64.b64encode(b"w-key:").decode())
    'Bearer w-key'
    >>> bearer_from_basic("Bearer f-key"), bearer_from_basic("Basic !!")
    ('Bearer f-key', None)
    """
    if authorization is None or not authorization.lower().startswith("basic "):
        return authorization
    try:
        user = base64.b64decode(authorization[6:].strip(), validate=True).decode().split(":", 1)[0]
    except (ValueError, UnicodeDecodeError):
        return None
    return f"Bearer {user}" if user else None


class Authenticator:
    """Maps an ``Authorization: Bearer <key>`` header to a role, comparing in constant time.

    ``expiries``: when a key (by hash) stops working, checked at each request, so a rotation's
    grace period ends on time with nothing else changing.

    >>> auth = Authenticator({"frontend": [hash_key("old"), hash_key("new")]}, {hash_key("old"): 100.0})
    >>> auth.role_of("Bearer old", now=99.0), auth.role_of("Bearer old", now=100.0)
    ('frontend', None)
    >>> auth.role_of("Bearer new", now=1e12)
    'frontend'
    """

    def __init__(self, hashes: dict[str, list[str]], expiries: dict[str, float] | None = None) -> None:
        expiries = expiries or {}
        # Precomputed once per key set: (role, hash as bytes to compare, hash as the id, expiry).
        self._keys = [(role, h.encode(), h, expiries.get(h)) for role, hs in hashes.items() for h in hs]

    def role_of(self, authorization: str | None, now: float | None = None) -> str | None:
        identity = self.identify(authorization, now)
        return identity[0] if identity is not None else None

    def identify(self, authorization: str | None, now: float | None = None) -> tuple[str, str] | None:
        """The role of the key presented and the key's hash (an id to count its requests by);
        None for a missing, unknown or expired key."""
        if not authorization or not authorization.startswith("Bearer "):
            return None
        presented = hash_key(authorization[7:].strip()).encode()
        found = None
        for key in self._keys:
            # Compare against every key, always: timing says nothing about which matched.
            if hmac.compare_digest(presented, key[1]):
                found = key
        if found is None:
            return None
        role, _, key_hash, expires_at = found
        # Only a key in a grace period has an expiry: the clock is read for those alone.
        if expires_at is not None and (time.time() if now is None else now) >= expires_at:
            return None
        return role, key_hash


def parse_rate_limit(text: str) -> RateLimitItem:
    """``"5000/second"``, ``"100 per minute"``...; ``ValueError`` saying what is expected."""
    try:
        return parse(text)
    except ValueError as exc:
        raise ValueError(f"{text!r} is not a rate limit; write e.g. '5000/second' or '100/minute'") from exc


class RateLimits:
    """Requests per key and role, counted in fixed windows by the ``limits`` library.

    Counted per ingress replica (with N replicas a key gets up to N times its limit): a
    shared counter would put a network round trip on every decision. Fixed windows cost about
    half of what sliding ones do per request (bench/RESULTS.md), on the decision path that matters.

    >>> limits = RateLimits({"frontend": "2/minute"})
    >>> limits.wait("frontend", "k1"), limits.wait("frontend", "k1")
    (None, None)
    >>> limits.wait("frontend", "k1") > 0  # the third within the minute: seconds to wait
    True
    >>> limits.wait("admin", "k2") is None  # no limit for the role
    True
    """

    def __init__(self, per_role: dict[str, str]) -> None:
        self.items = {role: parse_rate_limit(text) for role, text in per_role.items()}
        self._limiter = FixedWindowRateLimiter(MemoryStorage())

    def wait(self, role: str, key_id: str) -> float | None:
        """None if the request may go ahead, else the seconds until the key's window resets."""
        item = self.items.get(role)
        if item is None or self._limiter.hit(item, key_id):
            return None
        reset = self._limiter.get_window_stats(item, key_id).reset_time
        return max(0.001, reset - time.time())

    @staticmethod
    def retry_after(wait: float) -> str:
        return str(max(1, math.ceil(wait)))
