"""LinUCB (disjoint): the arm with the highest upper confidence bound of its ridge estimate.

Deterministic up to ties, so its logged propensities are 1: good to serve, poor to evaluate
other policies from. What River's ``LinUCBDisjoint`` does, at a fraction of the cost.

>>> import numpy as np
>>> policy = LinUCB(["a", "b"], dim=2, alpha=0.1)
>>> x = np.array([1.0, 0.0])
>>> for _ in range(20):
...     policy.update(x, 0, 0.0)
...     policy.update(x, 1, 1.0)
>>> policy.select(x, [0, 1]).arm
1
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from policies.base import greedy_with_ties
from policies.linear import LinearPolicy


class LinUCB(LinearPolicy):
    name = "linucb"

    def __init__(
        self,
        arms: Sequence[str],
        dim: int = 0,
        seed: int = 0,
        ridge: float = 1.0,
        alpha: float = 1.0,
        **common: Any,
    ) -> None:
        self.alpha = alpha
        super().__init__(arms, dim, seed, ridge, **common)

    def params(self) -> dict[str, Any]:
        return {**super().params(), "alpha": self.alpha}

    def probabilities(self, x: np.ndarray | None, eligible: Sequence[int]) -> np.ndarray:
        assert x is not None
        a_inv = self.a_inv[eligible]
        width = np.sqrt(np.einsum("i,kij,j->k", x, a_inv, x))
        return greedy_with_ties(self.theta[eligible] @ x + self.alpha * width)
