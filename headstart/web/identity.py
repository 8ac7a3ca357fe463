"""Identity verification: a frontend key may act only for the user its page was signed for.

The product's backend signs each user id with HMAC-SHA256 under a secret the browser never
sees (Intercom's identity verification); the page sends the hash beside the id, and the ingress
checks it in constant time. Anonymous visitors (ids with the anonymous prefix) need no hash.

>>> verifier = IdentityVerifier("required", b"an identity secret of enough length")
>>> signed = user_hash(b"an identity secret of enough length", "alice")
>>> verifier.verify("alice", signed), verifier.verify("anon-7f3a", None)
(None, None)
>>> try:
...     verifier.verify("alice", None)
... except IdentityRefused as refused:
...     print(refused.message[:60])
identity verification is required: this request names a user
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Literal

from engine.errors import ConfigError

#: ``off``: nothing checked; ``optional``: a hash is checked when given; ``required``: every
#: frontend-key request naming an identified user carries a valid hash.
VerificationMode = Literal["off", "optional", "required"]
MODES: tuple[VerificationMode, ...] = ("off", "optional", "required")
DEFAULT_ANONYMOUS_PREFIX = "anon-"
#: A shorter secret could be guessed from hashes a page shows.
MIN_IDENTITY_SECRET_BYTES = 16


def user_hash(secret: bytes, user_id: str) -> str:
    """What the product's backend computes for a user: lowercase hex HMAC-SHA256 of the id.

    >>> user_hash(b"an identity secret of enough length", "alice")[:12]
    'a03304a2b96a'
    """
    return hmac.new(secret, user_id.encode(), hashlib.sha256).hexdigest()


class IdentityRefused(Exception):
    """A request that names a user it may not act for; the message says what is missing."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


_MISSING = (
    "identity verification is required: this request names a user but carries no user_hash; "
    'your backend computes hex(HMAC-SHA256(identity secret, user_id)) and the page sends it as "user_hash"'
)
_WRONG = (
    "user_hash does not match user_id: it must be hex(HMAC-SHA256(identity secret, user_id)) "
    "for this very user id, computed by your backend"
)
_LINK = (
    "linking an anonymous id to a user needs that user's valid user_hash "
    "(hex(HMAC-SHA256(identity secret, user_id)), computed by your backend)"
)


class IdentityVerifier:
    """Checks user hashes for frontend-key requests, per the configured mode.

    The secret is held only here (never logged or answered); hashes are compared with
    :func:`hmac.compare_digest`. Keyed once, copied per check: a copy of a keyed HMAC costs
    about half of keying a new one, on the decision path.
    """

    def __init__(
        self, mode: VerificationMode, secret: bytes, anonymous_prefix: str = DEFAULT_ANONYMOUS_PREFIX
    ) -> None:
        if mode not in MODES:
            raise ConfigError(f"identity verification must be one of {', '.join(MODES)}, not {mode!r}")
        if mode != "off" and len(secret) < MIN_IDENTITY_SECRET_BYTES:
            raise ConfigError(f"the identity secret must be at least {MIN_IDENTITY_SECRET_BYTES} bytes")
        if not anonymous_prefix:
            raise ConfigError("the anonymous prefix must not be empty (every id would be anonymous)")
        self.mode = mode
        self.anonymous_prefix = anonymous_prefix
        self._keyed = hmac.new(secret or b"-", digestmod=hashlib.sha256)

    def __repr__(self) -> str:  # never the secret
        return f"IdentityVerifier(mode={self.mode!r}, anonymous_prefix={self.anonymous_prefix!r})"

    def is_anonymous(self, user_id: str) -> bool:
        return user_id.startswith(self.anonymous_prefix)

    def matches(self, user_id: str, presented: str) -> bool:
        mac = self._keyed.copy()
        mac.update(user_id.encode())
        return hmac.compare_digest(mac.hexdigest(), presented.lower())

    def verify(self, user_id: str, presented: str | None) -> None:
        """Raise :class:`IdentityRefused` unless a frontend-key request may act for ``user_id``."""
        if self.mode == "off" or user_id.startswith(self.anonymous_prefix):
            return
        if presented is None:
            if self.mode == "required":
                raise IdentityRefused(_MISSING)
            return
        if not self.matches(user_id, presented):
            raise IdentityRefused(_WRONG)

    def verify_link(self, user_id: str, presented: str | None) -> None:
        """Linking an anonymous id to ``user_id`` (a frontend-key request) needs the user's valid
        hash whenever verification is on, ``optional`` included: a link makes the anonymous id
        act as the user."""
        if self.mode == "off":
            return
        if self.is_anonymous(user_id) or presented is None or not self.matches(user_id, presented):
            raise IdentityRefused(_LINK)
