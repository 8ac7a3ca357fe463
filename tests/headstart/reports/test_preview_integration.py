"""`catalog push --preview`'s engine against a real nats-server: decisions and rewards logged to
the user's partition of the events stream and to HS_DECISIONS / HS_REWARDS, as shards and the
ingress log them; the preview reads the instance's log as `headstart evaluate` does and gives
the same estimates."""

from __future__ import annotations

import pytest
from nats.aio.client import Client as NATS

from engine.catalog import DEFAULT_CATALOG, load_catalog
from engine.keys import partition_of
from headstart.adapters.topology import DECISIONS_STREAM, REWARDS_STREAM, record_subjects
from headstart.reports.evaluate import evaluate_logged, read_events_stream, read_layouts, replay_log
from headstart.reports.preview import NO_LOGS, preview_catalog
from tests.conftest import TEST_PARTITIONS, reset_streams
from tests.headstart.reports.test_preview import (
    LOGGED_ARMS,
    POINT,
    changed_catalog,
    logged_records,
    point_of,
)

pytestmark = pytest.mark.integration


async def test_a_preview_of_a_policy_change_from_the_instances_log(nats_url: str, nc: NATS) -> None:
    await reset_streams(nats_url)
    js = nc.jetstream()
    current = load_catalog(DEFAULT_CATALOG)
    new = changed_catalog("thompson", {"first_project": [*LOGGED_ARMS, "advanced", "slides"]})

    # Nothing logged yet: every changed point says so, nothing fails.
    empty = await preview_catalog(js, current, new, TEST_PARTITIONS)
    assert empty.decisions == 0 and all(p.note == NO_LOGS for p in empty.changed)

    records = logged_records(240)
    for key, kind, data in records:
        for subject in record_subjects(partition_of(key, TEST_PARTITIONS), key, kind):
            await js.publish(subject, data)
    assert (await js.stream_info(DECISIONS_STREAM)).state.messages == 240
    assert (await js.stream_info(REWARDS_STREAM)).state.messages == 240

    report = await preview_catalog(js, current, new, TEST_PARTITIONS)
    assert report.decisions == 240
    p = point_of(report, POINT)
    assert p.changes == ["policy linear_igw -> thompson", "arms +slides"]
    assert p.new is not None and p.current is not None

    # `headstart evaluate --policy NAME` on the same instance: the same estimates.
    replayed = replay_log(await read_events_stream(nats_url), current, await read_layouts(nats_url))
    for value, name, catalog in ((p.new, "thompson", new), (p.current, "linear_igw", current)):
        expected = evaluate_logged(name, replayed.decisions, catalog)["points"][POINT]["estimates"]
        assert set(value.estimates) == set(expected) == {"ips", "snips", "dr"}
        for estimator, e in expected.items():
            estimate, low, high = value.estimates[estimator]
            assert (estimate, low, high) == pytest.approx((e["estimate"], e["ci_low"], e["ci_high"]))
            assert low < estimate < high
    assert {u.arm for u in p.unsupported} == {"advanced", "slides"}
    assert p.observed_mean_reward == pytest.approx(replayed.decisions["reward"].mean())
    assert "slides (never logged here)" in report.render()
    # It stores nothing: the streams hold what the test published.
    assert (await js.stream_info(DECISIONS_STREAM)).state.messages == 240
