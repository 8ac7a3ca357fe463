"""The contract every policy in policies/ meets (found automatically, so a new policy is tested
the moment it exists): seeded determinism, snapshot round-trip, only eligible arms, probabilities
that sum to 1 and agree with the logged propensity, and exact merging across shards."""

from __future__ import annotations

import numpy as np
import pytest

from policies import available, create
from policies.base import Policy

ARMS = ["video", "interactive", "checklist", "advanced", "none", "tour", "doc", "webinar"]
DIM = 6
NAMES = sorted(available())


def make(name: str, seed: int = 7, **params: object) -> Policy:
    cls = available()[name]
    return create(name, ARMS, dim=DIM if cls.contextual else 0, seed=seed, **params)


def stream(seed: int, n: int) -> list[tuple[np.ndarray, list[int], float]]:
    """Contexts, eligible arm sets and a reward source (uniform in [0, 1])."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        x = np.concatenate([[1.0], rng.normal(size=DIM - 1)])
        eligible = sorted(rng.choice(len(ARMS), size=int(rng.integers(1, len(ARMS) + 1)), replace=False))
        out.append((x, [int(a) for a in eligible], float(rng.random())))
    return out


def run(policy: Policy, events: list[tuple[np.ndarray, list[int], float]]) -> list[tuple[int, float]]:
    choices = []
    for x, eligible, reward in events:
        context = x if policy.contextual else None
        choice = policy.select(context, eligible)
        policy.update(context, choice.arm, reward)
        choices.append((choice.arm, round(choice.propensity, 12)))
    return choices


def test_every_module_registers_a_policy() -> None:
    assert {"journey", "epsilon_greedy", "thompson", "ucb", "linucb", "linear_igw"} <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_seeded_runs_are_identical(name: str) -> None:
    events = stream(1, 300)
    assert run(make(name), events) == run(make(name), events)


@pytest.mark.parametrize("name", NAMES)
def test_only_eligible_arms_with_probabilities_summing_to_one(name: str) -> None:
    policy = make(name)
    for x, eligible, reward in stream(2, 300):
        context = x if policy.contextual else None
        p = policy.probabilities(context, eligible)
        assert p.shape == (len(eligible),) and np.all(p >= 0) and p.sum() == pytest.approx(1.0)
        choice = policy.select(context, eligible)
        assert choice.arm in eligible and 0 < choice.propensity <= 1
        policy.update(context, choice.arm, reward)


@pytest.mark.parametrize("name", NAMES)
def test_snapshot_round_trip_continues_identically(name: str) -> None:
    original = make(name)
    run(original, stream(3, 200))
    restored = Policy.restore(original.snapshot())
    assert type(restored) is type(original) and restored.params() == original.params()
    later = stream(4, 100)
    assert run(restored, later) == run(original, later)


@pytest.mark.parametrize("name", NAMES)
def test_summed_partition_contributions_equal_learning_on_one(name: str) -> None:
    """What the engine does across shards: each partition accumulates what its rewards add,
    every shard serves the sum, and keeps it current with its own updates between merges."""
    events = stream(5, 400)
    single = make(name)
    shard = make(name)  # serves the merged sum, and learns its own partitions' rewards live
    partitions = [single.zero_stats() for _ in range(4)]
    for i, (x, eligible, reward) in enumerate(events):
        arm = eligible[i % len(eligible)]  # the same logged choices for both
        context = x if single.contextual else None
        weight = 0.5 if i % 7 == 0 else 1.0
        single.update(context, arm, reward, weight)
        single.accumulate(partitions[i % 4], context, arm, reward, weight)
        if i % 4 == 0:
            shard.update(context, arm, reward, weight)  # a partition this shard owns
        if i % 100 == 99:  # a merge: the sum of every partition's contribution
            shard.load_stats({k: sum(p[k] for p in partitions) for k in single.stats})
    for key in single.stats:
        np.testing.assert_allclose(shard.stats[key], single.stats[key], rtol=1e-9, atol=1e-9)
    x, eligible, _ = events[-1]
    context = x if single.contextual else None
    if name != "thompson":  # Thompson's probabilities are Monte Carlo estimates
        np.testing.assert_allclose(
            shard.probabilities(context, eligible), single.probabilities(context, eligible), atol=1e-6
        )


@pytest.mark.parametrize("name", NAMES)
def test_incremental_updates_match_loading_the_same_statistics(name: str) -> None:
    """Derived state kept up to date per update (e.g. Sherman-Morrison) equals recomputing it."""
    events = stream(6, 200)
    live = make(name, detect_drift=False)
    for i, (x, eligible, reward) in enumerate(events):
        live.update(x if live.contextual else None, eligible[0], reward, 1.0 + (i % 3) / 2)
    loaded = make(name, detect_drift=False)
    loaded.load_stats(live.stats)
    x, eligible, _ = events[-1]
    context = x if live.contextual else None
    if name != "thompson":
        np.testing.assert_allclose(
            live.probabilities(context, eligible), loaded.probabilities(context, eligible), atol=1e-9
        )


@pytest.mark.parametrize("name", [n for n in NAMES if n != "journey"])
def test_learning_policies_move_toward_the_better_arm(name: str) -> None:
    policy = make(name, seed=11)
    rng = np.random.default_rng(0)
    eligible = [0, 1, 2]
    late = []
    for t in range(3000):
        x = np.concatenate([[1.0], rng.normal(size=DIM - 1) * 0.1])
        context = x if policy.contextual else None
        choice = policy.select(context, eligible)
        reward = float(rng.random() < (0.8 if choice.arm == 2 else 0.3))
        policy.update(context, choice.arm, reward)
        if t >= 2000:
            late.append(choice.arm)
    assert late.count(2) / len(late) > 0.7


def test_unknown_policy_names_are_refused() -> None:
    with pytest.raises(KeyError, match="no policy named"):
        create("oracle", ARMS)


@pytest.mark.parametrize("name", ["epsilon_greedy", "linear_igw"])
def test_a_drop_in_reward_is_detected_and_starts_learning_over(name: str) -> None:
    policy = make(name)
    x = np.ones(DIM)
    context = x if policy.contextual else None
    rng = np.random.default_rng(0)
    for _ in range(3000):  # rising then steady: learning, not drift
        policy.update(context, 0, float(rng.random() < 0.8))
    assert policy.drifts == 0
    for _ in range(3000):  # the world changed: the same choice now mostly fails
        policy.update(context, 0, float(rng.random() < 0.1))
    assert policy.drifts >= 1
    # What was learned before the drop is gone: only what came after it remains.
    assert policy.stats["n"][0] < 3000


def test_drift_detection_can_be_turned_off() -> None:
    policy = create("epsilon_greedy", ARMS, detect_drift=False)
    for reward in [1.0] * 2000 + [0.0] * 2000:
        policy.update(None, 0, reward)
    assert policy.drifts == 0 and policy.stats["n"][0] == 4000


@pytest.mark.parametrize("name", NAMES)
def test_reward_totals_count_weighted_rewards(name: str) -> None:
    policy = make(name, detect_drift=False)
    x = np.ones(DIM)
    context = x if policy.contextual else None
    policy.update(context, 1, 1.0, weight=0.5)
    policy.update(context, 1, 0.0)
    n, total = policy.reward_totals()
    assert n[1] == pytest.approx(1.5) and total[1] == pytest.approx(0.5) and n[0] == total[0] == 0


@pytest.mark.parametrize("name", NAMES)
def test_every_statistic_runs_over_arms_along_its_first_axis(name: str) -> None:
    """What lets a catalog change keep statistics by arm name (engine.learning.remap_arms):
    learning about one arm changes only that arm's row of each statistic."""
    policy = make(name)
    stats = policy.zero_stats()
    assert all(v.shape[0] == len(ARMS) for v in stats.values())
    x = np.concatenate([[1.0], np.ones(DIM - 1)])
    policy.accumulate(stats, x if policy.contextual else None, 2, 1.0, 1.0)
    for value in stats.values():
        others = np.delete(value, 2, axis=0)
        assert not others.any()
