"""``GET /v1/experiments/{id}/report`` and ``headstart report experiment ID``.

Shards keep one exposure per user and experiment with its outcomes
(:class:`engine.experiments.PartitionExperiments`) and answer with sufficient statistics per
arm, metric and cut time (``experiment_moments``); this module adds them up and analyses them
(:func:`engine.experiments.analyze_moments`): the primary metric as of now, every guardrail
(flagged when an arm is significantly worse), and the primary metric over time with its
always-valid interval, which :func:`plot_experiment` draws.

>>> from engine.experiments import Arm, Experiment, Moments
>>> exp = Experiment(id="copy", salt="s", arms=[Arm(id="control"), Arm(id="short", welcome={"en": "Hi"})])
>>> answers = [{"exposed": 4, "first": 0.0, "moments": [[{
...     "control": [2, 0.0, 0.0, 1.0, 1.0, 0.0], "short": [2, 1.0, 1.0, 1.0, 1.0, 1.0]}]]}]
>>> report = experiment_report(exp, answers, cuts=[10.0])
>>> report["exposed"], report["primary"]["arms"]["short"]["rate"], report["guardrails"]
(4, 0.5, [])
"""

from __future__ import annotations

import math
import time
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from engine.experiments import Experiment, Moments, analyze_moments

if TYPE_CHECKING:
    from headstart.adapters.catalog_store import StoredVersion

#: Points of the metric-over-time series (the last is now).
TIME_POINTS = 20


def report_cuts(spans: list[dict[str, Any]], now: float, points: int = TIME_POINTS) -> list[float]:
    """Cut times from the first exposure any shard saw to ``now`` (just ``now`` if none)."""
    firsts = [s["first"] for s in spans if s.get("first") is not None]
    if not firsts or min(firsts) >= now:
        return [now]
    return [float(t) for t in np.linspace(min(firsts), now, points + 1)[1:]]


def merge_moments(answers: list[dict[str, Any]], metrics: int, cuts: int) -> list[list[dict[str, Moments]]]:
    """The shards' moments added up: ``[metric][cut][arm]``."""
    merged: list[list[dict[str, Moments]]] = [[{} for _ in range(cuts)] for _ in range(metrics)]
    for answer in answers:
        for m, by_cut in enumerate(answer.get("moments") or []):
            for c, by_arm in enumerate(by_cut):
                for arm, values in by_arm.items():
                    current = merged[m][c].get(arm, Moments())
                    merged[m][c][arm] = current.merged(Moments(*values))
    return merged


def experiment_report(
    exp: Experiment, answers: list[dict[str, Any]], cuts: list[float], alpha: float = 0.05
) -> dict[str, Any]:
    """The report: definition, exposures, the primary metric's analysis and verdict, the
    guardrails, and the primary metric over time."""
    metrics = [exp.metric, *exp.guardrails]
    merged = merge_moments(answers, len(metrics), len(cuts))
    weights = exp.weights()
    for by_cut in merged:  # every arm appears, exposed or not (an empty arm is an SRM)
        for by_arm in by_cut:
            for arm in weights:
                by_arm.setdefault(arm, Moments())
    primary = analyze_moments(merged[0][-1], weights, exp.control, alpha)
    guardrails = []
    for metric, by_cut in zip(metrics[1:], merged[1:], strict=True):
        analysis = analyze_moments(by_cut[-1], weights, exp.control, alpha)
        worse = [
            arm for arm, e in analysis["arms"].items() if e.get("sequential", {}).get("lift_high", 0) < 0
        ]
        guardrails.append({"metric": metric.label, "analysis": analysis, "worse_in": worse})
    over_time = []
    for cut, by_arm in zip(cuts, merged[0], strict=True):
        point: dict[str, Any] = {"t": cut, "arms": {}}
        seen = any(m.n for m in by_arm.values())
        analyzed = analyze_moments(by_arm, weights, exp.control, alpha)["arms"] if seen else {}
        for arm, m in sorted(by_arm.items()):
            entry: dict[str, Any] = {"users": m.n, "rate": m.mean_y}
            seq = analyzed.get(arm, {}).get("sequential")
            if seq is not None:
                entry["lift"] = analyzed[arm]["cuped"]["lift"]
                entry["lift_low"], entry["lift_high"] = seq["lift_low"], seq["lift_high"]
            point["arms"][arm] = entry
        over_time.append(point)
    verdict = primary["verdict"]
    broken = [
        f"guardrail {g['metric']} worse in {', '.join(g['worse_in'])}" for g in guardrails if g["worse_in"]
    ]
    if broken:
        verdict = f"{verdict}; but {'; '.join(broken)}"
    report: dict[str, Any] = _json_safe(
        {
            "experiment": exp.id,
            "description": exp.description,
            "arms": [{"id": a.id, "weight": w} for a, w in zip(exp.arms, weights.values(), strict=True)],
            "metric": exp.metric.label,
            "exposed": sum(a.get("exposed", 0) for a in answers),
            "first_exposure": min((a["first"] for a in answers if a.get("first") is not None), default=None),
            "primary": primary,
            "guardrails": guardrails,
            "over_time": over_time,
            "verdict": verdict,
        }
    )
    return report


