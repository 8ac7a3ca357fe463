"""Experiments in the catalog, in decisions and in partition state: validation, what each arm
changes, when a user counts as exposed (once), and their outcomes."""

from __future__ import annotations

from typing import Any

import pytest

from engine.catalog import DEFAULT_CATALOG, Catalog, check_catalog_text, load_catalog
from engine.decision import Decider
from engine.events import encode_event
from engine.experiments import ExperimentPlan, ExposureRecord, encode_exposure
from engine.learning import Learner
from engine.partition import PartitionSetup, PartitionState
from tests.engine.test_decision import NOW, done, user_after

KEYS = [f"user-{i:05d}" for i in range(400)]

SHORT = "Short hello from {{product}}"


def experiment_catalog(**changes: Any) -> Catalog:
    data = load_catalog(DEFAULT_CATALOG).model_dump()
    data["experiments"] = [
        {
            "id": "welcome_copy",
            "salt": "copy-1",
            "layer": "copy",
            "arms": [{"id": "control"}, {"id": "short", "welcome": {"en": SHORT}}],
            "metric": {"event": "onboarding_completed", "within_days": 7},
            "guardrails": [{"event": "step_completed", "name": "profile", "within_days": 7}],
        },
        {
            "id": "tutorial_format",
            "salt": "tut-1",
            "arms": [
                {"id": "control"},
                {"id": "checklist_only", "tutorials": {"first_project": ["checklist"]}},
            ],
        },
    ]
    data["holdout"] = {"share": 0.1, "salt": "holdout-1"}
    data.update(changes)
    return Catalog.model_validate(data)


# ---------------------------------------------------------------------- the catalog


def test_an_experiments_mistakes_are_reported_with_their_place() -> None:
    base = DEFAULT_CATALOG.read_text()
    text = (
        base
        + """
experiments:
  - id: bad_flow
    salt: a
    segments: [no_such_segment]
    arms:
      - {id: control}
      - {id: other, steps: [welcome, nowhere], tutorials: {first_project: [hologram]}, policy: oracle}
  - id: same_surface
    salt: b
    arms: [{id: control}, {id: b, tutorials: {first_project: [checklist]}}]
  - id: nothing
    salt: c
    arms: [{id: control}, {id: also_control}]
"""
    )
    errors = "\n".join(check_catalog_text(text))
    assert "experiments[0].segments[0]: unknown segment 'no_such_segment'" in errors
    assert "experiments[0].arms[1].steps[1]: unknown step 'nowhere'" in errors
    assert "experiments[0].arms[1].tutorials.first_project: unknown variant 'hologram'" in errors
    assert "experiments[0].arms[1].policy: 'oracle' is not run by the shards" in errors
    assert "bad_flow and same_surface change the same part of a decision: put them in one layer" in errors
    assert "experiments[2].arms: no arm changes anything" in errors
    late = base + "experiments: [{id: x, salt: s, start: '2026-02-01T00:00:00Z', "
    late += "end: '2026-01-01T00:00:00Z', arms: [{id: control}, {id: b, welcome: {en: hi}}]}]\n"
    assert any("end must be after start" in e for e in check_catalog_text(late))


def test_the_example_catalog_shape_is_valid() -> None:
    catalog = experiment_catalog()
    assert [e.id for e in catalog.experiments] == ["welcome_copy", "tutorial_format"]


# ---------------------------------------------------------------------- decisions


@pytest.fixture(scope="module")
def decider() -> Decider:
    return Decider(experiment_catalog())


def test_each_arm_changes_what_it_says_and_every_user_keeps_their_arm(decider: Decider) -> None:
    arms: dict[str, str] = {}
    for key in KEYS:
        d = decider.decide(key, None, None, {"locale": "en"}, NOW)
        again = decider.decide(key, None, None, {"locale": "en"}, NOW + 3600)
        assert d.answer.experiments == again.answer.experiments
        if not d.answer.experiments:
            assert decider.experiments.in_holdout(key)
            assert "in the global holdout" in " ".join(d.answer.explain) and not d.exposures
            continue
        arm = arms[key] = d.answer.experiments["welcome_copy"]
        short = d.answer.message == SHORT.replace("{{product}}", "Relay")
        assert short == (arm == "short")
    held_out = len(KEYS) - len(arms)
    assert 20 <= held_out <= 60  # 10% of 400
    assert 0.4 < sum(a == "short" for a in arms.values()) / len(arms) < 0.6


def test_a_user_is_exposed_only_when_the_decision_reaches_what_the_experiment_changes(
    decider: Decider,
) -> None:
    key = next(k for k in KEYS if not decider.experiments.in_holdout(k))
    # At the welcome step: the message is shown (welcome_copy), no tutorial (not tutorial_format).
    first = decider.decide(key, None, None, {}, NOW)
    assert [e for e, _ in first.exposures] == ["welcome_copy"]
    # At the first project: its tutorial is shown, so both experiments are reached.
    user, vocab = user_after(done("welcome"), done("profile"), done("connect_data"))
    later = decider.decide(key, user, vocab, {"device_type": "mobile"}, NOW)
    assert later.answer.step.id == "first_project"
    assert {e for e, _ in later.exposures} == {"welcome_copy", "tutorial_format"}
    arm = later.answer.experiments["tutorial_format"]
    variants = later.answer.tutorial.eligible
    assert (variants == ["checklist"]) == (arm == "checklist_only")


