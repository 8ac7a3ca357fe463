"""The live catalog over HTTP (admin key): the latest version, storing a new one, the history.

``GET /v1/catalog`` answers the latest stored version with ``ETag: "N"``; ``PUT /v1/catalog``
stores a new version if ``If-Match`` names the latest one (a compare-and-set in the store:
of two PUTs naming the same version, one is stored and the other answered 412), validated
first (422 with the messages of ``check-config``, nothing stored). The replica that stored it
serves it before it answers; the others switch when their watch reports it (milliseconds).

>>> if_match_version('"7"'), if_match_version('W/"7"'), if_match_version("7")
(7, 7, 7)
>>> catalog_body(b"version: 1\\nproduct: Relay\\n", "application/yaml; charset=utf-8")
{'version': 1, 'product': 'Relay'}
>>> catalog_body(b"{}", "text/plain")
Traceback (most recent call last):
...
actors.ingress.errors.ApiError: send the catalog as application/json or application/yaml
"""

# No ``from __future__ import annotations`` here: Serve's class-based routes need the routes'
# annotations as objects (see actors/ingress/routes.py).
import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterator
from typing import Annotated, Any

import msgspec
import yaml
from fastapi import Header, Path, Query, Request
from fastapi.responses import Response
from nats.aio.client import Client as NATS

from actors.ingress.application import app
from actors.ingress.errors import ApiError, error_response
from actors.ingress.live_catalog import LiveCatalog
from actors.ingress.schemas import CatalogHistory, CatalogStored, CatalogVersion, operation
from engine.catalog_changes import as_stored, diff
from headstart.adapters.catalog_store import (
    CatalogInvalid,
    CatalogStore,
    StoredVersion,
    VersionConflict,
    VersionNotFound,
)
from headstart.adapters.rpc import ShardClient
from headstart.web.auth import ADMIN, Access, Caller

JSON_TYPES = ("application/json",)
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
YAML_TYPES = ("application/yaml", "application/x-yaml", "text/yaml")
#: Where the catalog store names a change refused because an experiment runs.
RUNNING_EXPERIMENT = "while it runs"
#: Version numbers are JetStream sequences (unsigned 64 bits); longer ones are not versions.
MAX_VERSION_DIGITS = 20

IF_MATCH_HELP = (
    'PUT /v1/catalog needs If-Match: "N", N the version it replaces (the ETag of GET /v1/catalog; '
    '"0" when no version is stored yet)'
)

_encoder = msgspec.json.Encoder()


def if_match_version(value: str | None) -> int:
    """The version an ``If-Match`` header names (``"N"``, ``W/"N"`` or ``N``)."""
    if value is None:
        raise ApiError(428, "precondition_required", IF_MATCH_HELP)
    tag = value.strip().removeprefix("W/").strip('"')
    if not (tag.isascii() and tag.isdigit() and len(tag) <= MAX_VERSION_DIGITS):
        raise ApiError(400, "invalid_request", f"If-Match names no version ({value[:40]!r}): {IF_MATCH_HELP}")
    return int(tag)


def catalog_body(raw: bytes, content_type: str | None) -> Any:
    """The catalog structure of a PUT body, JSON or YAML by its ``Content-Type`` (400: not
    parsable; 415: another type)."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media in JSON_TYPES:
        try:
            return msgspec.json.decode(raw)
        except msgspec.DecodeError as exc:
            raise ApiError(400, "invalid_request", "the body is not JSON", [{"problem": str(exc)}]) from None
    if media not in YAML_TYPES:
        raise ApiError(
            415, "unsupported_media_type", "send the catalog as application/json or application/yaml"
        )
    try:
        data = yaml.load(raw, Loader=_YAML_LOADER)  # libyaml's: several times the pure-Python one
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = f"{where}{getattr(exc, 'problem', None) or exc}"
        raise ApiError(400, "invalid_request", "the body is not valid YAML", [{"problem": problem}]) from None
    try:
        # As a JSON body would carry it (timestamps YAML reads as datetimes become ISO strings):
        # what is stored is JSON, and the same catalog sent either way is the same version.
        return as_stored(data)
    except TypeError as exc:
        raise ApiError(
            400, "invalid_request", "the YAML has values JSON cannot hold", [{"problem": str(exc)}]
        ) from None


def query_flag(value: str | None, name: str) -> bool:
    """A ``?name=true`` query parameter (``true``/``1``, ``false``/``0``, absent: false)."""
    if value is None or value.lower() in ("false", "0"):
        return False
    if value.lower() in ("true", "1"):
        return True
    raise ApiError(400, "invalid_request", f"?{name}= takes true or false, not {value[:20]!r}")


@contextlib.contextmanager
def store_answers() -> Iterator[None]:
    """The store's failures to answer (NATS down, a timeout) as 503: the caller may retry."""
    try:
        yield
    except (ApiError, CatalogInvalid, VersionConflict, VersionNotFound):
        raise
    except Exception as exc:
        raise ApiError(503, "unavailable", f"the catalog store did not answer: {type(exc).__name__}") from exc


