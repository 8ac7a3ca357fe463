"""Experiments: deterministic assignment and the statistics of their analysis.

Assignment hashes the user's (pseudonymized) key with the experiment's salt, so it is the same
on every shard, after restarts and rescaling, with nothing stored:

- a **layer** splits users between the experiments that must not overlap: each experiment owns
  a fixed range of the layer's hash space (``layer_range``), so changing one experiment leaves
  the others' users where they were;
- **traffic** then includes a share of the range's users by a second hash: raising it keeps
  everyone already included (and in the same arm), lowering it drops only the newest;
- the **arm** comes from a third hash and the arms' weights;
- a **holdout** (a share of all users, by its own salt) gets the default flow in every
  experiment.

Analysis (:func:`analyze`) works on one row per exposed user (arm, outcome, pre-exposure
covariate): per arm the users, conversions and rate; against the control the lift with a
Welch confidence interval and p-value (scipy), the same after CUPED (the outcome adjusted by
its regression on the pre-exposure covariate, which removes the variance it explains), an
always-valid (sequential) confidence interval that may be looked at any number of times (a
mixture sequential probability ratio test, Johari et al., "Always valid inference", 2017),
a sample-ratio-mismatch check (chi-square against the arms' weights) and a verdict.

>>> exp = Experiment(id="welcome_copy", salt="s1", arms=[Arm(id="control"), Arm(id="short")])
>>> arm = exp.arm_for("user-key-1")
>>> arm in ("control", "short") and exp.arm_for("user-key-1") == arm
True
"""

from __future__ import annotations

import hashlib
import itertools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import polars as pl
from pydantic import BaseModel, ConfigDict, Field, model_validator
from scipy import stats

#: Hash space resolution: assignment shares are exact to 1 in 10,000.
BUCKETS = 10_000
#: The always-valid interval's mixing variance, as a multiple of the outcome's variance per
#: user. Any value chosen before the data keeps the interval valid; this one makes it narrowest
#: at about 2,000 users per arm (where the mixing variance is ~8 times the estimate's variance;
#: Johari et al., section 4.2), about 1.5 times the fixed-horizon interval there.
MIXING_VARIANCE_SCALE = 0.008


def unit_hash(*parts: str) -> float:
    """A stable number in [0, 1) for ``parts`` (blake2b: fast, keyed by its inputs only)."""
    digest = hashlib.blake2b(":".join(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % BUCKETS / BUCKETS


class Arm(BaseModel):
    """One variant of an experiment; ``weight`` is its share relative to the other arms."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=r"^[a-z0-9_]{1,40}$")
    weight: float = Field(1.0, gt=0)


class Experiment(BaseModel):
    """An experiment's assignment: salt, layer and range, traffic and arms (the first arm is
    the control the others are compared with)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=r"^[a-z0-9_]{1,40}$")
    salt: str = Field(min_length=1)
    arms: list[Arm] = Field(min_length=2)
    layer: str | None = Field(None, description="experiments of one layer never share a user")
    layer_range: tuple[float, float] = (0.0, 1.0)
    traffic: float = Field(1.0, ge=0.0, le=1.0, description="share of the layer range's users included")

    @model_validator(mode="after")
    def _checked(self) -> Experiment:
        low, high = self.layer_range
        if not 0.0 <= low < high <= 1.0:
            raise ValueError(f"layer_range must be within [0, 1] and not empty, got {self.layer_range}")
        ids = [a.id for a in self.arms]
        if len(set(ids)) != len(ids):
            raise ValueError(f"arm ids must be unique, got {ids}")
        return self

    @property
    def control(self) -> str:
        return self.arms[0].id

    def weights(self) -> dict[str, float]:
        total = sum(a.weight for a in self.arms)
        return {a.id: a.weight / total for a in self.arms}

    def arm_for(self, user_key: str) -> str | None:
        """The user's arm, or None if the experiment does not include them."""
        low, high = self.layer_range
        if not low <= unit_hash(self.layer or self.id, "layer", user_key) < high:
            return None
        if unit_hash(self.salt, "traffic", user_key) >= self.traffic:
            return None
        point = unit_hash(self.salt, "arm", user_key) * sum(a.weight for a in self.arms)
        for arm in self.arms:
            point -= arm.weight
            if point < 0:
                return arm.id
        return self.arms[-1].id


def check_layers(experiments: Sequence[Experiment]) -> list[str]:
    """Problems with how experiments share layers: overlapping ranges in one layer."""
    problems = []
    by_layer: dict[str, list[Experiment]] = {}
    for exp in experiments:
        if exp.layer is not None:
            by_layer.setdefault(exp.layer, []).append(exp)
    for layer, members in by_layer.items():
        ordered = sorted(members, key=lambda e: e.layer_range[0])
        for before, after in itertools.pairwise(ordered):
            if after.layer_range[0] < before.layer_range[1]:
                problems.append(
                    f"layer {layer!r}: {before.id} {before.layer_range} and {after.id} "
                    f"{after.layer_range} overlap"
                )
    return problems


def in_holdout(user_key: str, salt: str, share: float) -> bool:
    """Whether a global holdout of ``share`` of all users (by ``salt``) holds the user."""
    return unit_hash(salt, "holdout", user_key) < share


# ---------------------------------------------------------------------- analysis


def cuped_adjusted(outcome: np.ndarray, covariate: np.ndarray) -> np.ndarray:
    """The outcome minus what its linear regression on the pre-exposure covariate explains
    (theta estimated on all arms pooled, so the adjustment is the same for every arm)."""
    var = float(np.var(covariate, ddof=1)) if len(covariate) > 1 else 0.0
    if var == 0.0:
        return outcome.astype(float)
    theta = float(np.cov(outcome, covariate, ddof=1)[0, 1]) / var
    adjusted: np.ndarray = outcome - theta * (covariate - covariate.mean())
    return adjusted


