"""The in-app kit's catalog sections: step urls, tours and tooltips, pacing; check-config messages."""

from __future__ import annotations

import pytest
import yaml

from engine.catalog import DEFAULT_CATALOG, check_catalog_text, load_catalog, parse_catalog_document

BASE = """
version: 1
product: Demo
journey:
  steps:
    - {id: welcome, kind: welcome, url: /start}
    - {id: project, kind: first_project, requires: [welcome]}
tutorials:
  - id: project
    step: project
    variants:
      - id: tour
        tour:
          - {target: "#new", title: {en: "New"}, body: {en: "Make one, {{user_name}}"}}
          - {target: "#name", body: {en: "Name it"}, placement: right}
      - id: tip
        surface: tooltip
        repeat: true
        tour:
          - {target: "[data-step='create']", title: {en: "Create"}}
messages:
  welcome: {en: "Hi"}
pacing:
  overall: {max_per_day: 3, min_gap_minutes: 15}
  surfaces: {tour: {max_per_day: 1}}
  quiet_hours: {start: "22:00", end: "07:30"}
"""

TOOLTIP = BASE[BASE.index("      - id: tip") : BASE.index("messages:")]


def test_a_catalog_with_tours_and_pacing_is_valid() -> None:
    assert check_catalog_text(BASE) == []


def test_the_default_catalog_has_urls_a_tour_a_tooltip_and_pacing() -> None:
    catalog = load_catalog(DEFAULT_CATALOG)
    assert all(step.url for step in catalog.journey.steps)
    variants = [v for t in catalog.tutorials for v in t.variants]
    assert any(v.surface == "tour" and 2 <= len(v.tour) <= 3 for v in variants)
    assert any(v.surface == "tooltip" and len(v.tour) == 1 for v in variants)
    assert catalog.pacing.overall.max_per_day is not None and catalog.pacing.learned


def test_pacing_is_optional_and_learned_by_default() -> None:
    catalog, errors = parse_catalog_document(yaml.safe_load(BASE[: BASE.index("pacing:")]))
    assert errors == [] and catalog is not None
    assert catalog.pacing.learned is True and catalog.pacing.quiet_hours is None
    assert catalog.pacing.overall.max_per_day is None and catalog.journey.steps[1].url is None


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            (
                TOOLTIP,
                "      - id: tip\n        surface: tooltip\n",
            ),
            "tutorials[0].variants[1].tour: a tooltip variant has exactly one tour step (it has 0)",
        ),
        (
            (
                '{target: "#name", body: {en: "Name it"}, placement: right}',
                '{target: "#name", placement: right}',
            ),
            "tutorials[0].variants[0].tour[1]: a tour step needs a title or a body",
        ),
        (
            ('target: "#new"', 'target: "#new[data-x"'),
            "tutorials[0].variants[0].tour[0].target: unbalanced '[' or quotes",
        ),
        (
            ('target: "#new"', 'target: "  "'),
            "tutorials[0].variants[0].tour[0].target: empty selector",
        ),
        (
            ("Make one, {{user_name}}", "Make one, {{nickname}}"),
            "tutorials[0].variants[0].tour[0].body.en: unknown variable 'nickname'",
        ),
        (
            ('title: {en: "New"}', 'title: {de: "Neu"}'),
            "tutorials[0].variants[0].tour[0].title: no text for the default locale 'en' to fall back on",
        ),
        (
            ("placement: right", "placement: middle"),
            "tutorials[0].variants[0].tour[1].placement: Input should be 'top', 'bottom'",
        ),
        (
            ("surface: tooltip", "surface: modal"),
            "tutorials[0].variants[1].surface: Input should be 'tour' or 'tooltip'",
        ),
        (("url: /start", "url: start page"), "journey.steps[0].url: String should match pattern"),
        (('end: "07:30"', 'end: "22:00"'), "pacing.quiet_hours: Value error, start and end are equal"),
        (('end: "07:30"', 'end: "7:30"'), "pacing.quiet_hours.end: String should match pattern"),
        (
            ("max_per_day: 3", "max_per_day: 100"),
            "pacing.overall.max_per_day: Input should be less than or equal to 24",
        ),
        (
            ("min_gap_minutes: 15", "min_gap_minutes: -1"),
            "pacing.overall.min_gap_minutes: Input should be greater",
        ),
        (("surfaces: {tour:", "surfaces: {popup:"), "pacing.surfaces.popup: Extra inputs are not permitted"),
    ],
)
def test_check_config_says_where_and_why(change: tuple[str, str], expected: str) -> None:
    old, new = change
    assert old in BASE
    errors = check_catalog_text(BASE.replace(old, new))
    assert any(expected in error for error in errors), errors
    assert all(error.startswith("<text>: ") for error in errors)
