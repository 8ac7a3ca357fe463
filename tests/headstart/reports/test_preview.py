"""`catalog push --preview`'s engine on logged decisions replayed as `headstart evaluate` replays
them: what changes per decision point, the new and the current configuration's estimates (the
same numbers `evaluate` gives for the same policy), the arms the log cannot judge."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import numpy as np
import pytest

from engine.catalog import DEFAULT_CATALOG, Catalog, load_catalog
from engine.features import BUILTIN_LAYOUT, LAYOUT_VERSION
from engine.learning import DecisionRecord, PointChoice, RewardRecord, encode_record, new_decision_id
from headstart.reports.evaluate import evaluate_logged, evaluate_policy, frame_to_log, logged_decisions
from headstart.reports.preview import (
    MIN_ARM_DECISIONS,
    NO_LOGS,
    PointPreview,
    PreviewReport,
    changes,
    configurations,
    preview,
)
from tests.engine.test_learning import PSEUDO

POINT = "tutorial:first_project"
#: The variants of first_project the log holds; ``advanced`` is never logged.
LOGGED_ARMS = ("interactive", "video", "checklist")
NOW = 1_767_600_000.0


def logged_records(
    n: int, point: str = POINT, arms: tuple[str, ...] = LOGGED_ARMS, seed: int = 3
) -> list[tuple[str, str, bytes]]:
    """(user key, record kind, payload): decisions at ``point`` logged uniformly among ``arms``
    in the built-in layout, each closed by an explicit reward: mobile users finish checklists,
    desktop users videos."""
    rng = np.random.default_rng(seed)
    mobile_slot = BUILTIN_LAYOUT.index("device=mobile")
    out = []
    for i in range(n):
        key = PSEUDO.key(f"{point}/{seed}/{i}")
        mobile = bool(rng.integers(0, 2))
        arm = arms[int(rng.integers(0, len(arms)))]
        context = [1.0] + [0.0] * (BUILTIN_LAYOUT.dim - 1)
        context[mobile_slot] = float(mobile)
        decision_id = new_decision_id(key)
        record = DecisionRecord(
            decision_id=decision_id,
            user_id=key,
            ts=NOW + i,
            policy="linear_igw",
            policy_version=1,
            features_version=LAYOUT_VERSION,
            context=context,
            choices=[PointChoice(point=point, arm=arm, propensity=1 / len(arms), eligible=list(arms))],
            layout=BUILTIN_LAYOUT.layout_id,
        )
        pays = arm == ("checklist" if mobile else "video")
        reward = RewardRecord(
            decision_id=decision_id, reward=float(rng.random() < (0.7 if pays else 0.2)), ts=NOW + i + 1
        )
        out += [(key, "decision", encode_record(record)), (key, "reward", encode_record(reward))]
    return out


def as_messages(records: list[tuple[str, str, bytes]]) -> list[tuple[int, str, bytes]]:
    """The records as the events stream holds them (one partition)."""
    return [(seq, f"hs.events.0.{key}-{kind}", data) for seq, (key, kind, data) in enumerate(records, 1)]


def changed_catalog(
    policy: str | None = None, variants: dict[str, list[str]] | None = None, **learning: Any
) -> Catalog:
    """The default catalog with another policy, learning settings, or tutorials' variant ids."""
    data = load_catalog(DEFAULT_CATALOG).model_dump(by_alias=True)
    if policy is not None:
        data["learning"]["policy"] = policy
    data["learning"].update(learning)
    for tutorial in data["tutorials"]:
        ids = (variants or {}).get(tutorial["id"])
        if ids is not None:
            kept = {v["id"]: v for v in tutorial["variants"]}
            tutorial["variants"] = [kept.get(i, {"id": i, "segments": []}) for i in ids]
    return Catalog.model_validate(data)


def point_of(report: PreviewReport, point: str) -> PointPreview:
    return next(p for p in report.points if p.point == point)


def test_changes_name_what_differs_and_only_what_the_policy_reads() -> None:
    base = configurations(load_catalog(DEFAULT_CATALOG))[POINT]
    assert base.policy == "linear_igw" and base.arms == ("interactive", "video", "checklist", "advanced")
    assert changes(base, base) == []
    assert changes(base, replace(base, policy="thompson")) == ["policy linear_igw -> thompson"]
    assert changes(base, replace(base, params={"gamma_scale": 20})) == ["params {} -> {gamma_scale: 20}"]
    assert changes(base, replace(base, arms=("video", "interactive", "checklist", "advanced"))) == []
    assert changes(base, replace(base, arms=("interactive", "video", "slides"))) == [
        "arms +slides -checklist -advanced"
    ]
    more = replace(base, features=(*base.features, "trait:seats"))
    assert changes(base, more) == ["features +trait:seats"]
    # Thompson sampling never reads the context: a features change changes nothing it does.
    thompson = replace(base, policy="thompson")
    assert changes(thompson, replace(more, policy="thompson")) == []


