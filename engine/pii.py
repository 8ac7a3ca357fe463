"""Profile PII (the fields in :data:`engine.profile.PII_FIELDS`) at rest and in dead letters.

A name is held in memory for messages (only while personalization is granted); snapshots keep
it sealed with AES-GCM (``cryptography``) under a key derived from the instance's secret and
bound to the user's key, so a snapshot read without the secret, or a sealed value moved to
another user, reveals nothing. Without a sealer a snapshot leaves PII out altogether.

>>> sealer = PiiSealer(b"instance secret")
>>> sealed = sealer.seal("user-key", "Alice")
>>> b"Alice" in sealed, sealer.unseal("user-key", sealed), sealer.unseal("other-key", sealed)
(False, 'Alice', None)
>>> letter = msgspec.msgpack.encode({"type": "profile_updated", "props": {"name": "Alice", "role": "dev"}})
>>> msgspec.msgpack.decode(scrub_pii(letter))["props"]
{'name': '<redacted>', 'role': 'dev'}
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Iterable

import msgspec
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from engine.profile import PII_FIELDS

REDACTED = "<redacted>"
#: Fields redacted from dead letters by default: the profile's own PII and what producers
#: commonly send by mistake (operators add theirs with ``HEADSTART_PII_FIELDS``).
DEFAULT_PII_FIELDS = ("name", "first_name", "last_name", "email", "phone", "address", "ip")
_NONCE = 12


class PiiSealer:
    """Seals and opens PII values for one instance (its secret), per user key."""

    __slots__ = ("_aead",)

    def __init__(self, secret: bytes) -> None:
        # A key of its own, derived from the instance secret: the pseudonymization key and
        # this one never coincide.
        self._aead = AESGCM(hmac.new(secret, b"headstart pii at rest v1", hashlib.sha256).digest())

    def seal(self, user_key: str, value: str) -> bytes:
        nonce = os.urandom(_NONCE)
        return nonce + self._aead.encrypt(nonce, value.encode(), user_key.encode())

    def unseal(self, user_key: str, sealed: bytes) -> str | None:
        """The value, or None if it was not sealed for this user with this instance's secret."""
        try:
            return self._aead.decrypt(sealed[:_NONCE], sealed[_NONCE:], user_key.encode()).decode()
        except (InvalidTag, ValueError):
            return None


def scrub_pii(payload: bytes, fields: Iterable[str] = DEFAULT_PII_FIELDS) -> bytes:
    """A dead letter's payload with the PII ``fields`` of its props and context replaced;
    bytes that are not a msgpack map are returned as they are (nothing in them can be found)."""
    try:
        message = msgspec.msgpack.decode(payload)
    except msgspec.DecodeError:
        return payload
    if not isinstance(message, dict):
        return payload
    wanted = PII_FIELDS | set(fields)
    changed = False
    for part in ("props", "context"):
        values = message.get(part)
        if isinstance(values, dict) and wanted & values.keys():
            message[part] = {k: (REDACTED if k in wanted else v) for k, v in values.items()}
            changed = True
    return msgspec.msgpack.encode(message) if changed else payload
