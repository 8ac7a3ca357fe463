"""The ``headstart`` command line."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from engine.errors import ConfigError, HeadstartError
from headstart.cli_catalog import catalog_app, served_version, stored_versions
from headstart.cli_keys import keys_app
from headstart.runtime.home import DataHome
from headstart.settings import Settings

app = typer.Typer(help="Headstart: real-time personalization of user onboarding.", no_args_is_help=True)
app.add_typer(catalog_app, name="catalog")
app.add_typer(keys_app, name="keys")
console = Console()

HomeOption = Annotated[
    Path | None,
    typer.Option("--home", help="data home (default ./.headstart, or HEADSTART_HOME)", show_default=False),
]


@contextlib.contextmanager
def _working(description: str) -> Iterator[Any]:
    """A spinner with the elapsed time while a long command works (gone when it is done)."""
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    columns = (SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task(description, total=None)
        yield lambda text: progress.update(task, description=text)


def _settings(home: Path | None, **overrides: Any) -> Settings:
    values = {k: v for k, v in overrides.items() if v is not None}
    if home is not None:
        values["home"] = home
    try:
        return Settings(**values)
    except Exception as exc:  # pydantic's ValidationError names the field and why
        raise typer.BadParameter(str(exc)) from exc


@app.command()
def up(
    home: HomeOption = None,
    detach: Annotated[bool, typer.Option("--detach", help="return once everything is ready")] = False,
    shards: Annotated[int | None, typer.Option(help="number of shard actors")] = None,
    partitions: Annotated[int | None, typer.Option(help="partitions (fixed for a stream's life)")] = None,
    nats_url: Annotated[
        str | None, typer.Option(help="use this NATS server instead of the embedded one")
    ] = None,
    port: Annotated[int | None, typer.Option(help="HTTP port")] = None,
    catalog: Annotated[
        Path | None, typer.Option(help="onboarding catalog YAML (default: the packaged one)")
    ] = None,
    timeout: Annotated[float, typer.Option(help="seconds to wait for readiness with --detach")] = 180.0,
) -> None:
    """Start the embedded nats-server, local Ray and the shards; print where they are.

    On a home whose instance is partly running, starts what is missing: a running supervisor
    starts again whatever of its children died (this waits until it is ready); a supervisor
    that died has left processes no one supervises, which are stopped (by recorded pid), and
    everything starts again on the same HTTP port, shards and partitions, from the store."""
    from headstart.runtime.supervisor import Runtime, instance_running, start_again_in_place, stop_recorded

    data_home = DataHome(_settings(home).home).ensure()
    running = instance_running(data_home)
    previous = data_home.read_state() if running is None else None
    if previous is not None and port is None and "HEADSTART_PORT" not in os.environ:
        # The instance that was running comes back where its clients know it.
        port = _recorded_port(previous)
    if previous is not None and shards is None and "HEADSTART_SHARDS" not in os.environ:
        shards = previous.get("shards")
    if previous is not None and partitions is None and "HEADSTART_PARTITIONS" not in os.environ:
        partitions = previous.get("partitions")  # fixed for the stream's life anyway
    settings = _settings(
        home, shards=shards, partitions=partitions, nats_url=nats_url, port=port, catalog=catalog
    )
    if settings.cors_origins and settings.identity_verification == "off":
        console.print(
            "[yellow]warning:[/] CORS origins are set but identity verification is off: anyone who "
            "reads the frontend key in a page can act for any user id. Set "
            "HEADSTART_IDENTITY_VERIFICATION=required (docs/identity.md)."
        )
    from engine.catalog import CatalogError, load_catalog

    if settings.catalog is not None:
        try:
            load_catalog(settings.catalog)
        except CatalogError as exc:
            for error in exc.errors:
                print(error)
            raise typer.Exit(1) from exc
    # This very process may be the supervisor, started again in place (Ray's head died).
    if running is not None and running["supervisor"]["pid"] != os.getpid():
        if not running.get("ready"):
            # The supervisor is starting, or starting a dead child again: it knows what is missing.
            console.print(f"[yellow]{_not_ready_yet(running)}[/]; waiting until it is ready", highlight=False)
            running = _wait_ready(data_home, running["supervisor"]["pid"], timeout, None)
        _print_urls(running)
        console.print("[yellow]already running[/]; `headstart down` stops it")
        if settings.catalog is not None:
            console.print(
                f"{settings.catalog} was not stored: `headstart catalog push` changes the catalog live"
            )
        return
    if running is None and previous is not None:
        # Its supervisor died (or gave up): what it left running has no one to watch or stop it.
        stopped = stop_recorded(data_home)
        if previous.get("phase") == "failed":
            reason = (previous.get("health") or {}).get("gave_up")
            console.print(f"[yellow]the last run gave up[/] ({reason}); starting everything again")
        elif stopped:
            console.print(
                f"[yellow]the supervisor of this home had died[/]: stopped the {len(stopped)} process(es) "
                "it left running; starting everything again (the broker's store is kept)"
            )
    if detach:
        _start_detached(settings, data_home, timeout)
        return
    runtime = Runtime(settings, start_again=start_again_in_place)
    try:
        try:
            state = runtime.start()
        except CatalogError as exc:  # the file given cannot be stored (a running experiment...)
            for error in exc.errors:
                print(error)
            raise typer.Exit(1) from None
        _print_urls(state)
        console.print("Running. Ctrl-C to stop.")
        runtime.wait()
    finally:
        console.print("Stopping...")
        runtime.stop()
    if runtime.gave_up is not None:
        console.print(f"[red]gave up:[/] {runtime.gave_up}; `headstart up` starts everything again")
        raise typer.Exit(1)


def _recorded_port(state: dict[str, Any]) -> int | None:
    """The HTTP port an instance's state file records (None: none recorded)."""
    url = state.get("http_url")
    if not isinstance(url, str) or ":" not in url.rsplit("/", 1)[-1]:
        return None
    return int(url.rsplit(":", 1)[1])


