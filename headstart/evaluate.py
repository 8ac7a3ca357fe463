"""``headstart evaluate``: a candidate policy's value estimated from logged bandit data.

The log is a Parquet or CSV file, one row per logged decision:

=================  =====================================================================
column             meaning
=================  =====================================================================
``action``         the action (arm) that was shown, a string
``reward``         what it earned, a number in [0, 1]
``propensity``     the logging policy's probability of that action, in (0, 1]
any other column   a numeric context feature (the context vector, in column order)
=================  =====================================================================

This is the layout Headstart's own decision log uses, so logs from an existing system can be
evaluated the same way. The candidate learns from the first part of the log (``train_share``,
in order, as it would have on-line from those rewards) and is then frozen and evaluated on the
rest by IPS, SNIPS and DR (:mod:`engine.ope`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from engine import ope
from engine.errors import ConfigError
from policies import available, create

REQUIRED = ("action", "reward", "propensity")


@dataclass(frozen=True)
class LoggedData:
    arms: list[str]
    features: list[str]
    x: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    propensities: np.ndarray


def read_log(path: Path, arms: list[str] | None = None) -> LoggedData:
    """Read and validate a log; every problem names the file and the column."""
    if not path.exists():
        raise ConfigError(f"{path}: no such file")
    try:
        frame = pl.read_parquet(path) if path.suffix.lower() == ".parquet" else pl.read_csv(path)
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise ConfigError(f"{path}: not a readable Parquet or CSV file ({exc})") from exc
    missing = [c for c in REQUIRED if c not in frame.columns]
    if missing:
        raise ConfigError(f"{path}: missing column(s) {', '.join(missing)} (needs {', '.join(REQUIRED)})")
    if frame.height < 4:
        raise ConfigError(f"{path}: {frame.height} rows; at least 4 logged decisions are needed")
    features = [c for c in frame.columns if c not in REQUIRED]
    for column in features:
        if not frame[column].dtype.is_numeric():
            raise ConfigError(
                f"{path}: column {column!r} is {frame[column].dtype}; context columns must be numeric"
            )
    for column, low, high, closed in (("reward", 0.0, 1.0, "both"), ("propensity", 0.0, 1.0, "right")):
        values = frame[column].cast(pl.Float64, strict=False)
        outside = values.is_null() | ~values.is_between(low, high, closed=closed)  # type: ignore[arg-type]
        if outside.any():
            row = int(outside.arg_true()[0])
            bounds = "[0, 1]" if closed == "both" else "(0, 1]"
            raise ConfigError(
                f"{path}: column {column!r}, row {row}: {frame[column][row]!r} is not in {bounds}"
            )
    logged_actions = frame["action"].cast(pl.String).to_list()
    arms = arms or sorted(set(logged_actions))
    unknown = sorted(set(logged_actions) - set(arms))
    if unknown:
        raise ConfigError(f"{path}: column 'action' has {unknown}, not among the arms {arms}")
    index = {arm: i for i, arm in enumerate(arms)}
    context = (
        frame.select(features).cast(pl.Float64).fill_null(0.0).to_numpy()
        if features
        else np.zeros((frame.height, 0))
    )
    return LoggedData(
        arms=arms,
        features=features,
        # A bias term first: the layout of Headstart's own context vectors.
        x=np.column_stack([np.ones(frame.height), context]),
        actions=np.array([index[a] for a in logged_actions]),
        rewards=frame["reward"].cast(pl.Float64).to_numpy(),
        propensities=frame["propensity"].cast(pl.Float64).to_numpy(),
    )


def evaluate_policy(
    name: str, log: LoggedData, train_share: float = 0.5, seed: int = 0, **params: Any
) -> dict[str, Any]:
    """Train ``name`` on the first ``train_share`` of the log, estimate its value on the rest."""
    if not 0.0 <= train_share < 1.0:
        raise ConfigError(f"train_share: {train_share} is not in [0, 1)")
    policies = available()
    if name not in policies:
        raise ConfigError(f"--policy: no policy named {name!r}; known: {', '.join(sorted(policies))}")
    contextual = policies[name].contextual
    policy = create(name, log.arms, dim=log.x.shape[1] if contextual else 0, seed=seed, **params)
    n = len(log.actions)
    split = int(n * train_share)
    if n - split < 2:
        raise ConfigError("too few logged decisions left to evaluate on; lower --train-share")
    for i in range(split):
        policy.update(log.x[i] if contextual else None, int(log.actions[i]), float(log.rewards[i]))
    eligible = list(range(len(log.arms)))
    target = np.array(
        [policy.probabilities(log.x[i] if contextual else None, eligible) for i in range(split, n)]
    )
    estimates = ope.evaluate(
        target, log.x[split:], log.actions[split:], log.rewards[split:], log.propensities[split:]
    )
    return {
        "policy": name,
        "arms": log.arms,
        "context_features": log.features,
        "trained_on": split,
        "evaluated_on": n - split,
        "logging_policy_value": float(log.rewards[split:].mean()),
        "estimates": {k: v._asdict() for k, v in estimates.items()},
    }
