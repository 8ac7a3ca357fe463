"""engine.answers: a shard's answer to one user, and what it must log for it."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from engine.answers import Answers
from engine.catalog import Catalog
from engine.decision import Decider
from engine.events import encode_event
from engine.experiments import ExposureRecord, encode_exposure
from engine.keys import Pseudonymizer
from engine.learning import Learner
from engine.partition import PartitionSetup, PartitionState
from tests.engine.test_experiment_arms import experiment_catalog

NOW = 1_767_600_000.0
KEY = Pseudonymizer(b"s" * 32).key("someone")


def setup(catalog: Catalog | None = None, consent_by_default: bool = True) -> tuple[Answers, PartitionState]:
    catalog = catalog or experiment_catalog(holdout=None)
    decider = Decider(catalog)
    learner = Learner(catalog, decider, seed=1)
    part = PartitionState.build(
        0,
        None,
        PartitionSetup(learner, experiment_plan=decider.experiments, consent_by_default=consent_by_default),
    )
    return Answers(decider, learner, consent_by_default), part


def apply(part: PartitionState, *events: dict[str, Any]) -> None:
    for body in events:
        seq = part.last_seq + 1
        part.apply_message(seq, KEY, encode_event({"event_id": f"e{seq}", "user_id": KEY, "ts": NOW, **body}))


def done(*steps: str) -> list[dict[str, Any]]:
    return [{"type": "step_completed", "props": {"step": s}} for s in steps]


def test_a_choice_is_logged_with_the_insights_in_the_answer() -> None:
    answers, part = setup()
    apply(part, {"type": "session_started"}, *done("welcome", "profile", "connect_data"))
    decided = answers.decide(part, KEY, {"device_type": "desktop"}, NOW)
    answer = decided.answer
    assert answer.step is not None and answer.step.id == "first_project"
    assert answer.tutorial is not None and len(answer.tutorial.eligible) > 1  # a real choice
    record = decided.logs.decision
    assert record is not None and record.decision_id == answer.decision_id and record.user_id == KEY
    assert answer.activation_probability is None  # no activation examples yet
    assert isinstance(answer.recommended_features, list)
    assert {e.experiment for e in decided.logs.exposures} == {"welcome_copy", "tutorial_format"}


def test_without_personalization_consent_nothing_is_chosen_or_logged() -> None:
    answers, part = setup(consent_by_default=False)
    apply(part, {"type": "session_started"}, *done("welcome"))
    decided = answers.decide(part, KEY, {}, NOW)
    assert decided.logs.decision is None and decided.logs.exposures == []
    encoded = msgspec.json.decode(msgspec.json.encode(decided.answer))
    assert encoded["personalized"] is False and encoded["experiments"] == {}
    assert "activation_probability" not in encoded and "recommended_features" not in encoded
    assert answers.tutorial(part, KEY, {}, NOW, step="first_project").logs.decision is None


def test_a_low_activation_probability_adds_the_activation_low_segment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    answers, part = setup()
    apply(part, {"type": "session_started"})
    assert part.learning is not None
    low = {"activation_probability": 0.01, "recommended_features": ["export"]}
    monkeypatch.setattr(type(part.learning), "insights", lambda *_: low)
    answer = answers.decide(part, KEY, {}, NOW).answer
    assert "activation_low" in answer.segments
    assert answer.activation_probability == 0.01 and answer.recommended_features == ["export"]


def test_an_exposure_is_logged_until_its_partition_has_it() -> None:
    answers, part = setup()
    first = answers.decide(part, KEY, {}, NOW).logs.exposures
    assert [e.experiment for e in first] == ["welcome_copy"] and first[0].user_id == KEY
    assert answers.decide(part, KEY, {}, NOW).logs.exposures == []  # pending: not again
    record = ExposureRecord(experiment="welcome_copy", arm=first[0].arm, user_id=KEY, ts=NOW, pre=0.0)
    part.apply_message(part.last_seq + 1, f"{KEY}-exposure", encode_exposure(record))
    assert answers.decide(part, KEY, {}, NOW).logs.exposures == []  # applied: never again
    assert ("welcome_copy", KEY) not in answers.exposures_pending


def test_flags_and_the_user_view() -> None:
    answers, part = setup()
    flags = answers.flags(part, KEY, {"device_type": "mobile"}, NOW)
    assert flags.flags["simplified_mobile_flow"]["value"] is True and "device_mobile" in flags.segments
    assert list(msgspec.json.decode(msgspec.json.encode(flags))) == ["flags", "segments"]
    assert answers.user_view(part, KEY, NOW) is None
    apply(part, {"type": "session_started"})
    view = answers.user_view(part, KEY, NOW)
    assert view is not None and view["sessions"] == 1 and "activation_probability" in view