def _not_ready_yet(state: dict[str, Any]) -> str:
    """What a running supervisor that is not ready is doing, from its state file."""
    healing = [c for c in (state.get("health") or {}).get("children", []) if c["state"] != "running"]
    if healing:
        return "the supervisor is starting again: " + ", ".join(
            f"{c['name']} ({c.get('last_reason') or 'died'})" for c in healing
        )
    return f"the instance is starting (phase: {state.get('phase')})"


def _start_detached(settings: Settings, data_home: DataHome, timeout: float) -> None:
    log_path = data_home.log_dir / "supervisor.log"
    env = {**os.environ, **{f"HEADSTART_{k.upper()}": str(v) for k, v in _env_overrides(settings).items()}}
    with open(log_path, "ab") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "headstart", "up", "--home", str(settings.home)],
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
        )
    _print_urls(_wait_ready(data_home, proc.pid, timeout, proc))


def _wait_ready(
    data_home: DataHome, pid: int, timeout: float, proc: subprocess.Popen[bytes] | None
) -> dict[str, Any]:
    """The state once the supervisor ``pid`` says it is ready; exits 1 (with the log's end) if
    it stops first (``proc``: it is our child) or is not ready in ``timeout`` seconds."""
    from headstart.runtime.supervisor import instance_running

    log_path = data_home.log_dir / "supervisor.log"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = data_home.read_state()
        if state and state.get("ready") and state["supervisor"]["pid"] == pid:
            return state
        stopped = proc.poll() is not None if proc is not None else instance_running(data_home) is None
        if stopped:
            state = data_home.read_state()
            reason = ((state or {}).get("health") or {}).get("gave_up")
            why = f": {reason}" if reason else ""
            console.print(f"[red]headstart failed to start[/]{why}; see {log_path}", highlight=False)
            _print_log_tail(log_path)
            raise typer.Exit(1)
        time.sleep(0.2)
    console.print(f"[red]not ready after {timeout}s[/]; see {log_path}")
    _print_log_tail(log_path)
    raise typer.Exit(1)


def _print_log_tail(log_path: Path, lines: int = 40) -> None:
    """The end of the supervisor's log, so a failed start says why without another step."""
    try:
        tail = log_path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return
    for line in tail:
        # Plain print: the log may hold brackets that rich would read as markup.
        print(f"  | {line}")


def _env_overrides(settings: Settings) -> dict[str, Any]:
    """Settings given on the command line, passed to the detached supervisor by environment."""
    defaults = Settings(home=settings.home)
    return {
        name: getattr(settings, name)
        for name in ("shards", "partitions", "nats_url", "port", "catalog")
        if getattr(settings, name) != getattr(defaults, name)
    }


def _print_urls(state: dict[str, Any]) -> None:
    console.print(f"NATS:     {state['nats_url']}")
    if state.get("http_url"):
        console.print(f"HTTP API: {state['http_url']}  (schema: GET /openapi.json with a key)")
        if state.get("grpc_address"):
            console.print(f"gRPC:     {state['grpc_address']}  (headstart/protos/headstart.proto)")
        keys_file = Path(state["home"]) / "keys.json"
        console.print(f"API keys: {keys_file}")
        try:
            frontend = json.loads(keys_file.read_text())["frontend"]
        except (OSError, ValueError, KeyError):
            frontend = "<frontend key>"
        console.print(
            f"Demo:     {state['http_url']}/#key={frontend}  (add &admin=<admin key> for the operator panel)"
        )
    console.print(f"Shards:   {state['shards']} over {state['partitions']} partitions")
    if state.get("catalog_version"):
        # The version served at start: later pushes are served too (`headstart catalog history`).
        note = f"; {state['catalog_note']}" if state.get("catalog_note") else ""
        line = f"Catalog:  version {state['catalog_version']} at start{note}"
        console.print(line, highlight=False, markup=False)
    console.print(f"Home:     {state['home']}")


