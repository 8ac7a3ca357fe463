"""API keys as data: what a key is named by, and the set of keys an instance accepts.

A key is a 256-bit random token; only its SHA-256 is ever stored (:func:`hash_key`), and it is
named where it is recorded by a prefix of that hash (:func:`key_id`). :class:`KeySet` is every
key an instance knows, with its role, who created it, and when it stopped (or stops) working;
its changes (:meth:`KeySet.seeded`, :meth:`KeySet.created`, :meth:`KeySet.revoked`,
:meth:`KeySet.rotated`) are pure and return the new set with what changed, so the store
(:mod:`headstart.adapters.key_store`) can apply them as compare-and-set and audit them.

>>> keys = KeySet().seeded({"frontend": hash_key("f"), "admin": hash_key("a")}, who="up", now=100.0)[0]
>>> keys = keys.rotated("frontend", hash_key("f2"), grace_s=60, who="cli", now=200.0)[0]
>>> [(role, expires) for role, _, expires in keys.active(now=200.0)]
[('frontend', 260.0), ('admin', None), ('frontend', None)]
>>> [record.state(now=300.0) for record in keys.records]
['expired', 'active', 'active']
"""

from __future__ import annotations

import hashlib
import re
import secrets
from typing import Literal

import msgspec

from engine.errors import HeadstartError

#: ``frontend``: a product's pages (its users' own requests); ``server``: a product's backend
#: (events, consent and decisions for any user); ``admin``: operators (profiles, export, erasure,
#: catalog, reports).
ROLES = ("frontend", "server", "admin")

#: Hex digits of a key's hash that name it in audit records and catalog history: enough to tell
#: a handful of keys apart, far too few to help anyone guess the key.
KEY_ID_CHARS = 12

#: The shortest id prefix ``keys revoke`` accepts: 6 hex digits are 16 million names, so a
#: prefix that short still picks one key of a few hundred, and a typo rarely hits another.
MIN_ID_PREFIX = 6

KeyState = Literal["active", "grace", "expired", "revoked"]


def hash_key(key: str) -> str:
    # Keys are 256-bit random tokens, not passwords: a fast hash is enough, since there is
    # nothing to brute-force, and it keeps the per-request check to a microsecond.
    return hashlib.sha256(key.encode()).hexdigest()


def key_id(key: str) -> str:
    """The id that names a key where it is recorded (``admin:<id>``, ``cli:<id>``): a prefix of
    its hash, as the ingress records the key that called (never the key itself).

    >>> key_id("a-key") == hash_key("a-key")[:KEY_ID_CHARS], len(key_id("a-key"))
    (True, 12)
    """
    return hash_key(key)[:KEY_ID_CHARS]


def new_key(role: str) -> str:
    """A fresh API key for ``role``: 256 random bits, its role readable in the prefix.

    >>> new_key("server").startswith("hs_se_"), new_key("admin") != new_key("admin")
    (True, True)
    """
    return f"hs_{role[:2]}_{secrets.token_urlsafe(32)}"


class KeyRefused(HeadstartError, ValueError):
    """A key change that cannot be made (unknown role or id, the keys file's key revoked...);
    the message says why and what to do instead."""


class KeyRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One key the instance knows of (never the key itself)."""

    #: :func:`key_id`: the first hex digits of ``hash``.
    id: str
    #: :func:`hash_key` of the key (SHA-256, hex).
    hash: str
    role: str
    created_at: float
    #: Who added it: ``cli:<admin key id>``, ``keys.json`` (found in the home's keys file).
    created_by: str
    #: When it stops working (Unix seconds): the end of a rotation's grace. None: never.
    expires_at: float | None = None
    revoked_at: float | None = None
    revoked_by: str | None = None
    #: The key ``<home>/keys.json`` holds for its role: it is replaced by rotation, not revoked.
    in_keys_file: bool = False

    def state(self, now: float) -> KeyState:
        """``active``, ``grace`` (works until ``expires_at``), ``expired`` or ``revoked``."""
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is None:
            return "active"
        return "grace" if now < self.expires_at else "expired"

    def works(self, now: float) -> bool:
        return self.state(now) in ("active", "grace")


class KeyChange(msgspec.Struct, frozen=True, kw_only=True):
    """What one change did to one key (one audit record)."""

    action: Literal["add", "create", "revoke", "rotate", "expire", "keys_file"]
    record: KeyRecord


class KeySet(msgspec.Struct, frozen=True, kw_only=True):
    """Every key an instance knows of, oldest first; ``version``: the store's number of it."""

    records: tuple[KeyRecord, ...] = ()
    #: The stream sequence it was stored at (0: not stored).
    version: int = 0

    # ------------------------------------------------------------------ reading

    def active(self, now: float) -> list[tuple[str, str, float | None]]:
        """(role, hash, expires_at) of every key that works at ``now`` (a key in its grace
        period with the time it stops: the ingress checks that at each request)."""
        return [(r.role, r.hash, r.expires_at) for r in self.records if r.works(now)]

    def hashes(self, now: float) -> tuple[dict[str, list[str]], dict[str, float]]:
        """:meth:`active` as the ingress is configured: hashes by role, and when those in a grace
        period stop working (by hash)."""
        by_role: dict[str, list[str]] = {}
        expiries: dict[str, float] = {}
        for role, key_hash, expires_at in self.active(now):
            by_role.setdefault(role, []).append(key_hash)
            if expires_at is not None:
                expiries[key_hash] = expires_at
        return by_role, expiries

    def find(self, id_or_prefix: str) -> KeyRecord:
        """The key named by its id or an unambiguous prefix of it (at least 6 hex digits).

        >>> keys = KeySet().created("admin", hash_key("a"), who="cli", now=0)[0]
        >>> keys.find(key_id("a")[:6]).role
        'admin'
        >>> keys.find("abc")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        engine.api_keys.KeyRefused: 'abc' is too short: give at least 6 characters of the key id...
        """
        prefix = id_or_prefix.strip().lower()
        if len(prefix) < MIN_ID_PREFIX:
            raise KeyRefused(
                f"{id_or_prefix!r} is too short: give at least {MIN_ID_PREFIX} characters of the key id "
                "(`headstart keys list`)"
            )
        found = [r for r in self.records if r.id.startswith(prefix) or r.hash.startswith(prefix)]
        if not found:
            raise KeyRefused(f"no key with id {id_or_prefix!r} (`headstart keys list` shows them)")
        if len(found) > 1:
            raise KeyRefused(f"{id_or_prefix!r} names {len(found)} keys: give more of the id")
        return found[0]

    def _has(self, key_hash: str) -> KeyRecord | None:
        return next((r for r in self.records if r.hash == key_hash), None)

    # ------------------------------------------------------------------ changes

    def seeded(self, keys_file: dict[str, str], who: str, now: float) -> tuple[KeySet, list[KeyChange]]:
        """Every key of the keys file (hashes by role) known, and marked as the file's key of its
        role. A key not known yet is added; a known one is left as it is (a revoked or expired
        key is never brought back). A key the file held before for the role stays as it is, no
        longer marked: it works until revoked."""
        _check_roles(keys_file)
        records = list(self.records)
        changes: list[KeyChange] = []
        for role, key_hash in keys_file.items():
            if (known := self._has(key_hash)) is None:
                added = _record(role, key_hash, who, now, in_keys_file=True)
                records.append(added)
                changes.append(KeyChange(action="add", record=added))
                continue
            if known.role != role:
                raise KeyRefused(
                    f"keys.json: its {role} key is known with the role {known.role}: "
                    "give each role its own key"
                )
        for index, record in enumerate(records):
            marked = keys_file.get(record.role) == record.hash
            if record.in_keys_file != marked:
                records[index] = msgspec.structs.replace(record, in_keys_file=marked)
                changes.append(KeyChange(action="keys_file", record=records[index]))
        return KeySet(records=tuple(records), version=self.version), changes

    def created(self, role: str, key_hash: str, who: str, now: float) -> tuple[KeySet, list[KeyChange]]:
        """A new key of ``role`` (not the keys file's)."""
        _check_roles({role: key_hash})
        if self._has(key_hash) is not None:
            return self, []  # stored already (a write whose acknowledgement was lost)
        added = _record(role, key_hash, who, now)
        return KeySet(records=(*self.records, added), version=self.version), [
            KeyChange(action="create", record=added)
        ]

    def revoked(self, id_or_prefix: str, who: str, now: float) -> tuple[KeySet, list[KeyChange]]:
        """The key named stops working now. Refused for the keys file's key of its role (rotate
        it instead). Revoking a revoked key changes nothing."""
        record = self.find(id_or_prefix)
        if record.revoked_at is not None:
            return self, []
        if record.in_keys_file:
            raise KeyRefused(
                f"key {record.id} is the {record.role} key in keys.json, which `headstart` itself "
                f"uses: rotate it instead (`headstart keys rotate {record.role} --grace 0s` ends it now)"
            )
        done = msgspec.structs.replace(record, revoked_at=now, revoked_by=who)
        return self._replacing({record.hash: done}), [KeyChange(action="revoke", record=done)]

    def rotated(
        self, role: str, key_hash: str, grace_s: float, who: str, now: float
    ) -> tuple[KeySet, list[KeyChange]]:
        """A new key becomes the keys file's key of ``role``; the file's key(s) before it keep
        working for ``grace_s`` seconds (0: they stop now), then stop without any other change."""
        _check_roles({role: key_hash})
        if grace_s < 0:
            raise KeyRefused(f"the grace period cannot be negative ({grace_s:g} s)")
        if self._has(key_hash) is not None:
            return self, []  # stored already (a write whose acknowledgement was lost)
        ends = now + grace_s
        replaced = {
            r.hash: msgspec.structs.replace(
                r,
                in_keys_file=False,
                expires_at=ends if r.expires_at is None else min(r.expires_at, ends),
            )
            for r in self.records
            if r.role == role and r.in_keys_file
        }
        added = _record(role, key_hash, who, now, in_keys_file=True)
        rotated = self._replacing(replaced)
        changes = [KeyChange(action="rotate", record=added)]
        changes += [KeyChange(action="expire", record=r) for r in replaced.values()]
        return KeySet(records=(*rotated.records, added), version=self.version), changes

    def _replacing(self, by_hash: dict[str, KeyRecord]) -> KeySet:
        return KeySet(records=tuple(by_hash.get(r.hash, r) for r in self.records), version=self.version)


def _record(role: str, key_hash: str, who: str, now: float, in_keys_file: bool = False) -> KeyRecord:
    return KeyRecord(
        id=key_hash[:KEY_ID_CHARS],
        hash=key_hash,
        role=role,
        created_at=now,
        created_by=who,
        in_keys_file=in_keys_file,
    )


def _check_roles(keys: dict[str, str]) -> None:
    for role in keys:
        if role not in ROLES:
            raise KeyRefused(f"unknown role {role!r}: one of {', '.join(ROLES)}")


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d)?\s*$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """Seconds in ``30s``, ``15m``, ``24h``, ``7d`` (a bare number: seconds).

    >>> parse_duration("24h"), parse_duration("30s"), parse_duration("0"), parse_duration("1.5d")
    (86400.0, 30.0, 0.0, 129600.0)
    >>> parse_duration("soon")
    Traceback (most recent call last):
    ...
    engine.api_keys.KeyRefused: 'soon' is not a duration: write e.g. 30s, 15m, 24h or 7d
    """
    match = _DURATION.match(text.lower())
    if match is None:
        raise KeyRefused(f"{text!r} is not a duration: write e.g. 30s, 15m, 24h or 7d")
    return float(match.group(1)) * _UNIT_S[match.group(2) or "s"]
