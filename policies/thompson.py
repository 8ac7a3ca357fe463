"""Thompson sampling with a Beta posterior per arm (no context; rewards in [0, 1]).

The chosen arm is the argmax of one posterior draw per arm; its propensity, which has no closed
form, is estimated from further draws (logged for off-policy evaluation).

>>> policy = ThompsonSampling(["a", "b"], seed=3)
>>> for _ in range(50):
...     policy.update(None, 1, 1.0)
...     policy.update(None, 0, 0.0)
>>> choice = policy.select(None, [0, 1])
>>> choice.arm, choice.propensity > 0.9
(1, True)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from policies.base import Choice, Policy, Stats

#: Posterior draws used to estimate a propensity.
PROPENSITY_DRAWS = 256


class ThompsonSampling(Policy):
    name = "thompson"

    def __init__(
        self,
        arms: Sequence[str],
        dim: int = 0,
        seed: int = 0,
        prior: tuple[float, float] = (1.0, 1.0),
        **common: Any,
    ) -> None:
        self.prior = (float(prior[0]), float(prior[1]))
        super().__init__(arms, dim, seed, **common)

    def params(self) -> dict[str, Any]:
        return {**super().params(), "prior": list(self.prior)}

    def _initial_stats(self) -> Stats:
        k = len(self.arms)
        return {"successes": np.zeros(k), "failures": np.zeros(k)}

    def _posterior(self, eligible: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        a = self.prior[0] + self.stats["successes"][eligible]
        b = self.prior[1] + self.stats["failures"][eligible]
        return a, b

    def probabilities(self, x: np.ndarray | None, eligible: Sequence[int]) -> np.ndarray:
        a, b = self._posterior(eligible)
        draws = self.rng.beta(a, b, size=(PROPENSITY_DRAWS, len(eligible)))
        wins = np.bincount(draws.argmax(axis=1), minlength=len(eligible)).astype(float)
        # Every arm keeps some probability: a zero propensity would make its logs unusable.
        wins += 0.5
        p: np.ndarray = wins / wins.sum()
        return p

    def select(self, x: np.ndarray | None, eligible: Sequence[int]) -> Choice:
        if not eligible:
            raise ValueError("no eligible arm to choose from")
        if len(eligible) == 1:
            return Choice(eligible[0], 1.0)
        a, b = self._posterior(eligible)
        i = int(self.rng.beta(a, b).argmax())
        return Choice(eligible[i], float(self.probabilities(x, eligible)[i]))

    def reward_totals(self) -> tuple[np.ndarray, np.ndarray]:
        return self.stats["successes"] + self.stats["failures"], self.stats["successes"]

    def accumulate(self, stats: Stats, x: np.ndarray | None, arm: int, reward: float, weight: float) -> None:
        stats["successes"][arm] += weight * reward
        stats["failures"][arm] += weight * (1.0 - reward)
