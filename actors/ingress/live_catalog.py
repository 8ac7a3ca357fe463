"""The catalog an ingress replica serves, and how it follows the stored versions.

Everything the ingress derives from the catalog (the default flow's decider, the event schema,
the request bodies' decoders built from it, the Segment API's mapping, the signed ruleset, the
flags' descriptions) is one :class:`CatalogView`, built by :func:`build_view` from one version.
:class:`LiveCatalog` holds the view being served and replaces it by one assignment on the
replica's event loop; a request reads ``live.view`` once and uses that view throughout, so it
is answered from exactly one version, and a switch never waits for requests in flight.

Live (a stored version was given): on each connection to NATS the replica serves the store's
latest version if it is newer and follows the store (:meth:`CatalogStore.watch`). Static
(version 0, a catalog handed over directly): it serves what it was given until a version is
stored through it (``PUT /v1/catalog``), and follows the store from then on.

>>> from engine.catalog import DEFAULT_CATALOG, load_catalog
>>> view = build_view(load_catalog(DEFAULT_CATALOG), 3, signing_key(b"s" * 32))
>>> view.version, view.decider.catalog.product
(3, 'Relay')
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Any

import msgspec
from cryptography.hazmat.primitives.asymmetric import ec
from nats.js import JetStreamContext

from actors.ingress.schemas import request_bodies
from engine.catalog import Catalog
from engine.decision import Decider
from engine.experiments import Experiment
from engine.schema import EventSchema
from headstart.adapters.catalog_store import CatalogStore, StoredVersion, VersionInfo, Watch
from headstart.reports.experiments import versions_with_experiment
from headstart.web.ruleset import build_ruleset, sign_ruleset, signing_key
from headstart.web.segment_api import SegmentMapper

log = logging.getLogger(__name__)

#: How often a replica that could not reach the store tries again to follow it.
FOLLOW_RETRY_S = 1.0
#: Versions read at once when the history is first gathered (a replica reads each version once).
HISTORY_BATCH = 32


@dataclass(frozen=True, slots=True)
class CatalogView:
    """What the ingress serves from one version of the catalog (see the module's docstring)."""

    #: The stored version (0: a catalog handed over directly, not stored).
    version: int
    catalog: Catalog
    #: The default flow, when no shard answers.
    decider: Decider
    #: How events and context fields are validated at this edge.
    schema: EventSchema
    #: ``/v1/decide`` and ``/v1/flags`` bodies (their ``context`` takes the declared fields).
    decide_decoder: msgspec.json.Decoder[Any]
    tutorial_decoder: msgspec.json.Decoder[Any]
    segment_mapper: SegmentMapper
    #: ``GET /v1/ruleset``'s body, signed.
    ruleset: bytes
    flag_descriptions: dict[str, str]


def build_view(catalog: Catalog, version: int, signer: ec.EllipticCurvePrivateKey) -> CatalogView:
    """The view of ``catalog`` (stored as ``version``). Pure and self-contained: it may run in
    a thread while the event loop keeps serving the current view."""
    schema = catalog.event_schema
    decide_body, tutorial_body = request_bodies(schema)
    return CatalogView(
        version=version,
        catalog=catalog,
        decider=Decider(catalog, version),
        schema=schema,
        decide_decoder=msgspec.json.Decoder(decide_body),
        tutorial_decoder=msgspec.json.Decoder(tutorial_body),
        segment_mapper=SegmentMapper(catalog.segment_api, schema),
        ruleset=msgspec.json.encode(sign_ruleset(build_ruleset(catalog), signer)),
        flag_descriptions={flag.id: flag.description for flag in catalog.flags},
    )


class LiveCatalog:
    """One replica's served :class:`CatalogView`, the store it follows, and what it learned of
    the store's versions (history lines and experiment ids; versions never change once stored)."""

    def __init__(self, catalog: Catalog, version: int, secret: bytes, replicas: int = 1) -> None:
        self.signer = signing_key(secret)
        #: The view being served: the one reference every request reads, once.
        self.view = build_view(catalog, version, self.signer)
        self.replicas = replicas
        #: Follow the store (live); a static replica starts following once a version is stored.
        self.following = version > 0
        self._js: JetStreamContext | None = None
        self._store: CatalogStore | None = None
        self._watch: Watch | None = None
        self._retry: asyncio.Task[None] | None = None
        #: Per stored version: its history line, and its experiments (what reports need of it).
        self._known: dict[int, tuple[VersionInfo, list[Any]]] = {}
        #: Views being built, by version: a PUT's own switch and the watch share one build.
        self._building: dict[int, asyncio.Future[CatalogView]] = {}

    # ------------------------------------------------------------------ serving

    async def switch_to(self, stored: StoredVersion) -> bool:
        """Serve ``stored`` if it is newer than the view served (True: switched)."""
        if stored.version <= self.view.version:
            return False
        # Built off the loop (validation, decoders, signing take milliseconds) so decisions keep
        # being answered meanwhile; the switch itself is the assignment in :meth:`_swap`.
        building = self._building.get(stored.version)
        if building is None:
            building = self._building[stored.version] = asyncio.ensure_future(
                asyncio.to_thread(lambda: build_view(stored.catalog(), stored.version, self.signer))
            )
            building.add_done_callback(lambda _: self._building.pop(stored.version, None))
        view = await asyncio.shield(building)
        return self._swap(view)

    def _swap(self, view: CatalogView) -> bool:
        # Checked again here: a PUT's own switch and the watch may build the same version, or
        # finish out of order; the served version only ever grows.
        if view.version <= self.view.version:
            return False
        self.view = view
        log.info("serving catalog version %d", view.version)
        return True

    async def _on_version(self, stored: StoredVersion) -> None:
        await self.switch_to(stored)

    # ------------------------------------------------------------------ the store

    async def connected(self, js: JetStreamContext) -> None:
        """Called on each (re)connection to NATS: the store is read through ``js`` from now on,
        and a live replica serves the latest version and follows the store."""
        await self.stop()
        self._js, self._store = js, None
        if self.following:
            await self._follow_or_retry()

    async def store(self) -> CatalogStore:
        """The catalog store (its stream created if missing); needs :meth:`connected` first."""
        if self._store is None:
            if self._js is None:
                raise RuntimeError("not connected to NATS")
            self._store = await CatalogStore.open(self._js, self.replicas)
        return self._store

    async def stored(self, stored: StoredVersion) -> None:
        """A version this replica just stored: served at once (not when the watch reports it),
        and a static replica follows the store from now on."""
        try:
            await self.switch_to(stored)
        except Exception as exc:  # noqa: BLE001 - it is stored; the watch serves it
            log.warning("catalog version %d not served yet: %s", stored.version, exc)
        if not self.following:
            self.following = True
            await self._follow_or_retry()

    async def _follow_or_retry(self) -> None:
        try:
            await self._follow()
        except Exception as exc:  # noqa: BLE001 - the store may not be reachable yet
            log.warning("catalog store not followed yet (%s): retrying", exc)
            self._retry = asyncio.get_running_loop().create_task(self._follow_later())

    async def _follow(self) -> None:
        store = await self.store()
        # Watch first, then read the latest: a version stored in between is served either way.
        watch = await store.watch(after=self.view.version, on_version=self._on_version)
        try:
            latest = await store.latest()
            if latest is not None:
                await self.switch_to(latest)
        except BaseException:
            await watch.stop()
            raise
        self._watch = watch

    async def _follow_later(self) -> None:
        while True:
            await asyncio.sleep(FOLLOW_RETRY_S)
            try:
                await self._follow()
                return
            except Exception as exc:  # noqa: BLE001 - keep trying while the replica runs
                log.debug("catalog store still not followed: %s", exc)

    async def stop(self) -> None:
        """Stop following the store (the view served stays)."""
        if self._retry is not None:
            self._retry.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._retry
            self._retry = None
        if self._watch is not None:
            await self._watch.stop()
            self._watch = None

    # ------------------------------------------------------------------ what was stored

    async def history(self) -> list[VersionInfo]:
        """Every stored version, oldest first, without content."""
        return [info for info, _ in await self._versions()]

    async def versions_with_experiment(self, experiment_id: str) -> list[int]:
        """The stored versions the experiment ran under
        (:func:`headstart.reports.experiments.versions_with_experiment`)."""
        versions = [
            StoredVersion(document={"experiments": experiments}, **msgspec.structs.asdict(info))
            for info, experiments in await self._versions()
        ]
        return versions_with_experiment(versions, experiment_id)

    async def removed_experiment(self, experiment_id: str) -> Experiment | None:
        """The experiment as the last stored version that declared it (None: none did)."""
        versions = await self.versions_with_experiment(experiment_id)
        if not versions:
            return None
        stored = await (await self.store()).get(versions[-1])
        return next((e for e in stored.catalog().experiments if e.id == experiment_id), None)

    async def _versions(self) -> list[tuple[VersionInfo, list[Any]]]:
        store = await self.store()
        latest = await store.latest_number()
        if self._known and max(self._known) > latest:
            self._known.clear()  # the stream was created anew (tests reset it)
        missing = [n for n in range(1, latest + 1) if n not in self._known]
        for start in range(0, len(missing), HISTORY_BATCH):
            batch = missing[start : start + HISTORY_BATCH]
            for version in await asyncio.gather(*(store.get(n) for n in batch)):
                self._known[version.version] = (version.info(), version.document.get("experiments") or [])
        return [self._known[n] for n in range(1, latest + 1)]
