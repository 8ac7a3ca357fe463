"""Each user's most recent event ids, for users whose events come in batches.

JetStream's duplicate window drops a retried *message*: a single event published again under
its event id, or a batch published again with the same events (:mod:`engine.batches`). An
event retried inside a *different* batch (a producer that regrouped its retries, a batch after
the event went alone) is a new message to JetStream; this window is what keeps a partition
from applying it twice. It holds, per user, digests of the last :data:`WINDOW` events applied
to them, from the user's first batched message on; a user whose events only ever came one per
message costs nothing here (their retries are JetStream's to drop).

>>> recent = RecentEventIds()
>>> recent.seen("k", "e1"), recent.seen("k", "e2"), recent.seen("k", "e1")
(False, False, True)
>>> recent.tracks("k"), recent.tracks("someone else")
(True, False)
"""

from __future__ import annotations

from collections.abc import Mapping

import mmh3

#: Event ids remembered per user: a whole batch of the largest size a publisher sends
#: (:data:`engine.batches.MAX_EVENTS_PER_MESSAGE`), so an event retried inside a differently
#: composed batch is recognized as long as the user sent fewer than this many other events in
#: between. Costs 8 bytes each (a 64-bit digest: a false match, which would drop an event, has
#: a chance of about 2e-18 per event).
WINDOW = 32
_DIGEST = 8
_SPAN = WINDOW * _DIGEST


def digest(event_id: str) -> bytes:
    """An event id's 64-bit digest (MurmurHash3 x64: stable across processes and machines)."""
    return mmh3.hash_bytes(event_id)[:_DIGEST]


class RecentEventIds:
    """Per user (by key), the digests of their last :data:`WINDOW` events, oldest first, packed
    into one ``bytes`` (~33 + 8 per event bytes of memory)."""

    __slots__ = ("by_user",)

    def __init__(self, by_user: Mapping[str, bytes] | None = None) -> None:
        self.by_user: dict[str, bytes] = dict(by_user or {})

    def tracks(self, user_key: str) -> bool:
        """Whether this user's event ids are being remembered (they sent a batch)."""
        return user_key in self.by_user

    def seen(self, user_key: str, event_id: str) -> bool:
        """Whether ``event_id`` is among the user's remembered ones; if not, remember it (the
        oldest one goes once :data:`WINDOW` are held). Starts tracking the user."""
        mark = digest(event_id)
        ring = self.by_user.get(user_key, b"")
        at = ring.find(mark)
        while at >= 0:
            if at % _DIGEST == 0:
                return True
            at = ring.find(mark, at + 1)  # straddling two digests: not this one
        self.by_user[user_key] = (ring if len(ring) < _SPAN else ring[_DIGEST:]) + mark
        return False

    def forget(self, user_key: str) -> None:
        self.by_user.pop(user_key, None)

    def snapshot(self) -> dict[str, bytes]:
        return self.by_user
