"""The apprentice report: how the shadow policy would have done, from the served policy's logs.

Shadow mode (Personalizer's apprentice mode) scores a second policy on every decision and logs
its probability of every eligible arm beside the served choice. Per decision point this report
gives how often the shadow's own draw agreed with the served arm, the shadow's estimated value
from the served decisions (SNIPS and doubly robust, with 95% intervals, :mod:`engine.ope`) beside
the served policy's observed value, and a verdict:

- ``shadow better`` (ready to switch): the doubly robust interval lies above the served value;
- ``shadow worse``: it lies below;
- ``not enough data``: fewer than :data:`MIN_DECISIONS` scored decisions, or an interval that
  still holds the served value.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> n = 2000
>>> actions = rng.integers(0, 2, n)                        # served: uniform over 2 arms
>>> rewards = (rng.random(n) < np.where(actions == 1, 0.8, 0.2)).astype(float)
>>> log = ShadowLog(["a", "b"], np.ones((n, 1)), actions, rewards, np.full(n, 0.5),
...                 np.tile([0.05, 0.95], (n, 1)), actions == 1)
>>> point = point_report(log)
>>> point["verdict"], round(point["agreement"], 1), abs(point["shadow"]["dr"]["estimate"] - 0.77) < 0.03
('shadow better', 0.5, True)
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from engine import ope
from headstart.reports.evaluate import ReplayedLog, ShadowLog

#: Scored decisions a point needs before it gets a verdict: fewer give intervals too wide.
MIN_DECISIONS = 50

BETTER, WORSE, UNDECIDED = "shadow better", "shadow worse", "not enough data"


def shadow_report(replayed: ReplayedLog, min_decisions: int = MIN_DECISIONS) -> dict[str, Any]:
    """The apprentice report of an instance's replayed log: every decision point a shadow scored."""
    points = {point: point_report(log, min_decisions) for point, log in sorted(replayed.shadow.items())}
    return {
        "served_policy": replayed.served_policy,
        "shadow_policy": replayed.shadow_policy,
        "min_decisions": min_decisions,
        "points": points,
        "ready_to_switch": bool(points) and all(p["verdict"] == BETTER for p in points.values()),
    }


def point_report(log: ShadowLog, min_decisions: int = MIN_DECISIONS) -> dict[str, Any]:
    """One decision point: agreement, the served value observed, the shadow's estimates, a verdict."""
    n = len(log.actions)
    served = _mean_with_interval(log.rewards)
    report: dict[str, Any] = {
        "decisions": n,
        "agreement": float(log.agreed.mean()) if n else None,
        "served": served,
        "shadow": None,
        "verdict": UNDECIDED,
        "why": f"{n} scored decisions; {min_decisions} are needed",
    }
    if n < max(min_decisions, 2):
        return report
    estimates = ope.evaluate(log.target, log.x, log.actions, log.rewards, log.propensities)
    report["shadow"] = {name: estimates[name]._asdict() for name in ("snips", "dr")}
    dr, observed = estimates["dr"], float(log.rewards.mean())
    if dr.ci_low > observed:
        report["verdict"], report["why"] = BETTER, _compare(dr, observed, "above")
    elif dr.ci_high < observed:
        report["verdict"], report["why"] = WORSE, _compare(dr, observed, "below")
    else:
        report["why"] = (
            f"the shadow's interval [{dr.ci_low:.3f}, {dr.ci_high:.3f}] still holds the served "
            f"value {observed:.3f}: more decisions will tell"
        )
    return report


def _compare(dr: ope.Estimate, served: float, side: str) -> str:
    return (
        f"the shadow's doubly robust interval [{dr.ci_low:.3f}, {dr.ci_high:.3f}] lies {side} the "
        f"served policy's observed {served:.3f}"
    )


def _mean_with_interval(values: np.ndarray) -> dict[str, float | None]:
    if len(values) == 0:
        return {"value": None, "ci_low": None, "ci_high": None}
    mean = float(values.mean())
    half = ope.Z95 * float(values.std(ddof=1)) / math.sqrt(len(values)) if len(values) > 1 else 0.0
    return {"value": mean, "ci_low": mean - half, "ci_high": mean + half}