def always_valid_interval(
    treatment: np.ndarray, control: np.ndarray, alpha: float = 0.05
) -> tuple[float, float]:
    """An always-valid confidence interval for the difference of means (mixture SPRT with a
    normal mixing distribution): its coverage holds however often, and whenever, it is
    looked at, so a team may stop as soon as it excludes zero."""
    n_t, n_c = len(treatment), len(control)
    if n_t < 2 or n_c < 2:
        return (-math.inf, math.inf)
    var_t, var_c = float(np.var(treatment, ddof=1)), float(np.var(control, ddof=1))
    v = var_t / n_t + var_c / n_c
    if v == 0.0:
        diff = float(treatment.mean() - control.mean())
        return (diff, diff)
    tau2 = MIXING_VARIANCE_SCALE * (var_t + var_c) / 2
    half = math.sqrt(v * (v + tau2) / tau2 * (2 * math.log(1 / alpha) + math.log((v + tau2) / v)))
    diff = float(treatment.mean() - control.mean())
    return (diff - half, diff + half)


def compare(treatment: np.ndarray, control: np.ndarray, alpha: float) -> dict[str, float]:
    """Difference of means with Welch's interval and p-value (scipy), and the relative lift."""
    result = stats.ttest_ind(treatment, control, equal_var=False)
    interval = result.confidence_interval(1 - alpha)
    base = float(control.mean())
    diff = float(treatment.mean() - base)
    return {
        "lift": diff,
        "lift_low": float(interval.low),
        "lift_high": float(interval.high),
        "relative_lift": diff / base if base else math.nan,
        "p_value": float(result.pvalue),
    }


def sample_ratio_mismatch(counts: dict[str, int], weights: dict[str, float]) -> float:
    """The p-value of the arms' user counts under their configured weights (chi-square)."""
    total = sum(counts.get(arm, 0) for arm in weights)
    if total == 0:
        return 1.0
    observed = [counts.get(arm, 0) for arm in weights]
    expected = [total * w for w in weights.values()]
    return float(stats.chisquare(observed, expected).pvalue)


def analyze(
    rows: pl.DataFrame,
    weights: dict[str, float],
    control: str,
    alpha: float = 0.05,
    srm_alpha: float = 0.001,
) -> dict[str, Any]:
    """The report of one experiment from one row per exposed user: columns ``arm``,
    ``outcome`` (1/0 for a conversion, or a number) and ``pre`` (the pre-exposure covariate).

    >>> rng = np.random.default_rng(1)
    >>> arm = rng.choice(["c", "t"], 4000)
    >>> pre = rng.normal(size=4000)  # e.g. engagement before exposure, which predicts converting
    >>> converted = rng.random(4000) < 0.3 + 0.1 * (arm == "t") + 0.25 * pre.clip(-1, 1)
    >>> rows = pl.DataFrame({"arm": arm, "outcome": converted.astype(int), "pre": pre})
    >>> report = analyze(rows, {"c": 0.5, "t": 0.5}, control="c")
    >>> report["srm"]["mismatch"], report["verdict"].split(":")[0], report["cuped_variance_reduction"] > 0.1
    (False, 't wins', True)
    """
    per_arm = (
        rows.group_by("arm")
        .agg(pl.len().alias("users"), pl.col("outcome").sum().alias("conversions"))
        .sort("arm")
    )
    counts = dict(zip(per_arm["arm"].to_list(), per_arm["users"].to_list(), strict=True))
    srm_p = sample_ratio_mismatch(counts, weights)
    outcome = rows["outcome"].cast(pl.Float64).to_numpy()
    adjusted = cuped_adjusted(outcome, rows["pre"].cast(pl.Float64).to_numpy())
    arms = rows["arm"].to_numpy()
    base, base_adj = outcome[arms == control], adjusted[arms == control]
    report: dict[str, Any] = {"control": control, "alpha": alpha, "arms": {}}
    for arm, users, conversions in per_arm.iter_rows():
        entry: dict[str, Any] = {"users": users, "conversions": conversions, "rate": conversions / users}
        if arm != control and users > 1 and len(base) > 1:
            mine = arms == arm
            entry["fixed"] = compare(outcome[mine], base, alpha)
            entry["cuped"] = compare(adjusted[mine], base_adj, alpha)
            entry["sequential"] = dict(
                zip(
                    ("lift_low", "lift_high"),
                    always_valid_interval(adjusted[mine], base_adj, alpha),
                    strict=True,
                )
            )
        report["arms"][arm] = entry
    var_raw, var_adj = float(np.var(outcome)), float(np.var(adjusted))
    report["cuped_variance_reduction"] = 1 - var_adj / var_raw if var_raw else 0.0
    report["srm"] = {"p_value": srm_p, "mismatch": srm_p < srm_alpha, "counts": counts}
    report["verdict"] = verdict(report)
    return report


def verdict(report: dict[str, Any]) -> str:
    """One line a product team can act on."""
    if report["srm"]["mismatch"]:
        return "invalid: sample ratio mismatch (assignment or exposure logging broken): lifts not trustworthy"
    lines = []
    for arm, entry in report["arms"].items():
        seq = entry.get("sequential")
        if seq is None:
            continue
        if seq["lift_low"] > 0:
            lines.append(f"{arm} wins: +{entry['cuped']['lift']:.4g} over {report['control']}")
        elif seq["lift_high"] < 0:
            lines.append(f"{arm} loses: {entry['cuped']['lift']:.4g} against {report['control']}")
    return "; ".join(lines) or "no significant difference yet (keep running, or stop for lack of effect)"
