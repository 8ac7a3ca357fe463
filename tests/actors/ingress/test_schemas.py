"""Each request body is defined once (a msgspec Struct): the decoder the routes use and the
OpenAPI document are generated from it, and the document says what the decoder and the routes
refuse."""

from __future__ import annotations

from typing import Any

import jsonschema
import msgspec
import pytest

from actors.ingress import app
from actors.ingress.schemas import BODIES, ConsentBody, DecideBody, EventsBody, RewardBody, TutorialBody

DOCUMENT = app.openapi()
SCHEMAS = DOCUMENT["components"]["schemas"]


def valid(name: str, body: Any) -> bool:
    """``body`` against the document's schema of ``name`` (its references resolved in it)."""
    schema = {**SCHEMAS[name], "components": DOCUMENT["components"]}
    try:
        jsonschema.validate(body, schema)
    except jsonschema.ValidationError:
        return False
    return True


def test_every_body_in_the_document_is_its_structs_schema() -> None:
    _, generated = msgspec.json.schema_components(BODIES, ref_template="#/components/schemas/{name}")
    for name, schema in generated.items():
        assert set(SCHEMAS[name]["properties"]) == set(schema["properties"]), name
        assert SCHEMAS[name].get("required") == schema.get("required"), name
    requests = {
        op["requestBody"]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
        for ops in DOCUMENT["paths"].values()
        for op in ops.values()
        if "requestBody" in op and "$ref" in op["requestBody"]["content"]["application/json"]["schema"]
    }
    assert requests == {"DecideBody", "TutorialBody", "EventsBody", "RewardBody", "ConsentBody", "ScaleBody"}


def test_the_decoder_refuses_unknown_fields_and_bounds_user_ids() -> None:
    decoder = msgspec.json.Decoder(DecideBody)
    for bad in (
        b'{"user_id": "x", "surprise": 1}',
        b'{"user_id": ""}',
        b'{"user_id": "' + b"x" * 300 + b'"}',
    ):
        with pytest.raises(msgspec.ValidationError):
            decoder.decode(bad)
        assert not valid("DecideBody", msgspec.json.decode(bad))
    ok = b'{"user_id": "x", "context": {"device_type": "mobile", "screen": "4k"}}'
    assert decoder.decode(ok).user_id == "x" and valid("DecideBody", msgspec.json.decode(ok))


@pytest.mark.parametrize(
    ("name", "body", "accepted"),
    [
        ("TutorialBody", {"user_id": "u", "step": "a"}, True),
        ("TutorialBody", {"user_id": "u", "step": None, "feature": "f"}, True),
        ("TutorialBody", {"user_id": "u", "step": "a", "feature": "f"}, False),
        ("TutorialBody", {"user_id": "u"}, False),
        ("ConsentBody", {"analytics": False}, True),
        ("ConsentBody", {"analytics": None, "personalization": True}, True),
        ("ConsentBody", {}, False),
        ("ConsentBody", {"analytics": None}, False),
        ("RewardBody", {"decision_id": "a" * 26 + "0" * 16, "reward": 1}, True),
        ("RewardBody", {"decision_id": "0" * 32, "reward": 0.5}, True),
        ("RewardBody", {"decision_id": "nope", "reward": 0.5}, False),
        ("EventsBody", {"events": [{}]}, False),
        ("EventsBody", {"events": [{"event_id": "e", "user_id": "u", "type": "warp", "ts": 1}]}, False),
        (
            "EventsBody",
            {"events": [{"event_id": "e", "user_id": "u" * 300, "type": "session_started", "ts": 1}]},
            True,
        ),
        (
            "EventsBody",
            {"events": [{"event_id": "e", "user_id": "u", "type": "step_viewed", "ts": 1}]},
            False,
        ),
        (
            "EventsBody",
            {"events": [{"event_id": "e", "user_id": "u", "type": "session_started", "ts": 1, "v": 2}]},
            False,
        ),
    ],
)
def test_the_document_says_what_the_routes_refuse(name: str, body: Any, accepted: bool) -> None:
    """The rules the routes check beyond the decoder (exactly one of step or feature, a consent
    purpose, a decision id's shape, the event model) are in the document too."""
    assert valid(name, body) is accepted


def test_the_structs_decode_what_the_document_allows() -> None:
    for struct, body in (
        (TutorialBody, {"user_id": "u", "feature": "f"}),
        (ConsentBody, {"personalization": True}),
        (RewardBody, {"decision_id": "0" * 32, "reward": 1}),
        (EventsBody, {"events": [{"anything": 1}]}),
    ):
        msgspec.convert(body, struct)


def test_the_document_of_a_catalog_with_a_schema_has_its_declared_types() -> None:
    from actors.ingress.routes import openapi_document
    from engine.catalog import load_catalog
    from tests.catalogs import CUSTOM_SCHEMA

    document = openapi_document(8, load_catalog(CUSTOM_SCHEMA).event_schema)
    schemas = document["components"]["schemas"]
    items = schemas["EventsBody"]["properties"]["events"]["items"]
    assert "here: created_board, connected_integration" in items["description"]
    assert schemas["ScaleBody"]["properties"]["shards"]["maximum"] == 8

    def ok(event: dict[str, Any]) -> bool:
        try:
            jsonschema.validate(
                {"events": [event]}, {**schemas["EventsBody"], "components": document["components"]}
            )
        except jsonschema.ValidationError:
            return False
        return True

    board = {
        "event_id": "e",
        "user_id": "u",
        "type": "created_board",
        "ts": 1,
        "props": {"template": "kanban"},
    }
    assert ok(board) and ok({**board, "context": {"app_theme": "dark"}})
    assert not ok({**board, "props": {"template": "gantt"}}) and not ok({**board, "type": "created_bord"})
    assert ok({"event_id": "e", "user_id": "u", "type": "profile_updated", "ts": 1, "props": {"seats": 3}})
    # The default document is left as it was: built-in types only.
    assert "here: none" in SCHEMAS["EventsBody"]["properties"]["events"]["items"]["description"]
    assert "created_board" not in SCHEMAS
