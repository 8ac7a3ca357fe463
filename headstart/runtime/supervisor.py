"""What ``headstart up`` runs: the embedded broker, local Ray, the streams and the shards.

One process (the supervisor) owns them. It records every process it started, with its start
time, in ``<home>/run/state.json``, so ``headstart down`` stops exactly those, by PID, even if
the supervisor itself died: other Ray or NATS instances on the machine are left alone.

It then watches them (:mod:`headstart.runtime.children`): a dead broker is started again on
the same port and store, a dead Ray head means Ray and everything on it start again, with a
backoff and a limit (:mod:`headstart.runtime.healing`); each restart is in the state file, the
status bucket (``/metrics``) and the log, and giving up ends ``up`` with a non-zero exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgspec
import psutil
from pydantic import SecretStr

from engine.errors import HeadstartError
from headstart.adapters.broker import EmbeddedNats, connect_nats
from headstart.adapters.catalog_store import CatalogStore, StoredVersion
from headstart.adapters.key_store import KeySet, KeyStore
from headstart.adapters.provision import ensure_streams
from headstart.adapters.status import ChildHealth, SupervisorHealth
from headstart.runtime.catalog import version_at_start, who_from_cli
from headstart.runtime.children import BrokerChild, HaproxyWatch, RayHead
from headstart.runtime.healing import Healer, RestartPolicy, Supervised
from headstart.runtime.home import DataHome
from headstart.settings import Settings

if TYPE_CHECKING:
    from nats.aio.client import Client as NATS

log = logging.getLogger(__name__)

#: How often the supervisor looks at its children: a dead broker is found within this.
WATCH_EVERY_S = 0.25


class Runtime:
    """Starts and stops one Headstart instance for a data home.

    ``start_again``: how this process starts itself again when Ray's head dies (the CLI's
    ``up`` runs itself again in the same process); None leaves Ray's head unwatched.
    """

    def __init__(self, settings: Settings, start_again: Callable[[], None] | None = None) -> None:
        self.settings = settings
        self.home = DataHome(settings.home).ensure()
        self.broker: EmbeddedNats | None = None
        self.nats_url = settings.nats_url or ""
        self.group: Any = None
        self.webhooks: Any = None
        self.control: Any = None
        #: The catalog version served at start, and what `up` stored (None: nothing).
        self.catalog_version = 0
        self.catalog_note: str | None = None
        #: The children the supervisor starts again when they die, and HAProxy, which it watches.
        self.healer: Healer | None = None
        self.start_again = start_again
        self.haproxy: HaproxyWatch | None = None
        #: Why the supervisor gave up healing (then `up` exits non-zero), or None.
        self.gave_up: str | None = None
        #: Every process below this one at the last look (Ray's workers and HAProxy outlive a
        #: dead raylet, no longer below us: they are ended by pid from this list).
        self._seen: list[psutil.Process] = []
        self._phase = "starting"
        self._carried: list[ChildHealth] = []
        self._recording = threading.Lock()
        self._stop = threading.Event()

    def start(self) -> dict[str, Any]:
        """Bring everything up and return the state written to the data home."""
        # This process may be the same supervisor started again (Ray's head died): its children's
        # restarts so far carry over.
        carried = _carried_health(self.home)
        self._carried = carried.children if carried is not None else []
        try:
            return self._start(carried)
        except Exception as exc:
            if carried is not None:  # healing, not a first start: the state file says it failed
                first_line = (str(exc).strip().splitlines() or [""])[0][:300]
                self.gave_up = (
                    f"starting everything again after Ray's head died failed: {type(exc).__name__}: "
                    f"{first_line}"
                )
                log.error("%s", self.gave_up)
            raise

    def _start(self, carried: SupervisorHealth | None) -> dict[str, Any]:
        secret = self.home.secret(self.settings.secret.get_secret_value() if self.settings.secret else None)
        # The shards seal PII in snapshots with it (headstart.pii): they are given it as settings.
        self.settings = self.settings.model_copy(update={"secret": SecretStr(secret.decode())})
        children: list[Supervised] = []
        if not self.settings.nats_url:
            self.broker = EmbeddedNats(self.home.nats_dir, self.settings.nats_port)
            self.nats_url = self.broker.start()
            children.append(BrokerChild(self.broker, self._broker_back))
            self._record(phase="broker")
        from headstart.runtime.home import ensure_keys

        keys = ensure_keys(self.home.keys_file)
        served, accepted = asyncio.run(self._provision(keys))
        catalog = served.catalog()
        # Every component starts from this version and follows the store from there.
        self.catalog_version = served.version

        import ray

        from actors.cluster import ShardGroup
        from actors.serving import apply_serve_environment

        apply_serve_environment(self.settings.serve_mode)

        # Logical CPUs: shards are scheduled by reservation, the OS shares the real cores.
        num_cpus = max(os.cpu_count() or 1, int(self.settings.shards * self.settings.shard_num_cpus) + 2)
        cluster: dict[str, Any] = (
            {"address": self.settings.ray_address} if self.settings.ray_address else {"num_cpus": num_cpus}
        )
        context = ray.init(
            **cluster,
            include_dashboard=False,
            namespace="headstart",
            configure_logging=True,
            logging_level=logging.WARNING,
            log_to_driver=False,
        )
        self._ray_address = getattr(context, "address_info", {}).get("gcs_address")
        # Where Ray and Serve write their logs (for operators, and the raw-id audit test).
        self._ray_session_dir = getattr(context, "address_info", {}).get("session_dir")
        self._record(phase="ray")
        if not self.settings.ray_address and self.start_again is not None:
            # Ray's head is ours only when we started it; a cluster's is its operator's.
            children.append(RayHead(self._start_again).find())
        self.group = ShardGroup(
            self.settings, self.nats_url, catalog, catalog_version=self.catalog_version
        ).start()
        self.group.wait_ready()
        self._record(phase="shards")
        from actors.webhooks import start_webhooks

        self.webhooks = start_webhooks(
            self.nats_url, catalog, self.settings.nats_auth(), catalog_version=self.catalog_version
        )
        from headstart.adapters.control import ControlServer

        self.control = ControlServer(
            self.nats_url, {"scale": self._scale}, self.settings.nats_auth(), health=self._health_json
        ).start()
        self.http_url = self._start_serve(catalog, secret, accepted)
        _wait_http_ready(self.http_url)
        if self.settings.serve_mode == "haproxy":
            self.haproxy = HaproxyWatch()
        policy = RestartPolicy(limit=self.settings.restart_limit)
        self.healer = Healer(children, policy, time.time, on_change=self._health_changed)
        if carried is not None:
            self.healer.carry(carried.children)
            if self.haproxy is not None:
                self.haproxy.carry(carried.children)
        return self._record(phase="ready")

    def _start_again(self) -> None:
        """Ray's head died. Ray cannot start a GCS or a raylet again in place, and its driver
        (this process) cannot leave the dead cluster (Ray ends the process when it tries): so
        the supervisor stops what it started, by pid, and runs itself again in this same process
        (same pid: ``down`` still finds it), which starts everything again. The streams are on
        disk, the shards restore from their snapshots and the stream."""
        assert self.start_again is not None
        if self.broker is not None:
            self.broker.stop()  # in order: JetStream writes what it holds
            # The same addresses after the restart: clients and the state file keep them.
            os.environ["HEADSTART_NATS_PORT"] = str(self.broker.port)
        if getattr(self, "grpc_port", None):
            os.environ["HEADSTART_GRPC_PORT"] = str(self.grpc_port)
        if self.group is not None:  # the layout a rescale may have changed
            os.environ["HEADSTART_SHARDS"] = str(self.group.assignment.shards)
        _end({*self._seen, *_descendants()})
        log.warning("starting everything again in this process (pid %d)", os.getpid())
        self.start_again()

    def _broker_back(self) -> None:
        """The broker started again: what it kept only in memory (the status bucket) is
        created again; the streams and buckets on disk are as they were."""
        asyncio.run(self._ensure_streams())

    def _start_serve(self, catalog: Any, secret: bytes, accepted: KeySet) -> str:
        """The Serve app, started again once if Serve's HAProxy failed to start: on a loaded
        machine it was seen failing to bind a port nothing of ours held (CI), and a fresh Serve
        then starts. A port really in use fails twice, with HAProxy's message."""
        from ray import serve

        from actors.serving import start_app
        from headstart.adapters.broker import free_port

        self.grpc_port = self.settings.grpc_port or free_port()

        identity = self.settings.identity_secret
        configured_identity = identity.get_secret_value() if identity else None
        # The store's keys as they are now: a replica accepts these until it reads the store
        # itself (on its first request), so a key revoked before the start is never accepted.
        hashes, expiries = accepted.hashes(time.time())

        def start() -> str:
            return start_app(
                self.settings,
                self.nats_url,
                catalog,
                secret,
                hashes,
                grpc_port=self.grpc_port,
                catalog_version=self.catalog_version,
                identity_secret=self.home.identity_secret(configured_identity),
                key_expiries=expiries,
            )

        try:
            return start()
        except Exception as exc:
            if "HAProxy" not in str(exc):
                raise
            log.warning("Serve's HAProxy failed to start; starting Serve again: %s", str(exc)[-300:])
            serve.shutdown()  # type: ignore[no-untyped-call]
            return start()

    def _scale(self, request: dict[str, Any]) -> dict[str, Any]:
        """``headstart scale`` and ``POST /v1/admin/scale``: move partitions to N shards live."""
        from headstart.adapters.control import scale_request

        shards = scale_request(request, maximum=min(256, self.settings.partitions))
        report: dict[str, Any] = self.group.rescale(shards)
        self._record(self._phase)
        return report

    async def _provision(self, keys: dict[str, str]) -> tuple[StoredVersion, KeySet]:
        """The streams, the catalog version to serve (storing the given file if it is new), and
        the keys accepted (every key of ``keys.json`` known to the key store first)."""
        nc = await connect_nats(
            self.nats_url, self.settings.nats_auth(), connect_timeout=5, max_reconnect_attempts=3
        )
        try:
            await self._ensure_streams(nc)
            store = await CatalogStore.open(nc.jetstream(), self.settings.stream_replicas)
            served, note = await version_at_start(
                store, self.settings.catalog, who_from_cli(self.home.keys_file)
            )
            key_store = await KeyStore.open(nc.jetstream(), self.settings.stream_replicas)
            accepted = await key_store.seed(keys)
        finally:
            await nc.close()
        # `up` prints it from the state file, detached or not.
        self.catalog_note = note
        return served, accepted

    async def _ensure_streams(self, nc: NATS | None = None) -> None:
        """Every stream and bucket, created where missing (on ``nc``, or a connection of its own)."""
        own = nc is None
        if nc is None:
            nc = await connect_nats(
                self.nats_url, self.settings.nats_auth(), connect_timeout=5, max_reconnect_attempts=3
            )
        try:
            settings = self.settings
            await ensure_streams(
                nc.jetstream(), settings.partitions, settings.retention(), settings.stream_replicas
            )
        finally:
            if own:
                await nc.close()

    def health(self) -> SupervisorHealth:
        """The children the supervisor watches and their restarts, and why it gave up if it did."""
        if self.healer is None:  # starting: what was counted before a start in place, if any
            return SupervisorHealth(children=self._carried, gave_up=self.gave_up)
        children = self.healer.records()
        if self.haproxy is not None:
            children.append(self.haproxy.record())
        return SupervisorHealth(children=children, gave_up=self.gave_up)

    def _health_json(self) -> bytes:
        return msgspec.json.encode(self.health())

    def _health_changed(self) -> None:
        """A child died, came back, or was given up on: the state file says so at once."""
        assert self.healer is not None
        self.gave_up = self.healer.gave_up
        healing = any(watch.state != "running" for watch in self.healer.watches)
        self._record(phase="failed" if self.gave_up else "healing" if healing else "ready")

    def _record(self, phase: str) -> dict[str, Any]:
        # Written from the watch loop and from the control thread (a rescale): one at a time.
        with self._recording:
            return self._write_record(phase)

    def _write_record(self, phase: str) -> dict[str, Any]:
        me = psutil.Process()
        self._phase = phase
        children = []
        for child in me.children(recursive=True):
            # Ray starts short-lived helpers: one may exit between the listing and the read.
            try:
                children.append({"pid": child.pid, "create_time": child.create_time(), "name": child.name()})
            except psutil.Error:
                continue
        state = {
            "phase": phase,
            "ready": phase == "ready",
            "health": msgspec.to_builtins(self.health()),
            "supervisor": {"pid": me.pid, "create_time": me.create_time()},
            "children": children,
            "nats_url": self.nats_url,
            "nats_monitor": f"http://127.0.0.1:{self.broker.monitor_port}" if self.broker else None,
            "ray_address": getattr(self, "_ray_address", None),
            "ray_session_dir": getattr(self, "_ray_session_dir", None),
            "http_url": getattr(self, "http_url", None),
            "grpc_address": f"{self.settings.host}:{self.grpc_port}"
            if getattr(self, "grpc_port", None)
            else None,
            "partitions": self.settings.partitions,
            "catalog": str(self.settings.catalog) if self.settings.catalog else None,
            # The version served at start (the instance follows the store from there:
            # `headstart catalog history` and `status` read the store for the latest).
            "catalog_version": self.catalog_version,
            "catalog_note": self.catalog_note,
            # Attaching keeps the running layout, and a rescale changes it: the group knows.
            "shards": self.group.assignment.shards if self.group is not None else self.settings.shards,
            "home": str(self.home.root),
            "started_at": time.time(),
        }
        self.home.write_state(state)
        return state

    def wait(self) -> None:
        """Watch the children until SIGINT or SIGTERM, starting again each one that dies; return
        early if the healing gives up (:attr:`gave_up` says why)."""
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: self._stop.set())
        while not self._stop.wait(WATCH_EVERY_S):
            now = _descendants()
            if {p.pid for p in now} != {p.pid for p in self._seen}:
                # Ray starts workers, Serve a new HAProxy: the state file lists every process
                # below us, so that `down` (or the next `up`, if we die) stops exactly these.
                self._record(self._phase)
            if self.haproxy is not None and self.haproxy.look(now, time.time()):
                self._health_changed()
            if self.healer is not None:
                self.healer.tick()
            # Taken before the tick that finds Ray's head dead: its workers and HAProxy leave
            # a dead raylet's tree within moments, and are ended by pid from this list.
            self._seen = now
            if self.gave_up is not None:
                return

    def stop(self) -> None:
        if self.control is not None:
            self.control.stop()
        try:
            import ray

            from actors.serving import stop_app

            if ray.is_initialized():
                stop_app()
        except Exception:
            log.exception("stopping serve")
        if self.webhooks is not None:
            try:
                import ray

                ray.get(self.webhooks.stop.remote(), timeout=10)
                ray.kill(self.webhooks)
            except Exception:
                log.exception("stopping webhooks")
        if self.group is not None:
            try:
                self.group.stop()
            except Exception:
                log.exception("stopping shards")
        try:
            import ray

            if ray.is_initialized():
                ray.shutdown()
        except Exception:
            log.exception("stopping ray")
        if self.broker is not None:
            self.broker.stop()
        if self.gave_up is None:
            self.home.clear_state()
        else:
            # Kept, saying why: `status` shows it, and the next `up` starts afresh.
            self._record(phase="failed")


