"""``headstart catalog push FILE --preview``: what a catalog change would do to the policies'
value, estimated from the instance's own logged decisions before anything goes live.

For every decision point (``step``, ``tutorial:<id>``) whose policy changes between the
served catalog and the candidate (``learning.policy``, ``learning.params``, the context
features a contextual policy reads, or the point's arms), the new configuration's value is
estimated off-policy, beside the current one's, from exactly the data ``headstart evaluate``
uses: the events stream's logged decisions replayed through the attribution rules
(:func:`headstart.reports.evaluate.replay_log`), each configuration learning from the first part
of the point's log and evaluated on the rest (:func:`headstart.reports.evaluate.evaluate_policy`:
IPS, SNIPS and DR with 95% intervals). Each configuration reads the logged contexts by feature
name in its own layout.

What the log cannot judge is named: an arm of the new catalog never logged at the point, or
logged fewer than :data:`MIN_ARM_DECISIONS` times (its importance weights and its reward model
rest on a handful of rewards), with the share of the new policy's choices that would go to
such arms. Nothing is stored.

>>> from engine.catalog import DEFAULT_CATALOG, Catalog, load_catalog
>>> from headstart.reports.evaluate import logged_decisions
>>> current = load_catalog(DEFAULT_CATALOG)
>>> data = current.model_dump(by_alias=True)
>>> data["learning"]["policy"] = "thompson"
>>> report = preview(current, Catalog.model_validate(data), logged_decisions([], current))
>>> [(p.point, p.changes, p.note) for p in report.points][:1]
[('step', ['policy linear_igw -> thompson'], 'no logged decisions yet')]
"""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import polars as pl
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from engine.catalog import Catalog
from engine.decision import Decider
from engine.errors import ConfigError
from engine.features import FeatureLayout
from engine.learning import Learner
from headstart.reports.evaluate import (
    MIN_DECISIONS,
    POINT,
    evaluate_policy,
    events_of,
    frame_to_log,
    layouts_of,
    replay_log,
)
from policies import available

#: Logged decisions an arm needs at a point before the log is said to support it: below that,
#: its importance-weighted terms (IPS, SNIPS) and its reward model (DR) rest on a handful of
#: rewards, and the estimate says little about the arm.
MIN_ARM_DECISIONS = 10
ESTIMATORS = ("ips", "snips", "dr")
NO_LOGS = "no logged decisions yet"
# A context column of a replayed log: ``x<i>_<feature name>``.
_CONTEXT_COLUMN = re.compile(r"^x\d+_(.+)$")


@dataclass(frozen=True)
class Configuration:
    """What chooses at one decision point: the policy, its parameters, its context features
    (their names, in order; the bias first) and the point's arms."""

    policy: str
    params: dict[str, Any]
    features: tuple[str, ...]
    arms: tuple[str, ...]

    @property
    def contextual(self) -> bool:
        return available()[self.policy].contextual

    def label(self) -> str:
        params = ", ".join(f"{k}={v}" for k, v in sorted(self.params.items()))
        return f"{self.policy}({params})" if params else self.policy


def configurations(catalog: Catalog) -> dict[str, Configuration]:
    """Every decision point of ``catalog`` and what chooses there."""
    learning = catalog.learning
    features = FeatureLayout.from_catalog(catalog).names
    points = Learner(catalog, Decider(catalog)).points
    return {
        point: Configuration(learning.policy, dict(learning.params), tuple(features), tuple(arms))
        for point, arms in points.items()
    }


def changes(current: Configuration, new: Configuration) -> list[str]:
    """What differs between two configurations of a point, readably; empty: the same policy
    would choose the same way (a features change a non-contextual policy never reads is none)."""
    out = []
    if current.policy != new.policy:
        out.append(f"policy {current.policy} -> {new.policy}")
    if current.params != new.params:
        out.append(f"params {_params(current.params)} -> {_params(new.params)}")
    if current.features != new.features and (current.contextual or new.contextual):
        added = [f for f in new.features if f not in current.features]
        removed = [f for f in current.features if f not in new.features]
        moved = "" if added or removed else " (reordered)"
        out.append("features" + _plus_minus(added, removed) + moved)
    if set(current.arms) != set(new.arms):
        added = [a for a in new.arms if a not in current.arms]
        removed = [a for a in current.arms if a not in new.arms]
        out.append("arms" + _plus_minus(added, removed))
    return out


