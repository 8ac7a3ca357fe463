"""The live catalog as ``headstart up`` and the ``catalog`` commands use it: which version an
instance serves at start, a catalog file read as the document the store keeps, and who the
command line stores versions as.

>>> import tempfile
>>> from headstart.runtime.home import DataHome, ensure_keys
>>> home = DataHome(Path(tempfile.mkdtemp()))
>>> who_from_cli(home.keys_file)  # no keys yet: no one to name
'cli:unknown'
>>> admin = ensure_keys(home.keys_file)["admin"]
>>> who_from_cli(home.keys_file) == f"cli:{key_id(admin)}"
True
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import yaml

from engine.catalog import DEFAULT_CATALOG, CatalogError, check_catalog_text
from engine.catalog_changes import as_stored
from headstart.adapters.catalog_store import CatalogInvalid, CatalogStore, StoredVersion
from headstart.web.auth import key_id

log = logging.getLogger(__name__)


def read_document(path: Path) -> dict[str, Any]:
    """A catalog file as the document a version keeps; :class:`CatalogError` with the messages
    of ``check-config`` if it is not a valid catalog.

    The document goes through JSON once, as a stored version does: YAML's timestamps become
    the strings a stored version holds, so a file compares equal to the version stored from it.
    """
    try:
        text = path.read_text()
    except OSError as exc:
        raise CatalogError([f"{path}: cannot read: {exc.strerror}"]) from None
    errors = check_catalog_text(text, str(path))
    if errors:
        raise CatalogError(errors)
    document: dict[str, Any] = as_stored(yaml.safe_load(text))
    return document


def who_from_cli(keys_file: Path) -> str:
    """``cli:<admin key id>``: the home's admin key named as the ingress names a key (never
    the key); ``cli:unknown`` if the home has no keys file."""
    try:
        admin = str(json.loads(keys_file.read_text())["admin"])
    except (OSError, ValueError, KeyError):
        return "cli:unknown"
    return f"cli:{key_id(admin)}"


async def version_at_start(
    store: CatalogStore, given: Path | None, who: str
) -> tuple[StoredVersion, str | None]:
    """The version an instance starts serving, and what ``up`` did to the store (None: nothing).

    None stored: ``given`` (or the packaged catalog) is stored as version 1. Versions stored
    and ``given``: it is stored as a new version if its content differs from the latest. Then
    the latest version is served: a restart serves it, not the packaged catalog, not the file
    ``up`` was first given. Raises :class:`CatalogError` if ``given`` cannot be stored (invalid,
    or it changes a running experiment).
    """
    latest = await store.latest()
    if latest is not None and given is None:
        return latest, None
    path = given or DEFAULT_CATALOG
    document = read_document(path)
    try:
        result = await store.push(document, who, source=str(path))
    except CatalogInvalid as exc:
        raise CatalogError(exc.errors) from None
    if not result.changed:
        return result.stored, None
    stored = result.stored
    if result.previous is None:
        note = f"stored {path} as catalog version {stored.version}"
    else:
        note = (
            f"{path} differs from catalog version {result.previous.version}: stored it as version "
            f"{stored.version} ({stored.summary})"
        )
    log.info("%s", note)
    return stored, note
