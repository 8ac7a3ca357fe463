"""`headstart report signals` and `report fairness` on replayed decision logs."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from headstart.reports.signals import fairness_report, mutual_information, signals_report


def synthetic(n: int = 4000, seed: int = 0) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Mobile users earn rewards and activate; engagement predicts activation; noise nothing."""
    rng = np.random.default_rng(seed)
    mobile = rng.integers(0, 2, n).astype(float)
    engagement = rng.exponential(1.0, n)
    noise = rng.normal(size=n)
    reward = (rng.random(n) < np.where(mobile == 1, 0.7, 0.2)).astype(float)
    activated = rng.random(n) < 1 / (1 + np.exp(-(2 * engagement - 2)))
    decisions = pl.DataFrame(
        {
            "point": ["tutorial:t"] * n,
            "action": rng.choice(["a", "b"], n),
            "reward": reward,
            "propensity": np.full(n, 0.5),
            "x1_device=mobile": mobile,
            "x2_log_engagement": engagement,
            "x3_noise": noise,
            "group_device_type": np.where(mobile == 1, "mobile", "desktop"),
            "group_country": rng.choice(["de", "fr"], n),
        }
    )
    outcomes = pl.DataFrame(
        {
            "x1_device=mobile": mobile,
            "x2_log_engagement": engagement,
            "x3_noise": noise,
            "activated": activated,
        }
    )
    return decisions, outcomes


def test_mutual_information_of_independent_and_identical_series() -> None:
    rng = np.random.default_rng(1)
    a = pl.Series(rng.integers(0, 2, 5000))
    assert mutual_information(a, a) == pytest.approx(1.0, abs=0.01)
    assert mutual_information(a, pl.Series(rng.integers(0, 2, 5000))) < 0.002


def test_signals_rank_what_predicts_reward_and_activation_and_flag_noise() -> None:
    report = signals_report(*synthetic())
    by_name = {row["feature"]: row for row in report["signals"]}
    assert by_name["device=mobile"]["mi_reward_bits"] > 0.1
    assert by_name["log_engagement"]["mi_activation_bits"] > 0.05
    assert by_name["log_engagement"]["activation_weight"] > 0.3
    assert by_name["noise"]["low_value"] and not by_name["device=mobile"]["low_value"]
    assert report["signals"][-1]["feature"] == "noise"


def test_fairness_flags_outcome_gaps_between_groups_and_not_balanced_exposure() -> None:
    decisions, _ = synthetic()
    report = fairness_report(decisions, ratio=0.8, min_group=30)
    device = report["points"]["tutorial:t"]["device_type"]
    assert device["outcome_rate"]["flagged"] and device["outcome_rate"]["ratio"] < 0.4
    assert not device["exposure:a"]["flagged"]  # both groups see arm a about half the time
    country = report["points"]["tutorial:t"]["country"]
    assert not country["outcome_rate"]["flagged"]
    assert any("device_type / outcome_rate" in flag for flag in report["flagged"])
    with pytest.raises(ValueError, match="ratio"):
        fairness_report(decisions, ratio=0)


def test_a_feature_only_some_decisions_had_is_judged_on_those() -> None:
    """After a catalog change, a feature the older layout lacked is null on its decisions."""
    decisions, outcomes = synthetic()
    n = decisions.height
    had = np.arange(n) % 2 == 0
    plan = (decisions["reward"].to_numpy() > 0.5).astype(float)  # predicts reward exactly
    column = pl.Series("x4_trait:plan=pro", np.where(had, plan, np.nan)).fill_nan(None)
    decisions = decisions.with_columns(column)
    outcomes = outcomes.with_columns(column)
    report = signals_report(decisions, outcomes)
    row = next(r for r in report["signals"] if r["feature"] == "trait:plan=pro")
    assert row["mi_reward_bits"] > 0.8  # the full entropy of the reward, on the decisions that had it
    assert row["activation_weight"] is not None
