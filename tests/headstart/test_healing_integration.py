"""The embedded setup heals itself: the nats-server SIGKILLed from outside, under HTTP ingest.

One instance for the module, started as ``headstart up`` in the foreground, as a child of the
test (so its exit status is seen). Every process is found by pid from the supervisor; nothing is
stopped by name. The tests run in order: the last one makes the supervisor give up.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import nats
import psutil
import pytest

from engine.catalog import DEFAULT_CATALOG, load_catalog
from engine.keys import Pseudonymizer
from engine.profile import UserState, Vocabularies
from headstart.adapters.broker import free_port
from headstart.adapters.rpc import ShardClient

pytestmark = pytest.mark.integration

PARTITIONS = 8
USERS = 120
EVENTS_PER_USER = 30
BATCH = 5
CLIENTS = 8
#: Event times: an hour ago, one second apart per user; states are compared as of NOW.
T0 = float(int(time.time()) - 3600)
NOW = T0 + 7200
STEPS = ("welcome", "profile", "connect_data", "first_project", "invite_team")
KINDS = (
    "session_started",
    "feature_clicked",
    "step_viewed",
    "step_completed",
    "tutorial_started",
    "tutorial_completed",
    "profile_updated",
)


HEADSTART = (sys.executable, "-m", "headstart")


def headstart(*args: str, home: Path, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "headstart", *args, "--home", str(home)],
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "COLUMNS": "200"},
    )


@dataclass
class Instance:
    home: Path
    log: Path
    proc: subprocess.Popen[bytes]
    url: str
    nats_url: str
    keys: dict[str, str]

    @property
    def supervisor(self) -> psutil.Process:
        return psutil.Process(self.proc.pid)

    def state(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.home / "run" / "state.json").read_text())
        return data

    def broker(self) -> psutil.Process:
        """The supervisor's nats-server child, found by its parent's pid."""
        found = [p for p in self.supervisor.children() if p.name() == "nats-server"]
        assert len(found) == 1, found
        return found[0]

    def health(self, child: str) -> dict[str, Any]:
        return next(c for c in self.state()["health"]["children"] if c["name"] == child)

    def headers(self, role: str = "server") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[role]}"}


@pytest.fixture(scope="module")
def instance(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Instance]:
    home = tmp_path_factory.mktemp("home")
    log = tmp_path_factory.mktemp("logs") / "up.log"
    sizes = ["--shards", "2", "--partitions", str(PARTITIONS), "--port", str(free_port())]
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [*HEADSTART, "up", "--home", str(home), *sizes],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 240
        state: dict[str, Any] = {}
        while not (state.get("ready") and state["supervisor"]["pid"] == proc.pid):
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.5)
            with_state = home / "run" / "state.json"
            state = json.loads(with_state.read_text()) if with_state.exists() else {}
        keys = json.loads((home / "keys.json").read_text())
        yield Instance(home, log, proc, state["http_url"], state["nats_url"], keys)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)  # a test that failed while it was stopped
            proc.terminate()  # stops everything in order
            try:
                proc.wait(120)
            except subprocess.TimeoutExpired:
                proc.kill()
        headstart("down", home=home)  # whatever is still recorded, by pid


# ---------------------------------------------------------------------------- the traffic


def events_of(user: str) -> list[dict[str, Any]]:
    """A user's events: sessions, clicks, steps viewed and completed in an order of their own,
    tutorials, traits and context."""
    rng = random.Random(user)
    steps = list(STEPS)
    rng.shuffle(steps)
    events = []
    for i in range(EVENTS_PER_USER):
        kind = rng.choice(KINDS)
        props: dict[str, Any] = {
            "feature_clicked": {"feature": rng.choice(["export", "share", "search", "invite"])},
            "step_viewed": {"step": steps[min(i // 6, 4)]},
            "step_completed": {"step": steps[min(i // 7, 4)]},
            "tutorial_started": {"tutorial": "intro", "variant": rng.choice(["video", "checklist"])},
            "tutorial_completed": {"tutorial": "intro", "variant": "video"},
            "profile_updated": {"role": rng.choice(["engineer", "designer", "manager"])},
        }.get(kind, {})
        event: dict[str, Any] = {"event_id": f"{user}-{i}", "user_id": user, "type": kind, "ts": T0 + i}
        if props:
            event["props"] = props
        if i % 7 == 0:
            event["context"] = {"device_type": rng.choice(["mobile", "desktop"]), "locale": "en-US"}
        events.append(event)
    return events


def expected_view(events: list[dict[str, Any]]) -> dict[str, Any]:
    """The fault-free state of a user: their events applied in order by the engine itself."""
    schema = load_catalog(DEFAULT_CATALOG).event_schema
    vocab = Vocabularies()
    typed = [schema.from_object(event, True) for event in events]
    user = UserState.new(typed[0].ts)
    for event in typed:
        user.apply(event, vocab, schema)
    return user.view(vocab, NOW, schema)


@dataclass
class Attempt:
    started: float
    ended: float
    status: int | str
    retry_after: str | None


@dataclass
class Traffic:
    attempts: list[Attempt] = field(default_factory=list)
    accepted: int = 0


async def retrying_client(
    http: httpx.AsyncClient, batches: list[list[dict[str, Any]]], traffic: Traffic, headers: dict[str, str]
) -> None:
    """Sends each batch until it is accepted, waiting what Retry-After says (the same event
    ids each time: stored once)."""
    for batch in batches:
        while True:
            started = time.monotonic()
            retry_after = None
            try:
                response = await http.post("/v1/events", json={"events": batch}, headers=headers)
                status: int | str = response.status_code
                retry_after = response.headers.get("retry-after")
            except httpx.TransportError as exc:
                status = type(exc).__name__
            traffic.attempts.append(Attempt(started, time.monotonic(), status, retry_after))
            if status == 200:
                traffic.accepted += len(batch)
                break
            assert status in (503, "ReadTimeout", "ConnectError", "RemoteProtocolError"), response.text
            await asyncio.sleep(float(retry_after) if retry_after else 0.2)
        await asyncio.sleep(0.02)  # a steady stream rather than one burst


def client_batches(users: list[str]) -> list[list[dict[str, Any]]]:
    """Each user's events in batches, the users interleaved, each user's order kept."""
    per_user = [
        [events[i : i + BATCH] for i in range(0, len(events), BATCH)] for events in map(events_of, users)
    ]
    return [batches[round] for round in range(len(per_user[0])) for batches in per_user]


async def shard_views(nats_url: str, keys: dict[str, str]) -> dict[str, dict[str, Any] | None]:
    """Each user's state as their shard holds it, as of NOW (over NATS, as the ingress asks)."""
    conn = await nats.connect(nats_url)
    try:
        client = ShardClient(conn, PARTITIONS, timeout=5.0)
        return {user: await client.get_user(key, now=NOW) for user, key in keys.items()}
    finally:
        await conn.close()


