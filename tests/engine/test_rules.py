"""Rule segments: parsing and type errors, semantics (missing values), and agreement between
the per-user function and the polars expression on generated profiles and rules."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.events import event_from_object
from engine.profile import UserState, Vocabularies
from engine.rules import FIELDS, RuleError, RuleInput, RuleReads, parse_rule, profile_table, rule_input

NOW = 1_767_600_000.0


@pytest.mark.parametrize(
    ("source", "problem"),
    [
        ("sessions < 3", "unknown field 'sessions'"),
        ("country == 3", "'country' is text"),
        ('session_count == "3"', "'session_count' is number"),
        ('device_type < "mobile"', "text compares with == or != only"),
        ("session_count", "must be true or false"),
        ("1 < session_count < 3", "one comparison at a time"),
        ("feature_count(export) > 0", "takes one name in quotes"),
        ('open("x")', "unknown function"),
        ("__import__('os')", "unknown function"),
        ("session_count.real > 1", "not allowed in a rule (Attribute)"),
        ("[x for x in ()]", "not allowed in a rule"),
        ('country in "DE"', "'in' needs a list of values"),
        ('country in ("DE", 3)', "must be text constants"),
        ("session_count <", "not a valid rule"),
        ("session_count < 3 and 4", "'and' and 'or' join conditions"),
        ("x" * 2000, "at most"),
    ],
)
def test_bad_rules_are_refused_with_the_reason(source: str, problem: str) -> None:
    with pytest.raises(RuleError, match=problem.replace("(", r"\(").replace(")", r"\)")):
        parse_rule(source)


def data(**fields: Any) -> RuleInput:
    return RuleInput(fields=fields, features={"export": 2}, completed=frozenset({"welcome"}))


@pytest.mark.parametrize(
    ("source", "fields", "expected"),
    [
        (
            'session_count < 3 and device_type == "mobile"',
            {"session_count": 1, "device_type": "mobile"},
            True,
        ),
        (
            'session_count < 3 and device_type == "mobile"',
            {"session_count": 5, "device_type": "mobile"},
            False,
        ),
        ('country in ("DE", "FR")', {"country": "FR"}, True),
        ('country in ("DE", "FR")', {}, False),  # missing: not in any list...
        ('country not in ("DE", "FR")', {}, False),  # ...nor out of it
        ('not country == "DE"', {}, True),  # but "not (a comparison that is false)" is true
        ('country != "DE"', {}, False),
        ('events_5m >= 10 or feature_count("export") > 0', {"events_5m": 0}, True),
        ('feature_count("import") > 0', {}, False),
        ('completed("welcome") and not completed("profile")', {}, True),
        ("days_inactive > -1", {"days_inactive": 0.5}, True),
        ("engagement > session_count", {"engagement": 4.0, "session_count": 2}, True),
    ],
)
def test_rule_semantics(source: str, fields: dict[str, Any], expected: bool) -> None:
    rule = parse_rule(source)
    assert rule.matches(data(**fields)) is expected
    table = profile_table([data(**fields)], [rule])
    assert table.select(rule.polars()).to_series().to_list() == [expected]


def test_a_users_live_state_feeds_the_rules() -> None:
    vocab, user = Vocabularies(), UserState.new(NOW - 86_400 * 2)
    for i, body in enumerate(
        [
            {"type": "session_started", "context": {"device_type": "mobile", "country": "DE"}},
            {"type": "feature_clicked", "props": {"feature": "export"}},
            {"type": "step_completed", "props": {"step": "welcome"}},
        ]
    ):
        user.apply(
            event_from_object({"event_id": str(i), "user_id": "k", "ts": NOW - 86_400 * 2, **body}), vocab
        )
    facts = rule_input(user, vocab, NOW)
    assert facts.fields["session_count"] == 1 and facts.fields["country"] == "DE"
    assert facts.features == {"export": 1} and facts.completed == {"welcome"}
    assert parse_rule("days_inactive >= 2 and days_since_first_seen >= 2").matches(facts)
    assert parse_rule("days_inactive > 1").time_based
    assert rule_input(user, vocab, NOW, {"device_type": "desktop"}).fields["device_type"] == "desktop"


# ---------------------------------------------------------------------- property test

TEXT_VALUES = ("mobile", "desktop", "DE", "FR", "en", "x")
NUMBER_FIELDS = sorted(n for n, k in FIELDS.items() if k == "number")
TEXT_FIELDS = sorted(n for n, k in FIELDS.items() if k == "text")
FEATURES = ("export", "share")
STEPS = ("welcome", "profile")

numbers = st.one_of(st.integers(-3, 12).map(str), st.sampled_from(["0.5", "2.25", "-1.5"]))
texts = st.sampled_from(TEXT_VALUES).map(lambda v: f'"{v}"')
number_terms = st.one_of(
    st.sampled_from(NUMBER_FIELDS), st.sampled_from(FEATURES).map(lambda f: f'feature_count("{f}")')
)
comparisons = st.one_of(
    st.tuples(
        number_terms, st.sampled_from(["<", "<=", ">", ">=", "==", "!="]), st.one_of(numbers, number_terms)
    ).map(" ".join),
    st.tuples(st.sampled_from(TEXT_FIELDS), st.sampled_from(["==", "!="]), texts).map(" ".join),
    st.tuples(
        st.sampled_from(TEXT_FIELDS),
        st.sampled_from(["in", "not in"]),
        st.lists(texts, min_size=1, max_size=3),
    ).map(lambda t: f"{t[0]} {t[1]} ({', '.join(t[2])},)"),
    st.sampled_from(STEPS).map(lambda s: f'completed("{s}")'),
)
rules = st.recursive(
    comparisons,
    lambda inner: st.one_of(
        st.tuples(inner, st.sampled_from(["and", "or"]), inner).map(lambda t: f"({t[0]} {t[1]} {t[2]})"),
        inner.map(lambda r: f"not ({r})"),
    ),
    max_leaves=6,
)
profiles = st.builds(
    RuleInput,
    fields=st.fixed_dictionaries(
        {},
        optional={
            **{n: st.one_of(st.integers(-2, 12), st.floats(-2, 12, allow_nan=False)) for n in NUMBER_FIELDS},
            **{n: st.sampled_from(TEXT_VALUES) for n in TEXT_FIELDS},
        },
    ),
    features=st.dictionaries(st.sampled_from(FEATURES), st.integers(0, 5)),
    completed=st.frozensets(st.sampled_from(STEPS)),
)


@settings(max_examples=300, deadline=None)
@given(source=rules, users=st.lists(profiles, min_size=1, max_size=20))
def test_per_user_and_polars_evaluation_agree(source: str, users: list[RuleInput]) -> None:
    rule = parse_rule(source)
    batch = profile_table(users, [rule]).select(rule.polars()).to_series().to_list()
    assert batch == [rule.matches(user) for user in users]


def test_narrowed_inputs_give_the_same_answers() -> None:
    vocab, user = Vocabularies(), UserState.new(NOW)
    for i, body in enumerate(
        [{"type": "feature_clicked", "props": {"feature": f}} for f in ("export", "share", "export")]
        + [{"type": "step_completed", "props": {"step": "welcome"}}]
    ):
        user.apply(event_from_object({"event_id": str(i), "user_id": "k", "ts": NOW, **body}), vocab)
    rules = [
        parse_rule('feature_count("export") == 2 and completed("welcome")'),
        parse_rule('feature_count("import") > 0 or not completed("profile")'),
        parse_rule("session_count >= 1"),
    ]
    full = rule_input(user, vocab, NOW)
    narrow = rule_input(user, vocab, NOW, None, RuleReads.of(rules))
    assert [r.matches(full) for r in rules] == [r.matches(narrow) for r in rules] == [True, True, True]


def test_comparisons_of_constants_compile() -> None:
    assert parse_rule("1 < 2").matches(RuleInput(fields={}))
    assert not parse_rule('"a" == "b" or 3 <= -1').matches(RuleInput(fields={}))