def test_no_experiment_without_personalization_consent(decider: Decider) -> None:
    key = next(k for k in KEYS if not decider.experiments.in_holdout(k))
    d = decider.decide(key, None, None, {}, NOW, personalize=False)
    assert d.answer.experiments == {} and not d.exposures


def test_a_policy_arm_decides_who_chooses_and_a_fixed_arm_learns_nothing() -> None:
    catalog = experiment_catalog(
        experiments=[
            {
                "id": "learning_vs_fixed",
                "salt": "p-1",
                "arms": [{"id": "fixed", "policy": "fixed"}, {"id": "learned", "policy": "linear_igw"}],
            }
        ],
        holdout=None,
    )
    decider = Decider(catalog)
    learner = Learner(catalog, decider, seed=1)
    user, vocab = user_after(done("welcome"), done("profile"))  # two steps eligible: a choice
    seen = set()
    for key in KEYS[:60]:
        session = learner.session(key, user, {}, NOW, {})
        d = decider.decide(key, user, vocab, {}, NOW, chooser=session)
        arm = d.answer.experiments["learning_vs_fixed"]
        seen.add(arm)
        record = session.record()
        if arm == "fixed":
            assert record is None and d.answer.step.id == "connect_data"  # journey order
        else:
            assert record is not None and record.policy == "linear_igw"
        assert d.exposures == [("learning_vs_fixed", arm)]
    assert seen == {"fixed", "learned"}


def test_a_flow_arm_offers_its_steps_in_its_order() -> None:
    flow = ["welcome", "profile", "first_project", "invite_team", "connect_data"]
    catalog = experiment_catalog(
        experiments=[
            {"id": "flow", "salt": "f", "arms": [{"id": "control"}, {"id": "projects_first", "steps": flow}]}
        ],
        holdout=None,
    )
    decider = Decider(catalog)
    user, vocab = user_after(done("welcome"), done("profile"))
    for key in KEYS[:40]:
        d = decider.decide(key, user, vocab, {}, NOW)
        expected = "first_project" if d.answer.experiments["flow"] == "projects_first" else "connect_data"
        assert d.answer.step.id == expected


# ---------------------------------------------------------------------- exposures in partition state


def exposure(key: str, experiment: str = "welcome_copy", arm: str = "short", ts: float = NOW) -> bytes:
    return encode_exposure(ExposureRecord(experiment=experiment, arm=arm, user_id=key, ts=ts, pre=1.5))


def event(i: int, key: str, kind: str, ts: float, **props: Any) -> bytes:
    body = {"event_id": f"e{i}", "user_id": key, "type": kind, "ts": ts}
    if props:
        body["props"] = props
    return encode_event(body)


def test_exposures_are_kept_once_per_user_and_experiment_with_their_outcomes() -> None:
    plan = ExperimentPlan(experiment_catalog().experiments)
    part = PartitionState(0, PartitionSetup(experiment_plan=plan))
    part.apply_message(1, "ka", event(1, "ka", "session_started", NOW - 10))
    part.apply_message(2, "ka-exposure", exposure("ka"))
    part.apply_message(2, "ka-exposure", exposure("ka"))  # redelivered
    part.apply_message(3, "ka-exposure", exposure("ka", arm="control"))  # a concurrent second one
    part.apply_message(4, "kb-exposure", exposure("kb", arm="control"))  # cold start: no events yet
    part.apply_message(5, "ka", event(5, "ka", "step_completed", NOW + 60, step="profile"))
    part.apply_message(6, "ka", event(6, "ka", "onboarding_completed", NOW + 3600))
    part.apply_message(7, "kb", event(7, "kb", "onboarding_completed", NOW + 8 * 86400))  # after 7 days
    assert part.experiments is not None
    rows = {r.arm: r for r in part.experiments.exposures("welcome_copy")}
    assert set(rows) == {"short", "control"} and len(list(part.experiments.exposures("welcome_copy"))) == 2
    assert rows["short"].converted == [NOW + 3600, NOW + 60]  # the metric, then the guardrail
    assert rows["control"].converted == [0.0, 0.0]
    # A snapshot keeps them; a replay of the same messages over it changes nothing.
    restored = PartitionState.restore(part.snapshot(), PartitionSetup(experiment_plan=plan))
    assert restored.experiments is not None
    assert {r.arm: r.converted for r in restored.experiments.exposures("welcome_copy")} == {
        a: r.converted for a, r in rows.items()
    }
    restored.apply_message(3, "ka-exposure", exposure("ka", arm="control"))
    assert restored.experiments.is_exposed("ka", "welcome_copy")
    # Erasure removes the user's exposure too.
    restored.apply_message(8, "ka-erase", b"")
    assert not restored.experiments.is_exposed("ka", "welcome_copy")


def test_an_exposure_of_a_user_without_analytics_consent_is_not_kept() -> None:
    plan = ExperimentPlan(experiment_catalog().experiments)
    opt_in = PartitionSetup(experiment_plan=plan, consent_by_default=False)  # nothing kept yet
    part = PartitionState(0, opt_in)
    part.apply_message(1, "kc-exposure", exposure("kc"))
    assert part.experiments is not None and not part.experiments.is_exposed("kc", "welcome_copy")
