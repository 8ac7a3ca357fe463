"""A partly running home: Ray's head killed under a running supervisor, then the supervisor
itself killed, leaving the rest running; `up --detach` then starts what is missing.

One instance for the module, started by `up --detach` as an operator does; the second test's
`up` starts it again by design. Processes are found and stopped by pid, never by name.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from headstart.adapters.broker import free_port

pytestmark = pytest.mark.integration


def headstart(*args: str, home: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "headstart", *args, "--home", str(home)],
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "COLUMNS": "200"},
    )


def state_of(home: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((home / "run" / "state.json").read_text())
    return data


def running(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    home = tmp_path_factory.mktemp("home")
    sizes = ("--shards", "2", "--partitions", "4", "--port", str(free_port()))
    up = headstart("up", "--detach", *sizes, home=home)
    assert up.returncode == 0, up.stdout + up.stderr
    try:
        yield home
    finally:
        headstart("down", home=home)


def events_for(user: str, first: int, count: int) -> list[dict[str, Any]]:
    return [
        {"event_id": f"{user}-{n}", "user_id": user, "type": "feature_clicked", "ts": time.time()}
        | {"props": {"feature": "export"}}
        for n in range(first, first + count)
    ]


def applied(home: Path, user: str) -> int:
    """The user's events applied by their shard (0: unknown yet), through the HTTP API."""
    state = state_of(home)
    admin = json.loads((home / "keys.json").read_text())["admin"]
    response = httpx.get(f"{state['http_url']}/v1/users/{user}", headers={"Authorization": f"Bearer {admin}"})
    return int(response.json().get("events_total", 0)) if response.status_code == 200 else 0


def send_and_wait(home: Path, user: str, first: int, count: int) -> None:
    state = state_of(home)
    server = json.loads((home / "keys.json").read_text())["server"]
    headers = {"Authorization": f"Bearer {server}"}
    response = httpx.post(
        f"{state['http_url']}/v1/events", json={"events": events_for(user, first, count)}, headers=headers
    )
    assert response.status_code == 200, response.text
    deadline = time.monotonic() + 30
    while applied(home, user) < first + count:
        assert time.monotonic() < deadline, f"{user}'s events were not applied"
        time.sleep(0.3)


def test_a_killed_ray_head_makes_the_supervisor_start_everything_again_in_place(home: Path) -> None:
    send_and_wait(home, "alice", 0, 5)
    before = state_of(home)
    supervisor = psutil.Process(before["supervisor"]["pid"])
    raylet = next(p for p in supervisor.children() if p.name() == "raylet")
    head = ("raylet", "gcs_server", "haproxy")
    old_ray = [p for p in supervisor.children(recursive=True) if p.name() in head]
    os.kill(raylet.pid, signal.SIGKILL)
    deadline = time.monotonic() + 240
    while True:
        state = state_of(home)
        ray = next((c for c in state["health"]["children"] if c["name"] == "ray"), {"restarts": 0})
        if state["ready"] and ray["restarts"] == 1:
            break
        assert time.monotonic() < deadline, state
        assert running(supervisor), (home / "logs" / "supervisor.log").read_text()[-3000:]
        time.sleep(1)
    # The same supervisor (same pid: `down` still finds it), where it was, with a new Ray.
    assert state["supervisor"] == before["supervisor"]
    assert (state["http_url"], state["nats_url"]) == (before["http_url"], before["nats_url"])
    assert state["ray_session_dir"] != before["ray_session_dir"]
    assert not [p.pid for p in old_ray if running(p)]  # the old head's processes are gone
    assert ray["last_reason"] == f"raylet (pid {raylet.pid}) is gone" and ray["state"] == "running"
    # Nothing lost: the profile restored from the store, and new events applied on top.
    assert applied(home, "alice") == 5
    send_and_wait(home, "alice", 5, 3)
    status = headstart("status", home=home)
    assert status.returncode == 0 and "ray: running, restarted 1x" in status.stdout, status.stdout
    log = (home / "logs" / "supervisor.log").read_text()
    assert f"ray died (raylet (pid {raylet.pid}) is gone)" in log and "starting everything again" in log


def test_up_on_a_home_whose_supervisor_died_stops_what_it_left_and_starts_again(home: Path) -> None:
    before = state_of(home)
    supervisor = psutil.Process(before["supervisor"]["pid"])
    left = supervisor.children(recursive=True)
    os.kill(supervisor.pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while running(supervisor):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    orphans = [p for p in left if running(p)]
    assert any(p.name() == "nats-server" for p in orphans)  # the rest ran on without it
    up = headstart("up", "--detach", home=home)  # no --port: where the instance was
    assert up.returncode == 0, up.stdout + up.stderr
    assert "the supervisor of this home had died" in up.stdout and "starting everything again" in up.stdout
    assert not [(p.pid, p.name()) for p in orphans if running(p)]  # stopped, by recorded pid
    state = state_of(home)
    assert state["supervisor"]["pid"] != supervisor.pid and state["ready"] is True
    assert state["http_url"] == before["http_url"] and state["shards"] == before["shards"]
    assert applied(home, "alice") == 8  # from the store: nothing lost
    send_and_wait(home, "alice", 8, 2)