def wait_for_events(
    instance: Instance, expected: dict[str, dict[str, Any]], timeout: float = 90
) -> dict[str, Any]:
    """The shards' views once every user's events are applied (or the last ones read)."""
    pseudonymizer = Pseudonymizer((instance.home / "secret").read_text().strip().encode())
    keys = {user: pseudonymizer.key(user) for user in expected}
    deadline = time.monotonic() + timeout
    while True:
        views = asyncio.run(shard_views(instance.nats_url, keys))
        done = all(
            views[u] is not None and views[u]["events_total"] == expected[u]["events_total"] for u in expected
        )
        if done or time.monotonic() > deadline:
            return views
        time.sleep(1.0)


# ---------------------------------------------------------------------------- the tests


def test_a_killed_broker_is_back_within_5_s_and_every_users_state_equals_a_fault_free_run(
    instance: Instance, record_property: Any
) -> None:
    users = [f"user-{n:03d}" for n in range(USERS)]
    expected = {user: expected_view(events_of(user)) for user in users}
    total = USERS * EVENTS_PER_USER
    broker = instance.broker()
    broker_cmdline = broker.cmdline()
    traffic, probe = Traffic(), Traffic()
    decisions: list[Attempt] = []
    killed_at: list[float] = []

    async def kill_when_a_third_is_in() -> None:
        while traffic.accepted < total // 3:
            await asyncio.sleep(0.01)
        os.kill(broker.pid, signal.SIGKILL)
        killed_at.append(time.monotonic())

    async def probe_and_decide(http: httpx.AsyncClient) -> None:
        """After the kill: one event at a time (each sent until stored), and decisions."""
        while not killed_at:
            await asyncio.sleep(0.005)
        for n in range(40):
            event = {"event_id": f"probe-{n}", "user_id": "probe", "type": "feature_clicked", "ts": T0 + n}
            event["props"] = {"feature": "export"}
            while True:
                started = time.monotonic()
                response = await http.post("/v1/events", json={"events": [event]}, headers=instance.headers())
                probe.attempts.append(
                    Attempt(
                        started, time.monotonic(), response.status_code, response.headers.get("retry-after")
                    )
                )
                started = time.monotonic()
                decided = await http.post(
                    "/v1/decide", json={"user_id": "user-000"}, headers=instance.headers()
                )
                decisions.append(Attempt(started, time.monotonic(), decided.status_code, None))
                if response.status_code == 200:
                    break
                await asyncio.sleep(0.05)  # faster than Retry-After: measures when it is back

    async def run() -> None:
        limits = httpx.Limits(max_connections=CLIENTS + 2)
        async with httpx.AsyncClient(base_url=instance.url, timeout=30, limits=limits) as http:
            groups = [users[i::CLIENTS] for i in range(CLIENTS)]
            await asyncio.gather(
                kill_when_a_third_is_in(),
                probe_and_decide(http),
                *(retrying_client(http, client_batches(g), traffic, instance.headers()) for g in groups),
            )

    asyncio.run(run())
    assert traffic.accepted == total

    # Back within 5 s, without any command: the first probe stored after the kill.
    (kill,) = killed_at
    back = min(a.ended for a in probe.attempts if a.status == 200) - kill
    record_property("events_accepted_again_s", round(back, 2))  # in the JUnit report
    assert back <= 5.0, f"events accepted again {back:.1f} s after the kill"
    # While it was down: 503 with Retry-After, answered at once; never a hang, never a 500.
    refused = [a for a in traffic.attempts + probe.attempts if a.status != 200]
    assert refused, "no request saw the broker down"
    assert all(a.status == 503 and a.retry_after == "1" for a in refused), refused
    assert max(a.ended - a.started for a in traffic.attempts + probe.attempts) < 5.0
    # Decisions kept being answered (the default flow while no shard could be asked).
    assert decisions and all(a.status == 200 for a in decisions)
    assert max(a.ended - a.started for a in decisions) < 2.0

    # The same broker again: same port, same config and store, a new process.
    again = instance.broker()
    assert again.pid != broker.pid and again.cmdline() == broker_cmdline
    assert instance.state()["nats_url"] == instance.nats_url
    record = instance.health("nats-server")
    assert record["restarts"] == 1 and record["state"] == "running"
    assert record["last_reason"] == f"pid {broker.pid} killed by signal 9"

    # Nothing acknowledged lost, nothing applied twice: every user's state as a fault-free run's.
    expected["probe"] = expected_view(
        [
            {"event_id": f"probe-{n}", "user_id": "probe", "type": "feature_clicked", "ts": T0 + n}
            | {"props": {"feature": "export"}}
            for n in range(40)
        ]
    )
    views = wait_for_events(instance, expected)
    for user, view in expected.items():
        got = views[user]
        assert got is not None, user
        assert {k: got[k] for k in view} == view, user  # same ids, counts, lists in the same order

    # The operator sees it: status, /metrics, the supervisor's log.
    status = headstart("status", home=instance.home)
    assert status.returncode == 0, status.stdout + status.stderr
    assert re.search(
        r"nats-server: running, restarted 1x \(last at [\d:]+\); last death: pid \d+ killed", status.stdout
    )
    deadline = time.monotonic() + 10
    while True:  # the supervisor reports every second
        metrics = httpx.get(f"{instance.url}/metrics", headers=instance.headers("admin")).text
        line = re.search(
            r'hs_supervisor_restarts_total\{by="supervisor",child="nats-server"\} (\S+)', metrics
        )
        if (line and float(line[1]) == 1.0) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert line and float(line[1]) == 1.0, metrics[-2000:]
    assert 'hs_supervisor_child_up{child="nats-server"} 1.0' in metrics
    log = instance.log.read_text()
    assert f"nats-server died (pid {broker.pid} killed by signal 9)" in log
    assert "nats-server started again (restart 1)" in log


