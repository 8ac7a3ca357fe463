"""The catalog's references to its own schema, end to end over a partition with the contract's
catalog (tests/catalogs/custom_schema.yaml): ``completed_by`` with declared types and prop
matches, the rewards they earn, the journey reward on a declared event, declared traits and
context fields in messages, and experiment metrics and guardrails on declared events."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import numpy as np
import pytest

from engine import queries
from engine.answers import Answered, Answers
from engine.catalog import Catalog, load_catalog
from engine.choices import POINT_STEP
from engine.decision import Decider, DecisionAnswer
from engine.events import encode_event
from engine.experiments import encode_exposure
from engine.learning import Learner, encode_record
from engine.partition import PartitionSetup, PartitionState
from headstart.reports.experiments import experiment_report
from tests.catalogs import CUSTOM_SCHEMA

NOW = 1_767_600_000.0


class Shard:
    """One partition with learning and experiments, built from a catalog, fed as the stream
    would: events, and what each answer logs (decision records, exposures)."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self.decider = Decider(catalog)
        self.learner = Learner(catalog, self.decider, seed=3)
        self.answers = Answers(self.decider, self.learner)
        setup = PartitionSetup(
            self.learner, experiment_plan=self.decider.experiments, schema=catalog.event_schema
        )
        self.part = PartitionState(0, setup)
        #: (decision id, point, arm, reward) of every decision closed.
        self.closed: list[tuple[str, str, str, float]] = []
        self.learner.on_close = lambda decision_id, point, arm, x, reward, p: self.closed.append(
            (decision_id, point, self.learner.points[point][arm], reward)
        )

    def send(self, key: str, kind: str, ts: float, props: dict[str, Any] | None = None, **more: Any) -> None:
        body = {"event_id": f"e{self.part.last_seq}", "user_id": key, "type": kind, "ts": ts, **more}
        if props is not None:
            body["props"] = props
        self.part.apply_message(self.part.last_seq + 1, key, encode_event(body))

    def decide(self, key: str, ts: float, context: dict[str, Any] | None = None) -> Answered[DecisionAnswer]:
        """A decision, its logs applied to the partition (as the shard publishes them)."""
        answered = self.answers.decide(self.part, key, context or {}, ts)
        if answered.logs.decision is not None:
            self.part.apply_message(
                self.part.last_seq + 1, f"{key}-decision", encode_record(answered.logs.decision)
            )
        for exposure in answered.logs.exposures:
            self.part.apply_message(self.part.last_seq + 1, f"{key}-exposure", encode_exposure(exposure))
        return answered


@pytest.fixture
def shard() -> Shard:
    return Shard(load_catalog(CUSTOM_SCHEMA))


def welcomed(shard: Shard, key: str) -> None:
    shard.send(key, "session_started", NOW)
    shard.send(key, "step_completed", NOW + 1, {"step": "welcome"})


def test_a_declared_event_completes_its_step_and_the_next_step_moves_on(shard: Shard) -> None:
    key = "u" * 26
    welcomed(shard, key)
    first = shard.decide(key, NOW + 2).answer
    assert first.completed_steps == ["welcome"] and first.step is not None
    assert first.step.id in ("first_board", "connect_slack")
    # Slack through the generic integration event: only with the matching prop.
    shard.send(key, "connected_integration", NOW + 3, {"integration": "github"})
    assert "connect_slack" not in shard.decide(key, NOW + 4).answer.completed_steps
    shard.send(key, "connected_integration", NOW + 5, {"integration": "slack"})
    after = shard.decide(key, NOW + 6).answer
    assert after.completed_steps == ["connect_slack", "welcome"]
    assert after.step is not None and after.step.id == "first_board"
    shard.send(key, "created_board", NOW + 7, {"template": "blank"})
    after = shard.decide(key, NOW + 8).answer
    assert after.step is not None and after.step.id == "invite"  # it required first_board
    shard.send(key, "invited_teammate", NOW + 9, {"role": "pm"})
    done = shard.decide(key, NOW + 10).answer
    assert done.step is None and done.completed_steps == ["connect_slack", "first_board", "invite", "welcome"]
    # The other form: connected_slack alone completes the step too.
    other = "v" * 26
    welcomed(shard, other)
    shard.send(other, "connected_slack", NOW + 3)
    assert "connect_slack" in shard.decide(other, NOW + 4).answer.completed_steps


