"""Which partitions' segment changes wait for a stored snapshot (pure bookkeeping)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from headstart.adapters.membership import PublishHolds


def test_a_snapshot_taken_during_a_sweep_releases_nothing() -> None:
    holds = PublishHolds()
    assert holds.begin(1) is False
    holds.stored(1, (99, 9, 9))  # whatever its mark: the sweep's later chunks are not in it
    assert 1 in holds and holds.publishable({1: "a", 2: "b"}) == {2: "b"}


def test_a_hold_is_released_by_a_snapshot_at_or_past_its_mark_only() -> None:
    holds = PublishHolds()
    holds.begin(1)
    holds.until(1, (5, 1, 3))
    for earlier in [(4, 1, 3), (5, 0, 3), (5, 1, 2)]:
        holds.stored(1, earlier)
        assert 1 in holds, earlier
    holds.stored(1, (5, 1, 3))
    assert 1 not in holds and holds.publishable({1: "a"}) == {1: "a"}


def test_a_sweep_of_a_held_partition_says_so_and_a_dropped_one_is_free() -> None:
    holds = PublishHolds()
    holds.until(2, (1, 0, 0))  # an expiry whose snapshot failed to store
    assert holds.begin(2) is True  # the next sweep must store one even if it changes nothing
    holds.drop(2)
    assert 2 not in holds
    holds.stored(2, (0, 0, 0))  # releasing what is not held is nothing
    assert 2 not in holds


marks = st.tuples(st.integers(0, 5), st.integers(0, 5), st.integers(0, 5))


@given(needed=marks, stored=marks)
def test_released_exactly_when_the_stored_mark_is_at_or_past_the_held_one_in_every_part(
    needed: tuple[int, int, int], stored: tuple[int, int, int]
) -> None:
    holds = PublishHolds()
    holds.until(0, needed)
    holds.stored(0, stored)
    assert (0 not in holds) == all(s >= n for s, n in zip(stored, needed, strict=True))
