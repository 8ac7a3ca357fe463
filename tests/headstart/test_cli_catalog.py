"""How the catalog commands report what went wrong: no traceback, exit status 1, the messages of
check-config as they are, a conflicting push explained."""

from __future__ import annotations

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


@pytest.mark.integration
async def test_the_preview_compares_the_served_catalog_with_the_new_one(nats_url: str) -> None:
    """`push --preview` prints headstart.reports.preview's report of the two catalogs, read from
    the instance's stream (a real nats-server; nothing logged yet: every point says so)."""
    import nats

    from engine.catalog import DEFAULT_CATALOG, load_catalog
    from headstart.cli_catalog import _preview
    from tests.conftest import TEST_PARTITIONS, reset_streams

    await reset_streams(nats_url)
    current = load_catalog(DEFAULT_CATALOG)
    new = current.model_copy(update={"learning": current.learning.model_copy(update={"policy": "thompson"})})
    nc = await nats.connect(nats_url)
    try:
        text = await _preview(nc.jetstream(), current, new, TEST_PARTITIONS)
    finally:
        await nc.close()
    assert "thompson" in text and "no logged decisions yet" in text