def etag(version: int) -> dict[str, str]:
    return {"ETag": f'"{version}"'}


def version_answer(stored: StoredVersion) -> bytes:
    body = CatalogVersion(catalog=stored.document, **msgspec.structs.asdict(stored.info()))
    return _encoder.encode(body)


def _json(body: bytes, headers: dict[str, str] | None = None) -> Response:
    return Response(body, media_type="application/json", headers=headers)


ETAG_HEADER = {"ETag": {"description": 'the version, quoted ("N")', "schema": {"type": "string"}}}
CATALOG_SCHEMA = {"type": "object", "description": "the catalog: the structure of its YAML file"}


def _with_etag(doc: dict[str, Any]) -> dict[str, Any]:
    doc["responses"]["200"]["headers"] = ETAG_HEADER
    return doc


def _put_doc() -> dict[str, Any]:
    doc = _with_etag(
        operation(answer=CatalogStored, errors=(400, 412, 413, 415, 422, 428, 503), access=ADMIN)
    )
    doc["requestBody"] = {
        "required": True,
        "content": {media: {"schema": CATALOG_SCHEMA} for media in (*JSON_TYPES, *YAML_TYPES)},
    }
    return doc


IfMatch = Annotated[
    str | None,
    Header(
        alias="If-Match",
        description='the version this one replaces, as the ETag of GET /v1/catalog ("N"; "0": none yet)',
    ),
]
Force = Annotated[
    str | None,
    Query(description="store a change to a running experiment's arms, salt, traffic or layer (audited)"),
]
DryRun = Annotated[str | None, Query(description="validate and answer what would be stored; store nothing")]