def start_again_in_place() -> None:
    """Run this ``headstart up`` again in the current process (same pid, arguments and
    environment): what the supervisor does when Ray's head died."""
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, "-m", "headstart", *sys.argv[1:]])


def _carried_health(home: DataHome) -> SupervisorHealth | None:
    """The health the state file records for this very process, if it is the supervisor
    started again in place (same pid and start time); else None (a first start)."""
    state = home.read_state()
    if state is None or not state.get("health") or _live(state["supervisor"]) is None:
        return None
    if state["supervisor"]["pid"] != os.getpid():
        return None
    return msgspec.convert(state["health"], SupervisorHealth)


def _end(processes: set[psutil.Process], timeout: float = 10.0) -> None:
    """SIGKILL ``processes`` and wait until they are gone, reaping those that are our own
    children: no zombie of an old Ray head may be taken for a new one. Those of others become
    zombies until their parent (or init) reaps them: gone enough."""
    me = os.getpid()
    ours = []
    for process in processes:
        with contextlib.suppress(psutil.Error):
            if process.ppid() == me:
                ours.append(process)
            process.kill()  # psutil checks the start time: a recycled pid is left alone
    psutil.wait_procs(ours, timeout=timeout)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(_running(p) for p in processes):
        time.sleep(0.05)


