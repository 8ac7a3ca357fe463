"""``headstart keys ...``: the API keys of the running instance, changed live.

Every command talks to the running instance's NATS, where the key set is stored
(:mod:`headstart.adapters.key_store`); a change is accepted by every ingress replica within a
second, without a restart, and audited (``hs.audit.keys``) as ``cli:<admin key id>``. A new key
is printed once, alone on stdout (so ``KEY=$(headstart keys create --role server)`` works), and
stored nowhere but in ``keys.json`` for a rotation. Exit status: 0 done, 1 for every problem.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Coroutine
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from engine.api_keys import ROLES, KeyRecord, KeyRefused, parse_duration
from engine.errors import HeadstartError
from headstart.adapters.broker import connect_nats
from headstart.cli_catalog import instance_nats
from headstart.runtime.home import DataHome, replace_private
from headstart.settings import Settings

if TYPE_CHECKING:
    from headstart.adapters.key_store import KeyStore, KeyUsage

keys_app = typer.Typer(
    help="API keys: list them, create, revoke, rotate (live on every replica, audited).",
    no_args_is_help=True,
)
console = Console()
#: Notes beside a printed key go to stderr: stdout carries the key alone.
notes = Console(stderr=True)
T = TypeVar("T")

HomeOption = Annotated[
    Path | None,
    typer.Option("--home", help="data home (default ./.headstart, or HEADSTART_HOME)", show_default=False),
]


def _settings(home: Path | None) -> Settings:
    try:
        return Settings(home=home) if home is not None else Settings()
    except Exception as exc:  # pydantic's ValidationError names the setting and why
        raise typer.BadParameter(str(exc)) from exc


@contextlib.asynccontextmanager
async def _store(settings: Settings) -> AsyncIterator[tuple[KeyStore, KeyUsage]]:
    from headstart.adapters.key_store import KeyStore, KeyUsage

    url, _ = instance_nats(settings)
    nc = await connect_nats(url, settings.nats_auth(), connect_timeout=5, max_reconnect_attempts=1)
    try:
        js = nc.jetstream()
        yield (
            await KeyStore.open(js, settings.stream_replicas),
            await KeyUsage.open(js, settings.stream_replicas),
        )
    finally:
        await nc.close()


def _who(settings: Settings) -> str:
    from headstart.runtime.catalog import who_from_cli

    return who_from_cli(DataHome(settings.home).keys_file)


def _run(work: Coroutine[Any, Any, T]) -> T:
    """Run a command's work; an expected failure is printed (no traceback), exit status 1."""
    from nats.errors import Error as NatsError

    try:
        return asyncio.run(work)
    except (HeadstartError, NatsError, TimeoutError, OSError) as exc:
        _fail(str(exc) or type(exc).__name__)


def _fail(message: str) -> NoReturn:
    notes.print(f"[red]{escape(message)}[/]")
    raise typer.Exit(1)


def _check_role(role: str) -> str:
    if role not in ROLES:
        _fail(f"unknown role {role!r}: one of {', '.join(ROLES)}")
    return role


# ---------------------------------------------------------------------- output


def _when(at: float) -> str:
    return datetime.fromtimestamp(at).strftime("%Y-%m-%d %H:%M:%S")