def test_without_logged_decisions_every_changed_point_says_so() -> None:
    current = load_catalog(DEFAULT_CATALOG)
    report = preview(current, changed_catalog("thompson"), logged_decisions([], current))
    assert report.decisions == 0
    assert {p.point for p in report.changed} == set(configurations(current))
    assert all(p.note == NO_LOGS and p.new is None and p.current is None for p in report.points)
    # Every arm is unsupported: nothing was logged.
    assert {u.arm for u in point_of(report, POINT).unsupported} == {*LOGGED_ARMS, "advanced"}
    assert json.loads(json.dumps(report.to_dict()))["points"][0]["note"] == NO_LOGS
    assert NO_LOGS in report.render()


def test_a_policy_change_is_estimated_as_evaluate_estimates_it() -> None:
    current = load_catalog(DEFAULT_CATALOG)
    new = changed_catalog("thompson", {"first_project": [*LOGGED_ARMS, "advanced", "slides"]})
    records = logged_records(240) + logged_records(
        8, point="tutorial:connect_data", arms=("checklist", "video")
    )
    frame = logged_decisions(as_messages(records), current)
    report = preview(current, new, frame)
    assert report.decisions == 248

    p = point_of(report, POINT)
    assert p.status == "changed" and p.changes == ["policy linear_igw -> thompson", "arms +slides"]
    assert p.current is not None and p.new is not None and p.note is None
    # The same numbers `headstart evaluate --policy NAME` gives, each policy over its catalog's arms.
    for value, name, catalog in ((p.new, "thompson", new), (p.current, "linear_igw", current)):
        expected = evaluate_logged(name, frame, catalog)["points"][POINT]
        assert value.configuration.policy == name
        assert (value.trained_on, value.evaluated_on) == (expected["trained_on"], expected["evaluated_on"])
        for estimator, e in expected["estimates"].items():
            estimate, low, high = value.estimates[estimator]
            assert (estimate, low, high) == pytest.approx((e["estimate"], e["ci_low"], e["ci_high"]))
            assert low < estimate < high
    rows = frame.filter(frame["point"] == POINT)
    assert p.logged == rows.height == 240
    assert p.observed_mean_reward == pytest.approx(rows["reward"].mean())
    assert {(u.arm, u.why) for u in p.unsupported} == {
        ("advanced", "never logged here"),
        ("slides", "never logged here"),
    }
    assert p.unsupported_share is not None and 0 < p.unsupported_share < 1

    assert point_of(report, "tutorial:connect_data").note == "8 logged decisions; 20 are needed"
    assert point_of(report, "tutorial:collaboration").note == NO_LOGS
    text = report.render()
    assert "policy linear_igw -> thompson; arms +slides" in text and "slides (never logged here)" in text
    assert "DR" in text and "new: thompson" in text
    assert (
        json.loads(json.dumps(report.to_dict()))["points"][1]["new"]["estimates"]["dr"]["ci_low"]
        == (p.new.estimates["dr"][1])
    )


def test_unchanged_points_are_listed_without_an_estimate() -> None:
    current = load_catalog(DEFAULT_CATALOG)
    new = changed_catalog(variants={"collaboration": ["interactive", "video"]})
    report = preview(current, new, logged_decisions(as_messages(logged_records(40)), current))
    assert [p.point for p in report.changed] == ["tutorial:collaboration"]
    unchanged = point_of(report, POINT)
    assert unchanged.status == "unchanged" and unchanged.new is None and unchanged.logged == 0
    assert point_of(report, "tutorial:collaboration").changes == ["arms -checklist"]
    assert f"{POINT}: unchanged" in report.render()


def test_a_removed_arm_is_never_chosen_and_a_rarely_logged_one_is_unsupported() -> None:
    current = load_catalog(DEFAULT_CATALOG)
    new = changed_catalog(variants={"first_project": ["interactive", "checklist", "advanced"]})
    records = logged_records(120, arms=("interactive", "video")) + logged_records(
        MIN_ARM_DECISIONS - 1, arms=("checklist",), seed=9
    )
    report = preview(current, new, logged_decisions(as_messages(records), current))
    p = point_of(report, POINT)
    assert p.changes == ["arms -video"] and p.new is not None
    # The log's video decisions still weigh (the new policy would never show video: weight 0).
    assert p.new.arm_shares["video"] == 0.0 and set(p.new.configuration.arms) == {
        "interactive",
        "checklist",
        "advanced",
    }
    assert {u.arm: u.logged for u in p.unsupported} == {"checklist": MIN_ARM_DECISIONS - 1, "advanced": 0}
    assert p.current is not None and p.current.arm_shares["video"] > 0


def test_evaluate_policy_chooses_only_among_the_eligible_arms() -> None:
    current = load_catalog(DEFAULT_CATALOG)
    frame = logged_decisions(as_messages(logged_records(60)), current)
    log = frame_to_log(frame, "log", [*LOGGED_ARMS, "advanced"], POINT)
    everyone = evaluate_policy("linear_igw", log)
    assert sum(everyone["arm_shares"].values()) == pytest.approx(1.0)
    two = evaluate_policy("linear_igw", log, eligible=["video", "checklist"])
    assert two["arm_shares"]["interactive"] == two["arm_shares"]["advanced"] == 0.0
    assert two["arm_shares"]["video"] + two["arm_shares"]["checklist"] == pytest.approx(1.0)
