"""``headstart catalog ...``: the live catalog from the command line.

Every command talks to the running instance's NATS (the store lives there, see
:mod:`headstart.adapters.catalog_store`); a version stored here is served by every shard and
ingress replica within a second, without a restart. Versions are stored as ``cli:<admin key
id>`` (the home's admin key, named as the HTTP API names it; never the key). Exit status: 0
done (also "nothing to store"), 1 for every problem, each printed as ``check-config`` prints it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from engine.errors import HeadstartError
from headstart.adapters.broker import NatsAuth, connect_nats
from headstart.runtime.home import DataHome
from headstart.settings import Settings

if TYPE_CHECKING:
    from nats.js import JetStreamContext

    from engine.catalog import Catalog
    from headstart.adapters.catalog_store import CatalogStore, PushResult, StoredVersion, VersionInfo

# The catalog's modules (pydantic models, the experiments' statistics) load in seconds: they
# are imported by the commands that use them, so `headstart --help` and other commands stay fast.

catalog_app = typer.Typer(
    help="The live catalog: push a new version, see what changes, its history, roll back.",
    no_args_is_help=True,
)
console = Console()
T = TypeVar("T")

HomeOption = Annotated[
    Path | None,
    typer.Option("--home", help="data home (default ./.headstart, or HEADSTART_HOME)", show_default=False),
]
FileArgument = Annotated[Path, typer.Argument(help="catalog YAML file")]


# ---------------------------------------------------------------------- the instance's store


@dataclass
class _Session:
    store: CatalogStore
    js: JetStreamContext
    #: The home's state file of the running instance ({} if it was given by --nats-url).
    state: dict[str, Any]
    settings: Settings
    who: str


def _settings(home: Path | None) -> Settings:
    try:
        return Settings(home=home) if home is not None else Settings()
    except Exception as exc:  # pydantic's ValidationError names the setting and why
        raise typer.BadParameter(str(exc)) from exc


def instance_nats(settings: Settings) -> tuple[str, dict[str, Any]]:
    """The NATS URL of the instance running for the home, and its state."""
    from headstart.runtime.supervisor import instance_running

    state = instance_running(DataHome(settings.home)) or {}
    url = settings.nats_url or state.get("nats_url")
    if not url:
        raise HeadstartError("not running: no instance for this home (`headstart up`)")
    return str(url), state


@contextlib.asynccontextmanager
async def _session(home: Path | None) -> AsyncIterator[_Session]:
    settings = _settings(home)
    url, state = instance_nats(settings)
    from headstart.adapters.catalog_store import CatalogStore
    from headstart.runtime.catalog import who_from_cli

    nc = await connect_nats(url, settings.nats_auth(), connect_timeout=5, max_reconnect_attempts=1)
    try:
        store = await CatalogStore.open(nc.jetstream(), settings.stream_replicas)
        who = who_from_cli(DataHome(settings.home).keys_file)
        yield _Session(store, nc.jetstream(), state, settings, who)
    finally:
        await nc.close()


async def stored_versions(url: str, auth: NatsAuth | None) -> list[StoredVersion]:
    """Every stored version, oldest first, with its content (for reports over versions)."""
    from headstart.adapters.catalog_store import CatalogStore

    nc = await connect_nats(url, auth, connect_timeout=5, max_reconnect_attempts=1)
    try:
        store = await CatalogStore.open(nc.jetstream())
        return [await store.get(n) for n in range(1, await store.latest_number() + 1)]
    finally:
        await nc.close()


async def served_version(url: str, auth: NatsAuth | None) -> StoredVersion | None:
    """The latest stored version: what the instance serves (None: nothing stored yet)."""
    from headstart.adapters.catalog_store import CatalogStore

    nc = await connect_nats(url, auth, connect_timeout=5, max_reconnect_attempts=1)
    try:
        return await (await CatalogStore.open(nc.jetstream())).latest()
    finally:
        await nc.close()


def _run(work: Coroutine[Any, Any, T], stored_nothing: bool = False) -> T:
    """Run a command's work; an expected failure is printed (no traceback), exit status 1."""
    from nats.errors import Error as NatsError

    from engine.catalog import CatalogError
    from headstart.adapters.catalog_store import CatalogInvalid, VersionConflict, VersionNotFound

    try:
        return asyncio.run(work)
    except (
        CatalogError,
        CatalogInvalid,
        VersionConflict,
        VersionNotFound,
        HeadstartError,
        NatsError,
        TimeoutError,
    ) as exc:
        _fail(exc, stored_nothing)