def test_the_step_decision_and_the_journey_are_rewarded_by_declared_events(shard: Shard) -> None:
    key = "w" * 26
    welcomed(shard, key)
    record = shard.decide(key, NOW + 2).logs.decision
    assert record is not None
    chosen = next(c.arm for c in record.choices if c.point == POINT_STEP)
    completing = {
        "first_board": ("created_board", {"template": "kanban"}),
        "connect_slack": ("connected_slack", None),
    }
    kind, props = completing[chosen]
    shard.send(key, kind, NOW + 60, props)
    assert shard.closed == [(record.decision_id, POINT_STEP, chosen, 1.0)]
    policy = shard.learner.served[POINT_STEP]
    arm = policy.arm_index(chosen)
    assert policy.reward_totals()[1][arm] == pytest.approx(1.0)
    # The journey: activation is invited_teammate, crediting the path's decision once more.
    learning = shard.part.learning
    assert learning is not None and key in learning.path
    user = shard.part.users[key]
    assert not shard.learner.has_activated(user, shard.part.vocab)
    shard.send(key, "invited_teammate", NOW + 120, {"role": "admin"})
    assert key not in learning.path
    assert policy.reward_totals()[0][arm] == pytest.approx(2.0)
    assert policy.reward_totals()[1][arm] == pytest.approx(2.0)
    assert shard.learner.has_activated(user, shard.part.vocab)


def test_a_journey_event_with_props_needs_them(shard: Shard) -> None:
    data = shard.catalog.model_dump(by_alias=True)
    data["learning"]["journey"] = {"event": "connected_integration", "props": {"integration": "slack"}}
    shard = Shard(Catalog.model_validate(data))
    key = "x" * 26
    welcomed(shard, key)
    assert shard.decide(key, NOW + 2).logs.decision is not None
    learning = shard.part.learning
    assert learning is not None
    shard.send(key, "connected_integration", NOW + 3, {"integration": "github"})
    assert key in learning.path and not shard.learner.has_activated(shard.part.users[key], shard.part.vocab)
    shard.send(key, "connected_integration", NOW + 4, {"integration": "slack"})
    assert key not in learning.path and shard.learner.has_activated(shard.part.users[key], shard.part.vocab)


def test_messages_render_declared_traits_and_context_fields(shard: Shard) -> None:
    key = "y" * 26
    shard.send(key, "session_started", NOW, context={"app_theme": "light"})
    assert shard.decide(key, NOW + 1).answer.step_message == "You are on the  plan (light theme)."
    shard.send(key, "profile_updated", NOW + 2, {"plan": "pro"})
    answer = shard.decide(key, NOW + 3).answer
    assert answer.step_message == "You are on the pro plan (light theme)."
    # The request's context wins over the profile's for a context field.
    answer = shard.decide(key, NOW + 4, {"app_theme": "dark"}).answer
    assert answer.step_message == "You are on the pro plan (dark theme)."


def test_a_pii_trait_renders_only_with_personalization_consent() -> None:
    data = load_catalog(CUSTOM_SCHEMA).model_dump(by_alias=True)
    data["journey"]["steps"][0]["message"] = {
        "en": "{{#phone}}We will call {{phone}}.{{/phone}} {{seats}} seats"
    }
    shard = Shard(Catalog.model_validate(data))
    key = "z" * 26
    shard.send(key, "profile_updated", NOW, {"phone": "+49 30 1234", "seats": 12})
    assert shard.decide(key, NOW + 1).answer.step_message == "We will call +49 30 1234. 12 seats"
    shard.send(key, "consent_updated", NOW + 2, {"personalization": False})
    assert shard.decide(key, NOW + 3).answer.step_message == "  seats"  # no profile at all


def test_the_experiment_counts_declared_metrics_and_reports_them(shard: Shard) -> None:
    exp = shard.decider.experiments.by_id["boards_first"]
    arms: dict[str, str] = {}
    for i in range(40):
        key = f"user{i:02d}".ljust(26, "k")
        welcomed(shard, key)
        answered = shard.decide(key, NOW + 10)
        assert [e.experiment for e in answered.logs.exposures] == ["boards_first"]
        arms[key] = answered.answer.experiments["boards_first"]
        # A third create a kanban board (the metric); of the others, half a scrum board (not it).
        if i % 3 == 0:
            shard.send(key, "created_board", NOW + 20, {"template": "kanban"})
        elif i % 2 == 0:
            shard.send(key, "created_board", NOW + 20, {"template": "scrum"})
        if i % 4 == 0:  # the guardrail: Slack connected through the generic event
            shard.send(key, "connected_integration", NOW + 30, {"integration": "slack"})
    cuts = [NOW + 3600]
    moments = asyncio.run(
        queries.experiment_moments({0: shard.part}, shard.decider.experiments, exp.id, cuts, 0)
    )
    report = experiment_report(exp, [msgspec.to_builtins(moments)], cuts)
    assert report["exposed"] == 40
    assert report["metric"] == "created_board(template=kanban) within 7 days"
    assert report["guardrails"][0]["metric"] == "connected_integration(integration=slack) within 7 days"
    for arm in ("control", "boards_first"):
        members = [int(k[4:6]) for k, a in arms.items() if a == arm]
        primary = report["primary"]["arms"][arm]
        assert primary["users"] == len(members)
        assert primary["conversions"] == sum(i % 3 == 0 for i in members)
        guardrail = report["guardrails"][0]["analysis"]["arms"][arm]
        assert guardrail["conversions"] == sum(i % 4 == 0 for i in members)
    assert np.isfinite(report["primary"]["arms"]["control"]["rate"])
