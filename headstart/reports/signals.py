"""``headstart report signals`` and ``headstart report fairness``: audits of the decisions log.

Both read the instance's log replayed through the engine's attribution rules
(:func:`headstart.reports.evaluate.replay_log`), so they see exactly the rewards and activation outcomes
the policies and the activation model learned from.

- **signals**: per live feature, how much it tells about the reward of a decision and about
  activation: mutual information (bits; continuous features in quantile bins), and the
  activation model's standardized weight (River's scaled logistic regression, fitted on the
  same outcomes in stream order). Features that tell little about either are flagged as
  candidates to drop. Columns are features by name (the replay reads each decision with its own
  layout's names); a feature a decision's layout lacked is null there, and each feature is
  judged on the decisions that had it.
- **fairness**: per decision point and audience field (device type, country, locale), each
  group's exposure share of every arm and its outcome rate, and the disparity ratio (the
  smallest group's value over the largest's). Ratios below ``--ratio`` (default 0.8, the
  four-fifths rule) are flagged. Groups smaller than ``min_group`` decisions are left out.

>>> import polars as pl
>>> frame = pl.DataFrame({"point": ["t"] * 6, "action": ["a", "b", "a", "a", "b", "b"],
...     "reward": [1.0, 0.0, 1.0, 0.0, 0.0, 1.0], "group_device_type": ["m", "m", "m", "d", "d", "d"]})
>>> report = fairness_report(frame, ratio=0.8, min_group=1)
>>> row = report["points"]["t"]["device_type"]["outcome_rate"]
>>> row["by_group"], row["ratio"], row["flagged"]
({'d': 0.3333, 'm': 0.6667}, 0.5, True)
"""

from __future__ import annotations

from typing import Any

import polars as pl
from scipy.stats import entropy

from engine.models import activation_pipeline, raw_coefficients

#: Continuous features are cut into this many quantile bins for mutual information.
BINS = 5
#: Below this many bits about both reward and activation, a signal is flagged as low value.
LOW_VALUE_BITS = 0.001


def mutual_information(feature: pl.Series, target: pl.Series) -> float:
    """I(feature; target) in bits, from the joint counts (feature binned if continuous)."""
    if feature.n_unique() > BINS:
        feature = feature.rank("dense").qcut(
            BINS, labels=[str(i) for i in range(BINS)], allow_duplicates=True
        )
    joint = pl.DataFrame({"f": feature.cast(pl.String), "t": target.cast(pl.String)})
    counts = joint.group_by("f", "t").len()
    total = counts["len"].sum()
    if not total:
        return 0.0
    h_target = entropy(joint.group_by("t").len()["len"].to_numpy(), base=2)
    h_conditional = 0.0
    for group in counts.partition_by("f"):
        n = group["len"].to_numpy()
        h_conditional += n.sum() / total * entropy(n, base=2)
    return float(max(h_target - h_conditional, 0.0))


def signals_report(decisions: pl.DataFrame, outcomes: pl.DataFrame) -> dict[str, Any]:
    """Which live features predict reward and activation (see the module docstring)."""
    features = [c for c in decisions.columns if c.startswith("x")] or [
        c for c in outcomes.columns if c.startswith("x")
    ]
    weights = _standardized_weights(outcomes, features)
    rows: list[dict[str, Any]] = []
    for column in features:
        had = (
            decisions.filter(pl.col(column).is_not_null())
            if column in decisions.columns
            else decisions.clear()
        )
        reward = mutual_information(had[column], had["reward"] >= 0.5) if had.height else 0.0
        had = (
            outcomes.filter(pl.col(column).is_not_null()) if column in outcomes.columns else outcomes.clear()
        )
        activation = mutual_information(had[column], had["activated"]) if had.height else 0.0
        rows.append(
            {
                "feature": column.split("_", 1)[1],
                "mi_reward_bits": round(reward, 5),
                "mi_activation_bits": round(activation, 5),
                "activation_weight": None if weights is None else round(float(weights[column]), 4),
                "low_value": max(reward, activation) < LOW_VALUE_BITS,
            }
        )
    rows.sort(key=lambda r: -max(r["mi_reward_bits"], r["mi_activation_bits"]))
    return {"decisions": decisions.height, "outcomes": outcomes.height, "signals": rows}


def _standardized_weights(outcomes: pl.DataFrame, features: list[str]) -> dict[str, float] | None:
    """The activation model's weights per feature standard deviation (comparable across
    features), fitted on the outcomes in the order they were learned."""
    if outcomes.height < 10:
        return None
    pipeline = activation_pipeline()
    for row, activated in zip(
        outcomes.select(features).iter_rows(named=True), outcomes["activated"], strict=True
    ):
        # A feature the decision's layout lacked is left out (River's models are sparse).
        pipeline.learn_one({k: v for k, v in row.items() if v is not None}, bool(activated))
    raw, _ = raw_coefficients(pipeline)
    sd = outcomes.select(pl.col(features).std()).row(0, named=True)
    return {column: raw.get(column, 0.0) * (sd[column] or 0.0) for column in features}


def fairness_report(decisions: pl.DataFrame, ratio: float = 0.8, min_group: int = 30) -> dict[str, Any]:
    """Exposure and outcome rates per audience group (see the module docstring)."""
    if not 0.0 < ratio <= 1.0:
        raise ValueError("ratio must be in (0, 1]")
    fields = [c for c in decisions.columns if c.startswith("group_")]
    report: dict[str, Any] = {"ratio": ratio, "min_group": min_group, "points": {}, "flagged": []}
    for point in sorted(decisions["point"].unique().to_list()) if decisions.height else []:
        rows = decisions.filter(pl.col("point") == point)
        arms = sorted(rows["action"].unique().to_list())
        by_field: dict[str, Any] = {}
        for column in fields:
            field = column.removeprefix("group_")
            known = rows.filter(pl.col(column).is_not_null())
            sizes = known.group_by(column).len().filter(pl.col("len") >= min_group)
            groups = sorted(sizes[column].to_list())
            if len(groups) < 2:
                continue
            known = known.filter(pl.col(column).is_in(groups))
            rates = known.group_by(column).agg(pl.col("reward").mean())
            entry = {"groups": {g: int(n) for g, n in zip(sizes[column], sizes["len"], strict=True)}}
            entry["outcome_rate"] = _disparity(dict(zip(rates[column], rates["reward"], strict=True)), ratio)
            exposure = known.group_by(column, "action").len()
            totals = dict(zip(sizes[column], sizes["len"], strict=True))
            for arm in arms:
                shares = {g: 0.0 for g in groups}
                for g, action, n in exposure.iter_rows():
                    if action == arm:
                        shares[g] = n / totals[g]
                entry[f"exposure:{arm}"] = _disparity(shares, ratio)
            for metric, value in entry.items():
                if metric != "groups" and value["flagged"]:
                    report["flagged"].append(f"{point} / {field} / {metric}: ratio {value['ratio']}")
            by_field[field] = entry
        report["points"][point] = by_field
    return report


def _disparity(values: dict[str, float], ratio: float) -> dict[str, Any]:
    rounded = {g: round(float(v), 4) for g, v in sorted(values.items())}
    high = max(values.values(), default=0.0)
    low = min(values.values(), default=0.0)
    disparity = 1.0 if high <= 0 else low / high
    return {"by_group": rounded, "ratio": round(disparity, 4), "flagged": disparity < ratio}