def _fail(exc: Exception, stored_nothing: bool = False) -> NoReturn:
    from nats.errors import Error as NatsError

    from engine.catalog import CatalogError
    from headstart.adapters.catalog_store import CatalogInvalid, VersionConflict, VersionNotFound

    suffix = "; nothing stored" if stored_nothing else ""
    if isinstance(exc, CatalogError | CatalogInvalid):
        for error in exc.errors:
            print(error)  # plain, as check-config prints them (rich would eat [brackets])
        console.print(f"[red]{len(exc.errors)} error(s)[/]{suffix}")
        if any("force the push" in error for error in exc.errors):
            console.print("A running experiment's design changes only with --force (audited).")
    elif isinstance(exc, VersionConflict):
        console.print(
            f"[red]{escape(str(exc))}[/]{suffix}. See what your file changes now with "
            "`headstart catalog diff FILE`, then push again."
        )
    elif isinstance(exc, VersionNotFound):
        console.print(f"[red]{escape(str(exc.args[0]))}[/]")
    elif isinstance(exc, NatsError | TimeoutError):
        console.print(f"[red]NATS: {escape(str(exc) or type(exc).__name__)}[/]")
    else:
        console.print(f"[red]{escape(str(exc))}[/]")
    raise typer.Exit(1)


def _read(path: Path) -> dict[str, Any]:
    """FILE as a catalog document, or its problems printed (exit 1) before anything else runs."""
    from engine.catalog import CatalogError
    from headstart.runtime.catalog import read_document

    try:
        return read_document(path)
    except CatalogError as exc:
        _fail(exc)


def _catalog_of(document: dict[str, Any], source: str) -> Catalog:
    from engine.catalog import CatalogError, parse_catalog_document

    catalog, errors = parse_catalog_document(document, source)
    if catalog is None or errors:
        raise CatalogError(errors)
    return catalog


# ---------------------------------------------------------------------- output


def _when(at: float) -> str:
    return datetime.fromtimestamp(at).strftime("%Y-%m-%d %H:%M:%S")


def print_diff(text: str) -> None:
    """A unified diff, coloured on a terminal, never wrapped (a wrapped line reads as two)."""
    for line in text.splitlines():
        style = (
            "bold"
            if line.startswith(("+++", "---"))
            else "green"
            if line.startswith("+")
            else "red"
            if line.startswith("-")
            else "cyan"
            if line.startswith("@@")
            else ""
        )
        console.print(Text(line, style=style), soft_wrap=True, highlight=False)


def _marks(version: VersionInfo, latest: int) -> str:
    marks = []
    if version.rollback_of is not None:
        marks.append(f"rollback of {version.rollback_of}")
    if version.forced:
        marks.append("forced")
    if version.version == latest:
        marks.append("serving")
    return ", ".join(marks)


def _print_result(result: PushResult, source: str, forced_over: list[str]) -> None:
    from engine.catalog_changes import diff

    stored, previous = result.stored, result.previous
    replaces = f" (replaces version {previous.version})" if previous is not None else ""
    if result.dry_run:
        number = (previous.version if previous is not None else 0) + 1
        console.print(f"dry run: would store version {number}{replaces}: {escape(stored.summary)}")
    else:
        console.print(
            f"[green]stored catalog version {stored.version}[/]{replaces}: {escape(stored.summary)}"
        )
    for problem in forced_over:
        console.print(f"[yellow]forced:[/] {escape(problem)}")
    print_diff(diff(previous.document if previous else None, stored.document, _name(previous), source))
    if result.dry_run:
        console.print("nothing stored (--dry-run)")


def _name(version: StoredVersion | None) -> str:
    return f"version {version.version}" if version is not None else "(nothing stored)"


# ---------------------------------------------------------------------- commands


@catalog_app.command("push")
def push(
    path: FileArgument,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="store nothing; print what would change")
    ] = False,
    preview: Annotated[
        bool,
        typer.Option(
            "--preview",
            help="store nothing; estimate each changed decision point's value from the logged decisions",
        ),
    ] = False,
    force: Annotated[
        bool, typer.Option("--force", help="store a change to a running experiment's arms, salt or traffic")
    ] = False,
    home: HomeOption = None,
) -> None:
    """Validate FILE and store it as the next version: served everywhere within a second."""
    from engine.catalog_changes import experiment_conflicts

    document = _read(path)

    async def work() -> tuple[PushResult, list[str], str | None]:
        async with _session(home) as session:
            latest = await session.store.latest()
            result = await session.store.push(
                document,
                session.who,
                # The diff printed is against the version replaced: another stored meanwhile fails.
                expected=latest.version if latest is not None else None,
                # A preview stores nothing and shows what a forced push would do; the refusal
                # is printed with it.
                force=force or preview,
                dry_run=dry_run or preview,
                source=str(path),
            )
            new = _catalog_of(document, str(path))
            conflicts = experiment_conflicts(latest.catalog(), new, time.time()) if latest else []
            report = None
            if preview and latest is not None and not _unchanged(result):
                partitions = int(session.state.get("partitions") or session.settings.partitions)
                report = await _preview(session.js, latest.catalog(), new, partitions)
            return result, conflicts, report

    result, conflicts, report = _run(work(), stored_nothing=True)
    if _unchanged(result):
        console.print(
            f"{escape(str(path))} is the same as catalog version {result.stored.version}: nothing stored"
        )
        return
    _print_result(result, str(path), conflicts if force else [])
    if preview and not force:
        for problem in conflicts:
            console.print(f"[yellow]refused without --force:[/] {escape(problem)}")
    if report is not None:
        print(report)
    elif preview:
        console.print("no preview: no version is stored yet to compare with")


