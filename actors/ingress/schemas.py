"""The HTTP API's bodies, each defined once as a msgspec Struct, and the OpenAPI document
generated from them.

The same Struct validates a request (msgspec decodes and checks the raw bytes in C, which is
why ``/v1/decide`` can be answered before FastAPI's routing) and documents it: the document's
``components.schemas`` come from :func:`msgspec.json.schema_components`, with the few rules a
JSON Schema of the Struct cannot say by itself (exactly one of ``step`` or ``feature``, at least
one consent purpose) added to the component.

>>> decode(msgspec.json.Decoder(DecideBody), b'{"user_id": "u1"}').user_id
'u1'
>>> decode(msgspec.json.Decoder(DecideBody), b'{"user_id": ""}')
Traceback (most recent call last):
...
actors.ingress.errors.ApiError: the request body is not valid
>>> components()["ConsentBody"]["anyOf"][0]["required"]
['analytics']
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Union

import msgspec
from msgspec import Meta

from actors.ingress.errors import ApiError
from engine.decision import DecisionAnswer, TutorialAnswer
from engine.events import EVENT_CLASSES
from engine.schema import BUILTIN_SCHEMA, EventSchema
from headstart.adapters.catalog_store import VersionInfo
from headstart.web.auth import ROLES, Access
from headstart.web.identity import DEFAULT_ANONYMOUS_PREFIX

#: Events accepted in one ``/v1/events`` call.
MAX_EVENTS_PER_BATCH = 1000

# ---------------------------------------------------------------------- requests

UserId = Annotated[str, Meta(min_length=1, max_length=256, description="the caller's raw user id")]
ShortName = Annotated[str, Meta(max_length=64)]
UserHash = Annotated[
    str,
    Meta(
        pattern="^[0-9a-fA-F]{64}$",
        description="hex(HMAC-SHA256(identity secret, user_id)) from the product's backend: needed with a "
        "frontend key when identity verification is on (docs/identity.md)",
    ),
]
AnonymousId = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=256,
        description="the anonymous id (with the anonymous prefix) this visitor had before: linked to the "
        "batch's user, which needs that user's user_hash with a frontend key",
    ),
]


class RequestContext(msgspec.Struct, omit_defaults=True):
    """Where the request comes from; fields beyond these are ignored."""

    device_type: Annotated[str, Meta(max_length=64)] | None = None
    os: Annotated[str, Meta(max_length=64)] | None = None
    locale: Annotated[str, Meta(max_length=32)] | None = None
    country: Annotated[str, Meta(max_length=8)] | None = None
    referrer: Annotated[str, Meta(max_length=256)] | None = None
    app_version: Annotated[str, Meta(max_length=64)] | None = None
    timezone: (
        Annotated[
            str,
            Meta(
                max_length=64,
                description="the user's IANA time zone (Europe/Berlin): pacing's quiet hours and per-day "
                "caps are in it (UTC when missing or unknown)",
            ),
        ]
        | None
    ) = None


def request_bodies(schema: EventSchema = BUILTIN_SCHEMA) -> tuple[type[DecideBody], type[TutorialBody]]:
    """The decide and tutorial bodies whose ``context`` also takes the catalog's declared
    context fields, typed as declared (rules, templates and the policy read them).

    >>> from engine.schema import SchemaSection
    >>> section = SchemaSection.model_validate({"context": {"app_theme": {"type": "string"}}})
    >>> decide_body, _ = request_bodies(EventSchema(section))
    >>> body = b'{"user_id": "u", "context": {"app_theme": "dark", "os": "ios"}}'
    >>> msgspec.structs.asdict(msgspec.json.decode(body, type=decide_body).context)["app_theme"]
    'dark'
    """
    if not schema.context:
        return DecideBody, TutorialBody
    declared = [
        (f.name, f.type, None)
        for f in msgspec.structs.fields(schema.context_type)
        if f.name in schema.context
    ]
    context = msgspec.defstruct(
        "RequestContext", declared, bases=(RequestContext,), omit_defaults=True, module=__name__
    )
    field = msgspec.field(default_factory=context)
    decide = msgspec.defstruct(
        "DecideBody", [("context", context, field)], bases=(DecideBody,), module=__name__
    )
    tutorial = msgspec.defstruct(
        "TutorialBody", [("context", context, field)], bases=(TutorialBody,), module=__name__
    )
    return decide, tutorial  # type: ignore[return-value]


class DecideBody(msgspec.Struct, forbid_unknown_fields=True):
    """Who is deciding, and from where (``/v1/decide`` and ``/v1/flags``)."""

    user_id: UserId
    context: RequestContext = msgspec.field(default_factory=RequestContext)
    user_hash: UserHash | None = None


class TutorialBody(msgspec.Struct, forbid_unknown_fields=True):
    """The tutorial for a ``step`` or for a ``feature``: exactly one of the two."""

    user_id: UserId
    context: RequestContext = msgspec.field(default_factory=RequestContext)
    step: ShortName | None = None
    feature: ShortName | None = None
    user_hash: UserHash | None = None


class EventsBody(msgspec.Struct, forbid_unknown_fields=True):
    """A batch of events; each is validated by the engine's event model (an invalid one refuses
    the batch with its index), so the items are decoded as plain objects here."""

    events: Annotated[list[dict[str, Any]], Meta(min_length=1, max_length=MAX_EVENTS_PER_BATCH)]
    #: With a frontend key and identity verification on, a batch is one user's, signed by this.
    user_hash: UserHash | None = None
    anonymous_id: AnonymousId | None = None


class RewardBody(msgspec.Struct, forbid_unknown_fields=True):
    """An explicit reward for a decision."""

    decision_id: Annotated[str, Meta(min_length=1, max_length=64, description="from a /v1/decide answer")]
    reward: Annotated[float, Meta(ge=0.0, le=1.0, description="how well the decision worked, in [0, 1]")]


class ConsentBody(msgspec.Struct, forbid_unknown_fields=True):
    """Consent per purpose; a purpose left out (or null) keeps what was recorded."""

    analytics: Annotated[bool | None, Meta(description="keep the user's events and live state")] = None
    personalization: Annotated[bool | None, Meta(description="personalize decisions and learn from them")] = (
        None
    )
    user_hash: UserHash | None = None


class ScaleBody(msgspec.Struct, forbid_unknown_fields=True):
    """How many shards should own the partitions (at most the number of partitions)."""

    # A number, not an int: JSON Schema's integers include 20.0, and so does this API.
    shards: Annotated[float, Meta(ge=1, le=256, multiple_of=1)]


# ---------------------------------------------------------------------- answers


class EventsAccepted(msgspec.Struct):
    accepted: int
    duplicates: int


class RewardAccepted(msgspec.Struct):
    #: False when the decision made no learned choice (nothing to learn) or the same reward
    #: for it was already stored.
    accepted: bool
    detail: str


class ConsentAccepted(msgspec.Struct):
    accepted: bool
    detail: str


class CatalogVersion(VersionInfo, frozen=True, kw_only=True):
    """A stored version of the catalog (``GET /v1/catalog``: the latest; its number is also the
    answer's ``ETag``)."""

    #: The catalog itself: the structure of its YAML file, as it was stored.
    catalog: dict[str, Any]


class CatalogStored(msgspec.Struct, kw_only=True):
    """What ``PUT /v1/catalog`` did: the version now latest (with ``dry_run``: the version it
    would be; nothing is stored), what changed, and the change as a unified diff of the YAML."""

    version: int
    summary: str
    #: False when the catalog equals the latest version's (nothing stored) and for a dry run.
    changed: bool
    dry_run: bool = False
    diff: str = ""


class CatalogHistory(msgspec.Struct, kw_only=True):
    """Every stored version, oldest first, and the version the answering replica serves."""

    serving: int
    versions: list[VersionInfo]


class ErrorDetail(msgspec.Struct, omit_defaults=True):
    code: str
    message: str
    details: Any = None


class ErrorBody(msgspec.Struct):
    """Every 4xx and 5xx answer."""

    error: ErrorDetail


def decode(decoder: msgspec.json.Decoder[Any], body: bytes) -> Any:
    """``body`` decoded and validated, or a 400 :class:`ApiError` saying why."""
    try:
        return decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise ApiError(
            400, "invalid_request", "the request body is not valid", [{"problem": str(exc)}]
        ) from None
    except msgspec.DecodeError as exc:
        raise ApiError(
            400, "invalid_request", "the request body is not JSON", [{"problem": str(exc)}]
        ) from None


# ---------------------------------------------------------------------- the OpenAPI document

REF = "#/components/schemas/{name}"
BODIES: tuple[type[msgspec.Struct], ...] = (
    DecideBody,
    TutorialBody,
    EventsBody,
    RewardBody,
    ConsentBody,
    ScaleBody,
    DecisionAnswer,
    TutorialAnswer,
    EventsAccepted,
    RewardAccepted,
    ConsentAccepted,
    CatalogVersion,
    CatalogStored,
    CatalogHistory,
    ErrorBody,
)


def _only(present: str, absent: str) -> dict[str, Any]:
    return {"required": [present], "properties": {present: {"type": "string"}, absent: {"type": "null"}}}


#: What a body's JSON Schema cannot say from its Struct alone (the server refuses these with 400).
EXTRA_RULES: dict[str, dict[str, Any]] = {
    "TutorialBody": {"oneOf": [_only("step", "feature"), _only("feature", "step")]},
    # The route refuses other ids with its own code (invalid_decision_id), so the decoder
    # does not check the pattern. A learned decision's id is the user's key (26 base32
    # characters) and 16 hex digits; 32 hex digits name a decision without a learned choice.
    "RewardBody": {"properties": {"decision_id": {"pattern": "^([a-z2-7]{26}[0-9a-f]{16}|[0-9a-f]{32})$"}}},
    "ConsentBody": {
        "anyOf": [
            {"required": [purpose], "properties": {purpose: {"type": "boolean"}}}
            for purpose in ("analytics", "personalization")
        ]
    },
}


def event_components(schema: EventSchema = BUILTIN_SCHEMA) -> tuple[dict[str, Any], dict[str, Any]]:
    """The JSON Schema of one event of ``schema`` (built-in types and the catalog's own), and
    the components it refers to."""
    union: Any = Union[tuple(schema.classes.values())]  # noqa: UP007 - built from a runtime tuple
    (item,), parts = msgspec.json.schema_components([union], ref_template=REF)
    for cls in schema.classes.values():
        properties = parts[cls.__name__]["properties"]
        # The ingress takes the raw user id and pseudonymizes it (any length); the engine's
        # bound is on the key. The only schema version is 1 (others are refused).
        properties["user_id"] = {"type": "string", "minLength": 1, "description": "the raw user id"}
        properties["v"] = {"type": "integer", "enum": [1], "default": 1}
    declared = ", ".join(schema.custom_types) or "none"
    item["description"] = (
        f"One event. `type` is a built-in type ({', '.join(EVENT_CLASSES)}) or one the catalog's "
        f"`schema.events` declares (here: {declared}), with the props it declares; custom traits "
        "are props of `profile_updated`, custom context fields keys of `context`. Another type "
        "refuses the batch with 400 `invalid_events`, whose message lists the declared types."
    )
    return item, parts


def components(schema: EventSchema = BUILTIN_SCHEMA) -> dict[str, Any]:
    """The JSON Schemas of every body, and of the event model (``schema``'s) the batch's items
    must follow."""
    _, schemas = msgspec.json.schema_components(BODIES, ref_template=REF)
    for name, extra in EXTRA_RULES.items():
        for keyword, value in extra.items():
            if keyword == "properties":
                for field, rules in value.items():
                    schemas[name]["properties"][field].update(rules)
            else:
                schemas[name][keyword] = value
    item, events = event_components(schema)
    schemas.update(events)
    schemas["EventsBody"]["properties"]["events"]["items"] = item
    return schemas


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _ref(struct: type[msgspec.Struct]) -> dict[str, Any]:
    return {"$ref": REF.format(name=struct.__name__)}


#: Why each error status is answered.
ERRORS = {
    400: "the request is not valid (body, path or parameters)",
    401: "missing or unknown API key",
    403: "the key's role may not call this endpoint, or (identity verification) the request names a user "
    "without that user's valid user_hash",
    404: "not found",
    412: "the version named in If-Match is no longer the latest",
    413: "the body is over 1 MiB",
    415: "the body's Content-Type is not one the endpoint takes",
    422: "the body is well-formed but not valid (every problem in details)",
    428: "If-Match is missing",
    429: "the key is over its rate limit (see Retry-After)",
    503: "the event stream or a shard is unavailable",
}


def operation(
    *,
    ok: int = 200,
    answer: type[msgspec.Struct] | dict[str, Any] | None = None,
    body: type[msgspec.Struct] | None = None,
    errors: tuple[int, ...] = (),
    access: Access | None = None,
    basic: bool = False,
    media_type: str = "application/json",
) -> dict[str, Any]:
    """The ``openapi_extra`` of a route: its body, every status it answers with its schema, and
    the keys it takes (``x-roles``). A route with a key also answers 401 and 429, and 403 unless
    every role may call it and it names no user (``basic``: the key may come as HTTP Basic)."""
    answered = set(errors)
    if access is not None:
        refuses = access.names_user or len(access.roles) < len(ROLES)
        answered |= {401, 429} | ({403} if refuses else set())
    if body is not None:
        answered |= {400, 413}
    schema = _ref(answer) if isinstance(answer, type) else (answer or {})
    responses: dict[str, Any] = {
        str(ok): {"description": "OK", "content": {media_type: {"schema": schema}}},
    }
    for status in sorted(answered):
        responses[str(status)] = {"description": ERRORS[status], "content": _json(_ref(ErrorBody))}
        if status == 429:
            responses["429"]["headers"] = {"Retry-After": {"schema": {"type": "integer"}}}
    extra: dict[str, Any] = {"responses": responses}
    if body is not None:
        extra["requestBody"] = {"required": True, "content": _json(_ref(body))}
    if access is not None:
        extra["security"] = [{"basic": []}, {"bearer": []}] if basic else [{"bearer": []}]
        extra["x-roles"] = [role for role in ROLES if role in access.roles]
    return extra


SECURITY_SCHEMES = {
    "bearer": {"type": "http", "scheme": "bearer", "description": "an API key: Bearer <key>"},
    "basic": {
        "type": "http",
        "scheme": "basic",
        "description": "a frontend or server key as the user (Segment's write key)",
    },
}


def anonymous_pattern(prefix: str) -> str:
    """The JSON Schema pattern of ids with the anonymous ``prefix``.

    >>> import re
    >>> pattern = anonymous_pattern("anon-")
    >>> bool(re.match(pattern, "anon-7f3a")), bool(re.match(pattern, "ann"))
    (True, False)
    """
    return "^" + re.escape(prefix)


def finish_document(
    document: dict[str, Any], max_shards: int = 256, schema: EventSchema = BUILTIN_SCHEMA
) -> dict[str, Any]:
    """FastAPI's document with the bodies' components (events: ``schema``'s) and security
    schemes, and without its own 422 answers and validation schemas (the server answers 400,
    documented per route). ``anonymous_id`` must start with the anonymous prefix: said by a
    pattern here (:func:`anonymous_pattern`), not in the body's type, which is the same for every
    configuration."""
    for operations in document.get("paths", {}).values():
        for op in operations.values():
            responses = op.get("responses", {})
            # FastAPI's own (its validation errors are answered 400); a route's documented 422 stays.
            if "HTTPValidationError" in str(responses.get("422", {})):
                responses.pop("422")
    schemas = {
        name: schema
        for name, schema in document.get("components", {}).get("schemas", {}).items()
        if name not in ("HTTPValidationError", "ValidationError")
    }
    schemas.update(components(schema))
    schemas["ScaleBody"]["properties"]["shards"]["maximum"] = max_shards
    anonymous_id = schemas["EventsBody"]["properties"]["anonymous_id"]
    anonymous_id["pattern"] = anonymous_pattern(DEFAULT_ANONYMOUS_PREFIX)
    document["components"] = {**document.get("components", {}), "schemas": schemas}
    document["components"]["securitySchemes"] = SECURITY_SCHEMES
    return document
