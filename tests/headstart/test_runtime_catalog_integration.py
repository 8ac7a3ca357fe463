"""Which catalog version `headstart up` serves, with a real nats-server and the real store."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from nats.aio.client import Client as NATS

from engine.catalog import DEFAULT_CATALOG, CatalogError
from engine.catalog_changes import fingerprint
from headstart.adapters.catalog_store import CatalogStore
from headstart.runtime.catalog import read_document, version_at_start
from tests.conftest import reset_streams

pytestmark = pytest.mark.integration


def welcome_file(folder: Path, name: str, text: str, extra: str = "") -> Path:
    document = yaml.safe_load(DEFAULT_CATALOG.read_text() + extra)
    document["messages"]["welcome"]["en"] = text
    path = folder / name
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


async def test_up_stores_the_first_version_then_serves_the_latest(
    nats_url: str, nc: NATS, tmp_path: Path
) -> None:
    await reset_streams(nats_url)
    store = await CatalogStore.open(nc.jetstream())
    # Nothing stored, no file: the packaged catalog is version 1.
    served, note = await version_at_start(store, None, "cli:abc")
    assert served.version == 1 and served.who == "cli:abc"
    assert served.document == read_document(DEFAULT_CATALOG)
    assert note is not None and "as catalog version 1" in note
    # Stored, no file: the latest, nothing stored.
    await store.push(read_document(welcome_file(tmp_path, "b.yaml", "B")), who="admin:x", expected=1)
    served, note = await version_at_start(store, None, "cli:abc")
    assert served.version == 2 and note is None
    # A file that differs: stored, and said.
    c = welcome_file(tmp_path, "c.yaml", "C")
    served, note = await version_at_start(store, c, "cli:abc")
    assert served.version == 3 and note == (
        f"{c} differs from catalog version 2: stored it as version 3 (messages: welcome changed)"
    )
    # The same file again: nothing stored.
    served, note = await version_at_start(store, c, "cli:abc")
    assert served.version == 3 and note is None and await store.latest_number() == 3


async def test_a_file_up_cannot_store_fails_with_its_messages(
    nats_url: str, nc: NATS, tmp_path: Path
) -> None:
    await reset_streams(nats_url)
    store = await CatalogStore.open(nc.jetstream())
    broken = tmp_path / "broken.yaml"
    broken.write_text(DEFAULT_CATALOG.read_text().replace("requires: [welcome]", "requires: [wellcome]"))
    with pytest.raises(CatalogError) as raised:
        await version_at_start(store, broken, "cli:abc")
    assert any("unknown step 'wellcome'" in e for e in raised.value.errors)
    assert await store.latest_number() == 0


def test_a_file_reads_as_the_document_a_version_keeps(tmp_path: Path) -> None:
    """YAML timestamps become text, as in a stored version: the file and the version it was
    stored as have one fingerprint, so `up --catalog` with the same file stores nothing."""
    timed = welcome_file(
        tmp_path,
        "timed.yaml",
        "Hi",
        "experiments:\n  - id: copy\n    salt: s\n    start: 2026-01-01T00:00:00Z\n"
        "    arms: [{id: control}, {id: short, welcome: {en: Hey}}]\n",
    )
    document = read_document(timed)
    assert document["experiments"][0]["start"] == "2026-01-01T00:00:00Z"
    assert fingerprint(document) == fingerprint(read_document(timed))
