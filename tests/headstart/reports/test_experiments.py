"""The experiment report from shards' sums: the same figures as the rows give, guardrails,
the metric over time, and its PNG."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import numpy as np
import polars as pl
import pytest

from engine.experiments import (
    Arm,
    Experiment,
    ExposedUser,
    Metric,
    analyze,
    cumulative_moments,
)
from headstart.reports.experiments import experiment_report, plot_experiment, report_cuts

DAY = 86400.0


def simulated(n: int, seed: int) -> list[ExposedUser]:
    """Exposures over 10 days; treatment converts more, and hurts the guardrail."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        arm = "treatment" if rng.random() < 0.5 else "control"
        ts = float(rng.uniform(0, 10 * DAY))
        pre = float(rng.gamma(2.0, 1.5))
        p = 0.25 + (0.08 if arm == "treatment" else 0.0) + 0.02 * min(pre, 5)
        converted = ts + float(rng.uniform(0, 3 * DAY)) if rng.random() < p else 0.0
        guard_p = 0.6 - (0.15 if arm == "treatment" else 0.0)
        guard = ts + 60.0 if rng.random() < guard_p else 0.0
        out.append(ExposedUser(arm, ts, pre, [converted, guard]))
    return out


def shard_answer(users: list[ExposedUser], cuts: list[float]) -> dict[str, object]:
    moments = cumulative_moments(users, len(users[0].converted), cuts)
    return {
        "exposed": len(users),
        "first": min(u.ts for u in users),
        "moments": [
            [{a: msgspec.to_builtins(m) for a, m in cut.items()} for cut in metric] for metric in moments
        ],
    }


def test_the_report_adds_up_the_shards_and_flags_a_worse_guardrail(tmp_path: Path) -> None:
    exp = Experiment(
        id="onboarding_v2",
        salt="s",
        arms=[Arm(id="control"), Arm(id="treatment", steps=["welcome"])],
        guardrails=[Metric(event="step_completed", name="profile")],
    )
    users = simulated(6000, seed=2)
    now = 14 * DAY
    halves = [users[:2500], users[2500:]]
    cuts = report_cuts([{"first": min(u.ts for u in h)} for h in halves], now)
    assert len(cuts) == 20 and cuts[-1] == now
    report = experiment_report(exp, [shard_answer(h, cuts) for h in halves], cuts)
    # The final figures equal the analysis of one row per user, computed directly.
    rows = pl.DataFrame(
        {
            "arm": [u.arm for u in users],
            "outcome": [int(0 < u.converted[0] <= now) for u in users],
            "pre": [u.pre for u in users],
        }
    )
    direct = analyze(rows, exp.weights(), control="control")
    assert report["exposed"] == 6000
    for key in ("fixed", "cuped", "sequential"):
        for field, value in direct["arms"]["treatment"][key].items():
            assert report["primary"]["arms"]["treatment"][key][field] == pytest.approx(value, rel=1e-9)
    assert report["verdict"].startswith("treatment wins")
    assert report["guardrails"][0]["worse_in"] == ["treatment"]
    assert "guardrail step_completed(profile) within 7 days worse in treatment" in report["verdict"]
    # Over time: more users at every cut, and the last point is the final figure.
    users_over_time = [sum(a["users"] for a in p["arms"].values()) for p in report["over_time"]]
    assert users_over_time == sorted(users_over_time) and users_over_time[-1] == 6000
    last = report["over_time"][-1]["arms"]["treatment"]
    assert last["lift"] == pytest.approx(report["primary"]["arms"]["treatment"]["cuped"]["lift"])
    png = plot_experiment(report, tmp_path / "plot.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_an_experiment_nobody_saw_yet_reports_zeros_not_errors(tmp_path: Path) -> None:
    exp = Experiment(id="quiet", salt="s", arms=[Arm(id="control"), Arm(id="b", welcome={"en": "hi"})])
    cuts = report_cuts([{"first": None}], now=100.0)
    report = experiment_report(exp, [{"exposed": 0, "first": None, "moments": []}], cuts)
    assert cuts == [100.0] and report["exposed"] == 0
    assert report["primary"]["arms"]["b"]["users"] == 0
    json.dumps(report, allow_nan=False)  # JSON has no infinity: an unbounded interval is null
    few = [ExposedUser("control", 1.0, 0.0, [2.0]), ExposedUser("b", 1.0, 0.0, [0.0])]
    tiny = experiment_report(exp, [shard_answer(few, [100.0])], [100.0])
    json.dumps(tiny, allow_nan=False)
    assert plot_experiment(report, tmp_path / "quiet.png").stat().st_size > 0
