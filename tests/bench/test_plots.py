"""Every benchmark's result draws a PNG plot (the committed results, and a fresh quick run's)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import RESULTS_DIR
from bench.plots import PLOTS, plot


@pytest.mark.parametrize("name", sorted(PLOTS))
def test_the_committed_result_draws_a_non_empty_png(name: str, tmp_path: Path) -> None:
    document = json.loads((RESULTS_DIR / f"{name}.json").read_text())
    path = plot(document, tmp_path)
    assert path is not None and path.name == f"{name}.png"
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_a_benchmark_without_a_plot_draws_none(tmp_path: Path) -> None:
    assert plot({"name": "decode", "metrics": {}}, tmp_path) is None
