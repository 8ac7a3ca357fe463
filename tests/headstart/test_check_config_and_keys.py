from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from engine.catalog import DEFAULT_CATALOG
from headstart.runtime.home import ensure_keys
from headstart.web.auth import Authenticator, key_hashes
from tests.catalogs import CUSTOM_SCHEMA
from tests.engine.test_catalog import CUSTOM_PROBLEMS


def check_config(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "headstart", "check-config", str(path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def test_check_config_accepts_the_default_catalog() -> None:
    result = check_config(DEFAULT_CATALOG)
    assert result.returncode == 0 and "valid" in result.stdout


def test_check_config_prints_every_error_with_its_place(tmp_path: Path) -> None:
    broken = (
        DEFAULT_CATALOG.read_text()
        .replace("requires: [welcome]", "requires: [wellcome]")
        .replace("segments: [device_mobile], value: true", "segments: [device_watch], value: true")
    )
    path = tmp_path / "catalog.yaml"
    path.write_text(broken)
    result = check_config(path)
    assert result.returncode == 1
    lines = [line for line in result.stdout.splitlines() if line.startswith(str(path))]
    assert any("journey.steps[1].requires[0]: unknown step 'wellcome'" in line for line in lines)
    assert any("flags[1].rules[0].segments[0]: unknown segment 'device_watch'" in line for line in lines)


def test_check_config_checks_references_to_the_custom_schema(tmp_path: Path) -> None:
    assert check_config(CUSTOM_SCHEMA).returncode == 0
    text = CUSTOM_SCHEMA.read_text()
    for old, new in (change for change, _ in CUSTOM_PROBLEMS):
        assert old in text
        text = text.replace(old, new)
    path = tmp_path / "boards.yaml"
    path.write_text(text)
    result = check_config(path)
    assert result.returncode == 1
    lines = [line for line in result.stdout.splitlines() if line.startswith(f"{path}: ")]
    assert len(lines) == len(CUSTOM_PROBLEMS), result.stdout
    for _, expected in CUSTOM_PROBLEMS:
        assert any(line.startswith(f"{path}: {expected}") for line in lines), expected


def test_check_config_on_a_missing_file(tmp_path: Path) -> None:
    result = check_config(tmp_path / "nope.yaml")
    assert result.returncode == 1 and "cannot read" in result.stdout


def test_keys_are_generated_once_private_and_only_hashes_reach_the_server(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    keys = ensure_keys(path)
    assert set(keys) == {"frontend", "server", "admin"} and keys["frontend"] != keys["admin"]
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert ensure_keys(path) == keys == json.loads(path.read_text())
    hashes = key_hashes(keys)
    assert keys["admin"] not in json.dumps(hashes)
    auth = Authenticator(hashes)
    assert auth.role_of(f"Bearer {keys['admin']}") == "admin"
    assert auth.role_of(f"Bearer {keys['frontend']}") == "frontend"
    assert auth.role_of(f"Basic {keys['admin']}") is None


def test_up_warns_when_pages_on_other_origins_may_call_without_identity_verification(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The warning comes before anything starts (here: a catalog that fails its checks)."""
    from typer.testing import CliRunner

    from headstart.cli import app

    bad = tmp_path / "bad.yaml"
    bad.write_text("journey: 3\n")
    monkeypatch.setenv("HEADSTART_CORS_ORIGINS", "https://app.example.com")
    warned = CliRunner().invoke(app, ["up", "--home", str(tmp_path / "h"), "--catalog", str(bad)])
    assert warned.exit_code == 1 and "identity verification is off" in warned.output
    monkeypatch.setenv("HEADSTART_IDENTITY_VERIFICATION", "required")
    quiet = CliRunner().invoke(app, ["up", "--home", str(tmp_path / "h"), "--catalog", str(bad)])
    assert quiet.exit_code == 1 and "identity verification is off" not in quiet.output
