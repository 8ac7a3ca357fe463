"""API keys with roles. ``headstart up`` writes the operator's plaintext copy once into
``<home>/keys.json`` (mode 0600, never regenerated); the server is given only their hashes.

>>> auth = Authenticator({"frontend": [hash_key("f-key")], "admin": [hash_key("a-key")]})
>>> auth.role_of("Bearer f-key"), auth.role_of("Bearer a-key")
('frontend', 'admin')
>>> auth.role_of("Bearer nope"), auth.role_of(None)
(None, None)
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from pathlib import Path

ROLES = ("frontend", "admin")


def hash_key(key: str) -> str:
    # Keys are 256-bit random tokens, not passwords: a fast hash is enough, since there is
    # nothing to brute-force, and it keeps the per-request check to a microsecond.
    return hashlib.sha256(key.encode()).hexdigest()


def ensure_keys(path: Path) -> dict[str, str]:
    """The keys in ``path``, generated on first use (0600). Never regenerated."""
    if not path.exists():
        from headstart.home import _write_private

        keys = {role: f"hs_{role[:2]}_{secrets.token_urlsafe(32)}" for role in ROLES}
        _write_private(path, json.dumps(keys, indent=2) + "\n")
    keys = json.loads(path.read_text())
    return {role: str(keys[role]) for role in ROLES}


def key_hashes(keys: dict[str, str]) -> dict[str, list[str]]:
    return {role: [hash_key(key)] for role, key in keys.items()}


class Authenticator:
    """Maps an ``Authorization: Bearer <key>`` header to a role, comparing in constant time."""

    def __init__(self, hashes: dict[str, list[str]]) -> None:
        self._hashes = [(role, h.encode()) for role, hs in hashes.items() for h in hs]

    def role_of(self, authorization: str | None) -> str | None:
        if not authorization or not authorization.startswith("Bearer "):
            return None
        presented = hash_key(authorization[7:].strip()).encode()
        role = None
        for candidate, expected in self._hashes:
            # Compare against every key, always: timing says nothing about which matched.
            if hmac.compare_digest(presented, expected):
                role = candidate
        return role