@app.command("check-config")
def check_config(path: Annotated[Path, typer.Argument(help="catalog YAML file")]) -> None:
    """Validate a catalog file: print every error with its place, exit 1 if there is any."""
    from engine.catalog import check_catalog_text

    try:
        text = path.read_text()
    except OSError as exc:
        print(f"{path}: cannot read: {exc.strerror}")
        raise typer.Exit(1) from exc
    errors = check_catalog_text(text, str(path))
    for error in errors:
        print(error)
    if errors:
        console.print(f"[red]{len(errors)} error(s)[/]")
        raise typer.Exit(1)
    console.print(f"[green]{path}: valid[/]")


@app.command()
def down(home: HomeOption = None) -> None:
    """Stop what `headstart up` started for this home (by recorded PID, never by name)."""
    from headstart.runtime.supervisor import stop_recorded

    settings = _settings(home)
    pids = stop_recorded(DataHome(settings.home))
    console.print(f"stopped {len(pids)} process(es)" if pids else "nothing was running")


@app.command()
def status(
    home: HomeOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """Shards, partitions, consumer lag, events/s and dead letters of the running instance."""
    from headstart.adapters.broker import NatsUnavailable
    from headstart.adapters.status import collect_status
    from headstart.runtime.supervisor import instance_running

    settings = _settings(home)
    data_home = DataHome(settings.home)
    state = instance_running(data_home)
    recorded = data_home.read_state()
    if state is None and recorded is not None and recorded.get("phase") == "failed":
        # The supervisor gave up healing and stopped: its last state says why.
        reason = (recorded.get("health") or {}).get("gave_up") or "see the supervisor's log"
        console.print(f"[red]failed:[/] {reason}", highlight=False)
        _print_health(recorded.get("health"))
        raise typer.Exit(1)
    url = settings.nats_url or (state or {}).get("nats_url")
    if not url:
        console.print("[red]not running[/] (no instance for this home; `headstart up`)")
        raise typer.Exit(1)
    health = (state or {}).get("health")
    try:
        report = asyncio.run(collect_status(url, settings.nats_auth()))
        served = asyncio.run(served_version(url, settings.nats_auth()))
    except NatsUnavailable as exc:
        # The broker is down (the supervisor may be starting it again): say what is known.
        if as_json:
            print(json.dumps({"nats_url": url, "error": str(exc), "supervisor": health}, indent=2))
        else:
            console.print(f"[red]{exc}[/]", highlight=False)
            _print_health(health)
        raise typer.Exit(1) from None
    report["supervisor"] = health
    # What every shard and ingress replica serves (each switches within a second of a push).
    report["catalog"] = (
        {"version": served.version, "at": served.at, "who": served.who, "summary": served.summary}
        if served is not None
        else None
    )
    if as_json:
        print(json.dumps(report, indent=2))
        return
    table = Table(title=f"Headstart at {url}")
    for column in ("shard", "partitions", "users", "applied", "events/s", "lag", "dead letters", "age"):
        table.add_column(column, justify="right")
    for shard in report["shards"]:
        table.add_row(
            str(shard["shard"]),
            _ranges(shard["partitions"]),
            str(shard["users"]),
            str(shard["applied"]),
            f"{shard['events_per_s']:.0f}",
            str(shard.get("lag", "?")),
            str(shard["dead_lettered"]),
            f"{shard['age_s']:.0f}s",
        )
    console.print(table)
    stream = report["stream"]
    console.print(
        f"stream {stream['name']}: {stream['messages']} events, last seq {stream['last_seq']}; "
        f"dead letters stored: {report['dead_letters']}"
    )
    if served is not None:
        stored_at = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(served.at))
        console.print(
            f"catalog: version {served.version}, stored {stored_at} by {served.who} ({served.summary})",
            highlight=False,
            markup=False,
        )
    _print_health(health)
    retired = report.get("retired_events") or {}
    if retired:
        console.print(
            "events of types the catalog no longer declares, skipped: "
            + ", ".join(f"{kind} {n}" for kind, n in retired.items())
        )
    learning = report.get("learning") or {}
    if learning:
        counts = learning["attribution"]
        shadow = f" (shadow {learning['shadow']})" if learning.get("shadow") else ""
        console.print(
            f"learning: {learning['policy']}{shadow}; {counts.get('decisions', 0)} decisions open or closed, "
            f"{counts.get('rewards', 0)} rewards learned ({counts.get('explicit', 0)} explicit, "
            f"{counts.get('defaulted', 0)} window closed, {counts.get('late', 0)} late)"
        )
        drifted = {point: n for point, n in learning["drifts"].items() if n}
        shifted = learning.get("feature_drifts") or {}
        console.print(
            "drift: "
            + (
                ", ".join(
                    [f"{point} reward drop, reset {n}x" for point, n in drifted.items()]
                    + [f"{key} distribution changed {n}x" for key, n in shifted.items()]
                )
                or "none detected"
            )
        )


