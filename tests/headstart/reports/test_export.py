"""The warehouse export's profile tables with a catalog that declares its own events, traits
and context fields (the contract catalog): typed columns for the declared fields, custom event
counts and counts by value, PII left out; written as Parquet and read back. The whole export
from a running instance is tests/headstart/test_cli_integration.py's."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import polars as pl

from engine.catalog import load_catalog
from engine.decision import Decider
from engine.events import encode_event
from engine.learning import Learner
from engine.partition import PartitionSetup, PartitionState
from engine.queries import profile_sample, profiles_page
from engine.segments import SegmentIndex
from headstart.reports.export import SCHEMAS, profile_tables, table_schemas, write
from headstart.reports.segments import suggest_segments
from tests.catalogs import CUSTOM_SCHEMA

NOW = 1_767_600_000.0
CATALOG = load_catalog(CUSTOM_SCHEMA)


def boards_partition() -> PartitionState:
    """Two users of the contract's product, as the stream would bring them."""
    schema = CATALOG.event_schema
    part = PartitionState(0, PartitionSetup(segment_index=SegmentIndex(CATALOG), schema=schema))
    history = {
        "ada": [
            ("session_started", {"context": {"device_type": "desktop", "app_theme": "dark"}}),
            (
                "profile_updated",
                {"props": {"plan": "pro", "seats": 12, "industry": "saas", "phone": "+4930"}},
            ),
            ("created_board", {"props": {"template": "kanban"}}),
            ("created_board", {"props": {"template": "scrum"}}),
            ("connected_integration", {"props": {"integration": "slack"}}),
            ("connected_integration", {"props": {"integration": "slack"}}),
            ("connected_integration", {"props": {"integration": "github"}}),
        ],
        "bob": [("session_started", {"context": {"device_type": "mobile"}})],
    }
    seq = 0
    for key, events in history.items():
        for n, (kind, extra) in enumerate(events):
            seq += 1
            body = {"event_id": f"e{seq}", "user_id": key, "type": kind, "ts": NOW + 60 * n, **extra}
            part.apply_message(seq, key, encode_event(body))
    return part


def test_declared_fields_and_custom_events_are_exported_typed_and_without_pii(tmp_path: Path) -> None:
    part = boards_partition()
    decider = Decider(CATALOG)
    page = profiles_page(part, "", 10, NOW + 600, decider, Learner(CATALOG, decider))
    assert all("phone" not in row["traits"] for row in page.rows)  # PII leaves no shard
    ada = next(row for row in page.rows if row["user_key"] == "ada")
    assert ada["context"]["app_theme"] == "dark" and "app_theme" not in ada["traits"]
    assert {"board_maker", "slack_connected", "pro_plan", "dark_team"} <= set(ada["segments"])
    schemas = table_schemas(CATALOG.event_schema)
    # A JSON round trip, as the pages come over NATS.
    tables = profile_tables(json.loads(json.dumps(page.rows)), CATALOG.event_schema)
    written = write(tables, tmp_path, None, None, schemas)
    read = {name: pl.read_parquet(tmp_path / f"{name}.parquet") for name in schemas}
    for name, frame in read.items():
        assert dict(frame.schema) == schemas[name], name
    assert written == {name: frame.height for name, frame in read.items()}
    manifest = json.loads((tmp_path / "_manifest.json").read_text())
    assert manifest["tables"]["dim_demographics"]["seats"] == "Float64"

    demographics = read["dim_demographics"].sort("user_key").to_dicts()
    assert demographics[0] == {
        "user_key": "ada",
        "role": None,
        "company_size": None,
        "age_band": None,
        "plan": "pro",
        "seats": 12.0,
        "industry": "saas",
    }
    assert demographics[1]["plan"] is None and "phone" not in read["dim_demographics"].columns
    context = read["dim_context"].sort("user_key")
    assert context["app_theme"].to_list() == ["dark", None]
    custom = read["dim_custom_events"].sort("event_type").to_dicts()
    at = dt.datetime.fromtimestamp
    assert custom == [
        {
            "user_key": "ada",
            "event_type": "connected_integration",
            "count": 3,
            "first_seen": at(NOW + 240, dt.UTC),
            "last_seen": at(NOW + 360, dt.UTC),
        },
        {
            "user_key": "ada",
            "event_type": "created_board",
            "count": 2,
            "first_seen": at(NOW + 120, dt.UTC),
            "last_seen": at(NOW + 180, dt.UTC),
        },
    ]
    assert sorted(read["dim_custom_values"].select("value", "count").rows()) == [("github", 1), ("slack", 2)]
    assert set(read["dim_custom_values"]["prop"]) == {"integration"}


def test_a_catalog_declaring_nothing_exports_the_built_in_columns() -> None:
    assert table_schemas() == SCHEMAS
    assert set(SCHEMAS) >= {"dim_custom_events", "dim_custom_values"}  # written empty, always


def test_the_profile_sample_and_suggested_rules_read_declared_numbers_and_counts() -> None:
    part = boards_partition()
    sample = profile_sample({0: part}, 10, NOW + 600, shard=0)
    by_seats = sorted(sample.rows, key=lambda r: r["seats"] or 0)
    assert by_seats[1]["seats"] == 12.0 and by_seats[0]["seats"] is None
    assert (
        by_seats[1]['event_count("created_board")'] == 2 and by_seats[0]['event_count("created_board")'] == 0
    )
    rows = [{"session_count": 1.0, 'event_count("created_board")': float(n)} for n in (0, 0, 1, 0, 9, 8, 10)]
    groups = suggest_segments(rows, groups=2, schema=CATALOG.event_schema)
    rules = [g["rule"] for g in groups if g["rule"]]
    assert any('event_count("created_board")' in rule for rule in rules)
