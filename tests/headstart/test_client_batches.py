"""How the Python client cuts its buffered events into ``/v1/events`` bodies: unsigned events
(a server key's) together, signed ones (a frontend key's) one user and hash per body, in order."""

from __future__ import annotations

from typing import Any

from headstart.client import MAX_EVENTS_PER_REQUEST, Client


def _bodies(hs: Client) -> list[dict[str, Any]]:
    """Every body a flush would send, in order (the buffer is emptied, nothing is sent)."""
    bodies = []
    while hs._buffer:
        count, body = hs._next_batch()
        bodies.append(body)
        del hs._buffer[:count]
    return bodies


def test_signed_events_go_one_user_and_hash_per_body_and_in_order() -> None:
    with Client("http://127.0.0.1:9", "a-key", batch_size=10_000) as hs:
        hs.track("alice", "session_started")
        hs.track("bob", "session_started")
        hs.track("carol", "session_started", user_hash="c" * 64)
        hs.track("carol", "feature_clicked", props={"feature": "export"}, user_hash="c" * 64)
        hs.track("dave", "session_started", user_hash="d" * 64)
        hs.track("erin", "session_started")
        bodies = _bodies(hs)
    users = [[e["user_id"] for e in body["events"]] for body in bodies]
    assert users == [["alice", "bob"], ["carol", "carol"], ["dave"], ["erin"]]
    assert [body.get("user_hash") for body in bodies] == [None, "c" * 64, "d" * 64, None]


def test_a_body_carries_at_most_the_engines_maximum() -> None:
    with Client("http://127.0.0.1:9", "a-key", batch_size=10_000) as hs:
        for i in range(MAX_EVENTS_PER_REQUEST + 5):
            hs.track("alice", "feature_clicked", props={"feature": f"f{i}"}, user_hash="a" * 64)
        sizes = [len(body["events"]) for body in _bodies(hs)]
    assert sizes == [MAX_EVENTS_PER_REQUEST, 5]
