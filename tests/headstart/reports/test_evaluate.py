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


def test_a_log_of_two_layouts_is_read_feature_by_feature(tmp_path: Path) -> None:
    """Decisions logged before and after a catalog change of its features: each is read with
    its own layout's names (registered by id), columns line up by name, null where a layout had
    no such feature; the export evaluates, and the signal report judges each feature on the
    decisions that had it."""
    from engine.catalog import Catalog, load_catalog
    from engine.features import FeatureLayout
    from engine.learning import encode_record
    from headstart.reports.evaluate import evaluate_logged, logged_decisions, replay_log
    from headstart.reports.signals import signals_report
    from tests.catalogs import CUSTOM_SCHEMA
    from tests.engine.test_learning import PSEUDO, Log, decision_record
    from tests.engine.test_learning_layouts import custom_catalog

    before = custom_catalog()  # plan, created_board count, app_theme
    data = before.model_dump(by_alias=True)
    data["learning"]["features"] = [{"trait": "plan", "values": ["pro", "free"]}, {"trait": "seats"}]
    after = Catalog.model_validate(data)
    old, new = FeatureLayout.from_catalog(before), FeatureLayout.from_catalog(after)
    assert load_catalog(CUSTOM_SCHEMA).learning.features == before.learning.features
    log, rng = Log(), np.random.default_rng(7)
    for i in range(60):
        layout = old if i % 2 else new
        x = [1.0] + [0.0] * (layout.dim - 1)
        pro = i % 4 < 2
        x[layout.index("trait:plan=pro" if pro else "trait:plan=free")] = 1.0
        if layout is old:
            x[layout.index("event_count:created_board")] = float(i)
        else:
            x[layout.index("trait:seats")] = float(i + 1000)
        key = PSEUDO.key(f"u{i}")
        decision_id = f"{key}{i:016x}"
        record = decision_record(decision_id, key, 1_767_600_000.0 + i, "video", "tutorial:first_project", x)
        record.layout = layout.layout_id
        log.add(f"{key}-decision", encode_record(record))
        log.reward(key, decision_id, float(rng.random() < (0.9 if pro else 0.1)), 1_767_600_000.0 + i)
    messages = [(seq, f"hs.events.0.{tail}", payload) for seq, tail, payload in log.messages]

    # Without the old layout's names, its decisions are not read (never by position).
    assert logged_decisions(messages, after).height == 30
    frame = replay_log(messages, after, {old.layout_id: old.names}).decisions
    assert frame.height == 60
    features = [c.split("_", 1)[1] for c in frame.columns if c.startswith("x")]
    assert features[: new.dim - 1] == list(new.names[1:])
    assert features[new.dim - 1 :] == [n for n in old.names if n not in new.names]
    by_name = {c.split("_", 1)[1]: c for c in frame.columns if c.startswith("x")}
    olds = frame.filter(pl.col(by_name["trait:seats"]).is_null())
    news = frame.filter(pl.col(by_name["event_count:created_board"]).is_null())
    assert olds.height == news.height == 30
    assert sorted(olds[by_name["event_count:created_board"]].to_list()) == [float(i) for i in range(1, 60, 2)]
    assert sorted(news[by_name["trait:seats"]].to_list()) == [float(i + 1000) for i in range(0, 60, 2)]
    for rows in (olds, news):  # plan=pro read by name in both layouts (its slot differs)
        pro = rows[by_name["trait:plan=pro"]] == 1.0
        assert rows.filter(pro)["reward"].mean() > 0.6  # type: ignore[operator]
        assert rows.filter(~pro)["reward"].mean() < 0.4  # type: ignore[operator]

    path = tmp_path / "decisions.parquet"
    frame.write_parquet(path)
    report = evaluate_logged("linear_igw", pl.read_parquet(path), after)
    assert set(report["points"]["tutorial:first_project"]["estimates"]) == {"ips", "snips", "dr"}
    signals = {row["feature"]: row for row in signals_report(frame, pl.DataFrame())["signals"]}
    assert signals["trait:plan=pro"]["mi_reward_bits"] > 0.2
    assert set(signals) == set(features)