def _params(params: Mapping[str, Any]) -> str:
    return "{" + ", ".join(f"{k}: {v}" for k, v in sorted(params.items())) + "}"


def _plus_minus(added: list[str], removed: list[str]) -> str:
    return "".join(f" +{a}" for a in added) + "".join(f" -{r}" for r in removed)


@dataclass(frozen=True)
class Unsupported:
    """An arm of the new catalog the log cannot judge at a point."""

    arm: str
    #: Decisions logged at the point that chose it.
    logged: int
    why: str


@dataclass(frozen=True)
class Value:
    """One configuration's value at a point, estimated from the log."""

    configuration: Configuration
    #: IPS, SNIPS and DR: (estimate, ci_low, ci_high), 95%.
    estimates: dict[str, tuple[float, float, float]]
    trained_on: int
    evaluated_on: int
    #: The mean reward the logged decisions earned on the rows evaluated on.
    logged_value: float
    #: How often the configuration would choose each arm in the evaluated contexts.
    arm_shares: dict[str, float]


@dataclass(frozen=True)
class PointPreview:
    point: str
    #: ``changed``, ``unchanged``, ``added`` (a new decision point) or ``removed``.
    status: str
    #: What changes (``policy a -> b``, ``params ...``, ``features +x -y``, ``arms +x -y``).
    changes: list[str] = field(default_factory=list)
    #: Decisions logged at the point (closed by their reward).
    logged: int = 0
    #: Their mean reward (None without any).
    observed_mean_reward: float | None = None
    current: Value | None = None
    new: Value | None = None
    unsupported: list[Unsupported] = field(default_factory=list)
    #: Why nothing is estimated (no logs, too few), or what the estimate cannot see.
    note: str | None = None

    @property
    def unsupported_share(self) -> float | None:
        """The share of the new configuration's choices that would go to unsupported arms."""
        if self.new is None:
            return None
        return sum(self.new.arm_shares.get(u.arm, 0.0) for u in self.unsupported)


@dataclass(frozen=True)
class PreviewReport:
    """Every decision point of the new catalog (and those it removes), changed or not.

    >>> report = PreviewReport(decisions=0, points=[PointPreview("step", "unchanged")])
    >>> report.to_dict()["points"][0]["status"], "step" in report.render()
    ('unchanged', True)
    """

    #: Logged decisions read in all (every point).
    decisions: int
    points: list[PointPreview]

    @property
    def changed(self) -> list[PointPreview]:
        return [p for p in self.points if p.status in ("changed", "added")]

    def to_dict(self) -> dict[str, Any]:
        return {"decisions": self.decisions, "points": [_point_dict(p) for p in self.points]}

    def render(self) -> str:
        return _render(self)


# ---------------------------------------------------------------------- estimating


def preview(
    current: Catalog, new: Catalog, decisions: pl.DataFrame, train_share: float = 0.5, seed: int = 0
) -> PreviewReport:
    """The preview of replacing ``current`` by ``new``, from the logged decisions replayed with
    the current catalog (:func:`headstart.reports.evaluate.replay_log`'s ``decisions``)."""
    before, after = configurations(current), configurations(new)
    points = []
    for point, config in after.items():
        old = before.get(point)
        what = ["new decision point"] if old is None else changes(old, config)
        if not what:
            points.append(PointPreview(point, "unchanged"))
            continue
        rows = decisions.filter(pl.col(POINT) == point) if decisions.height else decisions
        points.append(
            _estimate(point, "changed" if old else "added", what, rows, old, config, train_share, seed)
        )
    points += [
        PointPreview(point, "removed", ["decision point removed"]) for point in before if point not in after
    ]
    return PreviewReport(decisions=decisions.height, points=points)


