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
from collections.abc import Mapping, Sequence
from typing import Any, Literal

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
    """A request that names a user it may not act for; the message says what is missing, the
    code names the case (``user_hash_required``, ``user_hash_mismatch``, ``link_needs_user_hash``)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


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
                raise IdentityRefused("user_hash_required", _MISSING)
            return
        if not self.matches(user_id, presented):
            raise IdentityRefused("user_hash_mismatch", _WRONG)

    def verify_link(self, user_id: str, presented: str | None) -> None:
        """Linking an anonymous id to ``user_id`` (a frontend-key request) needs the user's valid
        hash whenever verification is on, ``optional`` included: a link makes the anonymous id
        act as the user."""
        if self.mode == "off":
            return
        if self.is_anonymous(user_id) or presented is None or not self.matches(user_id, presented):
            raise IdentityRefused("link_needs_user_hash", _LINK)


class BatchRefused(ValueError):
    """An events batch whose shape cannot be served (a caller's mistake: 400, not 403)."""


def batch_user(
    verifier: IdentityVerifier,
    verified: bool,
    user_ids: Sequence[object],
    presented: str | None,
    anonymous_id: str | None,
) -> str | None:
    """The one user an events batch is for (None: several, or ids the validation refuses),
    checked: an ``anonymous_id`` links one identified user (:class:`BatchRefused` otherwise);
    with ``verified`` (a frontend key), a batch is one user's, signed by ``presented`` per the
    mode, and a link needs the user's hash in every mode but off (:class:`IdentityRefused`).

    >>> v = IdentityVerifier("optional", b"an identity secret of enough length")
    >>> batch_user(v, True, ["anon-1", "anon-2"], None, None) is None  # optional, no hash
    True
    >>> try:
    ...     batch_user(v, True, ["alice"], None, "anon-1")  # a link without the hash
    ... except IdentityRefused as refused:
    ...     print(refused.code)
    link_needs_user_hash
    """
    named = {user_id for user_id in user_ids if isinstance(user_id, str)}
    valid = len(named) == 1 and all(isinstance(user_id, str) for user_id in user_ids)
    user = next(iter(named)) if valid else None
    if anonymous_id is not None:
        if not verifier.is_anonymous(anonymous_id):
            prefix = verifier.anonymous_prefix
            raise BatchRefused(f"anonymous_id must start with the anonymous prefix {prefix!r}")
        if user is None or verifier.is_anonymous(user):
            raise BatchRefused(
                "anonymous_id links one identified user: every event of the batch names that user's user_id"
            )
    if not verified or verifier.mode == "off":
        return user
    if anonymous_id is None and presented is None and verifier.mode == "optional":
        return user
    if len(named) > 1:
        raise IdentityRefused(
            "one_user_per_batch",
            f"with a frontend key and identity verification on, a batch holds one user's events "
            f"({len(named)} users here): send one batch per user, each with its user_hash",
        )
    if user is not None:  # else the validation refuses the batch: user_id must be a string
        if anonymous_id is not None:
            verifier.verify_link(user, presented)
        else:
            verifier.verify(user, presented)
    return user


def verify_segment_call(verifier: IdentityVerifier, message: Mapping[str, Any]) -> None:
    """Identity verification for a Segment call sent with a frontend key: a call naming a
    ``userId`` carries that user's hash as ``integrations.Headstart.user_hash`` (where Segment's
    Intercom destination takes Intercom's), and a call that links an anonymous id to the user
    (identify or track with both ids, alias) needs it in every mode but off.

    >>> v = IdentityVerifier("required", b"an identity secret of enough length")
    >>> signed = user_hash(b"an identity secret of enough length", "alice")
    >>> call = {"type": "identify", "userId": "alice", "anonymousId": "a1b2"}
    >>> verify_segment_call(v, {**call, "integrations": {"Headstart": {"user_hash": signed}}})
    >>> verify_segment_call(v, {"type": "track", "anonymousId": "a1b2"})  # anonymous only
    """
    user_id = message.get("userId")
    if user_id is None or user_id == "":
        return
    integrations = message.get("integrations")
    ours = integrations.get("Headstart") if isinstance(integrations, Mapping) else None
    presented = ours.get("user_hash") if isinstance(ours, Mapping) else None
    if presented is not None and not isinstance(presented, str):
        raise BatchRefused("integrations.Headstart.user_hash must be a string")
    if message.get("type") == "alias" or message.get("anonymousId") not in (None, ""):
        verifier.verify_link(str(user_id), presented)
    else:
        verifier.verify(str(user_id), presented)
