"""How the catalog commands report what went wrong: no traceback, exit status 1, the messages of
check-config as they are, a conflicting push explained."""

from __future__ import annotations

from typing import Any

import pytest
import typer

from engine.catalog import CatalogError
from headstart.adapters.catalog_store import CatalogInvalid, VersionConflict, VersionNotFound
from headstart.cli_catalog import _fail


def failed(exc: Exception, capsys: pytest.CaptureFixture[str], stored_nothing: bool = True) -> str:
    with pytest.raises(typer.Exit) as raised:
        _fail(exc, stored_nothing)
    assert raised.value.exit_code == 1
    return capsys.readouterr().out


def test_a_conflicting_push_is_explained(capsys: pytest.CaptureFixture[str]) -> None:
    out = " ".join(failed(VersionConflict(expected=3, latest=4), capsys).split())  # unwrapped
    assert "the catalog is at version 4, not 3: another version was stored meanwhile; nothing stored" in out
    assert "headstart catalog diff FILE" in out


def test_problems_are_printed_as_check_config_prints_them(capsys: pytest.CaptureFixture[str]) -> None:
    errors = ["c.yaml: flags[0].rules[0].rollout: [x] must be <= 100", "c.yaml: journey: Field required"]
    for exc in (CatalogInvalid(errors), CatalogError(errors)):
        out = failed(exc, capsys)
        assert out.splitlines()[:2] == errors  # brackets and all: not read as markup
        assert "2 error(s); nothing stored" in out


def test_an_unknown_version_is_named(capsys: pytest.CaptureFixture[str]) -> None:
    assert "no catalog version 9" in failed(VersionNotFound("no catalog version 9"), capsys, False)


async def test_the_preview_is_asked_with_the_served_catalog_and_the_new_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`push --preview` calls headstart.reports.preview.preview_catalog(js, current, new,
    partitions) and prints its render()."""
    import sys
    import types

    from engine.catalog import DEFAULT_CATALOG, load_catalog
    from headstart.cli_catalog import _preview

    asked: list[tuple[Any, ...]] = []

    class Report:
        def render(self) -> str:
            return "step: IPS 0.41 [0.38, 0.44] -> 0.47 [0.42, 0.52]"

    async def preview_catalog(js: Any, current: Any, new: Any, partitions: int) -> Report:
        asked.append((js, current, new, partitions))
        return Report()

    module = types.ModuleType("headstart.reports.preview")
    module.preview_catalog = preview_catalog  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "headstart.reports.preview", module)
    current, new = load_catalog(DEFAULT_CATALOG), load_catalog(DEFAULT_CATALOG)
    assert await _preview("js", current, new, 8) == "step: IPS 0.41 [0.38, 0.44] -> 0.47 [0.42, 0.52]"
    assert asked == [("js", current, new, 8)]