def _estimate(
    point: str,
    status: str,
    what: list[str],
    rows: pl.DataFrame,
    current: Configuration | None,
    new: Configuration,
    train_share: float,
    seed: int,
) -> PointPreview:
    # A logged decision with no propensity cannot be weighted: it supports nothing.
    usable = rows.filter(pl.col("propensity") > 0) if rows.height else rows
    counts = dict(usable.group_by("action").len().iter_rows()) if usable.height else {}
    zero = set(rows["action"].to_list()) - set(counts) if rows.height else set()
    unsupported = []
    for arm in new.arms:
        n = counts.get(arm, 0)
        if arm in zero:
            unsupported.append(Unsupported(arm, 0, "logged only with propensity 0"))
        elif n == 0:
            unsupported.append(Unsupported(arm, 0, "never logged here"))
        elif n < MIN_ARM_DECISIONS:
            unsupported.append(Unsupported(arm, n, f"logged {n} times; {MIN_ARM_DECISIONS} are needed"))
    observed = float(usable["reward"].mean()) if usable.height else None  # type: ignore[arg-type]
    base = PointPreview(point, status, what, usable.height, observed, unsupported=unsupported)
    if not usable.height:
        return replace(
            base, note=NO_LOGS if not rows.height else "no logged decision has a propensity above 0"
        )
    if usable.height < MIN_DECISIONS:
        return replace(base, note=f"{usable.height} logged decisions; {MIN_DECISIONS} are needed")
    try:
        now = _value(current, usable, train_share, seed) if current is not None else None
        then = _value(new, usable, train_share, seed)
    except (ConfigError, ValueError) as exc:  # e.g. too few rows left once trained
        return replace(base, note=str(exc))
    missing = [name for name in new.features[1:] if not _has(usable, name)] if new.contextual else []
    note = f"features the log does not hold (read as 0): {', '.join(missing)}" if missing else None
    return replace(base, current=now, new=then, note=note)


def _value(config: Configuration, rows: pl.DataFrame, train_share: float, seed: int) -> Value:
    """``config`` learning from the first ``train_share`` of ``rows``, evaluated on the rest: the
    logged contexts read by name in its layout; logged arms it no longer has kept (the log
    holds them) but never chosen."""
    frame = _in_layout(rows, config.features)
    logged = sorted(set(frame["action"].to_list()) - set(config.arms))
    log = frame_to_log(frame, f"decisions log ({rows[POINT][0]})", [*config.arms, *logged])
    report = evaluate_policy(
        config.policy, log, train_share, seed, eligible=list(config.arms), **config.params
    )
    return Value(
        configuration=config,
        estimates={
            name: (e["estimate"], e["ci_low"], e["ci_high"]) for name, e in report["estimates"].items()
        },
        trained_on=report["trained_on"],
        evaluated_on=report["evaluated_on"],
        logged_value=report["logging_policy_value"],
        arm_shares=report["arm_shares"],
    )


def _columns_by_name(rows: pl.DataFrame) -> dict[str, str]:
    return {m.group(1): c for c in rows.columns if (m := _CONTEXT_COLUMN.match(c))}


def _has(rows: pl.DataFrame, name: str) -> bool:
    column = _columns_by_name(rows).get(name)
    return column is not None and rows[column].null_count() < rows.height


def _in_layout(rows: pl.DataFrame, features: tuple[str, ...]) -> pl.DataFrame:
    """The logged decisions with their contexts in the layout ``features`` (the bias first, as
    the replay leaves it out), by name: a feature no logged layout had reads as empty (0)."""
    by_name = _columns_by_name(rows)
    context = [
        (pl.col(by_name[name]) if name in by_name else pl.lit(None, pl.Float64)).alias(f"x{i}_{name}")
        for i, name in enumerate(features[1:], start=1)
    ]
    return rows.select(pl.col(POINT), pl.col("action"), pl.col("reward"), pl.col("propensity"), *context)


# ---------------------------------------------------------------------- reading the instance


