"""The command line as an operator uses it, against a real instance started by `up --detach`."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from engine.catalog import DEFAULT_CATALOG
from engine.features import BUILTIN_LAYOUT
from headstart.adapters.broker import free_port
from tests.catalogs import CUSTOM_SCHEMA

pytestmark = pytest.mark.integration


def headstart(*args: str, home: Path, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "headstart", *args, "--home", str(home)],
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


#: The packaged catalog with an experiment on the welcome message (every decision reaches it).
EXPERIMENT = """
experiments:
  - id: welcome_copy
    salt: cli-1
    arms:
      - {id: control}
      - {id: short, welcome: {en: "Hello from {{product}}"}}
    metric: {event: step_completed, name: welcome, within_days: 7}
"""


@pytest.fixture(scope="module")
def instance(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, object]]]:
    home = tmp_path_factory.mktemp("home")
    catalog = tmp_path_factory.mktemp("catalog") / "catalog.yaml"  # outside the home: it is scanned
    catalog.write_text(DEFAULT_CATALOG.read_text() + EXPERIMENT)
    port = str(free_port())
    started = headstart(
        "up",
        "--detach",
        "--shards",
        "2",
        "--partitions",
        "8",
        "--port",
        port,
        "--catalog",
        str(catalog),
        home=home,
    )
    assert started.returncode == 0, started.stdout + started.stderr
    state = json.loads((home / "run" / "state.json").read_text())
    try:
        yield home, state
    finally:
        headstart("down", home=home)


def test_up_records_what_it_started(instance: tuple[Path, dict[str, object]]) -> None:
    home, state = instance
    assert state["ready"] is True and state["partitions"] == 8
    assert str(state["nats_url"]).startswith("nats://127.0.0.1:")
    assert oct((home / "secret").stat().st_mode & 0o777) == "0o600"
    again = headstart("up", "--detach", home=home)
    assert again.returncode == 0 and "already running" in again.stdout


def test_demo_shows_state_changing_and_status_reports_it(instance: tuple[Path, dict[str, object]]) -> None:
    home, _ = instance
    demo = headstart("demo", "--users", "3", "--steps", "4", home=home)
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert "round 4" in demo.stdout
    # Users start on the first step; after four rounds of their events the engine sends them on.
    assert any(step in demo.stdout for step in ("profile", "connect_data", "first_project", "invite_team"))
    stored = int(re.search(r"(\d+) events stored, 3 users", demo.stdout)[1])  # type: ignore[index]
    # Shards report their stats every second: wait for a report that includes the demo's events
    # (a request's events for one user travel as one message: events and messages differ).
    deadline = time.monotonic() + 10
    while True:
        status = headstart("status", "--json", home=home)
        assert status.returncode == 0, status.stderr
        report = json.loads(status.stdout)
        applied = sum(s["applied"] for s in report["shards"])
        records = sum(s["records"] for s in report["shards"])
        if (applied == stored and report["lag"] == 0) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert len(report["shards"]) == 2
    assert applied == stored > 0 and report["lag"] == 0
    # Every message consumed: the demo's event messages and the decisions it logged there.
    assert records > 0 and report["stream"]["messages"] <= applied + records
    learning = report["learning"]
    assert learning["policy"] == "linear_igw" and set(learning["drifts"]) >= {"step"}
    text = headstart("status", home=home).stdout
    assert "learning: linear_igw" in text and "drift:" in text
    assert sorted(p for s in report["shards"] for p in s["partitions"]) == list(range(8))


def test_scale_moves_partitions_live_from_the_cli_and_the_api(
    instance: tuple[Path, dict[str, object]],
) -> None:
    import httpx

    home, state = instance
    scaled = headstart("scale", "--shards", "3", home=home)
    assert scaled.returncode == 0, scaled.stdout + scaled.stderr
    assert "2 → 3 shards" in scaled.stdout
    report = json.loads(headstart("status", "--json", home=home).stdout)
    assert [len(s["partitions"]) for s in report["shards"]] == [3, 3, 2]
    assert sorted(p for s in report["shards"] for p in s["partitions"]) == list(range(8))
    assert json.loads((home / "run" / "state.json").read_text())["shards"] == 3

    admin = {"Authorization": f"Bearer {json.loads((home / 'keys.json').read_text())['admin']}"}
    url = f"{state['http_url']}/v1/admin/scale"
    assert httpx.post(url, json={"shards": 0}, headers=admin).status_code == 400
    frontend = {"Authorization": f"Bearer {json.loads((home / 'keys.json').read_text())['frontend']}"}
    assert httpx.post(url, json={"shards": 2}, headers=frontend).status_code == 403
    back = httpx.post(url, json={"shards": 2}, headers=admin, timeout=120)
    assert back.status_code == 200, back.text
    assert back.json()["from"] == 3 and back.json()["to"] == 2
    report = json.loads(headstart("status", "--json", home=home).stdout)
    assert [s["partitions"] for s in report["shards"]] == [[0, 1, 2, 3], [4, 5, 6, 7]]


def test_the_audits_and_evaluation_read_the_instances_decisions_log(
    instance: tuple[Path, dict[str, object]],
) -> None:
    home, _ = instance
    signals = headstart("report", "signals", "--json", home=home)
    assert signals.returncode == 0, signals.stdout + signals.stderr
    report = json.loads(signals.stdout)
    assert (
        report["decisions"] > 0 and len(report["signals"]) == BUILTIN_LAYOUT.dim - 1
    )  # the context vector less its bias
    fairness = headstart("report", "fairness", "--json", "--min-group", "1", home=home)
    assert fairness.returncode == 0, fairness.stdout + fairness.stderr
    assert json.loads(fairness.stdout)["points"]
    export = home / "decisions.parquet"
    evaluated = headstart("evaluate", "--policy", "thompson", "--export", str(export), home=home)
    assert evaluated.returncode == 0, evaluated.stdout + evaluated.stderr
    assert export.exists() and "logged decisions" in evaluated.stdout


def test_segment_and_tutorial_reports_read_the_live_shards(
    instance: tuple[Path, dict[str, object]],
) -> None:
    home, _ = instance
    segments = headstart("report", "segments", "--json", "--groups", "2", home=home)
    assert segments.returncode == 0, segments.stdout + segments.stderr
    report = json.loads(segments.stdout)
    by_id = {s["id"]: s for s in report["segments"]}
    assert report["users"] > 0 and set(by_id) >= {
        "engagement_low",
        "new_user",
        "mobile_newcomer",
        "cluster_0",
    }
    tiers = sum(by_id[t]["size"] for t in ("engagement_low", "engagement_medium", "engagement_high"))
    assert tiers == report["users"]  # every user in exactly one tier
    assert sum(s["entered"] for s in report["segments"]) > 0
    assert all(0 <= (s["activation_rate"] or 0) <= 1 for s in report["segments"])
    text = headstart("report", "segments", home=home)
    assert text.returncode == 0 and "engagement_low" in text.stdout
    tutorials = headstart("report", "tutorials", "--json", home=home)
    assert tutorials.returncode == 0, tutorials.stdout + tutorials.stderr
    rows = json.loads(tutorials.stdout)
    assert all(r["completed"] <= r["started"] for r in rows)
    assert {r["segment"] for r in rows} >= {"all"} if rows else True


def test_the_experiment_report_reads_the_live_shards(instance: tuple[Path, dict[str, object]]) -> None:
    home, _ = instance
    demo = headstart("demo", "--users", "12", "--steps", "2", home=home)
    assert demo.returncode == 0, demo.stdout + demo.stderr
    plot = home / "welcome_copy.png"
    deadline = time.monotonic() + 60
    while True:  # exposures are applied by the shards a moment after the decisions
        result = headstart("report", "experiment", "welcome_copy", "--json", "--plot", str(plot), home=home)
        assert result.returncode == 0, result.stdout + result.stderr
        report = json.loads(result.stdout)
        if report["exposed"] >= 12 or time.monotonic() > deadline:
            break
        time.sleep(1)
    arms = report["primary"]["arms"]
    assert report["exposed"] >= 12 and sum(a["users"] for a in arms.values()) == report["exposed"]
    assert set(arms) == {"control", "short"} and report["verdict"]
    assert report["catalog_versions"] == [1]  # the file `up` was given, stored as version 1
    assert plot.read_bytes()[:4] == b"\x89PNG"
    text = headstart("report", "experiment", "welcome_copy", "--plot", str(plot), home=home)
    assert text.returncode == 0 and "verdict:" in text.stdout and "sample ratio" in text.stdout
    assert "ran under catalog version(s) 1" in text.stdout
    unknown = headstart("report", "experiment", "nope", home=home)
    assert unknown.returncode == 1 and "no experiment 'nope'" in unknown.stdout


def test_export_writes_the_star_schema_in_parquet(
    instance: tuple[Path, dict[str, object]], tmp_path: Path
) -> None:
    import polars as pl

    from headstart.reports.export import SCHEMAS

    home, _ = instance
    demo = headstart("demo", "--users", "4", "--steps", "3", home=home)
    assert demo.returncode == 0, demo.stdout + demo.stderr
    out = tmp_path / "warehouse"
    result = headstart("export", "--out", str(out), home=home)
    assert result.returncode == 0, result.stdout + result.stderr
    tables = {name: pl.read_parquet(out / f"{name}.parquet") for name in SCHEMAS}
    for name, frame in tables.items():
        assert dict(frame.schema) == SCHEMAS[name], name  # the documented columns and types
    profiles = tables["user_profiles"]
    assert profiles.height >= 4 and profiles["user_key"].n_unique() == profiles.height
    assert profiles["user_key"].str.len_chars().unique().to_list() == [26]  # pseudonymized keys
    assert set(tables["dim_context"]["user_key"]) == set(profiles["user_key"])
    assert tables["behaviour_daily"]["events"].sum() > 0
    assert set(tables["behaviour_daily"]["user_key"]) <= set(profiles["user_key"])
    assert tables["decisions"].height > 0 and tables["segment_history"].height > 0
    assert tables["exposures"].height > 0  # the instance runs an experiment (see EXPERIMENT)
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["rows"] == {name: frame.height for name, frame in tables.items()}
    # Incremental: nothing was stored after tomorrow, yet every table is written.
    later = tmp_path / "later"
    tomorrow = str(time.time() + 86400)
    assert headstart("export", "--out", str(later), "--since", tomorrow, home=home).returncode == 0
    assert all(
        pl.read_parquet(later / f"{name}.parquet").height == 0
        for name in SCHEMAS
        if name not in ("user_profiles", "dim_demographics", "dim_context")
    )


def test_raw_ids_are_in_no_file_under_the_home_nor_in_rays_logs(
    instance: tuple[Path, dict[str, object]],
) -> None:
    """Broker store, snapshots, our logs, and Ray's and Serve's logs (access logs included)."""
    import httpx

    home, state = instance
    headstart("demo", "--users", "2", "--steps", "2", home=home)
    keys = json.loads((home / "keys.json").read_text())
    raw = "frank@example.com"
    with httpx.Client(base_url=str(state["http_url"]), timeout=30) as client:
        admin = {"Authorization": f"Bearer {keys['admin']}"}
        frontend = {"Authorization": f"Bearer {keys['frontend']}"}
        # Every path that carries a user id, so access logs would show it if they logged paths raw.
        assert (
            client.put(f"/v1/users/{raw}/consent", json={"analytics": True}, headers=frontend).status_code
            == 202
        )
        assert client.get(f"/v1/users/{raw}", headers=admin).status_code in (200, 404)
        assert client.get(f"/v1/users/{raw}/export", headers=admin).status_code == 200
        assert client.delete(f"/v1/users/{raw}", headers=admin).status_code == 200
    time.sleep(2)  # log files are flushed asynchronously
    roots = [home, Path(str(state["ray_session_dir"])) / "logs"]
    assert roots[1].is_dir()
    for root in roots:
        for path in root.rglob("*"):
            if path.is_file() and not path.is_symlink():
                data = path.read_bytes()
                assert b"@example.com" not in data and b"example.com" not in data, path


def test_down_stops_exactly_what_up_started_and_leaves_no_raw_id(tmp_path: Path) -> None:
    import httpx

    up = headstart(
        "up", "--detach", "--partitions", "4", "--shards", "1", "--port", str(free_port()), home=tmp_path
    )
    assert up.returncode == 0, up.stdout + up.stderr
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    pids = [state["supervisor"]["pid"]] + [c["pid"] for c in state["children"]]
    assert any(c["name"] == "nats-server" for c in state["children"])
    # Events for a raw id over HTTP, applied; `down` then writes the final snapshots.
    key = json.loads((tmp_path / "keys.json").read_text())["frontend"]
    raw = "alice@example.com"
    with httpx.Client(base_url=state["http_url"], headers={"Authorization": f"Bearer {key}"}) as client:
        events = [
            {"event_id": f"a{i}", "user_id": raw, "type": kind, "ts": time.time(), "props": props}
            for i, (kind, props) in enumerate(
                [("profile_updated", {"name": "Alice"}), ("feature_clicked", {"feature": "export"})]
            )
        ]
        assert client.post("/v1/events", json={"events": events}).status_code == 200
        deadline = time.monotonic() + 10
        while client.post("/v1/decide", json={"user_id": raw}).json()["personalized"] is False:
            assert time.monotonic() < deadline, "the events were not applied"
            time.sleep(0.2)
    down = headstart("down", home=tmp_path)
    assert down.returncode == 0 and "stopped" in down.stdout
    lingering = []
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            if proc.status() != psutil.STATUS_ZOMBIE:
                lingering.append((pid, proc.name(), proc.cmdline()[:3]))
        except psutil.NoSuchProcess:
            pass
    assert not lingering
    assert not (tmp_path / "run" / "state.json").exists()
    snapshots = [p for p in tmp_path.rglob("*") if "OBJ_HS_SNAPSHOTS" in p.parts and p.suffix == ".blk"]
    assert snapshots  # `down` wrote the final snapshots into the broker's store
    for root in (tmp_path, Path(state["ray_session_dir"]) / "logs"):
        for path in root.rglob("*"):
            if path.is_file() and not path.is_symlink():
                data = path.read_bytes()
                assert b"example.com" not in data, path
                # The name is PII: sealed in snapshots, in no log. Only the events stream keeps
                # the event as it was sent (for replay), until its retention or an erasure.
                assert b"Alice" not in data or "HS_EVENTS" in path.parts, path
    assert "nothing was running" in headstart("down", home=tmp_path).stdout


def test_an_existing_nats_server_is_used_and_left_alone(tmp_path: Path) -> None:
    from headstart.adapters.broker import EmbeddedNats

    external = EmbeddedNats(tmp_path / "external-nats")
    external.start()
    try:
        home = tmp_path / "home"
        up = headstart(
            "up",
            "--detach",
            "--partitions",
            "4",
            "--shards",
            "1",
            "--port",
            str(free_port()),
            "--nats-url",
            external.url,
            home=home,
        )
        assert up.returncode == 0, up.stdout + up.stderr
        state = json.loads((home / "run" / "state.json").read_text())
        assert state["nats_url"] == external.url
        assert not any(c["name"] == "nats-server" for c in state["children"])
        assert not (home / "nats" / "nats-server.conf").exists()
        assert headstart("down", home=home).returncode == 0
        assert external.healthy()  # not ours to stop
    finally:
        external.stop()


def test_datamap_lists_every_field_with_where_and_why(tmp_path: Path) -> None:
    shown = headstart("datamap", "--json", home=tmp_path)
    assert shown.returncode == 0, shown.stderr
    rows = {r["field"]: r for r in json.loads(shown.stdout)}
    assert (
        rows["props.feature"]["events"] == ["feature_clicked"]
        and rows["profile.consent"]["purpose"] == "legal record"
    )
    assert "HS_EVENTS" in rows["user_id"]["kept_in"]
    # A catalog's own fields, with their purpose and PII class.
    shown = headstart("datamap", "--json", "--catalog", str(CUSTOM_SCHEMA), home=tmp_path)
    assert shown.returncode == 0, shown.stderr
    declared = {(r["field"], tuple(r["events"])): r for r in json.loads(shown.stdout)}
    assert declared[("props.integration", ("connected_integration",))]["purpose"] == "analytics"
    assert declared[("props.phone", ("profile_updated",))]["pii"] is True
    assert declared[("profile.plan", ())]["pii"] is False
