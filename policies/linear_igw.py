"""Headstart's default contextual policy: ridge regression per arm, explored by inverse gap
weighting (SquareCB, Foster & Rakhlin 2020).

Each eligible arm gets probability ``1 / (k + γ (ŷ_best - ŷ_a))`` and the best estimate the rest,
with ``γ = gamma_scale · √t`` growing with the decisions learned from: an arm that looks worse
is tried in proportion to how close it is, and less as evidence accumulates. Propensities are
exact (logged for off-policy evaluation), and choosing plus learning costs a few numpy calls on
``k × d`` arrays. VW's ``--cb_explore_adf --squarecb`` explores the same way over an online
linear model; exact ridge estimates learn faster from few decisions.

>>> import math

import numpy as np
>>> policy = LinearIGW(["video", "checklist"], dim=2, seed=0)
>>> mobile, desktop = np.array([1.0, 1.0]), np.array([1.0, 0.0])
>>> for _ in range(200):
...     policy.update(mobile, 0, 1.0); policy.update(mobile, 1, 0.0)
...     policy.update(desktop, 0, 0.0); policy.update(desktop, 1, 1.0)
>>> policy.select(mobile, [0, 1]).arm, policy.select(desktop, [0, 1]).arm
(0, 1)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from policies.linear import LinearPolicy


class LinearIGW(LinearPolicy):
    name = "linear_igw"

    def __init__(
        self,
        arms: Sequence[str],
        dim: int = 0,
        seed: int = 0,
        ridge: float = 1.0,
        gamma_scale: float = 10.0,
        **common: Any,
    ) -> None:
        self.gamma_scale = gamma_scale
        super().__init__(arms, dim, seed, ridge, **common)

    def params(self) -> dict[str, Any]:
        return {**super().params(), "gamma_scale": self.gamma_scale}

    def probabilities(self, x: np.ndarray | None, eligible: Sequence[int]) -> np.ndarray:
        assert x is not None
        k = len(eligible)
        if k == 1:
            return np.ones(1)
        y = self.predictions(x, eligible)
        best = int(y.argmax())
        gamma = self.gamma_scale * math.sqrt(max(self.decisions, 1.0))
        p: np.ndarray = 1.0 / (k + gamma * (y[best] - y))
        p[best] = 0.0
        p[best] = 1.0 - p.sum()
        return p