def _json_safe(value: Any) -> Any:
    """The report with every non-finite number (an interval not bounded yet, a lift over a
    zero base) as null: JSON has no infinity."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def _nan_if_none(value: float | None) -> float:
    return math.nan if value is None else value


def plot_experiment(report: dict[str, Any], path: Path) -> Path:
    """A PNG of the primary metric over time: each arm's rate, and each arm's lift over the
    control with its always-valid interval (matplotlib, no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = report["over_time"]
    start = report.get("first_exposure") or (points[0]["t"] if points else 0.0)
    hours = [(p["t"] - start) / 3600 for p in points]
    control = report["primary"]["control"]
    fig, (rates, lifts) = plt.subplots(2, 1, figsize=(8, 6.5), sharex=True)
    for arm in [a["id"] for a in report["arms"]]:
        series = [p["arms"].get(arm, {}) for p in points]
        rates.plot(hours, [s.get("rate", math.nan) for s in series], marker="o", ms=3, label=arm)
        if arm == control:
            continue
        lift = np.array([s.get("lift", math.nan) for s in series], dtype=float)
        low = np.array(
            [math.nan if s.get("lift_low") is None else s["lift_low"] for s in series], dtype=float
        )
        high = np.array(
            [math.nan if s.get("lift_high") is None else s["lift_high"] for s in series], dtype=float
        )
        (line,) = lifts.plot(hours, lift, marker="o", ms=3, label=f"{arm} - {control}")
        lifts.fill_between(hours, low, high, alpha=0.2, color=line.get_color())
    lifts.axhline(0.0, color="grey", lw=1)
    rates.set_ylabel(f"rate: {report['metric']}")
    rates.legend(loc="best", fontsize=8)
    lifts.set_ylabel("lift (CUPED) with\nalways-valid interval")
    lifts.set_xlabel("hours since first exposure")
    lifts.legend(loc="best", fontsize=8)
    fig.suptitle(f"{report['experiment']}: {report['verdict']}"[:110], fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def versions_with_experiment(
    versions: list[StoredVersion], experiment_id: str, now: float | None = None
) -> list[int]:
    """The catalog versions an experiment ran under: those that define it and were served
    (from when stored until the next was, the latest until ``now``) while it was between its
    ``start`` and ``end``.

    A report names them because a version that changed what the arms show, or the segments
    that take part, changed the experiment under the same id.

    >>> from headstart.adapters.catalog_store import StoredVersion
    >>> def version(n, at, experiments):
    ...     document = {"experiments": experiments}
    ...     return StoredVersion(version=n, document=document, who="cli:x", at=at, summary="", fingerprint="")
    >>> copy = {"id": "copy", "salt": "s"}
    >>> later = {**copy, "start": "2100-01-01T00:00:00Z"}
    >>> history = [version(1, 100.0, []), version(2, 200.0, [copy]), version(3, 300.0, [copy]),
    ...            version(4, 400.0, []), version(5, 500.0, [later])]
    >>> versions_with_experiment(history, "copy")  # 5 defines it, but it has not started
    [2, 3]
    >>> versions_with_experiment(history, "nope")
    []
    """
    ordered = sorted(versions, key=lambda v: v.version)
    clock = time.time() if now is None else now
    ran = []
    for i, version in enumerate(ordered):
        entries = version.document.get("experiments") or []
        entry = next((e for e in entries if isinstance(e, dict) and e.get("id") == experiment_id), None)
        if entry is None:
            continue
        served_until = ordered[i + 1].at if i + 1 < len(ordered) else clock
        start, end = _instant(entry.get("start"), -math.inf), _instant(entry.get("end"), math.inf)
        if start < served_until and end > version.at:
            ran.append(version.version)
    return ran


def _instant(value: Any, missing: float) -> float:
    """A catalog time (ISO 8601 text, a datetime, Unix seconds) in Unix seconds."""
    if value is None:
        return missing
    if isinstance(value, datetime):
        return value.timestamp()
    if isinstance(value, int | float):
        return float(value)
    try:
        return datetime.fromisoformat(str(value)).timestamp()
    except ValueError:
        return missing
