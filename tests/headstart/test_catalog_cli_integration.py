"""The live catalog from the command line, against a real instance started by `up --detach`:
push (with its diff), dry run, diff, show, history, rollback, the running-experiment guard, an
invalid file refused with check-config's messages, and `up` serving the latest stored version
after a restart (pushing the file it is given when that differs, and saying so).

The API keys' commands (`headstart keys ...`) are tested here too, on the same instance (one
instance per module is what the machine affords): list, create, revoke, rotate, each taking
effect over HTTP within a second, and a restart keeping what they did."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from engine.catalog import DEFAULT_CATALOG
from headstart.adapters.broker import free_port
from headstart.web.auth import key_id
from tests.headstart.test_check_config_and_keys import check_config
from tests.headstart.test_cli_integration import headstart

pytestmark = pytest.mark.integration

#: An experiment only tablet users take part in: the decisions below (no context) never reach
#: it, so their message is the catalog's welcome; it runs (no start, no end) for the guard.
EXPERIMENT = """
experiments:
  - id: tablet_copy
    salt: tablet-1
    segments: [device_tablet]
    arms:
      - {id: control}
      - {id: short, welcome: {en: "Hi from a tablet"}}
"""


def catalog_file(folder: Path, name: str, welcome: str, experiment: str = EXPERIMENT) -> Path:
    """The packaged catalog with an English welcome message of its own (and the experiment)."""
    document = yaml.safe_load(DEFAULT_CATALOG.read_text() + experiment)
    document["messages"]["welcome"]["en"] = welcome
    path = folder / name
    path.write_text(yaml.safe_dump(document, sort_keys=False, allow_unicode=True))
    return path


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def history(home: Path) -> list[dict[str, Any]]:
    versions: list[dict[str, Any]] = json.loads(ok(headstart("catalog", "history", "--json", home=home)))
    return versions


def up(home: Path, *args: str) -> str:
    return ok(
        headstart(
            "up",
            "--detach",
            "--shards",
            "1",
            "--partitions",
            "4",
            "--port",
            str(free_port()),
            *args,
            home=home,
        )
    )


def welcome_served(home: Path) -> str:
    """The message a new English-speaking user is given now, over HTTP."""
    state = json.loads((home / "run" / "state.json").read_text())
    key = json.loads((home / "keys.json").read_text())["frontend"]
    answer = httpx.post(
        f"{state['http_url']}/v1/decide",
        json={"user_id": f"u-{time.monotonic_ns()}", "context": {"locale": "en-US"}},
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    message: str = answer.json()["message"]
    return message


@pytest.fixture(scope="module")
def instance(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    home = tmp_path_factory.mktemp("home")
    files = tmp_path_factory.mktemp("catalogs")  # outside the home: it is scanned for raw ids
    started = up(home, "--catalog", str(catalog_file(files, "a.yaml", "Hello from A")))
    assert "Catalog:  version 1 at start" in started and "a.yaml as catalog version 1" in started
    try:
        yield home, files
    finally:
        headstart("down", home=home)


def test_the_first_version_is_the_file_up_was_given_stored_by_the_cli(instance: tuple[Path, Path]) -> None:
    home, files = instance
    [first] = history(home)
    admin = json.loads((home / "keys.json").read_text())["admin"]
    assert first["version"] == 1 and first["summary"] == "first version"
    assert first["who"] == f"cli:{key_id(admin)}" and admin not in json.dumps(first)
    shown = ok(headstart("catalog", "show", home=home))
    assert shown.startswith("# catalog version 1, stored ")
    assert yaml.safe_load(shown) == yaml.safe_load((files / "a.yaml").read_text())
    assert "catalog: version 1" in ok(headstart("status", home=home))
    assert json.loads(ok(headstart("status", "--json", home=home)))["catalog"]["version"] == 1


def test_push_stores_a_new_version_and_prints_its_diff(instance: tuple[Path, Path]) -> None:
    home, files = instance
    b = catalog_file(files, "b.yaml", "Hello from B")
    diffed = ok(headstart("catalog", "diff", str(b), home=home))
    assert "messages: welcome changed" in diffed
    assert "-    en: Hello from A" in diffed and "+    en: Hello from B" in diffed
    assert len(history(home)) == 1  # diff stores nothing

    dry = ok(headstart("catalog", "push", str(b), "--dry-run", home=home))
    assert "dry run: would store version 2 (replaces version 1): messages: welcome changed" in dry
    assert "+    en: Hello from B" in dry and "nothing stored" in dry
    assert len(history(home)) == 1

    pushed = ok(headstart("catalog", "push", str(b), home=home))
    assert "stored catalog version 2 (replaces version 1): messages: welcome changed" in pushed
    assert "--- version 1" in pushed and f"+++ {b}" in pushed and "+    en: Hello from B" in pushed
    assert [v["version"] for v in history(home)] == [1, 2]

    again = ok(headstart("catalog", "push", str(b), home=home))
    assert "is the same as catalog version 2: nothing stored" in again
    assert "is the same as catalog version 2" in ok(headstart("catalog", "diff", str(b), home=home))
    assert len(history(home)) == 2
    assert yaml.safe_load(ok(headstart("catalog", "show", "1", home=home)))["messages"]["welcome"]["en"] == (
        "Hello from A"
    )


def test_an_invalid_file_is_refused_with_check_configs_messages(instance: tuple[Path, Path]) -> None:
    home, files = instance
    document = yaml.safe_load((files / "b.yaml").read_text())
    document["flags"][0]["rules"][0]["rollout"] = 150
    document["flags"][1]["default"] = "maybe"
    broken = files / "broken.yaml"
    broken.write_text(yaml.safe_dump(document, sort_keys=False))
    checked = check_config(broken)
    assert checked.returncode == 1
    expected = [line for line in checked.stdout.splitlines() if line.startswith(str(broken))]
    assert len(expected) == 2 and any("flags[1].default" in line for line in expected)
    for command in (("push",), ("push", "--dry-run"), ("diff",)):
        result = headstart("catalog", *command, str(broken), home=home)
        assert result.returncode == 1, result.stdout
        assert [line for line in result.stdout.splitlines() if line.startswith(str(broken))] == expected
        assert "Traceback" not in result.stdout + result.stderr
    assert len(history(home)) == 2  # nothing stored
    missing = headstart("catalog", "push", str(files / "nope.yaml"), home=home)
    assert missing.returncode == 1 and "cannot read" in missing.stdout
    unknown = headstart("catalog", "show", "99", home=home)
    assert unknown.returncode == 1 and "no catalog version 99" in unknown.stdout
    assert "Traceback" not in unknown.stdout + unknown.stderr


def test_a_running_experiments_arms_change_only_with_force(instance: tuple[Path, Path]) -> None:
    home, files = instance
    resalted = catalog_file(
        files, "resalted.yaml", "Hello from B", EXPERIMENT.replace("tablet-1", "tablet-2")
    )
    refused = headstart("catalog", "push", str(resalted), home=home)
    assert refused.returncode == 1
    assert "experiments.tablet_copy: its salt changed while it runs" in refused.stdout
    assert "--force" in refused.stdout and "nothing stored" in refused.stdout
    assert "refused without --force" in ok(headstart("catalog", "diff", str(resalted), home=home))
    assert len(history(home)) == 2
    forced = ok(headstart("catalog", "push", str(resalted), "--force", home=home))
    assert "stored catalog version 3" in forced and "forced:" in forced
    last = history(home)[-1]
    assert last["version"] == 3 and last["forced"] is True


def test_rollback_stores_an_old_versions_content_as_a_new_version(instance: tuple[Path, Path]) -> None:
    home, _ = instance
    # Version 1 has the experiment's first salt: a rollback changes a running experiment too.
    refused = headstart("catalog", "rollback", "1", home=home)
    assert refused.returncode == 1 and "--force" in refused.stdout
    rolled = ok(headstart("catalog", "rollback", "1", "--force", home=home))
    assert "stored catalog version 4 (replaces version 3)" in rolled and "+    en: Hello from A" in rolled
    last = history(home)[-1]
    assert last["version"] == 4 and last["rollback_of"] == 1
    assert yaml.safe_load(ok(headstart("catalog", "show", "4", home=home))) == yaml.safe_load(
        ok(headstart("catalog", "show", "1", home=home))
    )
    table = ok(headstart("catalog", "history", home=home))
    assert "rollback of 1" in table and "forced" in table and "serving" in table
    same = ok(headstart("catalog", "rollback", "4", home=home))
    assert "nothing stored" in same
    missing = headstart("catalog", "rollback", "42", home=home)
    assert missing.returncode == 1 and "no catalog version 42" in missing.stdout


def decide_status(home: Path, key: str) -> int:
    state = json.loads((home / "run" / "state.json").read_text())
    return httpx.post(
        f"{state['http_url']}/v1/decide",
        json={"user_id": "u-keys"},
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    ).status_code


def answered_within(home: Path, key: str, status: int, seconds: float = 1.0) -> None:
    """A decision with ``key`` is answered ``status`` within ``seconds`` (the issue's bar)."""
    started = time.monotonic()
    while (answered := decide_status(home, key)) != status:
        assert time.monotonic() - started < seconds, f"{answered}, not {status}"
        time.sleep(0.02)


#: Keys the keys test left revoked, in a grace period, or expired (for the test after a restart).
LEFT: dict[str, str] = {}


def keys_listed(home: Path) -> dict[str, dict[str, Any]]:
    return {row["id"]: row for row in json.loads(ok(headstart("keys", "list", "--json", home=home)))}


def keys_file(home: Path) -> dict[str, str]:
    keys: dict[str, str] = json.loads((home / "keys.json").read_text())
    return keys


def test_keys_are_listed_created_revoked_and_rotated_live(instance: tuple[Path, Path]) -> None:
    home, _ = instance
    first = keys_file(home)
    listed = keys_listed(home)
    assert {(row["role"], row["state"], row["in_keys_file"]) for row in listed.values()} == {
        (role, "active", True) for role in ("frontend", "server", "admin")
    }
    assert set(listed) == {key_id(key) for key in first.values()}
    # A key's last use: listed within a few seconds (each replica writes them every 3 s).
    used_at = time.time()
    assert decide_status(home, first["frontend"]) == 200
    deadline = time.monotonic() + 15
    while (keys_listed(home)[key_id(first["frontend"])]["last_used"] or 0) < used_at - 1:
        assert time.monotonic() < deadline, "the frontend key's use was not listed"
        time.sleep(1)
    # Created: printed once, alone on stdout, accepted over HTTP within a second.
    created = headstart("keys", "create", "--role", "frontend", home=home)
    extra = ok(created).strip()
    assert extra.startswith("hs_fr_") and f"created frontend key {key_id(extra)}" in created.stderr
    answered_within(home, extra, 200)
    # Revoked by a prefix of its id: refused within a second.
    revoked = ok(headstart("keys", "revoke", key_id(extra)[:8], home=home))
    assert f"revoked frontend key {key_id(extra)}" in revoked
    answered_within(home, extra, 401)
    # Refused, each with why.
    for args, why in (
        (("revoke", key_id(first["admin"])), "rotate it instead"),
        (("revoke", "abc"), "too short"),
        (("revoke", "ffffffffffff"), "no key with id"),
        (("create", "--role", "owner"), "unknown role 'owner'"),
        (("rotate", "owner"), "unknown role 'owner'"),
        (("rotate", "frontend", "--grace", "soon"), "not a duration"),
    ):
        refused = headstart("keys", *args, home=home)
        assert refused.returncode == 1 and why in refused.stderr, (args, refused.stderr)
    # Rotated with a grace: keys.json holds the new key (its other roles unchanged), both work.
    rotated = headstart("keys", "rotate", "frontend", "--grace", "1h", home=home)
    new = ok(rotated).strip()
    assert keys_file(home) == {**first, "frontend": new}
    assert (home / "keys.json").stat().st_mode & 0o777 == 0o600
    assert f"the old key {key_id(first['frontend'])} stops working at" in rotated.stderr
    answered_within(home, new, 200)
    assert decide_status(home, first["frontend"]) == 200
    # Rotated without a grace: the old key stops now.
    ended = headstart("keys", "rotate", "server", "--grace", "0", home=home)
    assert ok(ended).strip() != first["server"] and "stops working now" in ended.stderr
    states = {row["id"]: row["state"] for row in keys_listed(home).values()}
    assert states == {
        key_id(first["frontend"]): "grace",
        key_id(first["server"]): "expired",
        key_id(first["admin"]): "active",
        key_id(extra): "revoked",
        key_id(new): "active",
        key_id(keys_file(home)["server"]): "active",
    }
    table = ok(headstart("keys", "list", home=home))
    assert "grace until" in table and "revoked" in table and "expired" in table and "(keys.json)" in table
    LEFT.update(revoked=extra, grace=first["frontend"], expired=first["server"])


def test_keys_refuse_to_work_without_a_running_instance(tmp_path: Path) -> None:
    refused = headstart("keys", "list", home=tmp_path)
    assert refused.returncode == 1 and "not running" in refused.stderr


def test_up_pushes_a_different_file_and_a_restart_serves_the_latest(instance: tuple[Path, Path]) -> None:
    home, files = instance
    ok(headstart("down", home=home))
    # A file that differs from the latest (4): stored as version 5, and `up` says so.
    c = catalog_file(files, "c.yaml", "Hello from C")
    started = up(home, "--catalog", str(c))
    assert "c.yaml differs from catalog version 4: stored it as version 5" in started
    assert "Catalog:  version 5 at start" in started
    assert history(home)[-1]["version"] == 5 and welcome_served(home) == "Hello from C"
    # Pushed live, then a restart without --catalog: the latest is served, not a.yaml, not c.yaml.
    ok(headstart("catalog", "push", str(catalog_file(files, "d.yaml", "Hello from D")), home=home))
    ok(headstart("down", home=home))
    restarted = up(home)
    assert "Catalog:  version 6 at start" in restarted and "differs" not in restarted
    assert welcome_served(home) == "Hello from D"
    # (`up --catalog` with the latest's content stores nothing: test_runtime_catalog_integration.)


def test_a_restart_keeps_the_keys_as_the_commands_left_them(instance: tuple[Path, Path]) -> None:
    """After the restarts above: what `keys` did survived `up` seeding keys.json again."""
    home, _ = instance
    states = {row["id"]: row["state"] for row in keys_listed(home).values()}
    assert len(states) == 6 and all(states[key_id(key)] == "active" for key in keys_file(home).values())
    assert [states[key_id(LEFT[state])] for state in ("revoked", "grace", "expired")] == [
        "revoked",
        "grace",
        "expired",
    ]
    assert decide_status(home, keys_file(home)["frontend"]) == 200
    assert decide_status(home, LEFT["grace"]) == 200
    assert decide_status(home, LEFT["revoked"]) == decide_status(home, LEFT["expired"]) == 401
