"""Off-policy estimators against policies whose true value is known."""

from __future__ import annotations

import numpy as np
import pytest

from engine.ope import evaluate


def logged(n: int, seed: int, logging: np.ndarray | None = None) -> tuple[np.ndarray, ...]:
    """Two segments, three actions; action == segment pays 0.7, others 0.2."""
    rng = np.random.default_rng(seed)
    segment = rng.integers(0, 2, n)
    x = np.column_stack([np.ones(n), segment])
    probs = np.full((n, 3), 1 / 3) if logging is None else logging[segment]
    actions = np.array([rng.choice(3, p=p) for p in probs])
    rewards = (rng.random(n) < np.where(actions == segment, 0.7, 0.2)).astype(float)
    return x, segment, actions, rewards, probs[np.arange(n), actions]


def test_estimators_recover_a_known_value_and_their_intervals_cover_it() -> None:
    covered = {"ips": 0, "snips": 0, "dr": 0}
    trials = 40
    for seed in range(trials):
        x, segment, actions, rewards, propensities = logged(3000, seed)
        target = np.zeros((len(actions), 3))
        target[np.arange(len(actions)), segment] = 1.0  # always the paying action: true value 0.7
        for name, e in evaluate(target, x, actions, rewards, propensities).items():
            covered[name] += e.ci_low <= 0.7 <= e.ci_high
    # 95% intervals: allow for the sampling of 40 trials.
    assert all(c / trials >= 0.85 for c in covered.values()), covered


def test_non_uniform_logging_is_corrected_by_the_propensities() -> None:
    # The logger mostly shows action 2 (which pays 0.2 everywhere): its own value is low.
    logging = np.array([[0.1, 0.1, 0.8], [0.1, 0.1, 0.8]])
    x, segment, actions, rewards, propensities = logged(20000, 1, logging)
    target = np.zeros((len(actions), 3))
    target[np.arange(len(actions)), segment] = 1.0
    result = evaluate(target, x, actions, rewards, propensities)
    assert rewards.mean() < 0.3
    for e in result.values():
        assert e.estimate == pytest.approx(0.7, abs=0.04)


def test_bad_propensities_are_refused() -> None:
    x, _, actions, rewards, propensities = logged(10, 0)
    with pytest.raises(ValueError, match="propensities"):
        evaluate(np.full((10, 3), 1 / 3), x, actions, rewards, propensities * 0)