def _print_health(health: dict[str, Any] | None) -> None:
    """One line per child the supervisor watches: its state and restarts."""
    if not health:
        return
    for child in health.get("children", []):
        line = f"{child['name']}: {child['state']}"
        if child["state"] == "restarting" and child.get("retry_at"):
            line += f" (next start in {max(0.0, child['retry_at'] - time.time()):.1f}s)"
        if child["restarts"]:
            by = " by Serve" if child.get("restarted_by") == "serve" else ""
            at = time.strftime("%H:%M:%S", time.localtime(child["last_restart_at"]))
            line += f", restarted{by} {child['restarts']}x (last at {at})"
        if child.get("last_reason"):
            line += f"; last death: {child['last_reason']}"
        console.print(line, highlight=False, markup=False)


@app.command()
def scale(
    shards: Annotated[int, typer.Option("--shards", min=1, help="how many shards should own the partitions")],
    home: HomeOption = None,
) -> None:
    """Move partitions to SHARDS shards, live: events keep flowing and decisions keep being served."""
    from headstart.runtime.supervisor import instance_running

    settings = _settings(home)
    state = instance_running(DataHome(settings.home))
    if not state or not state.get("nats_url"):
        console.print("[red]not running[/] (no instance for this home; `headstart up`)")
        raise typer.Exit(1)
    try:
        with _working(f"moving partitions to {shards} shards (events keep flowing)"):
            report = asyncio.run(_scale(state["nats_url"], shards, settings))
    except HeadstartError as exc:
        console.print(f"[red]{exc}[/]")
        raise typer.Exit(1) from None
    pause = max((m["pause_s"] for m in report["moves"]), default=0.0)
    console.print(
        f"{report['from']} → {report['to']} shards: {report['moved_partitions']} partitions moved "
        f"in {report['seconds']:.2f}s, longest pause of a partition {pause * 1000:.0f} ms"
    )


async def _scale(nats_url: str, shards: int, settings: Settings) -> dict[str, Any]:
    from headstart.adapters.broker import connect_nats
    from headstart.adapters.control import AdminError, request_admin

    nc = await connect_nats(nats_url, settings.nats_auth(), connect_timeout=5, max_reconnect_attempts=1)
    try:
        reply: dict[str, Any] = json.loads(await request_admin(nc, "scale", shards=shards))
    except AdminError as exc:
        raise HeadstartError(str(exc)) from exc
    finally:
        await nc.close()
    if "error" in reply:
        raise HeadstartError(f"{reply['error']['code']}: {reply['error']['message']}")
    return reply


def _ranges(parts: list[int]) -> str:
    if not parts:
        return "-"
    out, start, prev = [], parts[0], parts[0]
    for p in [*parts[1:], None]:
        if p is not None and p == prev + 1:
            prev = p
            continue
        out.append(f"{start}-{prev}" if start != prev else str(start))
        if p is not None:
            start = prev = p
    return ",".join(out)


@app.command()
def demo(
    home: HomeOption = None,
    users: Annotated[int, typer.Option(help="simulated users")] = 5,
    steps: Annotated[int, typer.Option(help="events per user")] = 6,
) -> None:
    """Drive a few simulated users through the running engine and show their state change."""
    from headstart.runtime.demo import run_demo

    settings = _settings(home)
    try:
        run_demo(settings, users=users, steps=steps, console=console)
    except HeadstartError as exc:
        console.print(f"[red]{exc}[/]")
        raise typer.Exit(1) from exc