async def preview_catalog(
    js: JetStreamContext,
    current: Catalog,
    new: Catalog,
    partitions: int | None = None,
    *,
    train_share: float = 0.5,
    seed: int = 0,
    timeout: float = 5.0,
) -> PreviewReport:
    """:func:`preview` over the instance's own log: its events stream and registered layouts,
    read as ``headstart evaluate`` reads them, replayed with the ``current`` catalog.

    ``partitions`` is not needed (each message's subject names its partition); it is accepted
    for callers holding the instance's settings.
    """
    del partitions
    try:
        messages = await events_of(js, timeout)
    except NotFoundError:  # no events stream yet: nothing was ever logged
        messages = []
    layouts = await layouts_of(js)
    # The replay is CPU work over the whole stream: off the event loop.
    replayed = await asyncio.to_thread(replay_log, messages, current, layouts)
    return await asyncio.to_thread(preview, current, new, replayed.decisions, train_share, seed)


# ---------------------------------------------------------------------- output


def _value_dict(value: Value | None) -> dict[str, Any] | None:
    if value is None:
        return None
    return {
        "policy": value.configuration.policy,
        "params": value.configuration.params,
        "arms": list(value.configuration.arms),
        "trained_on": value.trained_on,
        "evaluated_on": value.evaluated_on,
        "logged_value": value.logged_value,
        "estimates": {
            name: {"estimate": e[0], "ci_low": e[1], "ci_high": e[2]} for name, e in value.estimates.items()
        },
        "arm_shares": value.arm_shares,
    }


def _point_dict(p: PointPreview) -> dict[str, Any]:
    return {
        "point": p.point,
        "status": p.status,
        "changes": p.changes,
        "logged": p.logged,
        "observed_mean_reward": p.observed_mean_reward,
        "current": _value_dict(p.current),
        "new": _value_dict(p.new),
        "unsupported": [{"arm": u.arm, "logged": u.logged, "why": u.why} for u in p.unsupported],
        "unsupported_share": p.unsupported_share,
        "note": p.note,
    }


def _interval(e: tuple[float, float, float]) -> str:
    if any(math.isnan(v) for v in e):
        return "-"
    return f"{e[0]:.4f} [{e[1]:.4f}, {e[2]:.4f}]"


def _render(report: PreviewReport) -> str:
    changed = len(report.changed)
    lines = [
        f"preview: {changed} decision point{' changes' if changed == 1 else 's change'}, "
        f"from {report.decisions} logged decisions (nothing is stored)"
    ]
    for p in report.points:
        lines.append("")
        if p.status in ("unchanged", "removed"):
            lines.append(f"{p.point}: {p.status}")
            continue
        lines.append(f"{p.point}: {'; '.join(p.changes)}")
        if p.observed_mean_reward is not None:
            lines.append(f"  {p.logged} logged decisions, observed mean reward {p.observed_mean_reward:.4f}")
        if p.new is not None:
            now = p.current.configuration.label() if p.current else "-"
            rows = [("estimator", f"current: {now}", f"new: {p.new.configuration.label()}")]
            for name in ESTIMATORS:
                rows.append(
                    (
                        name.upper(),
                        _interval(p.current.estimates[name]) if p.current else "-",
                        _interval(p.new.estimates[name]),
                    )
                )
            widths = [max(len(r[i]) for r in rows) for i in range(3)]
            lines += [
                ("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True))).rstrip() for r in rows
            ]
            lines.append(
                f"  (95% intervals; learned from {p.new.trained_on}, evaluated on {p.new.evaluated_on}, "
                f"where the logged decisions earned {p.new.logged_value:.4f})"
            )
        if p.unsupported and p.logged:  # without logs every arm is: the note says it once
            arms = ", ".join(f"{u.arm} ({u.why})" for u in p.unsupported)
            lines.append(f"  the log cannot judge: {arms}")
            share = p.unsupported_share
            if share is not None:
                lines.append(
                    f"  the new policy would choose them {share:.0%} of the time: that part of its "
                    "value rests on few or no logged rewards"
                )
        if p.note:
            lines.append(f"  {p.note}")
    return "\n".join(lines)
