"""The processes the supervisor watches, each as :class:`~headstart.runtime.healing.Supervised`
(found dead, started again) or only observed.

- The embedded nats-server: the supervisor's own child, started again on the same port and
  store, so every client reconnects by itself and finds its streams as they were.
- The Ray head (``gcs_server`` and ``raylet``): Ray cannot start either again in place (the
  GCS keeps the cluster's tables in memory unless backed by Redis, and a new raylet is a new
  node), and the driver (the supervisor) cannot leave a cluster whose raylet died (Ray ends
  the process when it tries), so the supervisor stops what it started and runs itself again in
  the same process: the broker, Ray, the shards (restored from their snapshots and the
  stream), the webhooks and Serve all start again. The actors Ray and Serve restart themselves
  (shards, the webhook actor, Serve's controller, replicas and proxies) are left to them.
- HAProxy (Serve's ``haproxy`` mode): a child of Serve's proxy actor, which Serve's controller
  health-checks and replaces when HAProxy is gone; the supervisor only watches and counts.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import psutil

from headstart.adapters.broker import EmbeddedNats
from headstart.adapters.status import ChildHealth

log = logging.getLogger(__name__)

#: The Ray head's processes whose death ends the local Ray cluster.
RAY_HEAD = ("gcs_server", "raylet")


class BrokerChild:
    """The embedded nats-server; ``after_start`` runs once it is back (the supervisor creates
    the memory-stored status bucket again: a broker restart loses it)."""

    name = "nats-server"

    def __init__(self, broker: EmbeddedNats, after_start: Callable[[], None]) -> None:
        self.broker = broker
        self.after_start = after_start

    def dead(self) -> str | None:
        status = self.broker.exit_status()
        if status is None:
            return None
        how = f"killed by signal {-status}" if status < 0 else f"exited with status {status}"
        return f"pid {self.broker.pid} {how}"

    def restart(self) -> None:
        self.broker.start()
        self.after_start()


class RayHead:
    """The local Ray cluster's head processes, found among the supervisor's children after
    ``ray.init``; ``restart`` starts everything again (it does not return: see the module)."""

    name = "ray"

    def __init__(self, restart: Callable[[], None]) -> None:
        self.restart = restart
        self.processes: list[tuple[str, psutil.Process]] = []

    def find(self) -> RayHead:
        """Note the head processes running now (once Ray has started)."""
        self.processes = [(name, p) for p in _descendants() if (name := _name(p)) in RAY_HEAD and _alive(p)]
        return self

    def dead(self) -> str | None:
        for name, process in self.processes:
            if not _alive(process):
                return f"{name} (pid {process.pid}) is gone"
        return None


class HaproxyWatch:
    """Counts the times Serve started HAProxy again after it was gone.

    Serve reloads HAProxy by starting a new process before the old one leaves, so there is
    always one running; none at all means HAProxy died, and one again means Serve replaced it.
    """

    name = "haproxy"

    def __init__(self) -> None:
        self.seen = False
        self.down_since: float | None = None
        self.restarts = 0
        self.last_restart_at: float | None = None

    def look(self, processes: list[psutil.Process], now: float) -> bool:
        """Look once at the supervisor's descendants; True if HAProxy went or came back."""
        running = any(_name(p) == "haproxy" for p in processes)
        if running and self.down_since is not None:
            self.down_since = None
            self.restarts += 1
            self.last_restart_at = now
            log.warning("HAProxy is back (started again by Serve; restart %d)", self.restarts)
            return True
        if not running and self.seen and self.down_since is None:
            self.down_since = now
            log.warning("HAProxy is gone; Serve's proxy health check starts it again")
            return True
        self.seen = self.seen or running
        return False

    def carry(self, records: list[ChildHealth]) -> None:
        """Restarts counted before the supervisor started itself again."""
        for record in records:
            if record.name == self.name:
                self.restarts, self.last_restart_at = record.restarts, record.last_restart_at

    def record(self) -> ChildHealth:
        return ChildHealth(
            name=self.name,
            state="restarting" if self.down_since is not None else "running",
            restarts=self.restarts,
            last_death_at=self.down_since,
            last_restart_at=self.last_restart_at,
            restarted_by="serve",
        )


def _descendants() -> list[psutil.Process]:
    try:
        return psutil.Process().children(recursive=True)
    except psutil.Error:
        return []


def _name(process: psutil.Process) -> str:
    try:
        return process.name()
    except psutil.Error:
        return ""


def _alive(process: psutil.Process) -> bool:
    try:
        # is_running also compares the start time: a recycled pid is not our process.
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
