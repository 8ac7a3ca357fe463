"""When the supervisor starts a dead child again, and when it gives up: pure bookkeeping, with
the clock passed in, so the policy is tested without processes or sleeps.

A child that dies after running a while (``stable_s``) is started again at once: one death is
an accident. A child that dies again soon after its start is in trouble: each further start
waits twice as long as the one before (from ``base_s`` up to ``cap_s``), so a broker that cannot
bind its port is not restarted in a tight loop, and the ``limit``-th death in a row gives up.
A start that fails counts as a death at once.

>>> clock = FakeClock()
>>> broker = ChildWatch("nats-server", RestartPolicy(base_s=0.5, limit=4), clock)
>>> broker.died("exited with -9"); broker.state, broker.retry_in()
('restarting', 0.0)
>>> broker.started(); clock.advance(1.0); broker.died("exited with 1"); broker.retry_in()
0.5
>>> broker.failed("port in use"); broker.retry_in()
1.0
>>> broker.failed("port in use"); broker.state, broker.record().restarts
('gave_up', 1)
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from headstart.adapters.status import ChildHealth

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RestartPolicy:
    """How eagerly a dead child is started again (see the module's docstring)."""

    #: The wait before the second start of a series; each later one doubles it. Half a second:
    #: a broker that died of a passing cause (its port briefly held) is back in about a second.
    base_s: float = 0.5
    #: The longest wait between two starts, so a child that recovers is not left down long.
    cap_s: float = 30.0
    #: Deaths in a row (each soon after its start) before giving up: with the defaults the
    #: supervisor tries for about 7.5 s of waits plus the starts themselves, long enough for a
    #: passing cause and short enough that an operator learns of a lasting one.
    limit: int = 6
    #: A child that ran this long before dying starts a new series (restarted at once).
    stable_s: float = 60.0

    def delay(self, failures: int) -> float:
        """The wait before the start that follows the ``failures``-th death in a row.

        >>> [RestartPolicy(base_s=0.5, cap_s=4.0).delay(n) for n in range(1, 7)]
        [0.0, 0.5, 1.0, 2.0, 4.0, 4.0]
        """
        if failures <= 1:
            return 0.0
        return float(min(self.cap_s, self.base_s * 2 ** (failures - 2)))


class FakeClock:
    """A clock for tests and examples: time moves only when told.

    >>> clock = FakeClock(10.0); clock.advance(2.5); clock()
    12.5
    """

    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class ChildWatch:
    """One child's life as the supervisor sees it: running, restarting (a start is due at
    :attr:`retry_at`), or given up; with the record ``status`` and ``/metrics`` show."""

    def __init__(self, name: str, policy: RestartPolicy, clock: Callable[[], float]) -> None:
        self.name = name
        self.policy = policy
        self.clock = clock
        self.state = "running"
        self.started_at = clock()
        #: Deaths in a row, each soon after its start (reset by a stable run).
        self.failures = 0
        self.restarts = 0
        self.retry_at: float | None = None
        self.last_death_at: float | None = None
        self.last_reason: str | None = None
        self.last_restart_at: float | None = None

    def died(self, reason: str) -> None:
        """The child was found dead (``reason``: its exit status, what was seen)."""
        now = self.clock()
        stable = self.state == "running" and now - self.started_at >= self.policy.stable_s
        self._count_death(now, reason, in_a_row=not stable)

    def failed(self, reason: str) -> None:
        """A start did not bring the child up: a death in a row."""
        self._count_death(self.clock(), reason, in_a_row=True)

    def _count_death(self, now: float, reason: str, in_a_row: bool) -> None:
        self.failures = self.failures + 1 if in_a_row else 1
        self.last_death_at, self.last_reason = now, reason
        if self.failures >= self.policy.limit:
            self.state, self.retry_at = "gave_up", None
        else:
            self.state, self.retry_at = "restarting", now + self.policy.delay(self.failures)

    def due(self) -> bool:
        """Whether a start should be tried now."""
        return self.state == "restarting" and self.retry_at is not None and self.clock() >= self.retry_at

    def retry_in(self) -> float | None:
        """Seconds until the next start (None: none planned)."""
        return None if self.retry_at is None else max(0.0, self.retry_at - self.clock())

    def started(self) -> None:
        """A start brought the child up again."""
        now = self.clock()
        self.state, self.retry_at, self.started_at = "running", None, now
        self.restarts += 1
        self.last_restart_at = now

    def carry(self, record: ChildHealth) -> None:
        """Take over what ``record`` counted before the supervisor started itself again; a
        child that was being restarted then is started now (its deaths in a row still count).

        >>> watch = ChildWatch("ray", RestartPolicy(), FakeClock())
        >>> watch.carry(ChildHealth("ray", "restarting", restarts=1, failures=2))
        >>> watch.state, watch.restarts, watch.failures
        ('running', 2, 2)
        """
        self.restarts, self.failures = record.restarts, record.failures
        self.last_death_at, self.last_reason = record.last_death_at, record.last_reason
        self.last_restart_at = record.last_restart_at
        if record.state == "restarting":
            self.started()

    def give_up_message(self) -> str:
        return (
            f"{self.name} died {self.failures} times in a row, each soon after its start "
            f"(last: {self.last_reason}); the supervisor gave up"
        )

    def record(self) -> ChildHealth:
        return ChildHealth(
            name=self.name,
            state=self.state,
            restarts=self.restarts,
            failures=self.failures,
            last_death_at=self.last_death_at,
            last_reason=self.last_reason,
            last_restart_at=self.last_restart_at,
            retry_at=self.retry_at,
        )


class Supervised(Protocol):
    """A child the supervisor starts again when it dies."""

    name: str

    def dead(self) -> str | None:
        """Why the child is dead (its exit status, what was seen), or None while it runs."""

    def restart(self) -> None:
        """Start the child again; raise if it did not come up."""


class Healer:
    """Looks at each child once per :meth:`tick`: a dead one is recorded, and started again
    when its policy says so; the first child given up on ends the healing. ``on_change`` is
    called after each death, start and giving up (the supervisor writes its state file).

    >>> class Flaky:
    ...     name, exit, starts = "broker", "exited with -9", 0
    ...     def dead(self): return self.exit
    ...     def restart(self): self.starts += 1; self.exit = None
    >>> clock, child = FakeClock(), Flaky()
    >>> healer = Healer([child], RestartPolicy(), clock)
    >>> healer.tick(), child.starts, healer.records()[0].restarts
    (True, 1, 1)
    >>> healer.tick(), healer.gave_up
    (False, None)
    """

    def __init__(
        self,
        children: list[Supervised],
        policy: RestartPolicy,
        clock: Callable[[], float],
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self.children = children
        self.watches = [ChildWatch(child.name, policy, clock) for child in children]
        self.on_change = on_change
        #: Why the healing ended (a child given up on), or None.
        self.gave_up: str | None = None

    def tick(self) -> bool:
        """Look at every child once; True if anything changed (a death, a start, giving up)."""
        changed = False
        for child, watch in zip(self.children, self.watches, strict=True):
            if self.gave_up is not None:
                break
            if watch.state == "running":
                reason = child.dead()
                if reason is not None:
                    watch.died(reason)
                    changed = True
                    self._announce(watch)
            if watch.due():
                changed = True
                try:
                    child.restart()
                except Exception as exc:  # noqa: BLE001 - any failure to start is a death in a row
                    watch.failed(f"{type(exc).__name__}: {exc}")
                    self._announce(watch)
                else:
                    watch.started()
                    log.warning("%s started again (restart %d)", watch.name, watch.restarts)
                    self.on_change()
        return changed

    def _announce(self, watch: ChildWatch) -> None:
        if watch.state == "gave_up":
            self.gave_up = watch.give_up_message()
            log.error("%s", self.gave_up)
        else:
            log.warning(
                "%s died (%s); starting it again in %.1f s (death %d in a row; gives up at %d)",
                watch.name,
                watch.last_reason,
                watch.retry_in() or 0.0,
                watch.failures,
                watch.policy.limit,
            )
        self.on_change()

    def records(self) -> list[ChildHealth]:
        return [watch.record() for watch in self.watches]

    def carry(self, records: list[ChildHealth]) -> None:
        """Each child's record from before the supervisor started itself again."""
        by_name = {record.name: record for record in records}
        for watch in self.watches:
            if watch.name in by_name:
                watch.carry(by_name[watch.name])
