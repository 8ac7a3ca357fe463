"""The apprentice report's verdicts from logs whose truth is known."""

from __future__ import annotations

import numpy as np
import polars as pl

from headstart.reports.evaluate import ReplayedLog, ShadowLog
from headstart.reports.shadow import BETTER, UNDECIDED, WORSE, point_report, shadow_report

RNG = np.random.default_rng(3)


def uniform_log(n: int, shadow_b: float) -> ShadowLog:
    """A uniformly exploring served policy over arms a (pays 0.2) and b (pays 0.8), and a shadow
    choosing b with probability ``shadow_b`` in every context."""
    actions = RNG.integers(0, 2, n)
    rewards = (RNG.random(n) < np.where(actions == 1, 0.8, 0.2)).astype(float)
    target = np.tile([1 - shadow_b, shadow_b], (n, 1))
    draws = (RNG.random(n) < shadow_b).astype(int)
    return ShadowLog(["a", "b"], np.ones((n, 1)), actions, rewards, np.full(n, 0.5), target, draws == actions)


def test_a_shadow_that_prefers_the_paying_arm_is_better_and_one_that_avoids_it_worse() -> None:
    better, worse = point_report(uniform_log(1500, 0.95)), point_report(uniform_log(1500, 0.05))
    assert better["verdict"] == BETTER and worse["verdict"] == WORSE
    # True values: 0.05 * 0.2 + 0.95 * 0.8 = 0.77 and 0.23; each interval covers its own.
    for report, truth in ((better, 0.77), (worse, 0.23)):
        for estimator in ("snips", "dr"):
            estimate = report["shadow"][estimator]
            assert estimate["ci_low"] <= truth <= estimate["ci_high"], (estimator, estimate)
    assert abs(better["served"]["value"] - 0.5) < 0.05


def test_too_few_decisions_or_a_shadow_like_the_served_policy_give_no_verdict() -> None:
    few = point_report(uniform_log(30, 0.95))
    assert few["verdict"] == UNDECIDED and few["shadow"] is None and "50 are needed" in few["why"]
    alike = point_report(uniform_log(1500, 0.5))
    assert alike["verdict"] == UNDECIDED and "still holds" in alike["why"]


def test_ready_to_switch_only_when_better_at_every_point() -> None:
    def replayed(**logs: ShadowLog) -> ReplayedLog:
        nothing = pl.DataFrame()
        policies = {"served_policy": "epsilon_greedy", "shadow_policy": "ucb"}
        return ReplayedLog(nothing, nothing, {}, shadow=logs, **policies)

    assert shadow_report(replayed(p1=uniform_log(1500, 0.95)))["ready_to_switch"] is True
    mixed = shadow_report(replayed(p1=uniform_log(1500, 0.95), p2=uniform_log(1500, 0.05)))
    assert mixed["ready_to_switch"] is False and mixed["points"]["p2"]["verdict"] == WORSE
    assert shadow_report(replayed())["ready_to_switch"] is False
