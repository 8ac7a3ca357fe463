from __future__ import annotations

from pathlib import Path

import pytest

from engine.catalog import DEFAULT_CATALOG, CatalogError, check_catalog_text, load_catalog, template_problem

GOOD = """
version: 1
product: Demo
journey:
  steps:
    - {id: welcome, kind: welcome}
    - {id: profile, kind: profile, requires: [welcome]}
messages:
  welcome: {en: "Hi {{user_name}}"}
"""


def test_the_shipped_catalog_is_valid() -> None:
    catalog = load_catalog(DEFAULT_CATALOG)
    assert catalog.journey.steps[0].id == "welcome"
    assert {t.id for t in catalog.tutorials} >= {"first_project"}
    assert check_catalog_text(DEFAULT_CATALOG.read_text()) == []


def test_a_minimal_catalog_is_valid() -> None:
    assert check_catalog_text(GOOD) == []


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            ("requires: [welcome]", "requires: [nowhere]"),
            "journey.steps[1].requires[0]: unknown step 'nowhere'",
        ),
        (
            ("{id: welcome, kind: welcome}", "{id: welcome, kind: welcome, requires: [profile]}"),
            "journey.steps: prerequisites form a cycle: welcome -> profile -> welcome",
        ),
        (
            ("requires: [welcome]", "requires: [profile]"),
            "journey.steps[1].requires[0]: a step cannot require itself",
        ),
        (
            ("{id: profile, kind: profile", "{id: welcome, kind: profile"),
            "journey.steps[1].id: duplicate step id",
        ),
        (("kind: profile", "kind: party"), "journey.steps[1].kind: Input should be"),
        (("version: 1", "version: 3"), "version: Input should be 1"),
        (
            ("Hi {{user_name}}", "Hi {{#user_name}}x"),
            "messages.welcome.en: section {{#user_name}} is never closed",
        ),
        (("Hi {{user_name}}", "Hi {{password}}"), "messages.welcome.en: unknown variable 'password'"),
        (("welcome: {en:", "welcome: {de:"), "messages.welcome: no text for the default locale 'en'"),
        (
            ("product: Demo", "product: Demo\nflags: [{id: f, rules: [{value: true}]}]"),
            "flags[0].rules[0]: a rule needs 'segments', 'rollout' or both",
        ),
        (
            ("product: Demo", "product: Demo\nflags: [{id: f, rules: [{segments: [vips]}]}]"),
            "flags[0].rules[0].segments[0]: unknown segment 'vips'",
        ),
        (
            ("product: Demo", "product: Demo\nflags: [{id: f, rules: [{rollout: 150}]}]"),
            "flags[0].rules[0].rollout: Input should be less than or equal to 100",
        ),
        (
            ("product: Demo", "product: Demo\ntutorials: [{id: t, step: nope, variants: [{id: v}]}]"),
            "tutorials[0].step: unknown step 'nope'",
        ),
        (
            ("product: Demo", "product: Demo\ntutorials: [{id: t, variants: [{id: v}]}]"),
            "tutorials[0]: a tutorial belongs to exactly one of 'step' or 'feature'",
        ),
        (("product: Demo", "product: Demo\nsurprise: 1"), "surprise: Extra inputs are not permitted"),
        (("journey:", "journey: [\n"), "not valid YAML"),
    ],
)
def test_each_problem_is_reported_with_file_and_field(change: tuple[str, str], expected: str) -> None:
    text = GOOD.replace(*change)
    assert text != GOOD
    errors = check_catalog_text(text, "catalog.yaml")
    assert any(e.startswith("catalog.yaml: ") and expected in e for e in errors), errors


def test_every_error_is_reported_at_once() -> None:
    text = GOOD.replace("requires: [welcome]", "requires: [a, b]").replace("Hi {{user_name}}", "{{x}}")
    errors = check_catalog_text(text)
    assert len(errors) == 3


def test_load_catalog_raises_with_all_errors(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(GOOD.replace("requires: [welcome]", "requires: [a, b]"))
    with pytest.raises(CatalogError) as info:
        load_catalog(path)
    assert len(info.value.errors) == 2 and all(str(path) in e for e in info.value.errors)
    with pytest.raises(CatalogError, match="cannot read"):
        load_catalog(tmp_path / "missing.yaml")


@pytest.mark.parametrize("text", ["{{a", "a}}", "{{/role}}", "{{#role}}{{/device_type}}"])
def test_broken_templates_are_caught(text: str) -> None:
    assert template_problem(text) is not None


@pytest.mark.parametrize(
    ("segments", "expected"),
    [
        ('[{id: busy, rule: "sessions > 3"}]', "segments[0].rule: column 1: unknown field 'sessions'"),
        ('[{id: busy, rule: "country == 3"}]', "segments[0].rule: column 1: 'country' is text"),
        ('[{id: new_user, rule: "session_count < 2"}]', "segments[0].id: 'new_user' is a built-in segment"),
        (
            '[{id: a, rule: "session_count < 2"}, {id: a, rule: "session_count > 2"}]',
            "segments[1].id: duplicate segment id 'a'",
        ),
    ],
)
def test_rule_segments_are_checked_at_load(segments: str, expected: str) -> None:
    errors = check_catalog_text(GOOD + f"segments: {segments}\n")
    assert any(expected in e for e in errors), errors


def test_rule_segments_can_be_targeted_and_unknown_ones_are_not() -> None:
    text = GOOD.replace(
        "{id: profile, kind: profile, requires: [welcome]}",
        "{id: profile, kind: profile, requires: [welcome], segments: [busy]}",
    )
    assert check_catalog_text(text + 'segments: [{id: busy, rule: "session_count > 3"}]\n') == []
    assert "unknown segment 'busy'" in check_catalog_text(text)[0]


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ("membership: {track: false}\n", "clusters.enabled: clusters need live membership"),
        ('segments: [{id: cluster_2, rule: "session_count > 1"}]\n', "'cluster_2' is a built-in segment"),
        (
            "webhooks: [{id: crm, url: 'https://x.example/h', secret_env: CRM, segments: [nope]}]\n",
            "webhooks[0].segments[0]: unknown segment 'nope'",
        ),
        ("webhooks: [{id: crm, url: 'ftp://x', secret_env: CRM}]\n", "webhooks[0].url"),
        (
            "webhooks: [{id: crm, url: 'https://x.example/h', secret_env: 'my secret'}]\n",
            "webhooks[0].secret_env",
        ),
        ("clusters: {k: 9}\n", "clusters.k"),
    ],
)
def test_membership_clusters_and_webhooks_are_checked_at_load(extra: str, expected: str) -> None:
    errors = check_catalog_text(GOOD + extra)
    assert any(expected in e for e in errors), errors


def test_clusters_are_segments_flags_can_target() -> None:
    text = GOOD + "flags: [{id: f, rules: [{segments: [cluster_3], value: true}]}]\n"
    assert check_catalog_text(text) == []
    assert "unknown segment 'cluster_3'" in check_catalog_text(text + "clusters: {k: 3}\n")[0]