class CatalogRoutes:
    """The ``/v1/catalog`` routes, mixed into the ingress deployment (routes of its own class:
    Serve finds them through the deployment's bases)."""

    live: LiveCatalog
    _require: Callable[[str | None, Access], Caller]
    _client: Callable[[], Awaitable[tuple[NATS, ShardClient]]]

    async def _catalog_store(self) -> CatalogStore:
        with store_answers():
            await self._client()  # connected: the store is read through the replica's connection
            return await self.live.store()

    @app.get(
        "/v1/catalog",
        openapi_extra=_with_etag(operation(answer=CatalogVersion, errors=(404, 503), access=ADMIN)),
    )
    async def get_catalog(self, request: Request) -> Response:
        """The latest stored version of the catalog, ``{"version": N, "catalog": {...}}`` with who
        stored it, when and what changed; ``ETag: "N"`` (what ``PUT`` names in ``If-Match``)."""
        self._require(request.headers.get("authorization"), ADMIN)
        store = await self._catalog_store()
        with store_answers():
            latest = await store.latest()
        if latest is None:
            raise ApiError(
                404,
                "not_found",
                'no catalog version is stored yet: PUT /v1/catalog with If-Match: "0" stores the first',
            )
        return _json(version_answer(latest), etag(latest.version))

    @app.put("/v1/catalog", openapi_extra=_put_doc())
    async def put_catalog(
        self, request: Request, if_match: IfMatch = None, force: Force = None, dry_run: DryRun = None
    ) -> Response:
        """Store a new version of the catalog (``application/json`` or ``application/yaml``: the
        structure of the YAML file). ``If-Match: "N"`` must name the latest version (412 if
        another was stored meanwhile; 428 without it). Validated first: 422 with every problem
        (the messages of ``check-config``, and changes to a running experiment, stored only with
        ``?force=true``), nothing stored. ``?dry_run=true`` stores nothing. The same catalog as
        the latest version stores nothing (``changed: false``). Every replica and shard serves
        a stored version within a second; this replica before it answers."""
        who = self._require(request.headers.get("authorization"), ADMIN).who
        expected = if_match_version(if_match)
        is_forced, is_dry_run = query_flag(force, "force"), query_flag(dry_run, "dry_run")
        document = catalog_body(await request.body(), request.headers.get("content-type"))
        store = await self._catalog_store()
        try:
            with store_answers():
                result = await store.push(document, who, expected, force=is_forced, dry_run=is_dry_run)
        except VersionConflict as exc:
            message = (
                f"the latest catalog version is {exc.latest}, not {exc.expected}: "
                "another version was stored meanwhile"
            )
            return error_response(412, "version_conflict", message, {"latest": exc.latest}, etag(exc.latest))
        except CatalogInvalid as exc:
            message = f"the catalog was not stored: {len(exc.errors)} problem(s)"
            if any(RUNNING_EXPERIMENT in e for e in exc.errors):
                message += "; a change to a running experiment is stored only with ?force=true"
            raise ApiError(422, "invalid_catalog", message, exc.errors) from None
        previous = result.previous
        latest = previous.version if previous is not None else 0
        if result.dry_run:
            differs = result.stored.version == 0  # the same content answers the latest version
            answer = CatalogStored(
                version=latest + 1 if differs else latest,
                summary=result.stored.summary if differs else "no change",
                changed=False,
                dry_run=True,
                diff=await asyncio.to_thread(
                    diff, previous.document if previous else None, document, f"version {latest}", "new"
                ),
            )
            return _json(_encoder.encode(answer), etag(latest))
        stored = result.stored
        await self.live.stored(stored)  # served here before the answer (a no-op if already)
        answer = CatalogStored(
            version=stored.version,
            summary=stored.summary if result.changed else "no change",
            changed=result.changed,
            # Milliseconds of Python (YAML and difflib): in a thread, not on the replica's loop.
            diff=await asyncio.to_thread(
                diff,
                previous.document if previous else None,
                stored.document,
                f"version {latest}",
                f"version {stored.version}",
            )
            if result.changed
            else "",
        )
        return _json(_encoder.encode(answer), etag(stored.version))

    @app.get(
        "/v1/catalog/history", openapi_extra=operation(answer=CatalogHistory, errors=(503,), access=ADMIN)
    )
    async def catalog_history(self, request: Request) -> Response:
        """Every stored version, oldest first: ``version``, ``who`` (the key's id, never the
        key), ``at``, ``summary``, ``rollback_of``, ``forced``; and the version this replica
        serves (``serving``; 0: a catalog it was handed directly, not stored)."""
        self._require(request.headers.get("authorization"), ADMIN)
        await self._catalog_store()
        serving = self.live.view.version  # read before the history: it never names a later one
        with store_answers():
            versions = await self.live.history()
        history = CatalogHistory(serving=serving, versions=versions)
        return _json(_encoder.encode(history))

    @app.get(
        "/v1/catalog/versions/{n}",
        openapi_extra=_with_etag(operation(answer=CatalogVersion, errors=(400, 404, 503), access=ADMIN)),
    )
    async def catalog_version(
        self, n: Annotated[int, Path(description="the version number")], request: Request
    ) -> Response:
        """One stored version, as ``GET /v1/catalog`` answers the latest (404 if there is none)."""
        self._require(request.headers.get("authorization"), ADMIN)
        store = await self._catalog_store()
        if not 1 <= n <= 2**63:
            raise ApiError(404, "not_found", f"no catalog version {n}: versions are 1, 2, ...")
        try:
            with store_answers():
                stored = await store.get(n)
        except VersionNotFound as exc:
            raise ApiError(404, "not_found", str(exc)) from None
        return _json(version_answer(stored), etag(stored.version))
