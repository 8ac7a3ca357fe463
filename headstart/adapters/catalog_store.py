"""The live catalog: every version stored in JetStream, numbered, immutable, with who and why.

Versions are the messages of the stream ``HS_CATALOG`` (subject ``hs.catalog.versions``); a
version's number is its stream sequence. The stream refuses deletes and purges, so numbers
never skip and a stored version never changes. Storing is a compare-and-set on the stream's
last sequence (``Nats-Expected-Last-Sequence``): a push that names version N as the one it
replaces fails with :class:`VersionConflict` if N is no longer the latest, which is what
``PUT /v1/catalog`` answers with 412.

Every stored version is validated first (the messages of ``check-config``), and audited on
``hs.audit.catalog`` (who: the key's id, never the key).

Example::

    store = await CatalogStore.open(js)
    latest = await store.latest()
    result = await store.push(document, who="admin:3f2a...", expected=latest.version if latest else 0)
    watch = await store.watch(after=result.version, on_version=serve)   # every newer version
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError
from pydantic import ValidationError

from engine.catalog import Catalog, parse_catalog_document
from engine.catalog_changes import as_stored, experiment_conflicts, fingerprint, summarize
from headstart.adapters.audit import audit
from headstart.adapters.topology import CATALOG_STREAM, CATALOG_SUBJECT
from headstart.adapters.versioned import SequenceConflict, Watch, append_expecting, watch_latest

__all__ = [
    "CatalogInvalid",
    "CatalogStore",
    "PushResult",
    "StoredVersion",
    "VersionConflict",
    "VersionInfo",
    "VersionNotFound",
    "Watch",
    "catalog_stream_config",
]

log = logging.getLogger(__name__)


class VersionInfo(msgspec.Struct, frozen=True, kw_only=True):
    """A stored version without its content: one line of ``catalog history``."""

    #: 1, 2, ...: the stream sequence it was stored at (0: not stored, a dry run's).
    version: int
    #: Who stored it: ``<role>:<key id>`` or ``cli:<key id>`` (never key material).
    who: str
    #: When (Unix seconds).
    at: float
    #: What changed from the version before (:func:`engine.catalog_changes.summarize`).
    summary: str
    fingerprint: str
    #: For a rollback: the version whose content this one repeats.
    rollback_of: int | None = None
    #: Stored over refused experiment changes (``--force``).
    forced: bool = False


class StoredVersion(VersionInfo, frozen=True, kw_only=True):
    """One stored version of the catalog (the stream message's body, its number the sequence)."""

    #: The catalog as its YAML/JSON structure (see :mod:`engine.catalog_changes`).
    document: dict[str, Any]

    def catalog(self) -> Catalog:
        """The catalog. Every stored version passed every check of ``check-config`` when it
        was stored; read back, only the model's own checks run (a tenth of the time: every
        shard and replica reads each version while it serves). ValueError if it does not pass
        them (stored by another Headstart version)."""
        try:
            return Catalog.model_validate(self.document)
        except ValidationError as exc:
            raise ValueError(f"catalog version {self.version}: {exc}") from None

    def info(self) -> VersionInfo:
        """The version without its content."""
        return VersionInfo(**{name: getattr(self, name) for name in VersionInfo.__struct_fields__})


class PushResult(msgspec.Struct, frozen=True, kw_only=True):
    """What a push did: the version stored (or that would be, for a dry run) and its change."""

    stored: StoredVersion
    #: The version it replaced (None: the first).
    previous: StoredVersion | None
    #: False for a dry run, and when the content equals the latest version's (nothing stored).
    changed: bool
    dry_run: bool = False


class CatalogInvalid(ValueError):
    """A catalog that cannot be stored: every problem, each as 'source: place: why'."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


class VersionConflict(RuntimeError):
    """Another version was stored since the one a push named (``latest``: the newest now)."""

    def __init__(self, expected: int, latest: int) -> None:
        super().__init__(
            f"the catalog is at version {latest}, not {expected}: another version was stored meanwhile"
        )
        self.expected = expected
        self.latest = latest


class VersionNotFound(LookupError):
    """No stored version with that number."""


_version_decoder = msgspec.json.Decoder(StoredVersion)
_encoder = msgspec.json.Encoder()


def catalog_stream_config(replicas: int = 1) -> StreamConfig:
    return StreamConfig(
        name=CATALOG_STREAM,
        description="Headstart: every version of the catalog (sequence = version)",
        subjects=[CATALOG_SUBJECT],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        discard=DiscardPolicy.NEW,
        # Immutable history: no version is ever removed, so numbers never skip.
        deny_delete=True,
        deny_purge=True,
        num_replicas=replicas,
    )


class CatalogStore:
    """The stored versions of the catalog (see the module's docstring)."""

    def __init__(self, js: JetStreamContext, replicas: int = 1) -> None:
        self.js = js
        self.replicas = replicas

    @classmethod
    async def open(cls, js: JetStreamContext, replicas: int = 1) -> CatalogStore:
        """The store, its stream created if missing."""
        try:
            await js.stream_info(CATALOG_STREAM)
        except NotFoundError:
            await js.add_stream(catalog_stream_config(replicas))
        return cls(js, replicas)

    # ------------------------------------------------------------------ reading

    async def latest_number(self) -> int:
        """The latest version's number (0: none stored)."""
        info = await self.js.stream_info(CATALOG_STREAM)
        return int(info.state.last_seq or 0)

    async def latest(self) -> StoredVersion | None:
        """The latest version (None: none stored yet)."""
        try:
            msg = await self.js.get_last_msg(CATALOG_STREAM, CATALOG_SUBJECT)
        except NotFoundError:
            return None
        assert msg.seq is not None and msg.data is not None
        return _decode(msg.seq, msg.data)

    async def get(self, version: int) -> StoredVersion:
        """Version ``version``; :class:`VersionNotFound` if there is none."""
        if version < 1:
            raise VersionNotFound(f"no catalog version {version}: versions start at 1")
        try:
            msg = await self.js.get_msg(CATALOG_STREAM, version)
        except NotFoundError:
            raise VersionNotFound(f"no catalog version {version}") from None
        assert msg.data is not None
        return _decode(version, msg.data)

    async def history(self) -> list[VersionInfo]:
        """Every version, oldest first, without content."""
        latest = await self.latest_number()
        return [(await self.get(n)).info() for n in range(1, latest + 1)]

    # ------------------------------------------------------------------ storing

    async def push(
        self,
        document: dict[str, Any],
        who: str,
        expected: int | None = None,
        *,
        force: bool = False,
        dry_run: bool = False,
        rollback_of: int | None = None,
        source: str = "catalog",
    ) -> PushResult:
        """Validate ``document`` and store it as the next version.

        ``expected``: the version it replaces (None: whatever is latest now; the store still
        refuses a version stored between that read and this write). Raises
        :class:`CatalogInvalid` with every problem, :class:`CatalogInvalid` too for a change to
        a running experiment unless ``force``, :class:`VersionConflict` if ``expected`` is not
        the latest. A document equal to the latest version's is not stored again
        (``changed`` False). Nothing is stored with ``dry_run``.
        """
        # As JSON would carry it (a YAML file's dates become ISO strings), so the same content
        # has the same fingerprint whether pushed from a file or over HTTP.
        try:
            document = as_stored(document)
        except TypeError as exc:
            raise CatalogInvalid([f"{source}: (top level): not representable as JSON: {exc}"]) from None
        # Validation is milliseconds of Python: in a thread, so an ingress replica's event loop
        # keeps answering decisions meanwhile.
        catalog, errors = await asyncio.to_thread(parse_catalog_document, document, source)
        if catalog is None or errors:
            raise CatalogInvalid(errors)
        previous = await self.latest()
        latest = previous.version if previous is not None else 0
        if expected is not None and expected != latest:
            raise VersionConflict(expected, latest)
        served = await asyncio.to_thread(previous.catalog) if previous is not None else None
        conflicts = experiment_conflicts(served, catalog, time.time())
        if conflicts and not force:
            raise CatalogInvalid([f"{source}: {problem}" for problem in conflicts])
        stored = StoredVersion(
            version=0,
            document=document,
            who=who,
            at=time.time(),
            summary=summarize(previous.document if previous else None, document),
            fingerprint=fingerprint(document),
            rollback_of=rollback_of,
            forced=bool(conflicts),
        )
        if previous is not None and previous.fingerprint == stored.fingerprint:
            return PushResult(stored=previous, previous=previous, changed=False, dry_run=dry_run)
        if dry_run:
            return PushResult(stored=stored, previous=previous, changed=False, dry_run=True)
        version = await self._append(stored, latest)
        stored = msgspec.structs.replace(stored, version=version)
        await audit(
            self.js,
            "catalog",
            who=who,
            msg_id=f"audit-catalog:{version}",
            version=version,
            summary=stored.summary,
            fingerprint=stored.fingerprint,
            rollback_of=rollback_of,
            forced=stored.forced,
        )
        return PushResult(stored=stored, previous=previous, changed=True)

    async def rollback(
        self, version: int, who: str, expected: int | None = None, force: bool = False
    ) -> PushResult:
        """Store version ``version``'s content as a new version."""
        old = await self.get(version)
        return await self.push(
            old.document, who, expected, force=force, rollback_of=version, source=f"version {version}"
        )

    async def _append(self, stored: StoredVersion, latest: int) -> int:
        try:
            return await append_expecting(
                self.js, CATALOG_STREAM, CATALOG_SUBJECT, _encoder.encode(stored), latest
            )
        except SequenceConflict:
            now = await self.latest()
            # Our own write, whose ack was lost and which the client sent again: stored once.
            if now is not None and now.version == latest + 1 and now.fingerprint == stored.fingerprint:
                return now.version
            raise VersionConflict(latest, now.version if now is not None else 0) from None

    # ------------------------------------------------------------------ following

    async def watch(
        self,
        after: int,
        on_version: Callable[[StoredVersion], Awaitable[None]],
        poll_s: float = 5.0,
    ) -> Watch:
        """Call ``on_version`` with the newest version whenever one newer than ``after`` (or than
        the last one given) is stored; versions stored in a burst may be skipped to the last.

        An ordered push consumer delivers each new version within milliseconds; a poll of the
        stream every ``poll_s`` seconds catches anything a reconnect lost. A failing callback is
        logged and tried again with the next delivery or poll.
        """

        async def serve_latest() -> int:
            version = await self.latest()
            assert version is not None
            await on_version(version)
            return version.version

        return await watch_latest(
            self.js,
            CATALOG_STREAM,
            CATALOG_SUBJECT,
            after,
            self.latest_number,
            serve_latest,
            poll_s=poll_s,
            what="catalog",
        )


def _decode(version: int, data: bytes) -> StoredVersion:
    return msgspec.structs.replace(_version_decoder.decode(data), version=version)
