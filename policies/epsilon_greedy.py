"""Epsilon-greedy over arms' mean rewards (no context).

>>> policy = EpsilonGreedy(["a", "b"], epsilon=0.0, seed=1)
>>> policy.update(None, 1, 1.0); policy.update(None, 0, 0.0)
>>> policy.select(None, [0, 1])
Choice(arm=1, propensity=1.0)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from policies.base import ArmMeans, greedy_with_ties


class EpsilonGreedy(ArmMeans):
    name = "epsilon_greedy"

    def __init__(
        self, arms: Sequence[str], dim: int = 0, seed: int = 0, epsilon: float = 0.1, **common: Any
    ) -> None:
        if not 0.0 <= epsilon <= 1.0:
            raise ValueError("epsilon must be in [0, 1]")
        self.epsilon = epsilon
        super().__init__(arms, dim, seed, **common)

    def params(self) -> dict[str, Any]:
        return {**super().params(), "epsilon": self.epsilon}

    def probabilities(self, x: np.ndarray | None, eligible: Sequence[int]) -> np.ndarray:
        n, r = self.stats["n"][eligible], self.stats["r"][eligible]
        # An arm never tried counts as the best: each is tried before the greedy part settles.
        means = np.where(n > 0, r / np.maximum(n, 1.0), np.inf)
        k = len(eligible)
        return self.epsilon / k + (1.0 - self.epsilon) * greedy_with_ties(means)
