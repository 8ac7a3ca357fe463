"""The ingress's FastAPI application: its middleware, error handlers and OpenAPI document.

The routes are methods of the :class:`~actors.ingress.routes.Ingress` deployment (and of the
mixins it is built from, such as :class:`~actors.ingress.catalog_routes.CatalogRoutes`), each
registered on this one ``app``; Serve turns them into the replica's class-based routes.
"""

# No ``from __future__ import annotations`` here: the exception handlers' annotations are read
# by Starlette at run time.
import copy
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from actors.ingress.cors import CrossOrigin
from actors.ingress.errors import ApiError, error_response
from actors.ingress.middleware import BodyLimit, HotPath
from actors.ingress.schemas import anonymous_pattern, event_components, finish_document
from engine.schema import BUILTIN_SCHEMA, EventSchema
from headstart import __version__
from headstart.web.identity import DEFAULT_ANONYMOUS_PREFIX

app = FastAPI(
    title="Headstart",
    version=__version__,
    description="Real-time personalization of user onboarding. Every endpoint but /healthz, /readyz "
    "and /v1/ruleset/key needs `Authorization: Bearer <key>`, this schema at /openapi.json included. "
    'Errors answer `{"error": {"code", "message", "details"}}`.',
    # Served by a route below that asks for a key; no interactive docs page (it cannot send one).
    openapi_url=None,
    docs_url=None,
    redoc_url=None,
)
app.add_middleware(BodyLimit)
app.add_middleware(HotPath)  # it answers /v1/decide before BodyLimit and the router
# Outermost: a preflight is answered before the fast path, and every answer gets its CORS headers.
app.add_middleware(CrossOrigin)


def openapi_document(
    max_shards: int = 256,
    schema: EventSchema = BUILTIN_SCHEMA,
    anonymous_prefix: str = DEFAULT_ANONYMOUS_PREFIX,
) -> dict[str, Any]:
    """The OpenAPI document: FastAPI's routes with the bodies' schemas (:func:`finish_document`),
    events as ``schema`` (the catalog's) validates them, anonymous ids with ``anonymous_prefix``."""
    if app.openapi_schema is None:
        document = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        app.openapi_schema = finish_document(document)
    if max_shards == 256 and schema.is_builtin and anonymous_prefix == DEFAULT_ANONYMOUS_PREFIX:
        return app.openapi_schema
    document = copy.deepcopy(app.openapi_schema)
    schemas = document["components"]["schemas"]
    if not schema.is_builtin:
        item, events = event_components(schema)
        schemas.update(events)
        schemas["EventsBody"]["properties"]["events"]["items"] = item
    schemas["ScaleBody"]["properties"]["shards"]["maximum"] = max_shards
    schemas["EventsBody"]["properties"]["anonymous_id"]["pattern"] = anonymous_pattern(anonymous_prefix)
    return document


app.openapi = openapi_document  # type: ignore[method-assign]


@app.exception_handler(ApiError)
async def _api_error(_: Request, exc: ApiError) -> Response:
    return error_response(exc.status, exc.code, exc.message, exc.details, exc.headers)


@app.exception_handler(RequestValidationError)
async def _validation_error(_: Request, exc: RequestValidationError) -> Response:
    details = [
        {"field": ".".join(str(p) for p in err["loc"] if p != "body") or "(body)", "problem": err["msg"]}
        for err in exc.errors()
    ]
    return error_response(400, "invalid_request", "the request body is not valid", details)


@app.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        # Starlette names only the first route that matched the path; a path with several
        # routes (GET and DELETE /v1/users/{id}) allows the methods of all of them.
        headers["Allow"] = ", ".join(sorted(allowed_methods(request)))
    return error_response(exc.status_code, "http_error", str(exc.detail), headers=headers or None)


def allowed_methods(request: Request) -> set[str]:
    """The methods of every route whose path matches the request's."""
    return _methods(request.app.router.routes, {**request.scope, "method": "GET"})


def _methods(routes: list[Any], scope: dict[str, Any]) -> set[str]:
    methods: set[str] = set()
    for route in routes:
        match, child = route.matches(scope)
        if match == Match.NONE:
            continue
        # Serve includes the class's routes as a router of their own (FastAPI's included router).
        included = getattr(getattr(route, "original_router", None), "routes", None)
        if included is not None or hasattr(route, "routes"):
            methods |= _methods(included or route.routes, {**scope, **child})
        else:
            methods |= getattr(route, "methods", None) or set()
    return methods
