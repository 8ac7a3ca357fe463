"""The learning loop's pure logic: decisions logged to a partition, rewards attributed from its
events and explicit rewards, exactly once, and the merge of partitions' contributions."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from engine.catalog import DEFAULT_CATALOG, Catalog, load_catalog
from engine.decision import Decider
from engine.events import encode_event
from engine.features import BUILTIN_LAYOUT, LAYOUT_VERSION
from engine.keys import Pseudonymizer, partition_of
from engine.learning import (
    POINT_STEP,
    DecisionRecord,
    Learner,
    RewardRecord,
    encode_record,
    new_decision_id,
    user_key_of,
)
from engine.partition import PartitionSetup, PartitionState

NOW = 1_767_600_000.0
PSEUDO = Pseudonymizer(b"a test secret of enough length")
POINT = "tutorial:first_project"


def catalog_with(**learning: Any) -> Catalog:
    base = load_catalog(DEFAULT_CATALOG).model_dump()
    base["learning"].update(learning)
    return Catalog.model_validate(base)


def learner_for(catalog: Catalog | None = None, seed: int = 0) -> Learner:
    catalog = catalog or load_catalog(DEFAULT_CATALOG)
    return Learner(catalog, Decider(catalog), seed=seed)


DIM = BUILTIN_LAYOUT.dim


def decision_record(
    decision_id: str,
    key: str,
    ts: float,
    arm: str,
    point: str,
    context: list[float] | None = None,
    layout: str = BUILTIN_LAYOUT.layout_id,
) -> DecisionRecord:
    """A linear_igw decision at ``point`` that chose ``arm`` (of ``interactive`` and ``arm``),
    its ``context`` in the layout ``layout`` (default: the built-in one, all zeros but the bias)."""
    return DecisionRecord(
        decision_id=decision_id,
        user_id=key,
        ts=ts,
        policy="linear_igw",
        policy_version=1,
        features_version=LAYOUT_VERSION,
        context=context if context is not None else [1.0] + [0.0] * (DIM - 1),
        choices=[{"point": point, "arm": arm, "propensity": 0.5, "eligible": ["interactive", arm]}],  # type: ignore[list-item]
        layout=layout,
    )


class Log:
    """Messages of one partition, as the stream would hold them: (seq, subject tail, payload)."""

    def __init__(self) -> None:
        self.messages: list[tuple[int, str, bytes]] = []

    def add(self, tail: str, data: bytes) -> int:
        seq = len(self.messages) + 1
        self.messages.append((seq, tail, data))
        return seq

    def event(self, key: str, kind: str, ts: float, **props: Any) -> None:
        body = {"event_id": f"e{len(self.messages)}", "user_id": key, "type": kind, "ts": ts}
        if props:
            body["props"] = props
        self.add(key, encode_event(body))

    def decision(
        self, key: str, ts: float, arm: str = "video", point: str = POINT, context_slot: int | None = None
    ) -> str:
        decision_id = new_decision_id(key)
        context = [1.0] + [0.0] * (DIM - 1)
        if context_slot is not None:
            context[context_slot] = 1.0
        record = decision_record(decision_id, key, ts, arm, point, context)
        self.add(f"{key}-decision", encode_record(record))
        return decision_id

    def reward(self, key: str, decision_id: str, reward: float, ts: float) -> None:
        self.add(f"{key}-reward", encode_record(RewardRecord(decision_id=decision_id, reward=reward, ts=ts)))

    def replay(self, part: PartitionState, start: int = 0) -> None:
        for seq, tail, data in self.messages[start:]:
            part.apply_message(seq, tail, data)


def served_n(learner: Learner, point: str = POINT) -> np.ndarray:
    return learner.served[point].stats["n"].copy()


def test_decision_ids_carry_the_user_key() -> None:
    key = PSEUDO.key("alice")
    decision_id = new_decision_id(key)
    assert user_key_of(decision_id) == key
    assert user_key_of("x" * 42) is None and user_key_of(decision_id[:-1]) is None


def test_completing_the_decided_tutorial_rewards_it_once() -> None:
    learner, log = learner_for(), Log()
    part = PartitionState(0, PartitionSetup(learner))
    key = PSEUDO.key("u1")
    log.decision(key, NOW)
    log.event(key, "tutorial_completed", NOW + 60, tutorial="first_project", variant="video")
    log.event(key, "tutorial_completed", NOW + 70, tutorial="first_project", variant="video")
    log.replay(part)
    video = learner.arm_index[POINT]["video"]
    assert part.learning is not None and part.learning.counts["rewards"] == 1
    assert served_n(learner)[video] == 1 and learner.served[POINT].stats["b"][video][0] == 1.0
    # Redelivery of everything (a crash before the ack): nothing counts twice.
    log.replay(part)
    assert served_n(learner)[video] == 1


def test_a_closed_window_gives_the_default_reward_and_later_rewards_are_late() -> None:
    learner, log = learner_for(catalog_with(reward_window_s=600, default_reward=0.0)), Log()
    part = PartitionState(0, PartitionSetup(learner))
    key, other = PSEUDO.key("u1"), PSEUDO.key("u2")
    decision_id = log.decision(key, NOW)
    log.event(other, "session_started", NOW + 601)  # event time moves past the window
    log.reward(key, decision_id, 1.0, NOW + 700)
    log.reward(key, new_decision_id(key), 1.0, NOW + 700)
    log.replay(part)
    learning = part.learning
    assert learning is not None
    assert (
        learning.counts["defaulted"] == 1 and learning.counts["late"] == 1 and learning.counts["unknown"] == 1
    )
    video = learner.arm_index[POINT]["video"]
    assert served_n(learner)[video] == 1 and learner.served[POINT].stats["b"][video][0] == 0.0


def test_an_explicit_reward_closes_the_decision_once_even_when_posted_twice() -> None:
    learner, log = learner_for(), Log()
    part = PartitionState(0, PartitionSetup(learner))
    key = PSEUDO.key("u1")
    decision_id = log.decision(key, NOW)
    log.reward(key, decision_id, 0.7, NOW + 5)
    log.reward(key, decision_id, 0.7, NOW + 6)
    log.replay(part)
    video = learner.arm_index[POINT]["video"]
    assert served_n(learner)[video] == 1
    assert learner.served[POINT].stats["b"][video][0] == pytest.approx(0.7)
    assert part.learning is not None and part.learning.counts["late"] == 1


def test_the_journey_reward_is_credited_to_every_decision_on_the_path() -> None:
    catalog = catalog_with(journey={"event": "onboarding_completed", "within_days": 7, "weight": 0.5})
    learner, log = learner_for(catalog), Log()
    part = PartitionState(0, PartitionSetup(learner))
    key, late = PSEUDO.key("u1"), PSEUDO.key("u2")
    log.decision(key, NOW, point=POINT)
    log.decision(key, NOW + 10, arm="checklist", point="tutorial:connect_data")
    log.decision(late, NOW)
    log.event(key, "onboarding_completed", NOW + 86_400)
    log.event(late, "onboarding_completed", NOW + 8 * 86_400)  # after its 7 days: 0, not 1
    log.replay(part)
    first = learner.served[POINT]
    video = learner.arm_index[POINT]["video"]
    # Per decision: its immediate reward (window closed: 0, weight 1) and the journey's (weight 0.5).
    assert first.stats["n"][video] == pytest.approx(2 * 1.0 + 2 * 0.5)
    assert first.stats["b"][video][0] == pytest.approx(0.5)  # only u1 activated in time
    connect = learner.served["tutorial:connect_data"]
    assert connect.stats["b"][learner.arm_index["tutorial:connect_data"]["checklist"]][0] == pytest.approx(
        0.5
    )


def test_completing_the_decided_step_rewards_a_step_decision() -> None:
    learner, log = learner_for(), Log()
    part = PartitionState(0, PartitionSetup(learner))
    key = PSEUDO.key("u1")
    log.event(key, "step_completed", NOW, step="welcome")
    log.event(key, "step_completed", NOW, step="profile")
    log.decision(key, NOW, arm="first_project", point=POINT_STEP)
    log.event(key, "feature_clicked", NOW + 30, feature="create_project")  # completes first_project
    log.replay(part)
    arm = learner.arm_index[POINT_STEP]["first_project"]
    assert learner.served[POINT_STEP].stats["b"][arm][0] == 1.0


def test_a_restored_partition_continues_exactly_where_the_snapshot_was() -> None:
    catalog = catalog_with(reward_window_s=600)
    log = Log()
    keys = [PSEUDO.key(f"u{i}") for i in range(30)]
    rng = np.random.default_rng(0)
    for i, key in enumerate(keys):
        decision_id = log.decision(key, NOW + i, arm=str(rng.choice(["video", "checklist"])))
        if i % 3 == 0:
            log.event(key, "tutorial_completed", NOW + i + 5, tutorial="first_project", variant="video")
        elif i % 3 == 1:
            log.reward(key, decision_id, 0.25, NOW + i + 5)
    log.event(keys[0], "session_started", NOW + 10_000)
    straight = PartitionState(0, PartitionSetup(learner_for(catalog)))
    log.replay(straight)
    # The same stream, with a crash at message 40 and recovery from that snapshot.
    first = PartitionState(0, PartitionSetup(learner_for(catalog)))
    log.replay(first)
    crashed = PartitionState(0, PartitionSetup(learner_for(catalog)))
    for seq, tail, data in log.messages[:40]:
        crashed.apply_message(seq, tail, data)
    recovered = PartitionState.restore(crashed.snapshot(), PartitionSetup(learner_for(catalog)))
    log.replay(recovered)  # a full redelivery: only what is after the snapshot applies
    for name, points in straight.learning.contributions.items():  # type: ignore[union-attr]
        for point, stats in points.items():
            for k, v in stats.items():
                np.testing.assert_allclose(recovered.learning.contributions[name][point][k], v)  # type: ignore[union-attr]
    assert recovered.learning.counts == straight.learning.counts  # type: ignore[union-attr]


def test_shards_serve_the_sum_of_all_partitions_contributions() -> None:
    """Partitions split over two shards, merged through published views, serve what one shard
    that owned every partition serves."""
    catalog = catalog_with(shadow="thompson")
    logs = {p: Log() for p in range(4)}
    rng = np.random.default_rng(1)
    for i in range(400):
        key = PSEUDO.key(f"user{i}")
        log = logs[partition_of(key, 4)]
        arm = str(rng.choice(["video", "checklist", "interactive"]))
        decision_id = log.decision(key, NOW + i, arm=arm)
        if rng.random() < (0.7 if arm == "video" else 0.2):
            log.reward(key, decision_id, 1.0, NOW + i + 1)
    one = learner_for(catalog)
    whole = {p: PartitionState(p, PartitionSetup(one)) for p in logs}
    a, b = learner_for(catalog, seed=1), learner_for(catalog, seed=2)
    split = {p: PartitionState(p, PartitionSetup(a if p < 2 else b)) for p in logs}
    for p, log in logs.items():
        log.replay(whole[p])
        log.replay(split[p])
    own_a = {p: split[p].learning for p in (0, 1)}
    own_b = {p: split[p].learning for p in (2, 3)}
    for p, part in split.items():  # every owner publishes; every shard loads the others' views
        blob = part.learning.published(p)  # type: ignore[union-attr]
        a.set_view(p, blob)
        b.set_view(p, blob)
    a.rebuild(own_a)  # type: ignore[arg-type]
    b.rebuild(own_b)  # type: ignore[arg-type]
    one.rebuild({p: part.learning for p, part in whole.items()})  # type: ignore[misc]
    x = np.array([1.0] + [0.0] * (DIM - 1))
    for learner in (a, b):
        for point, policy in learner.served.items():
            for k, v in one.served[point].stats.items():
                np.testing.assert_allclose(policy.stats[k], v, atol=1e-9)
        np.testing.assert_allclose(
            learner.served[POINT].probabilities(x, [0, 1, 2]), one.served[POINT].probabilities(x, [0, 1, 2])
        )
        for k, v in one.shadows[POINT].stats.items():
            np.testing.assert_allclose(learner.shadows[POINT].stats[k], v)


def test_a_drift_is_forgotten_on_every_shard_and_stays_forgotten_after_merges() -> None:
    catalog = catalog_with(reward_window_s=10_000)
    a, b = learner_for(catalog), learner_for(catalog, seed=1)
    part_a, part_b = PartitionState(0, PartitionSetup(a)), PartitionState(1, PartitionSetup(b))
    log_a, log_b = Log(), Log()
    rng = np.random.default_rng(2)
    for i in range(3000):  # a good arm that turns bad: ADWIN sees the drop
        key = PSEUDO.key(f"a{i}")
        decision_id = log_a.decision(key, NOW + i)
        log_a.reward(key, decision_id, float(rng.random() < (0.9 if i < 1500 else 0.05)), NOW + i)
    for i in range(200):
        key = PSEUDO.key(f"b{i}")
        decision_id = log_b.decision(key, NOW + i)
        log_b.reward(key, decision_id, 1.0, NOW + i)
    log_b.replay(part_b)
    b.set_view(0, part_a.learning.published(0))  # type: ignore[union-attr]
    log_a.replay(part_a)
    assert a.drifted, "the drop was not detected"
    record = a.take_drifts({0: part_a.learning})  # type: ignore[dict-item]
    assert record is not None and not a.drifted
    video = a.arm_index[POINT]["video"]
    served_after_drift = a.served[POINT].stats["n"][video]
    total = sum(p.learning.contributions["linear_igw"][POINT]["n"][video] for p in (part_a, part_b))  # type: ignore[union-attr]
    assert served_after_drift < 3000 < total
    # A merge on shard a keeps the forgetting.
    a.set_view(1, part_b.learning.published(1))  # type: ignore[union-attr]
    a.rebuild({0: part_a.learning})  # type: ignore[dict-item]
    assert a.served[POINT].stats["n"][video] == pytest.approx(served_after_drift + 200)
    # Shard b applies the record only once it has seen partition 0 as far as the record did.
    b.load_forgotten(record)
    b.rebuild({1: part_b.learning})  # type: ignore[dict-item]
    assert b.served[POINT].stats["n"][video] == 200 and b.forgotten == {}  # its view of 0 is older
    b.set_view(0, part_a.learning.published(0))  # type: ignore[union-attr]
    b.rebuild({1: part_b.learning})  # type: ignore[dict-item]
    np.testing.assert_allclose(b.served[POINT].stats["n"], a.served[POINT].stats["n"])


def test_the_activation_model_learns_who_activates_and_every_shard_serves_the_average() -> None:
    catalog = catalog_with(journey={"event": "onboarding_completed", "within_days": 1, "weight": 1.0})
    learner, log = learner_for(catalog), Log()
    part = PartitionState(0, PartitionSetup(learner))
    mobile_slot = BUILTIN_LAYOUT.index("device=mobile")
    rng = np.random.default_rng(3)
    for i in range(600):
        key = PSEUDO.key(f"a{i}")
        mobile = i % 2 == 0
        log.decision(key, NOW + i, context_slot=mobile_slot if mobile else None)
        if rng.random() < (0.8 if mobile else 0.1):
            log.event(key, "onboarding_completed", NOW + i + 60)
    log.event(PSEUDO.key("late"), "session_started", NOW + 3 * 86_400)  # every journey closes
    log.replay(part)
    assert part.learning is not None and part.learning.activation.examples == 600
    learner.rebuild({0: part.learning})
    mobile, desktop = np.zeros(DIM), np.zeros(DIM)
    mobile[0] = desktop[0] = 1.0
    mobile[mobile_slot] = 1.0
    p_mobile, p_desktop = learner.activation.predict(mobile), learner.activation.predict(desktop)
    assert p_mobile is not None and p_desktop is not None
    assert p_mobile > 0.6 and p_desktop < 0.3
    # Another shard that only sees the published partition serves the same model.
    other = learner_for(catalog)
    other.set_view(0, part.learning.published(0))
    other.rebuild({})
    assert other.activation.predict(mobile) == pytest.approx(p_mobile)


def test_features_are_recommended_from_what_similar_users_adopted() -> None:
    learner, log = learner_for(), Log()
    part = PartitionState(0, PartitionSetup(learner))
    rng = np.random.default_rng(0)
    groups = (("export", "share", "comment"), ("import_csv", "create_project", "invite"))
    for i in range(3000):  # two kinds of users, each adopting its own three features
        key = PSEUDO.key(f"r{i}")
        for feature in rng.permutation(groups[i % 2]):
            if rng.random() < 0.85:
                log.event(key, "feature_clicked", NOW + i, feature=str(feature))
    newcomers = [PSEUDO.key(f"new{j}") for j in range(40)]
    for j, key in enumerate(newcomers):  # newcomers who adopted two of a kind's features
        for feature in groups[j % 2][:2]:
            log.event(key, "feature_clicked", NOW + 4000 + j, feature=feature)
    log.replay(part)
    assert part.learning is not None
    queued = len(part.learning.recommender.queue)
    assert queued > 6000 and part.learning.recommender.train(10**6) == queued  # off the event path
    hits = 0
    for j, key in enumerate(newcomers):
        session = learner.session(key, part.users[key], {}, NOW + 5000, {})
        insights = part.learning.insights(key, part.users[key], part.vocab, session)
        assert not set(insights["recommended_features"]) & set(groups[j % 2][:2])  # never what they use
        hits += insights["recommended_features"][0] == groups[j % 2][2]
    assert hits >= 36  # chance: 10 of 40
    assert insights["activation_probability"] is None  # no activation outcome learned yet


def test_a_change_in_who_reaches_a_decision_is_detected_as_feature_drift() -> None:
    learner = learner_for()
    for i in range(4000):  # desktop users, then a campaign brings mobile users
        context = {"device_type": "mobile" if i >= 2000 else "desktop"}
        session = learner.session(PSEUDO.key(f"f{i}"), None, context, now=NOW + i, open_arms={})
        session.choose(POINT, ["interactive", "checklist"])
    assert learner.feature_drifts.get(f"{POINT}/device=mobile", 0) >= 1
    assert not learner.feature_drifts.get(f"{POINT}/new_user")  # everyone was new throughout
