"""A/B: the same benchmarks at two commits, run alternately on this machine, compared.

A change that must not slow Headstart down is judged against the commit before it *in the same
session*: the machine is shared and its speed drifts over an hour by more than most regressions,
so each benchmark runs at both commits in turn (A B B A ...: a machine that speeds up or slows
down over the session favours neither), and the comparison is of medians over rounds, with each
run's own spread beside it.

Each commit is checked out into a temporary git worktree and run from there
(``python -m headstart bench NAME`` with that worktree first on ``PYTHONPATH``), with this
environment's packages::

    python -m bench.ab --base 3b60179 --bench ingest --bench decide --rounds 2

writes ``bench/results/ab_ingest_decide.json``: per benchmark and metric, the values at each commit per round,
their medians and the ratio head / base.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench import RESULTS_DIR
from bench.common import write_result

#: The metrics compared per benchmark: (name in metrics, higher is better).
COMPARED: dict[str, list[tuple[str, bool]]] = {
    "ingest": [
        ("events_per_s", True),
        ("events_per_s_1_shard", True),
        ("events_per_s_with_segments", True),
        ("apply_us_per_event", False),
        ("bytes_per_user", False),
        ("lost", False),
        ("duplicated", False),
    ],
    "decide": [
        ("rps_at_64", True),
        ("rps_ratio_to_floor_at_64", True),
        ("p50_ms_at_1", False),
        ("p99_ms_at_64", False),
        ("freshness_p99_ms", False),
    ],
}


def _git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


@contextlib.contextmanager
def checkout(repo: Path, ref: str) -> Iterator[Path]:
    """``ref`` in a temporary worktree (removed afterwards)."""
    where = Path(tempfile.mkdtemp(prefix="hs-ab-")) / "tree"
    _git("worktree", "add", "--detach", str(where), ref, cwd=repo)
    try:
        yield where
    finally:
        _git("worktree", "remove", "--force", str(where), cwd=repo)


def run_once(tree: Path, name: str, out: Path) -> dict[str, Any]:
    """One benchmark run with ``tree``'s code; its result document."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    subprocess.run(
        [sys.executable, "-m", "headstart", "bench", name, "--out", str(out)],
        cwd=tree,
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    result: dict[str, Any] = json.loads((out / f"{name}.json").read_text())
    return result


def flatten(name: str, metrics: dict[str, Any]) -> dict[str, float]:
    """The compared figures of one result (decide's per-concurrency ones lifted to the top)."""
    flat = {k: v for k, v in metrics.items() if isinstance(v, int | float)}
    for level, figures in (metrics.get("by_concurrency") or {}).items():
        for key in ("rps", "p50_ms", "p99_ms"):
            if key in figures:
                flat[f"{key}_at_{level}"] = figures[key]
    return {metric: float(flat[metric]) for metric, _ in COMPARED.get(name, []) if metric in flat}


def compare(base: list[dict[str, float]], head: list[dict[str, float]]) -> dict[str, Any]:
    """Per metric: both commits' values, medians, and head / base."""
    out: dict[str, Any] = {}
    for metric in sorted(set().union(*base, *head)):
        a = [run[metric] for run in base if metric in run]
        b = [run[metric] for run in head if metric in run]
        if not a or not b:
            continue
        ma, mb = statistics.median(a), statistics.median(b)
        out[metric] = {
            "base": a,
            "head": b,
            "base_median": ma,
            "head_median": mb,
            "ratio": mb / ma if ma else None,
        }
    return out


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", required=True, help="the commit compared against")
    parser.add_argument("--head", default="HEAD", help="the commit under test (default HEAD)")
    parser.add_argument("--bench", action="append", required=True, help="benchmark name (repeatable)")
    parser.add_argument("--rounds", type=int, default=1, help="runs per commit and benchmark")
    parser.add_argument(
        "--first", choices=["base", "head"], default="base", help="which commit runs first in round 1"
    )
    args = parser.parse_args(argv)
    repo = Path(_git("rev-parse", "--show-toplevel", cwd=Path.cwd()))
    started = dt.datetime.now(dt.UTC)
    refs = {"base": _git("rev-parse", args.base, cwd=repo), "head": _git("rev-parse", args.head, cwd=repo)}
    runs: dict[str, dict[str, list[dict[str, float]]]] = {b: {"base": [], "head": []} for b in args.bench}
    with checkout(repo, refs["base"]) as base_tree, checkout(repo, refs["head"]) as head_tree:
        trees = {"base": base_tree, "head": head_tree}
        for round_ in range(args.rounds):
            for i, name in enumerate(args.bench):
                # A B, then B A: neither commit always runs first.
                order = ["base", "head"] if (round_ + i) % 2 == 0 else ["head", "base"]
                if args.first == "head":
                    order.reverse()
                for side in order:
                    out = Path(tempfile.mkdtemp(prefix=f"hs-ab-{side}-"))
                    result = run_once(trees[side], name, out)
                    runs[name][side].append(flatten(name, result["metrics"]))
                    print(f"{name} {side} round {round_ + 1}: {runs[name][side][-1]}", flush=True)
    metrics = {name: compare(sides["base"], sides["head"]) for name, sides in runs.items()}
    params = {
        "base": refs["base"],
        "head": refs["head"],
        "benchmarks": args.bench,
        "rounds": args.rounds,
        "order": "alternating per round and benchmark (A B / B A)",
    }
    name = "ab_" + "_".join(args.bench)
    return write_result(name, params, metrics, out_dir=RESULTS_DIR, started_at=started)


if __name__ == "__main__":
    print(main())