def _running(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _descendants() -> list[psutil.Process]:
    try:
        return psutil.Process().children(recursive=True)
    except psutil.Error:
        return []


def _wait_http_ready(url: str, timeout: float = 60.0) -> None:
    """Wait until /readyz says every partition has a shard and NATS is connected."""
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    raise HeadstartError(f"the HTTP API at {url} did not become ready in {timeout}s")


def stop_recorded(home: DataHome, timeout: float = 40.0) -> list[int]:
    """Stop the processes recorded in the home's state file; return the PIDs signalled.

    The supervisor gets SIGTERM and a chance to stop everything in order; whatever it started
    and is still alive afterwards is killed, identified by PID *and* start time so a recycled
    PID is never hit.
    """
    state = home.read_state()
    if state is None:
        return []
    signalled: list[int] = []
    sup = _live(state["supervisor"])
    if sup is not None:
        sup.terminate()
        signalled.append(sup.pid)
        try:
            sup.wait(timeout)
        except psutil.TimeoutExpired:
            sup.kill()
    for child in state.get("children", []):
        proc = _live(child)
        if proc is not None:
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                continue  # it exited on its own meanwhile
            signalled.append(proc.pid)
    home.clear_state()
    return signalled


def _live(record: dict[str, Any]) -> psutil.Process | None:
    try:
        proc = psutil.Process(record["pid"])
        if abs(proc.create_time() - record["create_time"]) > 1.0:
            return None
        # A killed process its parent has not reaped yet is a zombie: dead, whatever its pid says.
        return proc if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE else None
    except psutil.Error:  # gone, or not ours to look at
        return None


def instance_running(home: DataHome) -> dict[str, Any] | None:
    """The state of the instance running for this home, or None."""
    state = home.read_state()
    if state is None or _live(state["supervisor"]) is None:
        return None
    return state


class NotRunning(HeadstartError):
    """No instance is running for this data home."""
