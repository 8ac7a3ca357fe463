"""engine.queries: the shard-wide reports over a shard's partitions."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import pytest

from engine import queries
from engine.decision import Decider
from engine.events import encode_event
from engine.experiments import ExposureRecord, encode_exposure
from engine.learning import Learner
from engine.partition import PartitionSetup, PartitionState
from engine.rules import FIELDS
from tests.engine.test_experiment_arms import experiment_catalog

NOW = 1_767_600_000.0


@pytest.fixture
def shard() -> tuple[Decider, Learner, dict[int, PartitionState]]:
    catalog = experiment_catalog(holdout=None)
    decider = Decider(catalog)
    learner = Learner(catalog, decider)
    parts = {
        p: PartitionState.build(p, None, PartitionSetup(learner, experiment_plan=decider.experiments))
        for p in (0, 1)
    }
    for i in range(10):
        part, key = parts[i % 2], f"user{i:02d}"

        def apply(body: dict[str, Any], part: PartitionState = part, key: str = key) -> None:
            seq = part.last_seq + 1
            part.apply_message(
                seq, key, encode_event({"event_id": f"e{seq}", "user_id": key, "ts": NOW, **body})
            )

        apply({"type": "session_started", "context": {"device_type": "mobile" if i < 4 else "desktop"}})
        if i < 3:
            apply({"type": "tutorial_started", "props": {"tutorial": "first_project", "variant": "video"}})
        if i < 1:
            apply({"type": "tutorial_completed", "props": {"tutorial": "first_project", "variant": "video"}})
        exposure = ExposureRecord(experiment="welcome_copy", arm="short", user_id=key, ts=NOW + i, pre=1.0)
        part.apply_message(part.last_seq + 1, f"{key}-exposure", encode_exposure(exposure))
    return decider, learner, parts


def test_segment_sizes(shard: tuple[Decider, Learner, dict[int, PartitionState]]) -> None:
    decider, learner, parts = shard
    sizes = asyncio.run(queries.segment_sizes(parts, decider, learner, NOW, shard=3))
    assert sizes.shard == 3 and sizes.users == 10
    assert sizes.segments["new_user"].size == 10 and sizes.segments["device_mobile"].size == 4
    assert sizes.changes == {} and sizes.tracked_from is None  # membership not tracked here


def test_tutorial_stats(shard: tuple[Decider, Learner, dict[int, PartitionState]]) -> None:
    _, _, parts = shard
    stats = asyncio.run(queries.tutorial_stats(parts, shard=3))
    assert stats.rows == [("first_project", "video", "all", 3, 1)]
    assert msgspec.json.encode(stats) == b'{"shard":3,"rows":[["first_project","video","all",3,1]]}'


def test_profile_sample_and_pages(shard: tuple[Decider, Learner, dict[int, PartitionState]]) -> None:
    decider, learner, parts = shard
    sample = queries.profile_sample(parts, 4, NOW, shard=3)
    numeric = sorted(name for name, kind in FIELDS.items() if kind == "number")
    assert sample.users == 10 and len(sample.rows) == 4 and all(list(r) == numeric for r in sample.rows)
    assert queries.profile_sample(parts, 4, NOW, shard=3) == sample  # seeded
    first = queries.profiles_page(parts[0], "", 3, NOW, decider, learner)
    assert [r["user_key"] for r in first.rows] == ["user00", "user02", "user04"] and first.more
    rest = queries.profiles_page(parts[0], first.rows[-1]["user_key"], 3, NOW, decider, learner)
    assert [r["user_key"] for r in rest.rows] == ["user06", "user08"] and not rest.more
    assert all("features" not in r and "name" not in r["traits"] for r in first.rows + rest.rows)


def test_experiment_moments(shard: tuple[Decider, Learner, dict[int, PartitionState]]) -> None:
    decider, _, parts = shard
    plan = decider.experiments
    spans = asyncio.run(queries.experiment_moments(parts, plan, "welcome_copy", [], shard=3))
    assert spans.exposed == 10 and spans.first == NOW and spans.moments == []
    cut = asyncio.run(queries.experiment_moments(parts, plan, "welcome_copy", [NOW + 100], shard=3))
    assert cut.moments[0][0]["short"].n == 10
    with pytest.raises(KeyError):
        asyncio.run(queries.experiment_moments(parts, plan, "nope", [], shard=3))


def test_learned(shard: tuple[Decider, Learner, dict[int, PartitionState]]) -> None:
    _, learner, _ = shard
    learned = queries.learned(learner)
    assert set(learned) == set(learner.points)
    point = learned["tutorial:first_project"]
    assert point.arms == learner.points["tutorial:first_project"] and point.n == [0.0] * len(point.arms)


def test_reports_give_the_event_loop_turns(
    shard: tuple[Decider, Learner, dict[int, PartitionState]], monkeypatch: pytest.MonkeyPatch
) -> None:
    decider, learner, parts = shard
    monkeypatch.setattr(queries, "YIELD_EVERY", 2)

    async def run() -> int:
        turns = 0
        stop = False

        async def tick() -> None:
            nonlocal turns
            while not stop:
                turns += 1
                await asyncio.sleep(0)

        ticker = asyncio.create_task(tick())
        await asyncio.sleep(0)
        before = turns
        await queries.segment_sizes(parts, decider, learner, NOW, shard=0)
        stop = True
        await ticker
        return turns - before

    assert asyncio.run(run()) >= 4  # 5 users per partition: 2 turns each