def _in(seconds: float) -> str:
    """``2d 3h``, ``5h 12m``, ``4m 10s``: how long from now, to the unit that matters."""
    seconds = max(0, int(seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    return f"{minutes}m {secs}s" if minutes else f"{secs}s"


def _state(record: KeyRecord, now: float) -> str:
    state = record.state(now)
    if state == "grace":
        assert record.expires_at is not None
        return f"grace until {_when(record.expires_at)} (in {_in(record.expires_at - now)})"
    if state == "revoked":
        assert record.revoked_at is not None
        return f"revoked {_when(record.revoked_at)}"
    if state == "expired":
        assert record.expires_at is not None
        return f"expired {_when(record.expires_at)}"
    return "active"


def _stops(record: KeyRecord, now: float) -> str:
    if record.expires_at is None or record.expires_at <= now:
        return "now"
    return f"at {_when(record.expires_at)} (in {_in(record.expires_at - now)})"


# ---------------------------------------------------------------------- commands


@keys_app.command("list")
def list_keys(
    home: HomeOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """Every key: id, role, created, last used, state (active, grace until, revoked, expired)."""
    settings = _settings(home)

    async def work() -> tuple[list[KeyRecord], dict[str, float]]:
        async with _store(settings) as (store, usage):
            keys = await store.latest()
            return list(keys.records if keys is not None else ()), await usage.read()

    records, last_used = _run(work())
    now = time.time()
    if as_json:
        rows = [
            {
                "id": r.id,
                "role": r.role,
                "created_at": r.created_at,
                "created_by": r.created_by,
                "last_used": last_used.get(r.id),
                "state": r.state(now),
                "expires_at": r.expires_at,
                "revoked_at": r.revoked_at,
                "in_keys_file": r.in_keys_file,
            }
            for r in records
        ]
        print(json.dumps(rows, indent=2))
        return
    table = Table(title=f"{len(records)} key(s)")
    for column in ("id", "role", "created", "by", "last used", "state"):
        table.add_column(column)
    for r in sorted(records, key=lambda r: (ROLES.index(r.role) if r.role in ROLES else 9, r.created_at)):
        used = last_used.get(r.id)
        state = _state(r, now) + (" (keys.json)" if r.in_keys_file else "")
        table.add_row(
            r.id, r.role, _when(r.created_at), escape(r.created_by), _when(used) if used else "never", state
        )
    console.print(table)


@keys_app.command("create")
def create(
    role: Annotated[str, typer.Option("--role", help=f"one of {', '.join(ROLES)}")],
    home: HomeOption = None,
) -> None:
    """A new key for ROLE, beside the others (printed once: store it now)."""
    settings = _settings(home)
    _check_role(role)

    async def work() -> Any:
        async with _store(settings) as (store, _):
            return await store.create(role, _who(settings))

    created = _run(work())
    notes.print(
        f"[green]created {role} key {created.record.id}[/]: shown once, stored nowhere (only its hash); "
        "accepted by every replica within a second"
    )
    print(created.key)


@keys_app.command("revoke")
def revoke(
    key: Annotated[
        str, typer.Argument(help="the key's id (`headstart keys list`), or its first 6+ characters")
    ],
    home: HomeOption = None,
) -> None:
    """KEY stops working now, on every replica within a second."""
    settings = _settings(home)

    async def work() -> KeyRecord:
        async with _store(settings) as (store, _):
            return await store.revoke(key, _who(settings))

    record = _run(work())
    assert record.revoked_at is not None
    console.print(f"[green]revoked {record.role} key {record.id}[/] at {_when(record.revoked_at)}")


@keys_app.command("rotate")
def rotate(
    role: Annotated[str, typer.Argument(help=f"one of {', '.join(ROLES)}")],
    grace: Annotated[
        str,
        typer.Option("--grace", help="how long the old key keeps working: 30s, 15m, 24h, 7d; 0 ends it now"),
    ] = "24h",
    home: HomeOption = None,
) -> None:
    """A new key for ROLE in keys.json; the old one keeps working for the grace period."""
    settings = _settings(home)
    _check_role(role)
    try:
        grace_s = parse_duration(grace)
    except KeyRefused as exc:
        _fail(str(exc))
    keys_file = DataHome(settings.home).keys_file
    try:
        keys = json.loads(keys_file.read_text())
    except (OSError, ValueError) as exc:
        _fail(f"{keys_file}: {exc}")

    async def work() -> Any:
        async with _store(settings) as (store, _):
            return await store.rotate(role, grace_s, _who(settings))

    rotated = _run(work())
    now = time.time()
    notes.print(f"[green]new {role} key {rotated.record.id}[/] (shown once; written to {keys_file})")
    for old in rotated.replaced:
        notes.print(f"the old key {old.id} stops working {_stops(old, now)}")
    print(rotated.key, flush=True)
    # After the store took it (a refused rotation leaves the file as it was), and after the key
    # was printed: should the write fail, the key is on screen.
    keys[role] = rotated.key
    replace_private(keys_file, json.dumps(keys, indent=2) + "\n")