@app.command()
def evaluate(
    policy: Annotated[str, typer.Option("--policy", help="candidate policy (a module of policies/)")],
    data: Annotated[
        Path | None,
        typer.Option(
            "--data", help="logged decisions, Parquet or CSV (docs/learning.md); default: the instance's log"
        ),
    ] = None,
    point: Annotated[
        str | None, typer.Option(help="decision point of a log with several (e.g. tutorial:first_project)")
    ] = None,
    arms: Annotated[
        str | None, typer.Option(help="comma-separated arms (default: the logged actions)")
    ] = None,
    export: Annotated[
        Path | None, typer.Option(help="also write the instance's logged decisions here (Parquet)")
    ] = None,
    train_share: Annotated[
        float, typer.Option(help="share of the log the candidate learns from first")
    ] = 0.5,
    seed: Annotated[int, typer.Option(help="the candidate's random seed")] = 0,
    home: HomeOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """Estimate a policy's value from logged decisions: IPS, SNIPS and doubly robust, with 95% intervals.

    With --data, from a file (a team's own logs); without, from the running instance's decisions
    log, every decision point on its own.
    """
    from headstart.reports.evaluate import evaluate_logged, evaluate_policy, read_log

    try:
        if data is not None:
            log = read_log(data, arms.split(",") if arms else None, point)
            reports = {point or data.name: evaluate_policy(policy, log, train_share=train_share, seed=seed)}
        else:
            replayed, catalog = _instance_replay(home)
            frame = replayed.decisions
            if export is not None:
                frame.write_parquet(export)
                console.print(f"wrote {frame.height} logged decisions to {export}")
            result = evaluate_logged(policy, frame, catalog, train_share=train_share, seed=seed)
            reports = {p: r for p, r in result["points"].items() if point is None or p == point}
            for skipped, why in result["skipped"].items():
                console.print(f"[yellow]{skipped}: skipped ({why})[/]")
    except ConfigError as exc:
        console.print(f"[red]{exc}[/]")
        raise typer.Exit(1) from None
    if as_json:
        # A file's log: its report; the instance's: a report per decision point.
        print(json.dumps(next(iter(reports.values())) if data is not None else reports, indent=2))
        return
    if not reports:
        console.print("[yellow]nothing to evaluate yet: no decision point has enough logged decisions[/]")
    for where, report in reports.items():
        table = Table(
            title=f"{policy} on {where}: learned from {report['trained_on']} rows, "
            f"evaluated on {report['evaluated_on']}"
        )
        for column in ("estimator", "value", "95% interval"):
            table.add_column(column, justify="right")
        for name, e in report["estimates"].items():
            table.add_row(name, f"{e['estimate']:.4f}", f"[{e['ci_low']:.4f}, {e['ci_high']:.4f}]")
        console.print(table)
        console.print(f"the logging policy earned {report['logging_policy_value']:.4f} on the same rows")


def _served_catalog(url: str, settings: Settings, state: dict[str, Any] | None) -> Any:
    """The catalog the instance serves: the store's latest version (a file only while none is
    stored, as before an instance's first start)."""
    from engine.catalog import DEFAULT_CATALOG, load_catalog

    served = asyncio.run(served_version(url, settings.nats_auth()))
    if served is not None:
        return served.catalog()
    return load_catalog((state or {}).get("catalog") or settings.catalog or DEFAULT_CATALOG)


def _instance_replay(home: Path | None) -> tuple[Any, Any]:
    """The running instance's stream replayed through the attribution rules, and its catalog."""
    from headstart.reports.evaluate import read_events_stream, read_layouts, replay_log
    from headstart.runtime.supervisor import instance_running

    settings = _settings(home)
    state = instance_running(DataHome(settings.home))
    url = settings.nats_url or (state or {}).get("nats_url")
    if not url:
        raise ConfigError("no running instance for this home (`headstart up`), and no --data file")
    catalog = _served_catalog(url, settings, state)
    messages = asyncio.run(read_events_stream(url, auth=settings.nats_auth()))
    layouts = asyncio.run(read_layouts(url, auth=settings.nats_auth()))
    return replay_log(messages, catalog, layouts), catalog


report_app = typer.Typer(
    help="Reports: signals and fairness (decisions log), segments and tutorials (live state).",
    no_args_is_help=True,
)
app.add_typer(report_app, name="report")


@report_app.command("signals")
def report_signals(
    home: HomeOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """Which live features predict reward and activation, and which tell little (candidates to drop)."""
    from headstart.reports.signals import signals_report

    try:
        replayed, _ = _instance_replay(home)
    except ConfigError as exc:
        console.print(f"[red]{exc}[/]")
        raise typer.Exit(1) from None
    report = signals_report(replayed.decisions, replayed.outcomes)
    if as_json:
        print(json.dumps(report, indent=2))
        return
    table = Table(
        title=f"signals: {report['decisions']} rewarded decisions, {report['outcomes']} activation outcomes"
    )
    for column in ("feature", "MI reward (bits)", "MI activation (bits)", "activation weight", ""):
        table.add_column(column, justify="right")
    for row in report["signals"]:
        weight = row["activation_weight"]
        table.add_row(
            row["feature"],
            f"{row['mi_reward_bits']:.4f}",
            f"{row['mi_activation_bits']:.4f}",
            "-" if weight is None else f"{weight:+.3f}",
            "[yellow]low value[/]" if row["low_value"] else "",
        )
    console.print(table)


@report_app.command("shadow")
def report_shadow(
    home: HomeOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """How the shadow policy would have done (apprentice mode): agreement with the served one, its
    value estimated from the served decisions, and whether it is ready to be served."""
    from headstart.reports.shadow import shadow_report

    try:
        replayed, _ = _instance_replay(home)
    except ConfigError as exc:
        console.print(f"[red]{exc}[/]")
        raise typer.Exit(1) from None
    report = shadow_report(replayed)
    if as_json:
        print(json.dumps(report, indent=2))
        return
    if report["shadow_policy"] is None:
        console.print("no shadow policy scored a decision (catalog `learning.shadow` names one)")
        return
    table = Table(title=f"shadow {report['shadow_policy']} beside served {report['served_policy']}")
    for column in ("decision point", "decisions", "agreement", "served", "shadow (DR, 95%)", "verdict"):
        table.add_column(column, justify="right")
    for point, row in report["points"].items():
        dr = (row["shadow"] or {}).get("dr")
        table.add_row(
            point,
            str(row["decisions"]),
            "-" if row["agreement"] is None else f"{row['agreement']:.0%}",
            "-" if row["served"]["value"] is None else f"{row['served']['value']:.3f}",
            "-" if dr is None else f"{dr['estimate']:.3f} [{dr['ci_low']:.3f}, {dr['ci_high']:.3f}]",
            row["verdict"],
        )
    console.print(table)
    console.print("ready to switch" if report["ready_to_switch"] else "not ready to switch")


@report_app.command("fairness")
def report_fairness(
    ratio: Annotated[
        float,
        typer.Option(help="flag a disparity when the lowest group's rate is below this share of the highest"),
    ] = 0.8,
    min_group: Annotated[int, typer.Option(help="leave out groups with fewer decisions")] = 30,
    data: Annotated[
        Path | None, typer.Option("--data", help="a decisions log exported by `evaluate --export`")
    ] = None,
    home: HomeOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """Per device type, country and locale: each arm's exposure share and the outcome rate, with
    disparities beyond --ratio flagged."""
    import polars as pl

    from headstart.reports.signals import fairness_report

    try:
        decisions = pl.read_parquet(data) if data is not None else _instance_replay(home)[0].decisions
        report = fairness_report(decisions, ratio=ratio, min_group=min_group)
    except (ConfigError, ValueError, OSError, pl.exceptions.PolarsError) as exc:
        console.print(f"[red]{exc}[/]")
        raise typer.Exit(1) from None
    if as_json:
        print(json.dumps(report, indent=2))
        return
    for point, fields in report["points"].items():
        table = Table(title=f"{point}")
        for column in ("group field", "metric", "by group", "ratio"):
            table.add_column(column)
        for field, entry in fields.items():
            for metric, value in entry.items():
                if metric == "groups":
                    continue
                groups = ", ".join(f"{g} {v:.3f}" for g, v in value["by_group"].items())
                flag = "[red]" if value["flagged"] else ""
                table.add_row(field, metric, groups, f"{flag}{value['ratio']:.2f}")
        console.print(table)
    console.print(
        f"{len(report['flagged'])} disparities below {ratio}" if report["flagged"] else "no disparity flagged"
    )


def _instance_url(home: Path | None) -> tuple[str, Any]:
    """The running instance's NATS URL and the catalog it serves."""
    from headstart.runtime.supervisor import instance_running

    settings = _settings(home)
    state = instance_running(DataHome(settings.home))
    url = settings.nats_url or (state or {}).get("nats_url")
    if not url:
        raise ConfigError("no running instance for this home (`headstart up`)")
    return url, _served_catalog(url, settings, state)


@app.command("export")
def export_command(
    out: Annotated[Path, typer.Option("--out", help="directory for the Parquet files")],
    since: Annotated[
        str | None, typer.Option(help="only rows stored from this time (ISO 8601 or epoch seconds)")
    ] = None,
    until: Annotated[str | None, typer.Option(help="only rows stored before this time")] = None,
    home: HomeOption = None,
) -> None:
    """A star schema in Parquet for a warehouse: the user_profiles fact table (pseudonymized
    user key) and dimension tables (demographics, context, daily behaviour, segment history,
    decisions with rewards, experiment exposures); every table written, even empty."""
    from headstart.reports.export import export, parse_time
    from headstart.runtime.supervisor import instance_running

    try:
        url, catalog = _instance_url(home)
        start, end = parse_time(since), parse_time(until)
    except (ConfigError, ValueError) as exc:
        console.print(f"[red]{exc}[/]")
        raise typer.Exit(1) from None
    settings = _settings(home)
    partitions = int(
        (instance_running(DataHome(settings.home)) or {}).get("partitions") or settings.partitions
    )
    with _working("reading") as describe:

        def report(stage: str, count: int) -> None:
            describe(f"{stage}: {count:,}")

        try:
            counts = export(url, partitions, catalog, out, start, end, settings.nats_auth(), report)
        except (RuntimeError, OSError) as exc:
            console.print(f"[red]export failed: {exc}[/]")
            raise typer.Exit(1) from None
    table = Table(title=f"exported to {out}")
    table.add_column("table")
    table.add_column("rows", justify="right")
    for name, rows in counts.items():
        table.add_row(f"{name}.parquet", f"{rows:,}")
    console.print(table)


@report_app.command("experiment")
def report_experiment(
    experiment_id: Annotated[str, typer.Argument(help="the experiment's id in the catalog")],
    plot: Annotated[
        Path | None, typer.Option(help="where to write the PNG (default: experiment-<id>.png here)")
    ] = None,
    home: HomeOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """An experiment's results per arm (exposed users, conversions, rate, lift with confidence
    interval and p-value, CUPED, always-valid interval), sample-ratio check, guardrails and a
    verdict; and a PNG of the metric over time with its intervals."""
    from headstart.adapters.rpc import ExperimentMomentsRequest
    from headstart.adapters.status import ask_every_shard
    from headstart.reports.experiments import (
        experiment_report,
        plot_experiment,
        report_cuts,
        versions_with_experiment,
    )

    try:
        url, catalog = _instance_url(home)
        auth = _settings(home).nats_auth()
        versions = asyncio.run(stored_versions(url, auth))
        ran_under = versions_with_experiment(versions, experiment_id)
        # As the newest version that defines it has it (it may have been removed since).
        exp = next(
            (e for v in reversed(versions) for e in v.catalog().experiments if e.id == experiment_id),
            next((e for e in catalog.experiments if e.id == experiment_id), None),
        )
        if exp is None:
            known = ", ".join(e.id for e in catalog.experiments) or "none"
            raise ConfigError(f"no experiment {experiment_id!r} in the catalog (defined: {known})")
    except (ConfigError, ValueError) as exc:  # ValueError: a stored version no longer valid
        console.print(f"[red]{exc}[/]")
        raise typer.Exit(1) from None

    async def gather() -> tuple[list[Any], list[float]]:
        spans = await ask_every_shard(url, ExperimentMomentsRequest(key="", experiment=exp.id), auth=auth)
        cuts = report_cuts(spans, time.time())
        request = ExperimentMomentsRequest(key="", experiment=exp.id, cuts=cuts)
        return await ask_every_shard(url, request, auth=auth), cuts

    answers, cuts = asyncio.run(gather())
    report = experiment_report(exp, answers, cuts)
    report["catalog_versions"] = ran_under
    path = plot_experiment(report, plot or Path(f"experiment-{exp.id}.png"))
    if as_json:
        print(json.dumps({**report, "plot": str(path)}, indent=2))
        return
    primary = report["primary"]
    table = Table(title=f"{exp.id}: {report['metric']}, {report['exposed']} users exposed")
    for column in (
        "arm",
        "users",
        "conversions",
        "rate",
        "lift",
        "95% CI",
        "p",
        "CUPED lift",
        "always-valid CI",
    ):
        table.add_column(column, justify="left" if column == "arm" else "right")
    for arm, entry in primary["arms"].items():
        fixed, cuped, seq = entry.get("fixed"), entry.get("cuped"), entry.get("sequential")
        table.add_row(
            arm + (" (control)" if arm == primary["control"] else ""),
            str(entry["users"]),
            f"{entry['conversions']:g}",
            f"{entry['rate']:.2%}",
            f"{fixed['lift']:+.2%}" if fixed else "",
            f"[{fixed['lift_low']:+.2%}, {fixed['lift_high']:+.2%}]" if fixed else "",
            f"{fixed['p_value']:.3g}" if fixed else "",
            f"{cuped['lift']:+.2%}" if cuped else "",
            f"[{seq['lift_low']:+.2%}, {seq['lift_high']:+.2%}]" if seq else "",
        )
    console.print(table)
    srm = primary["srm"]
    console.print(
        f"sample ratio: p = {srm['p_value']:.3g}{' [red]MISMATCH[/]' if srm['mismatch'] else ' (ok)'}"
    )
    for guardrail in report["guardrails"]:
        worse = ", ".join(guardrail["worse_in"]) or "none"
        console.print(f"guardrail {guardrail['metric']}: significantly worse in {worse}")
    console.print(f"[bold]verdict:[/] {report['verdict']}")
    if ran_under:
        console.print(f"ran under catalog version(s) {_ranges(ran_under)}", highlight=False, markup=False)
    console.print(f"plot: {path}")


@report_app.command("segments")
def report_segments(
    groups: Annotated[int, typer.Option(help="natural groupings to suggest (hierarchical clustering)")] = 4,
    sample: Annotated[int, typer.Option(help="users sampled per shard for the suggestions")] = 1000,
    home: HomeOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """Every segment's size, share, engagement, activation and entry/exit rates; what sets each
    behavioural cluster apart; and natural groupings of users to consider as segments."""
    from headstart.adapters.broker import connect_nats
    from headstart.adapters.membership import read_cluster_model
    from headstart.adapters.rpc import ProfileSampleRequest, SegmentSizesRequest
    from headstart.adapters.status import ask_every_shard
    from headstart.reports.segments import segment_report, suggest_segments

    try:
        url, catalog = _instance_url(home)
    except ConfigError as exc:
        console.print(f"[red]{exc}[/]")
        raise typer.Exit(1) from None
    auth = _settings(home).nats_auth()

    async def gather() -> tuple[list[Any], list[Any], Any]:
        sizes = await ask_every_shard(url, SegmentSizesRequest(key=""), auth=auth)
        samples = await ask_every_shard(url, ProfileSampleRequest(key="", size=sample), auth=auth)
        nc = await connect_nats(url, auth)
        try:
            return sizes, samples, await read_cluster_model(nc.jetstream())
        finally:
            await nc.close()

    sizes, samples, clusters = asyncio.run(gather())
    report = segment_report(sizes, catalog, clusters)
    report["suggestions"] = suggest_segments(
        [r for s in samples for r in s["rows"]], groups=groups, schema=catalog.event_schema
    )
    if as_json:
        print(json.dumps(report, indent=2))
        return
    table = Table(title=f"Segments of {report['users']} users over {report['tracked_days'] or 0:.1f} days")
    for column in ("segment", "kind", "size", "share", "engagement", "activation", "in/day", "out/day"):
        table.add_column(column, justify="left" if column in ("segment", "kind") else "right")

    def number(value: float | None, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    for seg in report["segments"]:
        table.add_row(
            seg["id"],
            seg["kind"],
            str(seg["size"]),
            f"{seg['share']:.1%}",
            number(seg["mean_engagement"], ".2f"),
            number(seg["activation_rate"], ".1%"),
            number(seg["entered_per_day"], ".1f"),
            number(seg["exited_per_day"], ".1f"),
        )
    console.print(table)
    for seg in report["segments"]:
        if seg.get("distinguishing"):
            traits = ", ".join(
                f"{d['feature']} {d['direction']} ({d['z']:+.1f} sd)" for d in seg["distinguishing"]
            )
            console.print(f"{seg['id']}: {traits}")
    for group in report["suggestions"]:
        console.print(
            f"suggested group {group['group']} ({group['share']:.0%} of the sample): {group['rule']}"
        )


@report_app.command("tutorials")
def report_tutorials(
    home: HomeOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """Start and completion rates per tutorial variant and segment ("all": every user)."""
    from headstart.adapters.rpc import SegmentSizesRequest, TutorialStatsRequest
    from headstart.adapters.status import ask_every_shard
    from headstart.reports.segments import tutorial_report

    try:
        url, _ = _instance_url(home)
    except ConfigError as exc:
        console.print(f"[red]{exc}[/]")
        raise typer.Exit(1) from None
    auth = _settings(home).nats_auth()

    async def gather() -> tuple[list[Any], list[Any]]:
        return (
            await ask_every_shard(url, TutorialStatsRequest(key=""), auth=auth),
            await ask_every_shard(url, SegmentSizesRequest(key=""), auth=auth),
        )

    rows, sizes = asyncio.run(gather())
    segment_users = {"all": sum(a["users"] for a in sizes)}
    for answer in sizes:
        for segment, entry in answer["segments"].items():
            segment_users[segment] = segment_users.get(segment, 0) + int(entry["size"])
    frame = tutorial_report(rows, segment_users)
    if as_json:
        print(json.dumps(frame.to_dicts(), indent=2))
        return
    table = Table(title="Tutorials by variant and segment")
    for column in frame.columns:
        table.add_column(column, justify="left" if column in ("tutorial", "variant", "segment") else "right")
    for row in frame.iter_rows():
        table.add_row(*("-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v) for v in row))
    console.print(table)


@app.command()
def datamap(
    home: HomeOption = None,
    catalog: Annotated[
        Path | None,
        typer.Option(help="the catalog whose declared fields to list (default: the instance's)"),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """What Headstart collects, where each field is kept, for how long and under which consent
    purpose (generated from the code's event and profile schema and the catalog's own fields)."""
    from engine.catalog import DEFAULT_CATALOG, CatalogError, load_catalog
    from engine.datamap import datamap as build
    from headstart.runtime.supervisor import instance_running

    settings = _settings(home)
    state = instance_running(DataHome(settings.home)) if catalog is None else None
    try:
        if state is not None and state.get("nats_url"):
            loaded = _served_catalog(state["nats_url"], settings, state)
        else:
            loaded = load_catalog(catalog or settings.catalog or DEFAULT_CATALOG)
    except CatalogError as exc:
        for error in exc.errors:
            print(error)
        raise typer.Exit(1) from exc
    rows = build(settings.retention(), settings.checkpoint_interval_s, loaded.event_schema)
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table(title="Headstart's data map")
    for column in ("field", "events", "meaning", "kept in", "purpose", "PII"):
        table.add_column(column)
    for row in rows:
        table.add_row(
            row["field"],
            ", ".join(row["events"]) or "-",
            row["meaning"],
            row["kept_in"],
            row["purpose"],
            "yes" if row["pii"] else "",
        )
    console.print(table)


@app.command()
def bench(
    name: Annotated[str, typer.Argument(help="benchmark name: a module of bench/ (e.g. ingest)")],
    quick: Annotated[bool, typer.Option(help="a small, fast run (for CI smoke checks)")] = False,
    out: Annotated[Path | None, typer.Option(help="results folder (default bench/results)")] = None,
) -> None:
    """Run a benchmark from bench/ and write bench/results/NAME.json."""
    import importlib

    from bench.common import run_benchmark

    try:
        with _working(f"bench {name}{' (quick)' if quick else ''}"):
            path = run_benchmark(name, quick=quick, out_dir=out)
    except (ConfigError, ModuleNotFoundError) as exc:
        console.print(f"[red]{exc}[/]")
        raise typer.Exit(2) from exc
    console.print_json(path.read_text())
    summary = getattr(importlib.import_module(f"bench.{name}"), "summary", None)
    if summary is not None:
        console.print(f"[bold]{summary(path)}[/]")
    plot = path.with_suffix(".png")
    console.print(f"wrote {path}" + (f" and {plot}" if plot.exists() else ""))


def main() -> None:
    try:
        app()
    except HeadstartError as exc:
        # An expected failure (NATS refused us, no instance...): its message, not a traceback.
        console.print(f"[red]{exc}[/]")
        sys.exit(1)


if __name__ == "__main__":
    main()
