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

from policies.base import ArmMeans


class JourneyOrder(ArmMeans):
    """Counts pulls and rewards (for reports); they never change its choice."""

    name = "journey"

    def probabilities(self, x: np.ndarray | None, eligible: Sequence[int]) -> np.ndarray:
        p = np.zeros(len(eligible))
        p[int(np.argmin(eligible))] = 1.0
        return p
