from __future__ import annotations

from pathlib import Path

import pytest

from engine.catalog import DEFAULT_CATALOG, CatalogError, check_catalog_text, load_catalog, template_problem
from tests.catalogs import CUSTOM_SCHEMA

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


# ---------------------------------------------------------------------- the custom schema in references

CUSTOM = CUSTOM_SCHEMA.read_text()
DECLARED = "declared: connected_integration, connected_slack, created_board, invited_teammate"
#: (change to the contract catalog, the error it must give with its field path). The changes
#: touch different lines, so all of them apply at once too (the CLI test below).
CUSTOM_PROBLEMS: list[tuple[tuple[str, str], str]] = [
    (
        ("- {type: connected_slack}", "- {type: connected_slak}"),
        f"journey.steps[2].completed_by[0].type: unknown event type 'connected_slak' ({DECLARED}; "
        "built in: step_completed, feature_clicked, tutorial_completed, onboarding_completed)",
    ),
    (
        (
            "{type: connected_integration, props: {integration: slack}}",
            "{type: connected_integration, props: {service: slack}}",
        ),
        "journey.steps[2].completed_by[1].props.service: 'connected_integration' has no prop "
        "'service' (declared: integration)",
    ),
    (
        (
            "completed_by: [{type: created_board}]",
            "completed_by: [{type: created_board, props: {template: trello}}]",
        ),
        "journey.steps[1].completed_by[0].props.template: 'trello' is not one of the declared values "
        "(kanban, scrum, blank)",
    ),
    (
        (
            "completed_by: [{type: invited_teammate}]",
            "completed_by: [{type: invited_teammate, props: {role: pm}}]",
        ),
        "journey.steps[3].completed_by[0].props.role: 'role' is not counted per value: declare it "
        "with 'count_by: true'",
    ),
    (
        (
            'title: {en: "Welcome to Boards"}',
            'title: {en: "Welcome to Boards"}\n      completed_by: [{type: session_started}]',
        ),
        "journey.steps[0].completed_by[0].type: 'session_started' cannot be used here",
    ),
    (
        ("{{plan}} plan", "{{plann}} plan"),
        "journey.steps[0].message.en: unknown variable 'plann' (known: app_theme, company_size, ",
    ),
    (
        ("within_days: 7}\n\nlearning:", "within_days: 7}\n      - {event: created_bord}\n\nlearning:"),
        f"experiments[0].guardrails[1].event: unknown event type 'created_bord' ({DECLARED}; built in: "
        "onboarding_completed, session_started, step_viewed, step_completed, feature_clicked, "
        "tutorial_started, tutorial_completed)",
    ),
    (
        ("props: {template: kanban}", "props: {cards: many}"),
        "experiments[0].metric.props.cards: 'cards' is a number; 'many' is a string",
    ),
    (
        (
            "- {event: connected_integration, props: {integration: slack}",
            "- {event: connected_integration, props: {integration: true}",
        ),
        "experiments[0].guardrails[0].props.integration: 'integration' is a string; True is a boolean",
    ),
    (
        ("journey: {event: invited_teammate,", "journey: {event: invited_teammates,"),
        f"learning.journey.event: unknown event type 'invited_teammates' ({DECLARED}; built in: ",
    ),
    (
        ("    seats: {type: number}\n", "    seats: {type: number}\n    session_count: {type: number}\n"),
        "schema.traits.session_count: 'session_count' is a rule field",
    ),
    (
        ("    industry: {type: string}\n", "    industry: {type: string}\n    user_name: {type: string}\n"),
        "schema.traits.user_name: 'user_name' is a message template variable",
    ),
    (
        (
            "    app_theme: {type: string}\n",
            "    app_theme: {type: string}\n    completed: {type: boolean}\n",
        ),
        "schema.context.completed: 'completed' is a rule function",
    ),
]


def test_the_contract_catalog_is_valid() -> None:
    assert check_catalog_text(CUSTOM) == []
    steps = {s.id: s for s in load_catalog(CUSTOM_SCHEMA).journey.steps}
    assert [(r.type, r.props) for r in steps["connect_slack"].completed_by] == [
        ("connected_slack", {}),
        ("connected_integration", {"integration": "slack"}),
    ]


@pytest.mark.parametrize(
    ("change", "expected"), CUSTOM_PROBLEMS, ids=[e.split(":")[0] for _, e in CUSTOM_PROBLEMS]
)
def test_references_to_the_custom_schema_are_checked(change: tuple[str, str], expected: str) -> None:
    text = CUSTOM.replace(*change)
    assert text != CUSTOM
    errors = check_catalog_text(text, "boards.yaml")
    assert len(errors) == 1 and errors[0].startswith(f"boards.yaml: {expected}"), errors


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            (
                "completed_by: [{type: created_board}]",
                "completed_by: [{type: step_completed, props: {step: x}}]",
            ),
            "journey.steps[1].completed_by[0].props: props apply to declared event types only",
        ),
        (
            ("completed_by: [{type: created_board}]", "completed_by: [{type: created_board, feature: x}]"),
            "journey.steps[1].completed_by[0]: 'feature' and 'tutorial' apply to built-in types",
        ),
        (
            ("within_days: 7}\n    guardrails", "within_days: 7, name: x}\n    guardrails"),
            "experiments[0].metric.name: 'name' applies to built-in types; use 'props'",
        ),
        (
            (
                "journey: {event: invited_teammate,",
                "journey: {event: connected_integration, props: {integration: 4},",
            ),
            "learning.journey.props.integration: 'integration' is a string; 4.0 is a number",
        ),
    ],
)
def test_built_in_and_declared_forms_are_not_mixed(change: tuple[str, str], expected: str) -> None:
    text = CUSTOM.replace(*change)
    assert text != CUSTOM
    errors = check_catalog_text(text)
    assert len(errors) == 1 and errors[0].startswith(f"<text>: {expected}"), errors


def test_declared_names_are_template_variables_only_where_declared() -> None:
    assert check_catalog_text(GOOD.replace("Hi {{user_name}}", "Hi {{plan}}")) == [
        "<text>: messages.welcome.en: unknown variable 'plan' (known: company_size, country, device_type, "
        "locale, os, product, role, step_title, user_name)"
    ]
    assert template_problem("{{plann}}", load_catalog(CUSTOM_SCHEMA).schema_) == (
        "unknown variable 'plann' (known: app_theme, company_size, country, device_type, industry, "
        "locale, os, phone, plan, product, role, seats, step_title, user_name)"
    )
    assert template_problem("{{#plan}}On {{plan}}{{/plan}}", load_catalog(CUSTOM_SCHEMA).schema_) is None
