"""Experiment assignment and analysis, checked against independent computations."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from scipy import stats

from engine.experiments import (
    Arm,
    Experiment,
    Moments,
    always_valid_interval,
    analyze,
    analyze_moments,
    check_layers,
    cuped_adjusted,
    in_holdout,
    moments_by_arm,
    sample_ratio_mismatch,
)

USERS = [f"key-{i}" for i in range(100_000)]


def test_assignment_is_stable_and_matches_the_weights_on_100000_users() -> None:
    exp = Experiment(id="e", salt="s", arms=[Arm(id="control", weight=2), Arm(id="a"), Arm(id="b")])
    arms = [exp.arm_for(u) for u in USERS]
    assert arms == [exp.arm_for(u) for u in USERS]  # the same answer every time, anywhere
    counts = [arms.count(a) for a in ("control", "a", "b")]
    chi = stats.chisquare(counts, [50_000, 25_000, 25_000])
    assert chi.pvalue > 0.001, counts
    # Another salt is another, independent split.
    other = Experiment(id="e", salt="s2", arms=exp.arms)
    agree = sum(a == other.arm_for(u) for u, a in zip(USERS[:20_000], arms, strict=False)) / 20_000
    assert abs(agree - (0.5**2 + 0.25**2 + 0.25**2)) < 0.02


def test_raising_traffic_keeps_everyone_already_included_in_their_arm() -> None:
    arms = [Arm(id="control"), Arm(id="new_flow")]
    small = Experiment(id="e", salt="s", arms=arms, traffic=0.1)
    large = Experiment(id="e", salt="s", arms=arms, traffic=0.3)
    before = {u: small.arm_for(u) for u in USERS[:50_000]}
    after = {u: large.arm_for(u) for u in USERS[:50_000]}
    included = [u for u, a in before.items() if a is not None]
    assert abs(len(included) / 50_000 - 0.1) < 0.01
    assert all(after[u] == before[u] for u in included)
    assert abs(sum(a is not None for a in after.values()) / 50_000 - 0.3) < 0.01


def test_experiments_of_one_layer_never_share_a_user() -> None:
    arms = [Arm(id="control"), Arm(id="x")]
    left = Experiment(id="left", salt="a", arms=arms, layer="onboarding", layer_range=(0.0, 0.5))
    right = Experiment(id="right", salt="b", arms=arms, layer="onboarding", layer_range=(0.5, 1.0))
    both = [(left.arm_for(u), right.arm_for(u)) for u in USERS[:40_000]]
    assert not any(a is not None and b is not None for a, b in both)
    assert abs(sum(a is not None for a, _ in both) / 40_000 - 0.5) < 0.01
    assert check_layers([left, right]) == []
    overlapping = Experiment(id="o", salt="c", arms=arms, layer="onboarding", layer_range=(0.4, 0.6))
    assert "overlap" in check_layers([left, overlapping, right])[0]


def test_a_holdout_takes_its_share_of_users() -> None:
    held = sum(in_holdout(u, "holdout-2026", 0.05) for u in USERS)
    assert abs(held / len(USERS) - 0.05) < 0.003


def test_the_lift_and_p_value_agree_with_a_two_proportion_z_test() -> None:
    rng = np.random.default_rng(3)
    control = (rng.random(20_000) < 0.20).astype(int)
    treated = (rng.random(20_000) < 0.22).astype(int)
    rows = pl.DataFrame(
        {
            "arm": ["control"] * 20_000 + ["treated"] * 20_000,
            "outcome": np.concatenate([control, treated]),
            "pre": np.zeros(40_000),
        }
    )
    report = analyze(rows, {"control": 0.5, "treated": 0.5}, control="control")
    fixed = report["arms"]["treated"]["fixed"]
    # Independently: the 2x2 table's chi-square without continuity correction is the pooled
    # two-proportion z-test.
    table = [[treated.sum(), 20_000 - treated.sum()], [control.sum(), 20_000 - control.sum()]]
    z_p = stats.chi2_contingency(table, correction=False).pvalue
    assert fixed["lift"] == pytest.approx(treated.mean() - control.mean())
    assert fixed["p_value"] == pytest.approx(z_p, rel=0.05)
    se = np.sqrt(treated.var(ddof=1) / 20_000 + control.var(ddof=1) / 20_000)
    assert fixed["lift_low"] == pytest.approx(fixed["lift"] - stats.norm.ppf(0.975) * se, rel=1e-3)
    assert report["arms"]["treated"]["rate"] == pytest.approx(treated.mean())


def test_a_skewed_split_is_flagged_as_a_sample_ratio_mismatch() -> None:
    assert sample_ratio_mismatch({"control": 5000, "t": 5050}, {"control": 0.5, "t": 0.5}) > 0.1
    skewed = sample_ratio_mismatch({"control": 5000, "t": 5400}, {"control": 0.5, "t": 0.5})
    assert skewed < 0.001
    rows = pl.DataFrame({"arm": ["c"] * 5000 + ["t"] * 5400, "outcome": [0, 1] * 5200, "pre": [0.0] * 10400})
    report = analyze(rows, {"c": 0.5, "t": 0.5}, control="c")
    assert report["srm"]["mismatch"] and report["verdict"].startswith("invalid")


def test_cuped_removes_the_variance_the_covariate_explains() -> None:
    rng = np.random.default_rng(5)
    pre = rng.normal(size=50_000)
    outcome = 2.0 * pre + rng.normal(size=50_000)  # r^2 = 0.8
    adjusted = cuped_adjusted(outcome, pre)
    assert 1 - adjusted.var() / outcome.var() == pytest.approx(0.8, abs=0.01)
    assert adjusted.mean() == pytest.approx(outcome.mean())


def test_the_always_valid_interval_is_wider_than_the_fixed_one_and_covers() -> None:
    rng = np.random.default_rng(7)
    a, b = rng.normal(0.1, 1, 5000), rng.normal(0.0, 1, 5000)
    low, high = always_valid_interval(a, b)
    fixed = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert low < fixed.low and high > fixed.high and low < 0.1 < high


# ---------------------------------------------------------------------- the analysis from shards' sums


def test_the_shards_sums_give_the_same_report_as_the_rows() -> None:
    rng = np.random.default_rng(11)
    n = 6000
    arm = rng.choice(["control", "b"], n)
    pre = rng.gamma(2.0, 2.0, n)
    outcome = (rng.random(n) < 0.2 + 0.03 * (arm == "b") + 0.02 * pre.clip(0, 5)).astype(int)
    rows = pl.DataFrame({"arm": arm, "outcome": outcome, "pre": pre})
    weights = {"control": 0.5, "b": 0.5}
    whole = analyze(rows, weights, control="control")
    # Three shards each send their arms' sums; added up they are the whole.
    parts = [moments_by_arm(chunk) for chunk in (rows[:1000], rows[1000:3500], rows[3500:])]
    merged: dict[str, Moments] = {}
    for part in parts:
        for name, m in part.items():
            merged[name] = merged.get(name, Moments()).merged(m)
    from_sums = analyze_moments(merged, weights, control="control")
    for key in ("fixed", "cuped", "sequential"):
        for field, value in whole["arms"]["b"][key].items():
            assert from_sums["arms"]["b"][key][field] == pytest.approx(value, rel=1e-9, abs=1e-12)
    # And independently of this module: CUPED's lift equals the arrays' adjusted difference,
    # its p-value scipy's Welch test on them.
    adjusted = cuped_adjusted(outcome.astype(float), pre)
    welch_p = stats.ttest_ind(adjusted[arm == "b"], adjusted[arm == "control"], equal_var=False).pvalue
    assert from_sums["arms"]["b"]["cuped"]["p_value"] == pytest.approx(welch_p, rel=1e-6)
    reduction = 1 - adjusted.var() / outcome.var()
    assert from_sums["cuped_variance_reduction"] == pytest.approx(reduction, rel=1e-6)
