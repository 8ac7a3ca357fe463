"""Rules over what a catalog's ``schema:`` declares: custom traits and context fields by bare
name, ``event_count(...)`` of declared (and built-in) types and of ``count_by`` values. Type
errors name the field; the three compilations (:meth:`Rule.matches` over a :class:`RuleInput`,
:func:`compile_mask` over live state, the polars expression over a profile table) agree on
users built from real events."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.catalog import load_catalog
from engine.profile import UserState, Vocabularies
from engine.rules import RuleError, RuleInput, RuleReads, compile_mask, parse_rule, profile_table, rule_input
from engine.schema import EventSchema, SchemaSection
from tests.catalogs import CUSTOM_SCHEMA

NOW = 1_767_600_000.0
CONTRACT = load_catalog(CUSTOM_SCHEMA).event_schema
#: The contract's declaration plus what it lacks: a boolean trait, a number context field and a
#: ``count_by`` prop with declared values and a small bound (values past it count as "(other)").
_DECLARED = CONTRACT.section.model_dump(exclude_defaults=True)
_DECLARED["events"]["shared_board"] = {
    "props": {
        "channel": {"type": "string", "values": ["email", "link", "slack"], "count_by": True, "max_values": 2}
    }
}
_DECLARED["traits"]["trial"] = {"type": "boolean"}
_DECLARED["context"]["screen_width"] = {"type": "number"}
SCHEMA = EventSchema(SchemaSection.model_validate(_DECLARED))


def event(n: int, kind: str, ts: float = NOW, **extra: Any) -> Any:
    return SCHEMA.from_object({"event_id": f"e{n}", "user_id": "k", "type": kind, "ts": ts, **extra})


@pytest.mark.parametrize(
    ("source", "problem"),
    [
        ('plann == "pro"', "column 1: unknown field 'plann' (known: age_band, app_theme, "),
        ("plan == 3", "'plan' is text; it cannot be compared with a number"),
        ('seats >= "5"', "'seats' is number"),
        ('plan < "pro"', "text compares with == or != only"),
        ("trial < True", "true or false compares with == or != only"),
        ("seats", "must be true or false"),
        ('phone == "+4930123"', "'phone' identifies a person (pii: true)"),
        ('event_count("created_bord") > 0', "unknown event type 'created_bord' (declared: created_board, "),
        ("event_count(created_board) > 0", "takes an event type in quotes"),
        (
            'event_count("created_board") == "2"',
            "event_count('created_board') (number) cannot be compared with a text",
        ),
        (
            'event_count("connected_integration", integration="slack", other="x") > 0',
            "at most one prop",
        ),
        ('event_count("connected_integration", integation="slack") > 0', "has no prop 'integation'"),
        (
            'event_count("created_board", template="kanban") > 0',
            "'template' of 'created_board' is not declared count_by: true (props counted by value: none)",
        ),
        ('event_count("feature_clicked", feature="export") > 0', "'feature_clicked' has no prop"),
        ('event_count("shared_board", channel="fax") > 0', "'fax' is not a value of shared_board.channel"),
        ('event_count("connected_integration", integration=3) > 0', "at most one prop"),
    ],
)
def test_bad_rules_over_declared_fields_are_refused_with_the_reason(source: str, problem: str) -> None:
    with pytest.raises(RuleError) as caught:
        parse_rule(source, SCHEMA)
    assert problem in str(caught.value)


def test_declared_fields_are_unknown_to_a_catalog_that_does_not_declare_them() -> None:
    with pytest.raises(RuleError, match="unknown field 'plan'"):
        parse_rule('plan == "pro"')
    with pytest.raises(RuleError, match="unknown event type 'created_board' \\(declared: none"):
        parse_rule('event_count("created_board") > 0')


def test_a_rule_records_what_it_reads() -> None:
    rule = parse_rule(
        'plan == "pro" and app_theme != "dark" or '
        'event_count("connected_integration", integration="slack") > event_count("created_board")',
        SCHEMA,
    )
    assert rule.fields == {"plan", "app_theme"} and rule.declared == {"plan", "app_theme"}
    assert rule.event_counts == {
        ("connected_integration", "integration", "slack"),
        ("created_board", None, None),
    }
    assert parse_rule('event_count("session_started") >= 3', SCHEMA).event_counts == {
        ("session_started", None, None)
    }


def data(**fields: Any) -> RuleInput:
    counts = {("created_board", None, None): 2, ("connected_integration", "integration", "slack"): 1}
    return RuleInput(fields=fields, counts=counts)


@pytest.mark.parametrize(
    ("source", "fields", "expected"),
    [
        ('plan == "pro"', {"plan": "pro"}, True),
        ('plan == "pro"', {}, False),  # missing: false, as for built-in fields
        ('plan != "pro"', {}, False),
        ('not plan == "pro"', {}, True),
        ('plan in ("pro", "enterprise")', {"plan": "enterprise"}, True),
        ('plan not in ("pro", "enterprise")', {}, False),
        ("seats >= 5", {"seats": 5.0}, True),
        ("seats >= 5", {}, False),
        ("seats < 5", {}, False),
        ("trial", {"trial": True}, True),
        ("trial", {}, False),  # a missing true-or-false is not true...
        ("not trial", {}, True),  # ...so "not" it holds, like "not (a false comparison)"
        ("not trial", {"trial": True}, False),
        ("trial == False", {"trial": False}, True),
        ("trial == False", {}, False),
        ("trial != True", {}, False),
        ('trial and plan == "pro"', {"trial": True, "plan": "pro"}, True),
        ('trial or app_theme == "dark"', {"trial": False, "app_theme": "dark"}, True),
        ('(plan == "pro") == trial', {"plan": "free", "trial": False}, True),
        ('event_count("created_board") >= 2', {}, True),
        ('event_count("created_board") >= 3', {}, False),
        ('event_count("connected_integration", integration="slack") > 0', {}, True),
        ('event_count("connected_integration", integration="github") > 0', {}, False),
        ('event_count("invited_teammate") == 0', {}, True),
        ('event_count("created_board") > seats', {"seats": 1.0}, True),
        ('event_count("created_board") > seats', {}, False),
        ("screen_width >= 1024 and session_count >= 1", {"screen_width": 1280.0, "session_count": 1}, True),
    ],
)
def test_rule_semantics_over_declared_fields(source: str, fields: dict[str, Any], expected: bool) -> None:
    rule = parse_rule(source, SCHEMA)
    assert rule.matches(data(**fields)) is expected
    table = profile_table([data(**fields)], [rule], SCHEMA)
    assert table.select(rule.polars()).to_series().to_list() == [expected]


def test_a_users_live_state_feeds_rules_over_declared_fields() -> None:
    vocab, user = Vocabularies(), UserState.new(NOW)
    for n, (kind, extra) in enumerate(
        [
            ("session_started", {"context": {"app_theme": "dark", "screen_width": 1440}}),
            ("profile_updated", {"props": {"plan": "pro", "seats": 8, "trial": False, "phone": "+49"}}),
            ("created_board", {"props": {"template": "kanban"}}),
            ("created_board", {"props": {"template": "scrum"}}),
            ("connected_integration", {"props": {"integration": "slack"}}),
            ("shared_board", {"props": {"channel": "email"}}),
            ("shared_board", {"props": {"channel": "link"}}),
            ("shared_board", {"props": {"channel": "slack"}}),  # past max_values 2: "(other)"
        ]
    ):
        user.apply(event(n, kind, NOW + n, **extra), vocab, SCHEMA)
    facts = rule_input(user, vocab, NOW + 10, schema=SCHEMA)
    assert facts.fields["plan"] == "pro" and facts.fields["seats"] == 8.0 and facts.fields["trial"] is False
    assert facts.fields["app_theme"] == "dark" and facts.fields["screen_width"] == 1440.0
    assert "phone" not in facts.fields  # PII: no rule reads it
    assert facts.fields["industry"] is None
    assert facts.counts[("created_board", None, None)] == 2
    assert facts.counts[("connected_integration", "integration", "slack")] == 1
    assert facts.counts[("shared_board", "channel", "(other)")] == 1
    assert facts.counts[("session_started", None, None)] == 1
    for source, expected in [
        ('plan == "pro" and seats >= 5 and not trial', True),
        ('event_count("created_board") >= 2 and app_theme == "dark"', True),
        ('event_count("connected_integration", integration="slack") > 0', True),
        ('event_count("shared_board", channel="slack") > 0', False),  # counted as "(other)"
        ('event_count("shared_board", channel="email") == 1', True),
        ('event_count("profile_updated") == 1 and event_count("invited_teammate") == 0', True),
    ]:
        rule = parse_rule(source, SCHEMA)
        assert rule.matches(facts) is expected, source
        assert bool(compile_mask([(0, rule)])(user, NOW + 10, vocab)) is expected, source
        narrow = rule_input(user, vocab, NOW + 10, reads=RuleReads.of([rule]), schema=SCHEMA)
        assert rule.matches(narrow) is expected, source
    # The request's context wins, with a value of the declared type only.
    assert rule_input(user, vocab, NOW, {"app_theme": "light"}, schema=SCHEMA).fields["app_theme"] == "light"
    assert (
        rule_input(user, vocab, NOW, {"screen_width": "wide"}, schema=SCHEMA).fields["screen_width"] == 1440
    )
    cold = rule_input(None, None, NOW, {"app_theme": "dark", "screen_width": 800}, schema=SCHEMA)
    assert cold.fields["app_theme"] == "dark" and cold.fields["screen_width"] == 800.0
    assert parse_rule('app_theme == "dark" and event_count("created_board") == 0', SCHEMA).matches(cold)


# ---------------------------------------------------------------------- property test

PLANS = ("free", "pro", "enterprise")
THEMES = ("dark", "light")
INTEGRATIONS = ("slack", "github", "jira")
CHANNELS = ("email", "link", "slack")

#: Events that set declared fields and counts (and some built-in ones), as sent.
EVENTS = st.one_of(
    st.builds(
        lambda p, s, t, i: ("profile_updated", {"props": {"plan": p, "seats": s, "trial": t, "industry": i}}),
        st.sampled_from(PLANS),
        st.integers(0, 12),
        st.booleans(),
        st.sampled_from(("saas", "retail")),
    ),
    st.builds(
        lambda p: ("profile_updated", {"props": {k: v for k, v in p.items() if v is not None}}),
        st.fixed_dictionaries(
            {"plan": st.none() | st.sampled_from(PLANS), "trial": st.none() | st.booleans()}
        ),
    ),
    st.builds(
        lambda t, w: (
            "session_started",
            {"context": {k: v for k, v in (("app_theme", t), ("screen_width", w)) if v}},
        ),
        st.none() | st.sampled_from(THEMES),
        st.none() | st.sampled_from((320, 1024, 1920)),
    ),
    st.builds(
        lambda t: ("created_board", {"props": {"template": t}}), st.sampled_from(("kanban", "scrum", "blank"))
    ),
    st.builds(
        lambda i: ("connected_integration", {"props": {"integration": i}, "context": {"app_theme": "light"}}),
        st.sampled_from(INTEGRATIONS),
    ),
    st.builds(lambda c: ("shared_board", {"props": {"channel": c}}), st.sampled_from(CHANNELS)),
    st.just(("invited_teammate", {})),
    st.just(("feature_clicked", {"props": {"feature": "export"}})),
)

numbers = st.sampled_from(["0", "1", "2", "5", "7.5", "-1"])
number_terms = st.one_of(
    st.sampled_from(["seats", "screen_width", "session_count", "events_total"]),
    st.sampled_from(["created_board", "connected_integration", "shared_board", "invited_teammate"]).map(
        lambda t: f'event_count("{t}")'
    ),
    st.sampled_from(INTEGRATIONS).map(lambda v: f'event_count("connected_integration", integration="{v}")'),
    st.sampled_from(CHANNELS).map(lambda v: f'event_count("shared_board", channel="{v}")'),
    st.sampled_from(["session_started", "feature_clicked", "profile_updated"]).map(
        lambda t: f'event_count("{t}")'
    ),
)
text_comparisons = st.one_of(
    st.tuples(st.just("plan"), st.sampled_from(["==", "!="]), st.sampled_from(PLANS)),
    st.tuples(st.just("app_theme"), st.sampled_from(["==", "!="]), st.sampled_from(THEMES)),
    st.tuples(st.just("industry"), st.sampled_from(["==", "!="]), st.sampled_from(("saas", "retail"))),
).map(lambda t: f'{t[0]} {t[1]} "{t[2]}"')
comparisons = st.one_of(
    st.tuples(
        number_terms, st.sampled_from(["<", "<=", ">", ">=", "==", "!="]), st.one_of(numbers, number_terms)
    ).map(" ".join),
    text_comparisons,
    st.tuples(
        st.just("plan"), st.sampled_from(["in", "not in"]), st.lists(st.sampled_from(PLANS), min_size=1)
    ).map(lambda t: f"{t[0]} {t[1]} ({', '.join(map(repr, t[2]))},)"),
    st.just("trial"),
    st.sampled_from(["trial == True", "trial != False", "trial == False"]),
    st.tuples(text_comparisons, st.sampled_from(["==", "!="]), st.sampled_from(["trial", "True"])).map(
        lambda t: f"({t[0]}) {t[1]} {t[2]}"
    ),
)
rules = st.recursive(
    comparisons,
    lambda inner: st.one_of(
        st.tuples(inner, st.sampled_from(["and", "or"]), inner).map(lambda t: f"({t[0]} {t[1]} {t[2]})"),
        inner.map(lambda r: f"not ({r})"),
    ),
    max_leaves=6,
)
histories = st.lists(st.tuples(EVENTS, st.floats(0, 3600)), max_size=12)


@settings(max_examples=300, deadline=None)
@given(sources=st.lists(rules, min_size=1, max_size=4), users=st.lists(histories, min_size=1, max_size=8))
def test_per_user_compiled_and_polars_evaluations_agree_over_declared_fields(
    sources: list[str], users: list[list[tuple[tuple[str, dict[str, Any]], float]]]
) -> None:
    """Users built from real events (one partition's vocabularies: types, fields and values
    some users never sent are unknown to it), rules over declared traits, context fields,
    event counts with and without a ``count_by`` value: :meth:`Rule.matches` over the full and
    the narrowed input, the compiled mask (general and right after the user's newest event) and
    polars over the profile table give the same answers."""
    rules = [parse_rule(source, SCHEMA) for source in sources]
    vocab = Vocabularies()
    states = []
    for history in users:
        user = UserState.new(NOW)
        for n, ((kind, extra), gap) in enumerate(history):
            user.apply(event(n, kind, NOW + gap, **extra), vocab, SCHEMA)
        states.append(user)
    now = NOW + 7200
    inputs = [rule_input(user, vocab, now, schema=SCHEMA) for user in states]
    expected = [[rule.matches(facts) for rule in rules] for facts in inputs]
    table = profile_table(inputs, rules, SCHEMA)
    batch = table.select([rule.polars().alias(str(i)) for i, rule in enumerate(rules)]).rows()
    assert [list(row) for row in batch] == expected
    reads = RuleReads.of(rules)
    narrowed = [rule_input(user, vocab, now, reads=reads, schema=SCHEMA) for user in states]
    assert [[rule.matches(facts) for rule in rules] for facts in narrowed] == expected
    mask, fresh = compile_mask(list(enumerate(rules))), compile_mask(list(enumerate(rules)), fresh=True)
    for user, answers in zip(states, expected, strict=True):
        bits = mask(user, now, vocab)
        assert [bool(bits >> i & 1) for i in range(len(rules))] == answers
        at_last = rule_input(user, vocab, user.last_seen, schema=SCHEMA)
        bits = fresh(user, user.last_seen, vocab)
        assert [bool(bits >> i & 1) for i in range(len(rules))] == [r.matches(at_last) for r in rules]


def test_check_config_reports_rules_over_undeclared_fields_with_file_and_field_path() -> None:
    from engine.catalog import check_catalog_text

    text = CUSTOM_SCHEMA.read_text()
    assert check_catalog_text(text, "boards.yaml") == []
    broken = (
        text.replace("rule: 'plan == \"pro\"'", "rule: 'plann == \"pro\"'")
        .replace('integration="slack"', 'integration="slack", template="x"')
        .replace('event_count("created_board")', 'event_count("created_bord")')
    )
    errors = check_catalog_text(broken, "boards.yaml")
    assert len(errors) == 3
    assert errors[0].startswith("boards.yaml: segments[0].rule: column 1: unknown event type 'created_bord'")
    assert errors[1].startswith("boards.yaml: segments[1].rule: column 1: event_count() takes an event type")
    assert errors[2].startswith(
        "boards.yaml: segments[2].rule: column 1: unknown field 'plann' (known: age_band, app_theme, "
    )
    assert "industry" in errors[2] and "plan," in errors[2] and "phone" not in errors[2]
