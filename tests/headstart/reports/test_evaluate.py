"""`headstart evaluate` on logged bandit data in the documented layout (CSV and Parquet)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from engine.errors import ConfigError
from engine.features import BUILTIN_LAYOUT
from headstart.reports.evaluate import evaluate_policy, read_log


def write_log(path: Path, n: int = 6000, seed: int = 0) -> None:
    """Uniformly logged decisions: mobile users finish checklists, desktop users videos."""
    rng = np.random.default_rng(seed)
    mobile = rng.integers(0, 2, n)
    action = rng.choice(["video", "checklist", "tour"], n)
    pays = np.where(mobile == 1, action == "checklist", action == "video")
    reward = (rng.random(n) < np.where(pays, 0.6, 0.15)).astype(float)
    frame = pl.DataFrame(
        {"action": action, "reward": reward, "propensity": np.full(n, 1 / 3), "mobile": mobile}
    )
    if path.suffix == ".parquet":
        frame.write_parquet(path)
    else:
        frame.write_csv(path)


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_a_contextual_policy_is_estimated_above_the_logging_policy(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"log{suffix}"
    write_log(path)
    log = read_log(path)
    assert log.arms == ["checklist", "tour", "video"] and log.features == ["mobile"]
    report = evaluate_policy("linear_igw", log, train_share=0.5, seed=1)
    dr = report["estimates"]["dr"]
    # The learned policy shows each segment its paying variant (~0.6); the log earned ~0.3.
    assert dr["ci_low"] > report["logging_policy_value"] + 0.1
    assert 0.45 < dr["estimate"] < 0.7


def test_the_command_line(tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    write_log(path, n=2000)
    out = subprocess.run(
        [sys.executable, "-m", "headstart", "evaluate", "--policy", "journey", "--data", str(path), "--json"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert set(report["estimates"]) == {"ips", "snips", "dr"}
    bad = subprocess.run(
        [sys.executable, "-m", "headstart", "evaluate", "--policy", "nope", "--data", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert bad.returncode == 1 and "no policy named 'nope'" in bad.stdout


@pytest.mark.parametrize(
    ("frame", "problem"),
    [
        (pl.DataFrame({"action": ["a"] * 5, "reward": [1.0] * 5}), "missing column(s) propensity"),
        (
            pl.DataFrame({"action": ["a"] * 5, "reward": [2.0] * 5, "propensity": [0.5] * 5}),
            "column 'reward', row 0",
        ),
        (
            pl.DataFrame({"action": ["a"] * 5, "reward": [1.0] * 5, "propensity": [0.0] * 5}),
            "column 'propensity'",
        ),
        (
            pl.DataFrame(
                {"action": ["a"] * 5, "reward": [1.0] * 5, "propensity": [0.5] * 5, "city": ["x"] * 5}
            ),
            "column 'city' is String",
        ),
    ],
)
def test_bad_logs_fail_with_the_file_and_the_column(
    tmp_path: Path, frame: pl.DataFrame, problem: str
) -> None:
    path = tmp_path / "bad.csv"
    frame.write_csv(path)
    with pytest.raises(ConfigError, match=problem.replace("(", r"\(").replace(")", r"\)")) as info:
        read_log(path)
    assert str(path) in str(info.value)


def test_the_instances_log_replays_into_logged_decisions_per_point() -> None:
    from engine.catalog import DEFAULT_CATALOG, load_catalog
    from headstart.reports.evaluate import evaluate_logged, frame_to_log, logged_decisions
    from tests.engine.test_learning import PSEUDO, Log

    catalog = load_catalog(DEFAULT_CATALOG)
    log = Log()
    rng = np.random.default_rng(4)
    for i in range(120):
        key = PSEUDO.key(f"u{i}")
        arm = "video" if i % 2 else "checklist"
        decision_id = log.decision(key, 1_767_600_000.0 + i, arm=arm)
        log.reward(
            key, decision_id, float(rng.random() < (0.8 if arm == "video" else 0.3)), 1_767_600_000.0 + i
        )
    messages = [(seq, f"hs.events.0.{tail}", data) for seq, tail, data in log.messages]
    frame = logged_decisions(messages, catalog)
    assert frame.height == 120 and set(frame["point"]) == {"tutorial:first_project"}
    assert frame["propensity"].to_list() == [0.5] * 120
    assert frame.filter(frame["action"] == "video")["reward"].mean() > 0.6  # type: ignore[operator]
    logged = frame_to_log(frame, "log", point="tutorial:first_project")
    assert logged.x.shape == (120, BUILTIN_LAYOUT.dim) and logged.x[:, 0].tolist() == [1.0] * 120
    report = evaluate_logged("linear_igw", frame, catalog)
    estimates = report["points"]["tutorial:first_project"]["estimates"]
    assert set(estimates) == {"ips", "snips", "dr"}
    assert all(e["ci_low"] <= e["estimate"] <= e["ci_high"] for e in estimates.values())
