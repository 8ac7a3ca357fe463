"""The static journey: the first eligible arm in the catalog's order, always.

The baseline every learning policy is measured against, and the policy for users who did not
consent to personalization.

>>> policy = JourneyOrder(["video", "interactive", "checklist"])
>>> policy.select(None, [1, 2])
Choice(arm=1, propensity=1.0)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from policies.base import Policy, Stats


class JourneyOrder(Policy):
    name = "journey"

    def _initial_stats(self) -> Stats:
        k = len(self.arms)
        return {"n": np.zeros(k), "r": np.zeros(k)}  # kept for reports; never used to choose

    def probabilities(self, x: np.ndarray | None, eligible: Sequence[int]) -> np.ndarray:
        p = np.zeros(len(eligible))
        p[int(np.argmin(eligible))] = 1.0
        return p

    def _update(self, x: np.ndarray | None, arm: int, reward: float) -> None:
        self.stats["n"][arm] += 1.0
        self.stats["r"][arm] += reward
