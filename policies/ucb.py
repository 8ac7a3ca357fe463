"""UCB1: the arm with the highest optimistic mean (no context; deterministic up to ties).

>>> policy = UCB1(["a", "b"])
>>> policy.update(None, 0, 1.0)
>>> policy.select(None, [0, 1]).arm  # b was never tried: its bound is infinite
1
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from policies.base import ArmMeans, greedy_with_ties


class UCB1(ArmMeans):
    name = "ucb"

    def __init__(
        self, arms: Sequence[str], dim: int = 0, seed: int = 0, c: float = 1.0, **common: Any
    ) -> None:
        self.c = c
        super().__init__(arms, dim, seed, **common)

    def params(self) -> dict[str, Any]:
        return {**super().params(), "c": self.c}

    def probabilities(self, x: np.ndarray | None, eligible: Sequence[int]) -> np.ndarray:
        n, r = self.stats["n"][eligible], self.stats["r"][eligible]
        total = max(float(self.stats["n"].sum()), 1.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            bound = np.where(n > 0, r / n + self.c * np.sqrt(2.0 * np.log(total) / n), np.inf)
        return greedy_with_ties(bound)
