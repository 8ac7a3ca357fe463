"""What every benchmark shares: the JSON result format, and starting what a benchmark needs."""

from __future__ import annotations

import contextlib
import datetime as dt
import importlib
import json
import os
import platform
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil

from bench import RESULTS_DIR
from engine.errors import ConfigError
from headstart.adapters.broker import EmbeddedNats


def git_sha() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).resolve().parent,
        )
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}


def write_result(
    name: str,
    params: dict[str, Any],
    metrics: dict[str, Any],
    baseline: dict[str, Any] | None = None,
    out_dir: Path | None = None,
    started_at: dt.datetime | None = None,
) -> Path:
    """Write ``<out_dir>/<name>.json`` in the format of ARCHITECTURE.md."""
    folder = out_dir or RESULTS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    started = started_at or dt.datetime.now(dt.UTC)
    document = {
        "name": name,
        "git_sha": git_sha(),
        "started_at": started.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": machine(),
        "params": params,
        "metrics": metrics,
        "baseline": baseline or {},
    }
    path = folder / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(document, indent=2, sort_keys=False) + "\n")
    tmp.replace(path)
    from bench.plots import plot  # matplotlib only once a result is there to draw

    plot(document, folder)
    return path


def run_benchmark(name: str, quick: bool = False, out_dir: Path | None = None) -> Path:
    """Import ``bench.<name>`` and call its ``run(quick=..., out_dir=...)``."""
    if not name.isidentifier() or name in {"ab", "common", "pacing", "population", "plots"}:
        raise ConfigError(f"no benchmark named {name!r}")
    try:
        module = importlib.import_module(f"bench.{name}")
    except ModuleNotFoundError as exc:
        raise ConfigError(f"no benchmark named {name!r} in bench/") from exc
    path: Path = module.run(quick=quick, out_dir=out_dir)
    return path


@contextlib.contextmanager
def embedded_broker() -> Iterator[EmbeddedNats]:
    """A throwaway nats-server on loopback with JetStream on a temp dir."""
    with tempfile.TemporaryDirectory(prefix="hs-bench-") as tmp, EmbeddedNats(Path(tmp)) as broker:
        yield broker


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time consumed so far by these processes (for where-time-goes figures)."""
    total = 0.0
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            times = psutil.Process(pid).cpu_times()
            total += times.user + times.system
    return total


@contextlib.contextmanager
def local_ray(num_cpus: int = 2) -> Iterator[None]:
    import ray

    ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False, namespace="headstart")
    try:
        yield
    finally:
        ray.shutdown()
