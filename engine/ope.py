"""Off-policy evaluation: what a candidate policy would have earned, from logged decisions.

Given logged decisions (context ``x``, chosen action, reward, and the logging policy's
propensity of that action) and the candidate's probabilities of every action in each logged
context, three estimators of the candidate's value, each with a 95% interval:

- **IPS** (inverse propensity scoring): unbiased, high variance;
- **SNIPS** (self-normalized IPS): a little biased, lower variance; interval by the delta method;
- **DR** (doubly robust): IPS corrected by a reward model (ridge per action, cross-fitted on two
  halves of the log so the model is never scored on the rows it was fitted on).

Written with numpy rather than taken from a library: the estimators are a few lines each, and the
maintained OPE libraries (Open Bandit Pipeline) pin old scikit-learn and torch versions.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> n = 4000
>>> x = np.column_stack([np.ones(n), rng.integers(0, 2, n)])
>>> actions = rng.integers(0, 2, n)                      # uniform logging over 2 actions
>>> p_true = np.where(actions == x[:, 1], 0.8, 0.2)      # action == segment pays
>>> rewards = (rng.random(n) < p_true).astype(float)
>>> target = np.column_stack([1 - x[:, 1], x[:, 1]])     # always choose the segment's action
>>> result = evaluate(target, x, actions, rewards, np.full(n, 0.5))
>>> all(abs(result[e].estimate - 0.8) < 0.03 for e in ("ips", "snips", "dr"))
True
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from scipy import stats

Z95 = float(stats.norm.ppf(0.975))


class Estimate(NamedTuple):
    estimate: float
    ci_low: float
    ci_high: float


def evaluate(
    target: np.ndarray,
    x: np.ndarray,
    actions: np.ndarray,
    rewards: np.ndarray,
    propensities: np.ndarray,
    ridge: float = 1.0,
) -> dict[str, Estimate]:
    """IPS, SNIPS and DR estimates of the value of a policy choosing with ``target``.

    ``target[i, a]``: the candidate's probability of action ``a`` in logged context ``i``;
    ``actions[i]``, ``rewards[i]``, ``propensities[i]``: what was logged.
    """
    n = len(actions)
    if n < 2:
        raise ValueError("off-policy evaluation needs at least two logged decisions")
    if np.any(propensities <= 0) or np.any(propensities > 1):
        raise ValueError("logged propensities must be in (0, 1]")
    rows = np.arange(n)
    weights = target[rows, actions] / propensities
    ips_terms = weights * rewards
    snips = float(ips_terms.sum() / max(weights.sum(), 1e-12))
    # Delta method: the influence of each row on the ratio of means.
    snips_influence = weights * (rewards - snips) / max(weights.mean(), 1e-12)
    q = cross_fitted_rewards(x, actions, rewards, target.shape[1], ridge)
    dr_terms = (target * q).sum(axis=1) + weights * (rewards - q[rows, actions])
    return {
        "ips": _mean_interval(ips_terms),
        "snips": _interval(snips, snips_influence),
        "dr": _mean_interval(dr_terms),
    }


def cross_fitted_rewards(
    x: np.ndarray, actions: np.ndarray, rewards: np.ndarray, n_actions: int, ridge: float = 1.0
) -> np.ndarray:
    """Predicted reward of every action in every logged context, each half of the log predicted
    by ridge models fitted on the other half."""
    n, d = x.shape
    q = np.zeros((n, n_actions))
    folds = np.arange(n) % 2
    for fold in (0, 1):
        train, test = folds != fold, folds == fold
        for action in range(n_actions):
            rows = train & (actions == action)
            gram = x[rows].T @ x[rows] + ridge * np.eye(d)
            theta = np.linalg.solve(gram, x[rows].T @ rewards[rows])
            q[test, action] = np.clip(x[test] @ theta, 0.0, 1.0)
    return q


def _mean_interval(terms: np.ndarray) -> Estimate:
    return _interval(float(terms.mean()), terms - terms.mean())


def _interval(estimate: float, influence: np.ndarray) -> Estimate:
    half = Z95 * float(influence.std(ddof=1)) / math.sqrt(len(influence))
    return Estimate(estimate, estimate - half, estimate + half)
