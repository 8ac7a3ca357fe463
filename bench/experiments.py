"""``headstart bench experiments``: are the experiment statistics right?

The world: the simulated population of ``bench.learn`` (live profiles built by applying events
to :class:`engine.profile.UserState`, as the shards do). Each user's chance of activating within
7 days grows with their engagement before the experiment (their pre-exposure covariate), so
CUPED has something real to remove.

1. 1,000 **A/A tests**: users drawn from the population are assigned by
   :meth:`engine.experiments.Experiment.arm_for` (a new salt per test) to two arms that change
   nothing. The fixed-horizon test (Welch, one look at the end) and the sequential test (the
   always-valid interval, looked at after every tenth of the users) should each call a
   difference in at most 5% of them (α = 0.05). For contrast, the fixed-horizon test looked at
   ten times (the "peeking" mistake) is reported too.
2. 1,000 **A/B tests** with a known effect (the treatment multiplies each user's activation
   probability by ``1 + EFFECT``): the share each test detects is its power.
3. **CUPED**: the share of the outcome's variance removed by the pre-exposure engagement,
   averaged over the tests.
"""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from scipy import stats

from bench.common import write_result
from bench.learn import NOW, population
from engine.experiments import Arm, Experiment, always_valid_interval, analyze, cuped_adjusted

TESTS = 1000
USERS_PER_TEST = 4000
PEEKS = 10
EFFECT = 0.15  # relative: 15% more activations in the treatment arm
ALPHA = 0.05
POOL = 20_000
SEED = 11


def activation_probability(engagement: np.ndarray) -> np.ndarray:
    """The world's hidden model: more engaged users activate more often (about 12% on average)."""
    probability: np.ndarray = 1 / (1 + np.exp(-(-2.8 + 0.9 * np.log1p(engagement))))
    return probability


def run_tests(
    keys: np.ndarray, pre: np.ndarray, base_p: np.ndarray, effect: float, rng: np.random.Generator, tests: int
) -> dict[str, Any]:
    fixed = sequential = peeking = 0
    reductions = []
    for t in range(tests):
        exp = Experiment(id="sim", salt=f"sim-{effect}-{t}", arms=[Arm(id="control"), Arm(id="treatment")])
        chosen = rng.choice(len(keys), USERS_PER_TEST, replace=False)
        arms = np.array([exp.arm_for(str(k)) for k in keys[chosen]])
        treated = arms == "treatment"
        p = np.clip(base_p[chosen] * np.where(treated, 1 + effect, 1.0), 0, 1)
        outcome = (rng.random(USERS_PER_TEST) < p).astype(int)
        report = analyze(
            pl.DataFrame({"arm": arms, "outcome": outcome, "pre": pre[chosen]}),
            exp.weights(),
            control="control",
            alpha=ALPHA,
        )
        fixed += report["arms"]["treatment"]["cuped"]["p_value"] < ALPHA
        reductions.append(report["cuped_variance_reduction"])
        # Looks after each tenth of the users, in the order they arrived.
        seq_hit = peek_hit = False
        for look in range(1, PEEKS + 1):
            n = USERS_PER_TEST * look // PEEKS
            adjusted = cuped_adjusted(outcome[:n].astype(float), pre[chosen][:n])
            mine, base = adjusted[treated[:n]], adjusted[~treated[:n]]
            low, high = always_valid_interval(mine, base, ALPHA)
            seq_hit = seq_hit or low > 0 or high < 0
            peek_hit = peek_hit or stats.ttest_ind(mine, base, equal_var=False).pvalue < ALPHA
        sequential += seq_hit
        peeking += peek_hit
    return {
        "fixed": fixed / tests,
        "sequential": sequential / tests,
        "fixed_peeking": peeking / tests,
        "cuped_variance_reduction": float(np.mean(reductions)),
    }


def run(quick: bool = False, out_dir: Path | None = None) -> Path:
    started = dt.datetime.now(dt.UTC)
    tests = 100 if quick else TESTS
    rng = np.random.default_rng(SEED)
    users = population(POOL, rng)
    keys = np.array([f"user-{i}" for i in range(POOL)])
    pre = np.array([u.state.engagement_at(NOW) for u in users])
    base_p = activation_probability(pre)
    clock = time.perf_counter()
    aa = run_tests(keys, pre, base_p, 0.0, rng, tests)
    ab = run_tests(keys, pre, base_p, EFFECT, rng, tests)
    seconds = time.perf_counter() - clock
    metrics = {
        "aa_fpr_fixed": aa["fixed"],
        "aa_fpr_sequential": aa["sequential"],
        "aa_fpr_fixed_peeking": aa["fixed_peeking"],
        "power_fixed": ab["fixed"],
        "power_sequential": ab["sequential"],
        "cuped_variance_reduction": (aa["cuped_variance_reduction"] + ab["cuped_variance_reduction"]) / 2,
        "base_activation_rate": float(base_p.mean()),
        "seconds": seconds,
    }
    params = {
        "tests": tests,
        "users_per_test": USERS_PER_TEST,
        "peeks": PEEKS,
        "relative_effect": EFFECT,
        "alpha": ALPHA,
        "population": POOL,
        "seed": SEED,
        "fixed_test": "Welch t on the CUPED-adjusted outcome, one look at the end",
        "sequential_test": "always-valid interval (normal-mixture SPRT) on the CUPED-adjusted outcome, "
        f"{PEEKS} looks",
    }
    path = write_result("experiments", params, metrics, out_dir=out_dir, started_at=started)
    m = metrics
    print(
        f"A/A false positives: fixed {m['aa_fpr_fixed']:.1%}, sequential {m['aa_fpr_sequential']:.1%} "
        f"(fixed with peeking {m['aa_fpr_fixed_peeking']:.1%}); power at +{EFFECT:.0%}: "
        f"fixed {m['power_fixed']:.1%}, sequential {m['power_sequential']:.1%}; "
        f"CUPED removes {m['cuped_variance_reduction']:.1%} of the variance"
    )
    return path