def test_while_the_broker_is_down_readyz_says_so_events_get_503_and_decisions_the_default_flow(
    instance: Instance,
) -> None:
    """The supervisor is stopped (SIGSTOP) first, so the broker stays down while we look."""
    supervisor = instance.supervisor
    os.kill(supervisor.pid, signal.SIGSTOP)
    event = {"event_id": "outage-1", "user_id": "outage", "type": "session_started", "ts": T0}
    try:
        broker = instance.broker()
        os.kill(broker.pid, signal.SIGKILL)
        with httpx.Client(base_url=instance.url, timeout=30, headers=instance.headers()) as http:
            deadline = time.monotonic() + 5
            while (ready := http.get("/readyz")).status_code == 200:  # cached for a second
                assert time.monotonic() < deadline, ready.text
                time.sleep(0.1)
            assert ready.status_code == 503 and ready.json()["nats"] is False
            started = time.monotonic()
            refused = http.post("/v1/events", json={"events": [event]})
            assert time.monotonic() - started < 1.0
            assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
            assert refused.json()["error"]["code"] == "unavailable"
            started = time.monotonic()
            decided = http.post("/v1/decide", json={"user_id": "user-001"})
            assert time.monotonic() - started < 1.0
            assert decided.status_code == 200 and decided.json()["personalized"] is False
        status = headstart("status", home=instance.home)
        assert status.returncode == 1 and "could not connect to NATS" in status.stdout
        assert "nats-server: running" in status.stdout  # what the supervisor knew when it stopped
    finally:
        os.kill(supervisor.pid, signal.SIGCONT)
    deadline = time.monotonic() + 5
    with httpx.Client(base_url=instance.url, timeout=30, headers=instance.headers()) as http:
        while (stored := http.post("/v1/events", json={"events": [event]})).status_code != 200:
            assert time.monotonic() < deadline, stored.text
            time.sleep(0.05)
    assert instance.health("nats-server")["restarts"] == 2


