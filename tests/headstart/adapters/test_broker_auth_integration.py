"""Headstart against a NATS server that requires credentials (nkey, user and password)."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import nkeys
import pytest
from pydantic import SecretStr

from headstart.adapters.broker import NatsAuth, NatsUnavailable, connect_nats, free_port, nats_server_binary

pytestmark = pytest.mark.integration


class SecuredNats:
    """A nats-server with JetStream that lets in only the given nkey and user/password."""

    def __init__(self, root: Path) -> None:
        seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
        self.seed_file = root / "user.nk"
        self.seed_file.write_bytes(seed)
        self.seed_file.chmod(0o600)
        self.password = secrets.token_urlsafe(16)
        self.port = free_port()
        public = nkeys.from_seed(seed).public_key.decode()
        config = root / "nats.conf"
        config.write_text(
            f"listen: 127.0.0.1:{self.port}\n"
            f'jetstream {{ store_dir: "{root / "js"}" }}\n'
            "authorization {\n"
            f'  users = [ {{ nkey: "{public}" }}, {{ user: "hs", password: "{self.password}" }} ]\n'
            "}\n"
        )
        self.proc = subprocess.Popen([nats_server_binary(), "-c", str(config)], stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "nats-server did not start"
                time.sleep(0.1)

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecuredNats]:
    server = SecuredNats(tmp_path_factory.mktemp("secured-nats"))
    try:
        yield server
    finally:
        server.stop()


def run(*args: str, home: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "headstart", *args, "--home", str(home)],
        check=False,
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "COLUMNS": "200", **env},
    )


def test_each_credential_kind_is_let_in_and_nothing_else(secured: SecuredNats) -> None:
    async def attempt(auth: NatsAuth | None) -> bool:
        try:
            nc = await connect_nats(secured.url, auth, connect_timeout=3, max_reconnect_attempts=1)
        except NatsUnavailable as exc:
            assert "Authorization Violation" in str(exc)
            return False
        await nc.close()
        return True

    async def attempts() -> list[bool]:
        return [
            await attempt(NatsAuth(nkey_seed=secured.seed_file)),
            await attempt(NatsAuth(user="hs", password=SecretStr(secured.password))),
            await attempt(NatsAuth(user="hs", password=SecretStr("wrong"))),
            await attempt(None),
        ]

    assert asyncio.run(attempts()) == [True, True, False, False]


def test_an_instance_on_a_secured_nats_ingests_decides_and_reports(
    secured: SecuredNats, tmp_path: Path
) -> None:
    env = {"HEADSTART_NATS_URL": secured.url, "HEADSTART_NATS_NKEY_SEED": str(secured.seed_file)}
    port = str(free_port())
    up = run("up", "--detach", "--shards", "1", "--partitions", "4", "--port", port, home=tmp_path, env=env)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        key = json.loads((tmp_path / "keys.json").read_text())["frontend"]
        headers = {"Authorization": f"Bearer {key}"}
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=10) as client:
            event = {
                "event_id": "secured-1",
                "user_id": "erin@example.com",
                "type": "step_completed",
                "ts": time.time(),
                "props": {"step": "welcome"},
            }
            assert client.post("/v1/events", json={"events": [event]}).status_code == 200
            deadline = time.monotonic() + 10
            while True:
                decision = client.post("/v1/decide", json={"user_id": "erin@example.com"}).json()
                if decision["completed_steps"] == ["welcome"] or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            assert decision["completed_steps"] == ["welcome"]
        status = run("status", "--json", home=tmp_path, env=env)
        assert status.returncode == 0, status.stderr
        assert json.loads(status.stdout)["stream"]["messages"] >= 1
        # The CLI without the credentials is refused by the server, with a message.
        refused = run("status", home=tmp_path, env={"HEADSTART_NATS_URL": secured.url})
        assert refused.returncode == 1 and "Authorization Violation" in refused.stdout
        assert "Traceback" not in refused.stdout + refused.stderr
    finally:
        run("down", home=tmp_path, env=env)


def test_credentials_in_the_url_are_refused_at_load() -> None:
    from pydantic import ValidationError

    from headstart.settings import Settings

    with pytest.raises(ValidationError, match="not in the URL"):
        Settings(nats_url="nats://hs:secret@127.0.0.1:4222")
    with pytest.raises(ValidationError, match="go together"):
        Settings(nats_user="hs")
