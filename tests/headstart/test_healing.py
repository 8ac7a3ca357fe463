"""The supervisor's restart policy: when a dead child starts again, the backoff, giving up.

Pure bookkeeping with a fake clock: no process is started and nothing sleeps.
"""

from __future__ import annotations

import pytest

from headstart.runtime.healing import ChildWatch, FakeClock, Healer, RestartPolicy

POLICY = RestartPolicy(base_s=0.5, cap_s=4.0, limit=6, stable_s=60.0)


class FakeChild:
    """A child that dies when told and whose starts fail while ``broken``."""

    def __init__(self, name: str = "nats-server") -> None:
        self.name = name
        self.exit: str | None = None
        self.broken = False
        self.starts = 0

    def dead(self) -> str | None:
        return self.exit

    def restart(self) -> None:
        self.starts += 1
        if self.broken:
            raise OSError("address already in use")
        self.exit = None


def test_a_death_after_a_stable_run_is_restarted_at_once_every_time() -> None:
    clock = FakeClock()
    watch = ChildWatch("nats-server", POLICY, clock)
    for restart in range(1, 11):  # far more deaths than the limit, each after a long run
        clock.advance(POLICY.stable_s)
        watch.died("killed by signal 9")
        assert watch.state == "restarting" and watch.retry_in() == 0.0 and watch.due()
        watch.started()
        assert watch.restarts == restart and watch.failures == 1
    assert watch.state == "running"


def test_deaths_in_a_row_wait_twice_as_long_each_time_up_to_the_cap() -> None:
    clock = FakeClock()
    watch = ChildWatch("nats-server", RestartPolicy(base_s=0.5, cap_s=4.0, limit=10), clock)
    waits = []
    for _ in range(7):
        watch.died("exited with status 1")
        waits.append(watch.retry_in())
        wait = watch.retry_in() or 0.0
        if wait:
            clock.advance(wait - 0.01)
            assert not watch.due()  # not a moment before its time
            clock.advance(0.01)
        assert watch.due()
        watch.started()
        clock.advance(1.0)  # dies again soon after each start
    assert waits == [0.0, 0.5, 1.0, 2.0, 4.0, 4.0, 4.0]


def test_a_failed_start_counts_as_a_death_and_the_limit_gives_up_with_the_reason() -> None:
    clock = FakeClock()
    watch = ChildWatch("nats-server", POLICY, clock)
    watch.died("killed by signal 9")
    for failures in range(2, POLICY.limit):
        watch.failed("OSError: address already in use")
        assert watch.state == "restarting" and watch.failures == failures
    watch.failed("OSError: address already in use")
    assert watch.state == "gave_up" and watch.retry_at is None and not watch.due()
    clock.advance(3600)
    assert not watch.due()  # given up stays given up
    message = watch.give_up_message()
    assert "nats-server died 6 times in a row" in message and "address already in use" in message
    record = watch.record()
    assert (record.state, record.failures, record.restarts) == ("gave_up", 6, 0)


def test_the_healer_starts_a_dead_child_again_and_records_it() -> None:
    clock, child, changes = FakeClock(), FakeChild(), []
    healer = Healer([child], POLICY, clock, on_change=lambda: changes.append(clock()))
    assert healer.tick() is False and changes == []  # alive: nothing to do
    child.exit = "pid 42 killed by signal 9"
    assert healer.tick() is True
    assert child.starts == 1 and child.exit is None
    record = healer.records()[0]
    assert (record.name, record.state, record.restarts) == ("nats-server", "running", 1)
    assert record.last_reason == "pid 42 killed by signal 9" and record.last_restart_at == clock()
    assert len(changes) == 2  # the death, then the start: each written to the state file at once


def test_the_healer_backs_off_a_child_that_cannot_start_then_gives_up() -> None:
    clock, child = FakeClock(), FakeChild()
    healer = Healer([child], POLICY, clock)
    child.exit, child.broken = "pid 42 killed by signal 9", True
    ticks = 0
    while healer.gave_up is None:
        healer.tick()
        clock.advance(0.25)  # the supervisor's watch period
        ticks += 1
        assert ticks < 1000
    # Started at once, then after 0.5, 1, 2 and 4 s: five starts, the sixth death gives up.
    assert child.starts == POLICY.limit - 1
    assert 7.5 <= ticks * 0.25 <= 8.0
    assert healer.gave_up is not None and "address already in use" in healer.gave_up
    starts = child.starts
    healer.tick()
    assert child.starts == starts  # nothing more is tried


def test_a_child_that_recovers_before_the_limit_starts_a_new_series_after_a_stable_run() -> None:
    clock, child = FakeClock(), FakeChild()
    healer = Healer([child], POLICY, clock)
    child.exit, child.broken = "killed", True
    for _ in range(12):  # 3 s: the death and three failed starts (at 0, 0.5 and 1.5 s)
        healer.tick()
        clock.advance(0.25)
    child.broken = False
    while healer.records()[0].state != "running":
        healer.tick()
        clock.advance(0.25)
    assert healer.records()[0].failures == 4  # still in a row: two more deaths soon would give up
    clock.advance(POLICY.stable_s)
    child.exit = "killed again"
    healer.tick()
    assert healer.gave_up is None and healer.records()[0].failures == 1


@pytest.mark.parametrize("limit", [1, 3])
def test_the_limit_is_the_number_of_deaths_in_a_row(limit: int) -> None:
    clock, child = FakeClock(), FakeChild()
    healer = Healer([child], RestartPolicy(limit=limit), clock)
    child.exit, child.broken = "killed", True
    for _ in range(200):
        healer.tick()
        clock.advance(0.25)
    assert child.starts == limit - 1 and healer.gave_up is not None