def hold_port(url: str) -> socket.socket:
    """Take the broker's port, so that starting it fails (as if something else had bound it)."""
    port = int(url.rsplit(":", 1)[1])
    deadline = time.monotonic() + 5
    while True:
        holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        # The killed broker's connections linger on the port for a moment (nats-server binds
        # through them the same way); a listener is what keeps it from binding.
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            holder.bind(("127.0.0.1", port))
        except OSError:
            holder.close()
            on_port = [c for c in psutil.net_connections("tcp") if c.laddr and c.laddr.port == port]
            assert time.monotonic() < deadline, on_port
            time.sleep(0.05)
            continue
        holder.listen()
        return holder


def kill_broker_and_hold_its_port(instance: Instance) -> socket.socket:
    supervisor = instance.supervisor
    os.kill(supervisor.pid, signal.SIGSTOP)
    try:
        broker = instance.broker()
        os.kill(broker.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while _running(broker):  # a zombie until the stopped supervisor reaps it: its port is free
            assert time.monotonic() < deadline
            time.sleep(0.01)
        return hold_port(instance.nats_url)
    finally:
        os.kill(supervisor.pid, signal.SIGCONT)


def test_up_on_a_home_whose_supervisor_is_healing_waits_until_it_is_ready(instance: Instance) -> None:
    holder = kill_broker_and_hold_its_port(instance)
    try:
        deadline = time.monotonic() + 10
        while instance.state()["phase"] != "healing":
            assert time.monotonic() < deadline
            time.sleep(0.02)
        os.kill(instance.proc.pid, signal.SIGSTOP)  # healing: kept there while `up` looks
        up = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "headstart",
                "up",
                "--detach",
                "--timeout",
                "120",
                "--home",
                str(instance.home),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "COLUMNS": "200"},
        )
        time.sleep(6)  # `up` starts, reads the state and waits
        assert up.poll() is None, up.communicate()[0]
    finally:
        holder.close()
        os.kill(instance.proc.pid, signal.SIGCONT)
    out, _ = up.communicate(timeout=120)
    assert up.returncode == 0, out
    assert "the supervisor is starting again: nats-server" in out and "waiting until it is ready" in out
    assert "already running" in out and instance.url in out
    assert instance.state()["ready"] is True and instance.health("nats-server")["restarts"] == 3


def test_a_broker_that_cannot_start_makes_the_supervisor_give_up_loudly(instance: Instance) -> None:
    holder = kill_broker_and_hold_its_port(instance)
    try:
        assert instance.proc.wait(180) == 1  # `up` exits non-zero
    finally:
        holder.close()
    state = instance.state()
    assert state["phase"] == "failed" and state["ready"] is False
    gave_up = state["health"]["gave_up"]
    died = r"nats-server died \d+ times in a row, each soon after its start"
    assert re.fullmatch(rf"{died} \(last: .+\); the supervisor gave up", gave_up)
    assert "nats-server exited" in gave_up  # the broker's own start failure, with its log
    log = instance.log.read_text()
    assert gave_up in log and "gave up:" in log
    status = headstart("status", home=instance.home)
    assert status.returncode == 1 and "failed:" in status.stdout and "nats-server died" in status.stdout
    # Everything it started is stopped (by pid), the state file says why until the next `up`.
    assert not [c for c in state["children"] if psutil.pid_exists(c["pid"]) and _same(c)]


def _same(record: dict[str, Any]) -> bool:
    """Whether the process a state file records still runs (same pid and start time)."""
    try:
        process = psutil.Process(record["pid"])
        return abs(process.create_time() - record["create_time"]) < 1 and _running(process)
    except psutil.Error:
        return False


def _running(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
