"""The custom-schema drain of ``bench ingest``: its catalog (bench/catalogs/custom_schema.yaml
laid over the drain's plain catalog) is valid and declares what the issue asks, and its events
are valid under it, half of them custom."""

from __future__ import annotations

import collections
from pathlib import Path

import pytest

from bench import ingest
from bench.ingest import CUSTOM_SCHEMA, bench_catalogs
from bench.population import CUSTOM_MIX, custom_schema_events, onboarding_events
from engine.catalog import Catalog, CatalogError
from engine.keys import Pseudonymizer
from engine.partition import PartitionSetup
from engine.schema import EventSchema
from engine.shard import ShardState


@pytest.fixture(scope="module")
def catalogs() -> dict[str, Catalog]:
    return bench_catalogs()


def test_the_catalog_declares_what_the_issue_asks(catalogs: dict[str, Catalog]) -> None:
    catalog = catalogs["custom_schema"]
    schema = catalog.schema_
    assert len(schema.events) == 10
    assert sum(any(p.count_by for p in e.props.values()) for e in schema.events.values()) == 2
    assert len(schema.traits) == 5
    assert [name for name, t in schema.traits.items() if t.pii] == ["phone"]
    features = catalog.learning.features
    assert len(features) == 3
    assert {f.trait for f in features} - {None} <= set(schema.traits)
    assert {f.event_count for f in features} - {None} <= set(schema.events)
    context = [f for f in features if f.context is not None]
    assert context and context[0].context in schema.context and context[0].values


def test_the_drain_is_the_plain_one_with_the_schema(catalogs: dict[str, Catalog]) -> None:
    """Same setup as ``events_per_s``: only the schema and the policy features differ."""
    plain, custom = catalogs["plain"], catalogs["custom_schema"]
    assert not plain.schema_.events and not plain.learning.features
    same = {"schema_", "learning"}
    assert custom.model_dump(exclude=same) == plain.model_dump(exclude=same)
    assert custom.learning.model_dump(exclude={"features"}) == plain.learning.model_dump(exclude={"features"})


def test_a_broken_catalog_is_refused_with_its_file_and_field(
    catalogs: dict[str, Catalog], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text(CUSTOM_SCHEMA.read_text().replace("    plan:", "    role:"))  # a built-in trait
    monkeypatch.setattr(ingest, "CUSTOM_SCHEMA", broken)
    with pytest.raises(CatalogError, match=r"broken.yaml: schema.traits.role: 'role' is a built-in"):
        ingest.custom_schema_catalog(catalogs["plain"])


def test_half_the_events_are_custom_and_all_are_valid(catalogs: dict[str, Catalog]) -> None:
    schema = EventSchema(catalogs["custom_schema"].schema_)
    events = list(custom_schema_events(users=200, events=4000))
    types = collections.Counter(e["type"] for e in events)
    assert sum(types[t] for t in CUSTOM_MIX) == 2000
    assert set(types) >= set(schema.custom_types)
    traits: set[str] = set()
    for event in events:
        typed = schema.from_object(event, strict=True)  # as the HTTP API checks them
        assert typed.context is not None and typed.context.app_theme is not None  # type: ignore[attr-defined]
        if event["type"] == "profile_updated":
            traits |= set(event["props"]) & set(schema.traits)
    assert traits == set(schema.traits)
    # The other half is the default mix: the default stream's events at the same places.
    default = list(onboarding_events(users=200, events=4000))
    for n in range(0, 4000, 2):
        assert events[n]["event_id"] == default[n]["event_id"]
        assert events[n]["type"] == default[n]["type"]


def test_its_users_hold_custom_counts_traits_and_context(catalogs: dict[str, Catalog]) -> None:
    """Who ``bytes_per_user_custom_schema`` measures."""
    schema = EventSchema(catalogs["custom_schema"].schema_)
    messages = ingest._messages(
        Pseudonymizer(ingest.SECRET), custom_schema_events(300, 3000, seed=11), schema
    )
    state = ShardState.build(dict.fromkeys(range(ingest.PARTITIONS)), PartitionSetup(schema=schema))
    for seq, (partition, key, payload) in enumerate(messages, 1):
        state.apply(seq, partition, key, payload)
    parts = list(state.partitions.values())
    users = [(user, part.vocab) for part in parts for user in part.users.values()]
    assert len(users) == 300
    counted = sum(user.custom is not None for user, _ in users)
    by_value = sum(user.custom_values is not None for user, _ in users)
    traits = sum(user.extra(vocab.custom_fields.find("plan")) is not None for user, vocab in users)
    themes = sum(user.extra(vocab.custom_fields.find("app_theme")) is not None for user, vocab in users)
    assert counted > 290 and by_value > 100 and traits > 50 and themes == 300
