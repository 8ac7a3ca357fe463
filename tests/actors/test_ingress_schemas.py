"""The documented request bodies (pydantic, in OpenAPI) and the hot path's msgspec twins must
accept exactly the same fields."""

from __future__ import annotations

import msgspec
from pydantic import BaseModel

from actors.ingress import (
    DecideBody,
    RequestContext,
    TutorialBody,
    _ContextStruct,
    _DecideStruct,
    _TutorialStruct,
)


def fields(model: type[BaseModel]) -> dict[str, bool]:
    return {name: info.is_required() for name, info in model.model_fields.items()}


def struct_fields(struct: type[msgspec.Struct]) -> dict[str, bool]:
    info = msgspec.inspect.type_info(struct)
    assert isinstance(info, msgspec.inspect.StructType)
    return {f.name: f.required for f in info.fields}


def test_documented_bodies_and_hot_path_bodies_match() -> None:
    assert fields(DecideBody) == struct_fields(_DecideStruct)
    assert fields(TutorialBody) == struct_fields(_TutorialStruct)
    assert fields(RequestContext) == struct_fields(_ContextStruct)


def test_both_refuse_unknown_fields_and_bound_user_ids() -> None:
    decoder = msgspec.json.Decoder(_DecideStruct)
    for bad in (
        b'{"user_id": "x", "surprise": 1}',
        b'{"user_id": ""}',
        b'{"user_id": "' + b"x" * 300 + b'"}',
    ):
        try:
            decoder.decode(bad)
        except msgspec.ValidationError:
            pass
        else:
            raise AssertionError(bad)
    assert (
        decoder.decode(b'{"user_id": "x", "context": {"device_type": "mobile", "screen": "4k"}}').user_id
        == "x"
    )
