"""PNG plots of benchmark results, written next to their JSON (``results/<name>.png``).

Every benchmark's :func:`bench.common.write_result` draws its plot; ``python -m bench.plots``
draws them again from the JSON files present (for a result written before a plot existed, what
its JSON holds is drawn).

- **decide**: latency by percentile at each concurrency, the engine against the no-op floor;
- **ingest**: events applied per second over each drain (plain, 1 and 2 shards, with
  segments, with a custom schema, in batched messages);
- **learn**: cumulative regret over the decisions, per policy (the learning curves);
- **recover**: each recovery's timeline (fault, process started, take-over steps, serving
  again, caught up);
- **scale**: events/s at each size and every move's pause;
- **experiments**: false-positive rate and power, fixed horizon and sequential.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np

from bench import RESULTS_DIR

matplotlib.use("Agg")  # files only: no display here
import matplotlib.pyplot as plt

Plot = Callable[[dict[str, Any], Any], None]


def _decide(doc: dict[str, Any], fig: Any) -> None:
    metrics, baseline = doc["metrics"], doc.get("baseline", {})
    ax = fig.add_subplot(1, 1, 1)
    for c, color in zip(("1", "16", "64"), ("tab:blue", "tab:orange", "tab:green"), strict=True):
        sources = (
            (metrics.get("by_concurrency", {}), "-", "engine (HTTP)"),
            (metrics.get("grpc_by_concurrency", {}), ":", "engine (gRPC)"),
            (baseline.get("by_concurrency", {}), "--", "no-op floor"),
        )
        for by_concurrency, style, label in sources:
            entry = by_concurrency.get(c, {})
            pct = entry.get("percentiles") or {"50": entry.get("p50_ms"), "99": entry.get("p99_ms")}
            qs = sorted(float(q) for q, v in pct.items() if v is not None)
            if not qs:
                continue
            values = [pct[_key(pct, q)] for q in qs]
            ax.plot(qs, values, style, color=color, marker="o", ms=3, label=f"{label}, {c} clients")
    ax.set_xlabel("percentile")
    ax.set_ylabel("latency (ms)")
    ax.set_yscale("log")
    ax.set_title("POST /v1/decide latency by percentile")
    _legend(ax, 7)


def _legend(ax: Any, size: int) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=size)


def _key(pct: dict[str, Any], q: float) -> str:
    return next(k for k in pct if float(k) == q)


def _ingest(doc: dict[str, Any], fig: Any) -> None:
    ax = fig.add_subplot(1, 1, 1)
    labels = {
        "1": "1 shard",
        "2": "2 shards",
        "2_segments": "2 shards, 20 segments + clusters",
        "2_custom_schema": "2 shards, custom schema (half the events custom)",
        "2_batched": "2 shards, messages of 10 events of one user",
    }
    for kind, runs in doc["metrics"].get("runs", {}).items():
        for i, run in enumerate(runs):
            series = run.get("series")
            if not series or len(series["seconds"]) < 3:
                continue
            # Events: a batched drain handles a message for ten of them.
            counted = series.get("applied", series["handled"])
            t, n = np.array(series["seconds"]), np.array(counted, dtype=float)
            rate = np.diff(n) / np.maximum(np.diff(t), 1e-3)
            # A 0.25 s moving average (the 50 ms samples are jumpy); shorter for a short drain.
            width = min(5, len(rate))
            kernel = np.ones(width) / width
            smooth = np.convolve(rate, kernel, mode="same")
            ax.plot(
                t[1:],
                smooth,
                label=f"{labels.get(kind, kind)}" if i == 0 else None,
                alpha=0.8,
                color={
                    "1": "tab:blue",
                    "2": "tab:green",
                    "2_segments": "tab:orange",
                    "2_custom_schema": "tab:purple",
                    "2_batched": "tab:red",
                }.get(kind),
            )
    if not ax.lines:  # a result from before the series were recorded: the medians
        rates = {
            k: doc["metrics"].get(k)
            for k in ("events_per_s_1_shard", "events_per_s", "events_per_s_with_segments")
        }
        ax.bar(["1 shard", "2 shards", "2 shards + segments"], [v or 0 for v in rates.values()])
    ax.set_xlabel("seconds into the drain")
    ax.set_ylabel("events applied per second")
    ax.set_title("ingest: 200,000 events drained from JetStream")
    _legend(ax, 8)


def _learn(doc: dict[str, Any], fig: Any) -> None:
    ax = fig.add_subplot(1, 1, 1)
    drift = doc.get("params", {}).get("drift_at_decision")
    for name, result in doc["metrics"]["policies"].items():
        curve = result.get("curve")
        if curve and name != "oracle":
            ax.plot(curve["decisions"], curve["regret"], label=name, lw=2.2 if name == "ours" else 1.2)
    if drift:
        ax.axvline(drift, color="grey", ls=":", lw=1)
        ax.text(drift, ax.get_ylim()[1] * 0.95, " preferences drift", fontsize=8, color="grey")
    if not ax.lines:
        names = list(doc["metrics"]["policies"])
        ax.bar(names, [doc["metrics"]["policies"][n]["regret"] for n in names])
        ax.tick_params(axis="x", rotation=45)
    ax.set_xlabel("decisions")
    ax.set_ylabel("cumulative regret (lower is better)")
    ax.set_title("learning curves: regret against the oracle")
    _legend(ax, 8)


def _recover(doc: dict[str, Any], fig: Any) -> None:
    ax = fig.add_subplot(1, 1, 1)
    rows: list[str] = []
    for scenario in ("shard_kill", "node_loss"):
        entry = doc["metrics"].get(scenario)
        if not entry:
            continue
        for shard, timeline in sorted(entry.get("timeline", {}).items()):
            start = timeline.get("process_started_s")
            y = len(rows)
            rows.append(f"{scenario} (shard {shard})")
            if start is not None:
                ax.barh(
                    y,
                    start,
                    color="tab:red",
                    alpha=0.6,
                    label="until the process is back" if y == 0 else None,
                )
                t = start
                for take in timeline.get("take_over") or []:
                    for step, seconds in take.items():
                        if step.endswith("_s") and isinstance(seconds, float):
                            ax.barh(y, seconds, left=t, color="tab:blue", alpha=0.5, edgecolor="white")
                            t += seconds
        y_top = len(rows) - 1
        ax.plot([entry["recovery_s"]], [y_top], "k|", ms=18, mew=2)
        ax.text(entry["recovery_s"], y_top + 0.3, f" serving {entry['recovery_s']:.1f} s", fontsize=8)
        if entry.get("caught_up_s"):
            ax.plot([entry["caught_up_s"]], [y_top], "g|", ms=18, mew=2)
    ax.set_yticks(range(len(rows)), rows)
    ax.set_xlabel("seconds after the fault")
    ax.set_title("recovery timelines (red: Ray restarts the process; blue: take-over steps)")


def _scale(doc: dict[str, Any], fig: Any) -> None:
    metrics = doc["metrics"]
    left, right = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    sizes = list(metrics["events_per_s_by_shards"])
    left.bar([f"{s} shard(s)" for s in sizes], [metrics["events_per_s_by_shards"][s] for s in sizes])
    left.set_ylabel("events/s under load")
    left.set_title("throughput at each size")
    pauses = [(f"{r['from']}→{r['to']}", m["pause_s"]) for r in metrics["rescales"] for m in r["moves"]]
    right.scatter(
        range(len(pauses)), [p for _, p in pauses], c=["tab:red" if p > 1 else "tab:blue" for _, p in pauses]
    )
    right.axhline(1.0, color="grey", ls=":", lw=1)
    right.set_xticks(range(len(pauses)), [label for label, _ in pauses], rotation=90, fontsize=7)
    right.set_ylabel("pause (s)")
    right.set_title("each move's pause (target ≤ 1 s)")


def _experiments(doc: dict[str, Any], fig: Any) -> None:
    m = doc["metrics"]
    ax = fig.add_subplot(1, 1, 1)
    names = [
        "A/A false positives\nfixed",
        "A/A false positives\nsequential",
        "A/A peeking\n(fixed, 10 looks)",
        "power\nfixed",
        "power\nsequential",
    ]
    values = [
        m["aa_fpr_fixed"],
        m["aa_fpr_sequential"],
        m.get("aa_fpr_fixed_peeking", 0),
        m["power_fixed"],
        m["power_sequential"],
    ]
    ax.bar(names, values, color=["tab:green", "tab:green", "tab:red", "tab:blue", "tab:blue"])
    ax.axhline(0.05, color="grey", ls=":", lw=1)
    ax.set_ylabel("share of 1,000 simulated tests")
    ax.set_title("experiment statistics (α = 0.05)")
    ax.tick_params(axis="x", labelsize=8)


PLOTS: dict[str, Plot] = {
    "decide": _decide,
    "ingest": _ingest,
    "learn": _learn,
    "recover": _recover,
    "scale": _scale,
    "experiments": _experiments,
}


def plot(document: dict[str, Any], folder: Path) -> Path | None:
    """Draw ``document``'s plot to ``<folder>/<name>.png`` (None: no plot for this benchmark)."""
    draw = PLOTS.get(document["name"])
    if draw is None:
        return None
    fig = plt.figure(figsize=(9, 5))
    try:
        draw(document, fig)
        fig.text(
            0.99,
            0.01,
            f"{document['name']} · {document.get('git_sha', '')[:7]}",
            ha="right",
            fontsize=7,
            color="grey",
        )
        fig.tight_layout()
        path = folder / f"{document['name']}.png"
        fig.savefig(path, dpi=100)
        return path
    finally:
        plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    folder = Path((argv or sys.argv[1:] or [str(RESULTS_DIR)])[0])
    for path in sorted(folder.glob("*.json")):
        out = plot(json.loads(path.read_text()), folder)
        if out is not None:
            print(out)


if __name__ == "__main__":
    main()