def _unchanged(result: PushResult) -> bool:
    """The content is the latest version's: nothing stored, nothing would be."""
    return result.previous is not None and result.stored.version == result.previous.version


async def _preview(js: JetStreamContext, current: Catalog, new: Catalog, partitions: int) -> str:
    from headstart.reports.preview import preview_catalog  # polars and the policies: only here

    report = await preview_catalog(js, current, new, partitions)
    return str(report.render())


@catalog_app.command("diff")
def diff_command(path: FileArgument, home: HomeOption = None) -> None:
    """What FILE changes from the served version (a unified diff of the YAML); stores nothing."""
    from engine.catalog_changes import diff, experiment_conflicts, fingerprint, summarize

    document = _read(path)

    async def work() -> tuple[StoredVersion | None, list[str]]:
        async with _session(home) as session:
            latest = await session.store.latest()
        if latest is None:
            return None, []
        new = _catalog_of(document, str(path))
        return latest, experiment_conflicts(latest.catalog(), new, time.time())

    latest, conflicts = _run(work())
    if latest is not None and latest.fingerprint == fingerprint(document):
        console.print(f"{escape(str(path))} is the same as catalog version {latest.version}")
        return
    console.print(escape(summarize(latest.document if latest else None, document)), highlight=False)
    for problem in conflicts:
        console.print(f"[yellow]refused without --force:[/] {escape(problem)}")
    print_diff(diff(latest.document if latest else None, document, _name(latest), str(path)))


@catalog_app.command("show")
def show(
    version: Annotated[int | None, typer.Argument(help="version number (default: the served one)")] = None,
    home: HomeOption = None,
    as_json: Annotated[bool, typer.Option("--json", help='{"version": N, "catalog": {...}}')] = False,
) -> None:
    """A stored version as YAML (default: the latest, the one served)."""
    from engine.catalog_changes import as_yaml

    async def work() -> StoredVersion | None:
        async with _session(home) as session:
            return await session.store.get(version) if version is not None else await session.store.latest()

    stored = _run(work())
    if stored is None:
        console.print("[red]no catalog version is stored yet[/] (`headstart up` stores the first)")
        raise typer.Exit(1)
    if as_json:
        print(json.dumps({"version": stored.version, "catalog": stored.document}, indent=2))
        return
    # A YAML comment: the output stays a catalog file that `catalog push` takes back.
    print(f"# catalog version {stored.version}, stored {_when(stored.at)} by {stored.who}: {stored.summary}")
    print(as_yaml(stored.document), end="")


@catalog_app.command("history")
def history(
    home: HomeOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """Every stored version: when, who, what changed; rollbacks and forced changes marked."""
    import msgspec

    async def work() -> list[VersionInfo]:
        async with _session(home) as session:
            return await session.store.history()

    versions = _run(work())
    if as_json:
        print(json.dumps(msgspec.to_builtins(versions), indent=2))
        return
    latest = versions[-1].version if versions else 0
    table = Table(title=f"catalog history: {len(versions)} version(s), serving {latest}")
    for column in ("version", "when", "who", "summary", ""):
        table.add_column(column, justify="right" if column == "version" else "left")
    for info in versions:
        table.add_row(
            str(info.version), _when(info.at), escape(info.who), escape(info.summary), _marks(info, latest)
        )
    console.print(table)


@catalog_app.command("rollback")
def rollback(
    version: Annotated[int, typer.Argument(help="the version whose content to serve again")],
    force: Annotated[
        bool, typer.Option("--force", help="even if it changes a running experiment's arms, salt or traffic")
    ] = False,
    home: HomeOption = None,
) -> None:
    """Store VERSION's content as a new version (history is never rewritten)."""
    from engine.catalog_changes import experiment_conflicts

    async def work() -> tuple[PushResult, list[str]]:
        async with _session(home) as session:
            latest = await session.store.latest()
            result = await session.store.rollback(
                version, session.who, expected=latest.version if latest is not None else None, force=force
            )
            conflicts = (
                experiment_conflicts(latest.catalog(), result.stored.catalog(), time.time())
                if latest is not None and force and not _unchanged(result)
                else []
            )
            return result, conflicts

    result, conflicts = _run(work(), stored_nothing=True)
    if not result.changed:
        console.print(
            f"version {version}'s content is what version {result.stored.version} serves: nothing stored"
        )
        return
    _print_result(result, f"version {version}", conflicts)
