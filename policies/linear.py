"""Ridge regression per arm, learned one reward at a time: what the contextual policies share.

The statistics are additive (per arm: the Gram matrix ``A = Σ x xᵀ``, ``b = Σ r x``, the count),
so shards merge exactly; the inverse of ``λI + A`` is kept up to date by Sherman-Morrison
(O(d²) per update) and recomputed only after a merge or restore.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
from scipy.linalg.blas import daxpy, dger

from policies.base import Policy, Stats


class LinearPolicy(Policy):
    """Abstract: per-arm ridge estimates ``theta[a] = (λI + A_a)⁻¹ b_a``."""

    contextual = True
    feature_axes: ClassVar[dict[str, tuple[int, ...]]] = {"A": (1, 2), "b": (1,)}

    def __init__(
        self, arms: Sequence[str], dim: int = 0, seed: int = 0, ridge: float = 1.0, **common: Any
    ) -> None:
        if dim < 1:
            raise ValueError(f"{type(self).__name__} needs the context dimension (dim >= 1)")
        self.ridge = ridge
        super().__init__(arms, dim, seed, **common)

    def params(self) -> dict[str, Any]:
        return {**super().params(), "ridge": self.ridge}

    def _initial_stats(self) -> Stats:
        k, d = len(self.arms), self.dim
        return {"A": np.zeros((k, d, d)), "b": np.zeros((k, d)), "n": np.zeros(k), "r": np.zeros(k)}

    def _refresh(self) -> None:
        eye = self.ridge * np.eye(self.dim)
        self.a_inv = np.linalg.inv(eye + self.stats["A"])
        self.theta = np.einsum("kij,kj->ki", self.a_inv, self.stats["b"])
        self.decisions = float(self.stats["n"].sum())
        # Per-arm views, so an update indexes a list, not a 3-D array.
        self._gram = list(self.stats["A"])
        self._b = list(self.stats["b"])
        self._inv = list(self.a_inv)

    def accumulate(self, stats: Stats, x: np.ndarray | None, arm: int, reward: float, weight: float) -> None:
        assert x is not None
        dger(weight, x, x, a=stats["A"][arm].T, overwrite_a=1)
        daxpy(x, stats["b"][arm], a=weight * reward)
        stats["n"][arm] += weight
        stats["r"][arm] += weight * reward

    def _update(self, x: np.ndarray | None, arm: int, reward: float, weight: float) -> None:
        assert x is not None
        # Rank-one updates in place through BLAS: a third of the numpy equivalent's time,
        # which is most of a decision's budget. The matrices are symmetric, so the transposed
        # (Fortran-ordered) view BLAS updates is the same matrix.
        gram, b, a_inv = self._gram[arm], self._b[arm], self._inv[arm]
        dger(weight, x, x, a=gram.T, overwrite_a=1)
        daxpy(x, b, a=weight * reward)
        self.stats["n"][arm] += weight
        self.stats["r"][arm] += weight * reward
        self.decisions += weight
        # Sherman-Morrison for A + w x xᵀ.
        u = a_inv @ x
        dger(-weight / (1.0 + weight * float(x @ u)), u, u, a=a_inv.T, overwrite_a=1)
        self.theta[arm] = a_inv @ b

    def predictions(self, x: np.ndarray, eligible: Sequence[int]) -> np.ndarray:
        y: np.ndarray = self.theta @ x
        return y if len(eligible) == len(self.arms) else y[eligible]
