"""``bench catalog``'s pure parts: the versions it pushes are valid and marked in every text a
decision shows, and its metrics count failed and mixed-version answers and split the run into
baseline and push windows."""

from __future__ import annotations

import yaml

from bench.catalog import _metrics, marked
from engine.catalog import DEFAULT_CATALOG, parse_catalog_document
from engine.decision import Decider


def test_every_pushed_version_is_valid_and_marks_what_a_decision_shows() -> None:
    document = yaml.safe_load(DEFAULT_CATALOG.read_text())
    for version in (1, 2, 17):
        catalog, errors = parse_catalog_document(marked(document, version), "bench")
        assert catalog is not None and not errors, errors
        titles = [t for step in catalog.journey.steps for t in step.title.values()]
        assert titles and all(t.endswith(f" [v{version}]") for t in titles)
        assert all(m.endswith(f" [v{version}]") for m in catalog.messages.welcome.values())
    assert marked(document, 2) != marked(document, 3)
    assert document == yaml.safe_load(DEFAULT_CATALOG.read_text())  # the original is untouched


def test_a_decision_from_a_marked_version_carries_only_that_versions_marker() -> None:
    document = yaml.safe_load(DEFAULT_CATALOG.read_text())
    catalog, _ = parse_catalog_document(marked(document, 4), "bench")
    assert catalog is not None
    decider = Decider(catalog)
    text = str(decider.decide("user-1", None, None, {"locale": "de"}, now=1_767_571_200.0))
    assert "[v4]" in text and text.count("[v") == text.count("[v4]")


def test_metrics_count_failures_mixes_and_split_windows() -> None:
    # Four answers in a baseline window, four in a push window (one of each is bad).
    started = [1.0, 1.1, 1.2, 1.3, 5.0, 5.1, 5.2, 5.3]
    raw = {
        "latencies": [0.001, 0.001, 0.001, 0.002, 0.002, 0.002, 0.002, 0.004],
        "errors": ["IncompleteReadError"],
        "wall_s": 8.0,
        "cpu_s": 0.4,
        "versions": {
            "started": started,
            "status": [200, 200, 200, 503, 200, 200, 200, 200],
            "version": [1, 1, 1, -1, 2, 2, 3, 3],
            "marker": [1, 1, 1, -1, 2, -2, 3, 2],
        },
    }
    pushes = {
        "windows": [("baseline", 0.0, 4.0), ("pushes", 4.0, 8.0)],
        "propagation_s": [0.05, 0.2, 0.1],
        "probe_failures": 0,
        "probe_mixed": 0,
        "last_version": 3,
    }
    metrics = _metrics(raw, pushes)
    assert metrics["failed_decisions"] == 2  # the 503 and the connection error
    assert metrics["mixed_version_decisions"] == 2  # markers of two versions; marker v2 on a v3 answer
    assert metrics["decisions_during_pushes"] == 4
    assert metrics["decide_p99_ratio_during_pushes"] > 1.0
    assert metrics["propagation_max_s"] == 0.2
