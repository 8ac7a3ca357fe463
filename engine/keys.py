"""User keys: pseudonymization at the edge, and the stable partition of a key.

Raw user ids never go past the edge: they are replaced by a keyed HMAC, and that key is what
subjects, partitions and state use.

>>> pseudo = Pseudonymizer(b"an example secret of enough length")
>>> key = pseudo.key("alice@example.com")
>>> len(key), key == pseudo.key("alice@example.com"), "alice" in key
(26, True, False)
>>> 0 <= partition_of(key, 64) < 64
True
"""

from __future__ import annotations

import hashlib
import hmac

from engine.errors import ConfigError

#: Shorter secrets make the pseudonyms guessable by brute force over known ids.
MIN_SECRET_BYTES = 16

_FNV32_OFFSET = 0x811C9DC5
_FNV32_PRIME = 0x01000193


class Pseudonymizer:
    """Maps raw user ids to stable, non-reversible user keys (HMAC-SHA256, 128 bits, base32).

    The key alphabet (``a-z2-7``) is safe as a NATS subject token.
    """

    def __init__(self, secret: bytes) -> None:
        if len(secret) < MIN_SECRET_BYTES:
            raise ConfigError(f"pseudonymization secret must be at least {MIN_SECRET_BYTES} bytes")
        self._hmac = hmac.new(secret, digestmod=hashlib.sha256)

    def key(self, raw_user_id: str) -> str:
        mac = self._hmac.copy()
        mac.update(raw_user_id.encode())
        # Lower-case RFC 4648 base32 of the first 128 bits, unpadded (a test checks it against
        # ``base64.b32encode``): 10 bits a step through a pair table, as the ingress does this
        # per request and the standard library's base32 is pure Python and twice as slow.
        bits = int.from_bytes(mac.digest()[:16], "big") << 2  # 130 bits = 26 characters
        return "".join([_B32_PAIRS[(bits >> shift) & 1023] for shift in _PAIR_SHIFTS])


def fnv1a_32(data: bytes) -> int:
    """FNV-1a, 32 bit: the hash nats-server's ``partition()`` subject mapping uses.

    Written out because the partition must match the server's bit for bit; a test checks it
    against a real server.
    """
    h = _FNV32_OFFSET
    for byte in data:
        h = ((h ^ byte) * _FNV32_PRIME) & 0xFFFFFFFF
    return h


def partition_of(user_key: str, partitions: int) -> int:
    """The partition that nats-server's ``{{partition(partitions,1)}}`` gives this key."""
    return fnv1a_32(user_key.encode()) % partitions


def is_user_key(value: str) -> bool:
    """True if ``value`` has the shape of a key made by :class:`Pseudonymizer`."""
    return len(value) == 26 and all(c in _KEY_ALPHABET for c in value)


_B32_ALPHABET = "abcdefghijklmnopqrstuvwxyz234567"
_KEY_ALPHABET = frozenset(_B32_ALPHABET)
_B32_PAIRS = [a + b for a in _B32_ALPHABET for b in _B32_ALPHABET]
_PAIR_SHIFTS = range(120, -1, -10)
