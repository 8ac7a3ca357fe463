"""Rule segments: a small expression language over a user's live state.

``session_count < 3 and device_type == "mobile"``, ``country in ("DE", "FR")``,
``events_5m >= 10 or feature_count("export") > 0``, ``not completed("profile")``; and over
what the catalog's ``schema:`` declares (:mod:`engine.schema`): a custom trait or context field
by its bare name (``plan == "pro"``), the per-user count of an event type
(``event_count("created_board") >= 2``) and of one value of a ``count_by`` prop
(``event_count("connected_integration", integration="slack") > 0``).

Why Python's own parser: the grammar is a subset of Python's expressions, so :mod:`ast` parses
it (``mode="eval"``: one expression, no statements) and this module accepts only the node types
listed in :func:`_check`; the rule's text is never evaluated, only a function compiled from
the checked tree. A rule is type-checked against :data:`FIELDS` and the catalog's schema when
the catalog loads (an unknown field, a string compared with a number, a function called wrong:
each an error with its column), then compiled from the same tree: to a Python function over one
user's :class:`RuleInput` (:meth:`Rule.matches`, microseconds), to one function over a user's
live state for several rules at once (:func:`compile_mask`, live membership) and to a polars
expression over a profile table (:meth:`Rule.polars`, batch reports). All read a missing value
(a user without a country, a declared trait never set) the same way: every comparison with it
is false.

>>> rule = parse_rule('session_count < 3 and device_type == "mobile"')
>>> sorted(rule.fields)
['device_type', 'session_count']
>>> rule.matches(RuleInput(fields={"session_count": 1, "device_type": "mobile"}))
True
>>> parse_rule('country == 3')
Traceback (most recent call last):
engine.rules.RuleError: column 1: 'country' is text; it cannot be compared with a number
>>> from engine.schema import EventSchema, SchemaSection
>>> schema = EventSchema(SchemaSection.model_validate({
...     "events": {"created_board": {}}, "traits": {"plan": {"type": "string"}}}))
>>> rule = parse_rule('plan == "pro" and event_count("created_board") >= 2', schema)
>>> sorted(rule.fields), sorted(rule.event_counts)
(['plan'], [('created_board', None, None)])
>>> rule.matches(RuleInput(fields={"plan": "pro"}, counts={("created_board", None, None): 3}))
True
"""

from __future__ import annotations

import ast
import operator
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import polars as pl

from engine.errors import ConfigError
from engine.events import BUILTIN_KINDS, CONTEXT_FIELDS, FLOW_KINDS, EventKind
from engine.profile import (
    C_EVENTS,
    C_SESSIONS,
    C_WIN_EVENTS,
    C_WIN_HEAD,
    WINDOW_BUCKET_S,
    UserState,
    Vocabularies,
    custom_count,
    feature_count,
    value_count,
)
from engine.schema import BUILTIN_SCHEMA, EventSchema

Kind = Literal["number", "text", "bool"]

#: Every field a rule can read, and its type. Times are in days; counts are whole numbers.
FIELDS: dict[str, Kind] = {
    "session_count": "number",
    "events_total": "number",
    "events_5m": "number",
    "features_5m": "number",
    "engagement": "number",
    "steps_completed": "number",
    "tutorials_completed": "number",
    "days_since_first_seen": "number",
    "days_inactive": "number",
    "device_type": "text",
    "os": "text",
    "locale": "text",
    "country": "text",
    "referrer": "text",
    "app_version": "text",
    "role": "text",
    "company_size": "text",
    "age_band": "text",
    #: The user's behavioural cluster (:mod:`engine.clusters`); missing until assigned.
    "cluster": "number",
}
#: Fields that may be missing on a user the engine has seen (text not given yet, no cluster).
NULLABLE_FIELDS = frozenset({name for name, kind in FIELDS.items() if kind == "text"} | {"cluster"})
#: Fields that change with time alone, not only with events: rules reading them are
#: re-evaluated as time passes.
TIME_FIELDS = frozenset({"days_since_first_seen", "days_inactive", "events_5m", "features_5m", "engagement"})
#: Functions a rule can call, with their result type; each takes one text constant
#: (``event_count`` also one ``prop="value"`` of a ``count_by`` prop).
FUNCTIONS: dict[str, Kind] = {"feature_count": "number", "completed": "bool", "event_count": "number"}
#: How a declared trait's or context field's type reads in a rule.
DECLARED_KINDS: dict[str, Kind] = {"string": "text", "number": "number", "boolean": "bool"}
#: Built-in event types ``event_count`` reads from the user's per-kind counters.
BUILTIN_TYPES: dict[str, EventKind] = {kind.wire_name: kind for kind in BUILTIN_KINDS}
#: An event count a rule reads: (event type, prop, value), prop and value None for the type's
#: total (``event_count("created_board")``).
EventCount = tuple[str, str | None, str | None]

_COMPARE = {
    ast.Lt: "<",
    ast.LtE: "<=",
    ast.Gt: ">",
    ast.GtE: ">=",
    ast.Eq: "==",
    ast.NotEq: "!=",
    ast.In: "in",
    ast.NotIn: "not in",
}
#: The comparisons other than ``in``, as functions: polars expressions and constants alike.
_OPERATORS: dict[str, Callable[[Any, Any], Any]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
    "==": operator.eq,
    "!=": operator.ne,
}
MAX_RULE_LENGTH = 1000


class RuleError(ConfigError):
    """A rule that does not parse or type-check; the message says where and why."""


@dataclass
class RuleInput:
    """What a rule reads: field values (None: missing; built-in and declared fields by name),
    feature counts, completed steps and event counts (by :data:`EventCount`; absent: 0)."""

    fields: Mapping[str, Any]
    features: Mapping[str, int] = field(default_factory=dict)
    completed: frozenset[str] = frozenset()
    counts: Mapping[EventCount, int] = field(default_factory=dict)


@dataclass(frozen=True)
class RuleReads:
    """What some rules read, to narrow :func:`rule_input` to it (None: every field)."""

    fields: frozenset[str] | None = None
    features: frozenset[str] = frozenset()
    steps: frozenset[str] = frozenset()
    event_counts: frozenset[EventCount] = frozenset()

    @classmethod
    def of(cls, rules: Sequence[Rule]) -> RuleReads:
        return cls(
            fields=frozenset(f for rule in rules for f in rule.fields),
            features=frozenset(f for rule in rules for f in rule.features),
            steps=frozenset(s for rule in rules for s in rule.steps),
            event_counts=frozenset(c for rule in rules for c in rule.event_counts),
        )


@dataclass(frozen=True)
class Rule:
    """A parsed, type-checked rule (build with :func:`parse_rule`)."""

    source: str
    tree: ast.Expression
    #: The fields read, built-in and declared (:attr:`declared`).
    fields: frozenset[str]
    features: frozenset[str]
    steps: frozenset[str]
    _matches: Callable[[RuleInput], bool]
    #: The event counts read (live membership re-evaluates the rule on events of their types).
    event_counts: frozenset[EventCount] = frozenset()

    def matches(self, data: RuleInput) -> bool:
        return self._matches(data)

    @property
    def declared(self) -> frozenset[str]:
        """The custom traits and context fields read (declared in the catalog's schema)."""
        return self.fields - FIELDS.keys()

    @property
    def time_based(self) -> bool:
        """Whether membership can change with time alone."""
        return bool(self.fields & TIME_FIELDS)

    def polars(self) -> pl.Expr:
        """The rule over a profile table: a column per field, ``feature:<name>`` per feature
        count, ``completed:<step>`` per step and :func:`count_column` per event count, as
        :func:`profile_table` builds it."""
        return _to_condition_polars(self.tree.body)


def count_column(count: EventCount) -> str:
    """The profile table's column of an event count.

    >>> count_column(("created_board", None, None)), count_column(("connected", "via", "slack"))
    ('event_count:created_board', 'event_count:connected.via=slack')
    """
    event_type, prop, value = count
    return f"event_count:{event_type}" if prop is None else f"event_count:{event_type}.{prop}={value}"


def parse_rule(source: str, schema: EventSchema = BUILTIN_SCHEMA) -> Rule:
    """Parse, type-check and compile a rule over the built-in fields and what ``schema`` (the
    catalog's) declares; :class:`RuleError` says what is wrong and where."""
    if len(source) > MAX_RULE_LENGTH:
        raise RuleError(f"a rule is at most {MAX_RULE_LENGTH} characters")
    try:
        tree = ast.parse(source.strip(), mode="eval")
    except SyntaxError as exc:
        raise RuleError(f"column {exc.offset or 0}: not a valid rule ({exc.msg})") from None
    used = _Used(schema)
    kind = _check(tree.body, used)
    if kind != "bool":
        raise RuleError(f"column 1: a rule must be true or false, not a {kind}")
    # Compiled from the checked tree (only the node kinds _check accepts, over one argument
    # `d`), never from the rule's text; no builtins are reachable from it.
    function_tree = ast.Expression(
        body=ast.Lambda(
            args=ast.arguments(
                posonlyargs=[], args=[ast.arg("d")], kwonlyargs=[], kw_defaults=[], defaults=[]
            ),
            body=_condition(tree.body, _input_leaf, _any_name),
        )
    )
    code = compile(ast.fix_missing_locations(function_tree), "<rule>", "eval")
    function = eval(code, {"__builtins__": {}})
    return Rule(
        source=source,
        tree=tree,
        fields=frozenset(used.fields),
        features=frozenset(used.features),
        steps=frozenset(used.steps),
        _matches=function,
        event_counts=frozenset(used.counts),
    )


# ---------------------------------------------------------------------- type-checking


class _Used:
    """What a rule reads, gathered while checking it against ``schema``."""

    def __init__(self, schema: EventSchema) -> None:
        self.schema = schema
        self.fields: set[str] = set()
        self.features: set[str] = set()
        self.steps: set[str] = set()
        self.counts: set[EventCount] = set()

    def field_kind(self, name: str) -> Kind | None:
        kind = FIELDS.get(name)
        if kind is not None:
            return kind
        declared = self.schema.field_type(name)
        return DECLARED_KINDS[declared] if declared is not None else None

    def known_fields(self) -> str:
        return ", ".join(sorted([*FIELDS, *declared_fields(self.schema)]))


def _where(node: ast.AST) -> str:
    return f"column {getattr(node, 'col_offset', 0) + 1}"


def _check(node: ast.expr, used: _Used) -> Kind:
    if isinstance(node, ast.BoolOp):
        for value in node.values:
            if _check(value, used) != "bool":
                raise RuleError(f"{_where(value)}: 'and' and 'or' join conditions (true or false)")
        return "bool"
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        if _check(node.operand, used) != "bool":
            raise RuleError(f"{_where(node)}: 'not' applies to a condition")
        return "bool"
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub) and _is_number(node.operand):
        return "number"
    if isinstance(node, ast.Compare):
        if len(node.ops) != 1:
            raise RuleError(f"{_where(node)}: one comparison at a time (write 'a < x and x < b')")
        op = type(node.ops[0])
        if op not in _COMPARE:
            raise RuleError(f"{_where(node)}: unsupported comparison")
        left = _check(node.left, used)
        right_node = node.comparators[0]
        if op in (ast.In, ast.NotIn):
            if not isinstance(right_node, (ast.Tuple, ast.List)) or not right_node.elts:
                raise RuleError(f'{_where(right_node)}: \'in\' needs a list of values, e.g. ("DE", "FR")')
            for element in right_node.elts:
                _check_constant(element, left, node.left)
            return "bool"
        right = _check(right_node, used)
        if left != right:
            raise RuleError(f"{_where(node)}: {_describe(node.left, left)} cannot be compared with a {right}")
        if left == "text" and op not in (ast.Eq, ast.NotEq):
            raise RuleError(f"{_where(node)}: text compares with == or != only")
        if left == "bool" and op not in (ast.Eq, ast.NotEq):
            raise RuleError(f"{_where(node)}: true or false compares with == or != only")
        return "bool"
    if isinstance(node, ast.Name):
        if node.id in used.schema.pii_traits:
            # As a name is no rule field: membership, published and exported, would reveal it.
            raise RuleError(
                f"{_where(node)}: {node.id!r} identifies a person (pii: true); rules cannot read it"
            )
        kind = used.field_kind(node.id)
        if kind is None:
            raise RuleError(f"{_where(node)}: unknown field {node.id!r} (known: {used.known_fields()})")
        used.fields.add(node.id)
        return kind
    if isinstance(node, ast.Call):
        name = node.func.id if isinstance(node.func, ast.Name) else None
        if name not in FUNCTIONS:
            raise RuleError(f"{_where(node)}: unknown function (known: {', '.join(sorted(FUNCTIONS))})")
        if name == "event_count":
            used.counts.add(_check_event_count(node, used.schema))
            return "number"
        if node.keywords or len(node.args) != 1 or not _is_text(node.args[0]):
            raise RuleError(f'{_where(node)}: {name}() takes one name in quotes, e.g. {name}("export")')
        value = node.args[0].value  # type: ignore[attr-defined]
        (used.features if name == "feature_count" else used.steps).add(value)
        return FUNCTIONS[name]
    if (
        isinstance(node, ast.Constant)
        and not isinstance(node.value, (bytes, complex))
        and node.value is not None
    ):
        if isinstance(node.value, bool):
            return "bool"
        return "number" if isinstance(node.value, (int, float)) else "text"
    raise RuleError(f"{_where(node)}: not allowed in a rule ({type(node).__name__})")


def _check_event_count(node: ast.Call, schema: EventSchema) -> EventCount:
    """``event_count("type")`` or ``event_count("type", prop="value")`` over a declared (or
    built-in) type and one of its ``count_by`` props."""
    where = _where(node)
    if (
        len(node.args) != 1
        or not _is_text(node.args[0])
        or len(node.keywords) > 1
        or any(k.arg is None or not _is_text(k.value) for k in node.keywords)
    ):
        raise RuleError(
            f'{where}: event_count() takes an event type in quotes and at most one prop="value", '
            f'e.g. event_count("created_board") or event_count("connected_integration", integration="slack")'
        )
    event_type: str = node.args[0].value  # type: ignore[attr-defined]
    if event_type not in schema.custom_types and event_type not in BUILTIN_TYPES:
        declared = ", ".join(schema.custom_types) or "none"
        raise RuleError(
            f"{where}: unknown event type {event_type!r} (declared: {declared}; "
            f"built in: {', '.join(BUILTIN_TYPES)})"
        )
    if not node.keywords:
        return (event_type, None, None)
    keyword = node.keywords[0]
    prop, value = keyword.arg, keyword.value.value  # type: ignore[attr-defined]
    assert prop is not None
    counted = [p for p, _ in schema.count_by.get(event_type, ())]
    spec = schema.prop(event_type, prop)
    if spec is None or not spec.count_by:
        what = (
            f"{event_type!r} has no prop {prop!r}"
            if spec is None
            else f"{prop!r} of {event_type!r} is not declared count_by: true"
        )
        raise RuleError(f"{_where(keyword)}: {what} (props counted by value: {', '.join(counted) or 'none'})")
    if spec.values is not None and value not in spec.values:
        raise RuleError(
            f"{_where(keyword.value)}: {value!r} is not a value of {event_type}.{prop} "
            f"(declared: {', '.join(spec.values)})"
        )
    return (event_type, prop, value)


def _check_constant(element: ast.expr, kind: Kind, subject: ast.expr) -> None:
    is_ok = _is_text(element) if kind == "text" else _is_number(element) if kind == "number" else False
    if not is_ok:
        raise RuleError(
            f"{_where(element)}: the values of 'in' must be {kind} constants like {_describe(subject, kind)}"
        )


def _is_text(node: ast.expr) -> bool:
    return isinstance(node, ast.Constant) and isinstance(node.value, str)


def _is_number(node: ast.expr) -> bool:
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return _is_number(node.operand)
    return (
        isinstance(node, ast.Constant)
        and isinstance(node.value, (int, float))
        and not isinstance(node.value, bool)
    )


def _describe(node: ast.expr, kind: Kind) -> str:
    name = node.id if isinstance(node, ast.Name) else ast.unparse(node)
    return f"{name!r} is {kind}; it" if isinstance(node, ast.Name) else f"{name} ({kind})"


# ---------------------------------------------------------------------- compiling


Leaf = Callable[[ast.expr], ast.expr]


def _any_name(node: ast.expr) -> bool:
    return isinstance(node, ast.Name)


def _condition(node: ast.expr, leaf: Leaf, nullable: Callable[[ast.expr], bool]) -> ast.expr:
    """A condition of the checked tree as Python: as :func:`_to_python`, and a true-or-false
    field standing alone (``trial and plan == "pro"``) holds only when it is true, not when
    it is missing (``not trial`` then holds, as ``not (plan == "pro")`` does)."""
    if isinstance(node, ast.Name):
        return ast.Compare(left=leaf(node), ops=[ast.Is()], comparators=[ast.Constant(True)])
    return _to_python(node, leaf, nullable)


def _to_python(node: ast.expr, leaf: Leaf, nullable: Callable[[ast.expr], bool]) -> ast.expr:
    """The checked tree as Python; comparisons with a missing value are false.

    ``leaf`` turns a field or function call into the expression that reads it (for
    :meth:`Rule.matches`, from ``d``, a :class:`RuleInput`); ``nullable`` says which of them
    may be missing, so the guards are only where a value can be None.
    """
    if isinstance(node, ast.BoolOp):
        return ast.BoolOp(op=node.op, values=[_condition(v, leaf, nullable) for v in node.values])
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        return ast.UnaryOp(op=ast.Not(), operand=_condition(node.operand, leaf, nullable))
    if isinstance(node, ast.Compare):
        right = node.comparators[0]
        if isinstance(right, (ast.Tuple, ast.List)):
            right_value: ast.expr = ast.Tuple(elts=list(right.elts), ctx=ast.Load())
        else:
            right_value = _to_python(right, leaf, nullable)
        left_value = _to_python(node.left, leaf, nullable)
        # (l is not None and r is not None and l OP r): missing never compares true. A value
        # that equals, or is in, constants is not None already: no guard needed there.
        op = node.ops[0]
        against_constants = isinstance(op, (ast.Eq, ast.In)) and isinstance(
            right, (ast.Constant, ast.Tuple, ast.List)
        )
        guards: list[ast.expr] = [
            ast.Compare(left=value, ops=[ast.IsNot()], comparators=[ast.Constant(None)])
            for original, value in ((node.left, left_value), (right, right_value))
            if nullable(original) and not against_constants
        ]
        compare = ast.Compare(left=left_value, ops=node.ops, comparators=[right_value])
        return ast.BoolOp(op=ast.And(), values=[*guards, compare]) if guards else compare
    if isinstance(node, (ast.Name, ast.Call)):
        return leaf(node)
    return node  # constants


def _count_of(node: ast.AST) -> EventCount:
    """The event count an ``event_count(...)`` call (checked) reads."""
    event_type = node.args[0].value  # type: ignore[attr-defined]
    keywords = node.keywords  # type: ignore[attr-defined]
    if not keywords:
        return (event_type, None, None)
    return (event_type, keywords[0].arg, keywords[0].value.value)


def _input_leaf(node: ast.expr) -> ast.expr:
    """A field or function read from ``d``, a :class:`RuleInput`."""
    if isinstance(node, ast.Name):
        return _lookup("fields", node.id)
    name = node.func.id  # type: ignore[attr-defined]
    if name == "event_count":
        return _lookup("counts", _count_of(node), default=0)
    arg = node.args[0].value  # type: ignore[attr-defined]
    if name == "feature_count":
        return _lookup("features", arg, default=0)
    return ast.Compare(
        left=ast.Constant(arg),
        ops=[ast.In()],
        comparators=[ast.Attribute(value=ast.Name("d", ast.Load()), attr="completed", ctx=ast.Load())],
    )


def _lookup(table: str, key: Any, default: Any = None) -> ast.expr:
    """``d.<table>.get(key[, default])``."""
    args: list[ast.expr] = [ast.Constant(key)]
    if default is not None:
        args.append(ast.Constant(default))
    mapping = ast.Attribute(value=ast.Name("d", ast.Load()), attr=table, ctx=ast.Load())
    return ast.Call(func=ast.Attribute(value=mapping, attr="get", ctx=ast.Load()), args=args, keywords=[])


def _to_condition_polars(node: ast.expr) -> pl.Expr:
    """A condition as polars: a true-or-false field alone holds when true (see :func:`_condition`)."""
    if isinstance(node, ast.Name):
        return pl.col(node.id).fill_null(False)
    return _to_polars(node)


def _to_polars(node: ast.expr) -> pl.Expr:
    if isinstance(node, ast.BoolOp):
        parts = [_to_condition_polars(v) for v in node.values]
        out = parts[0]
        for part in parts[1:]:
            out = (out & part) if isinstance(node.op, ast.And) else (out | part)
        return out
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        return ~_to_condition_polars(node.operand)
    if isinstance(node, ast.Compare):
        left = _value(node.left)
        right = node.comparators[0]
        op = _COMPARE[type(node.ops[0])]
        if op in ("in", "not in"):
            values = [_literal(e) for e in right.elts]  # type: ignore[attr-defined]
            result = left.is_in(values)
            result = ~result if op == "not in" else result
            # Missing is never in, nor "not in", a list: false both ways.
            return (left.is_not_null() & result).fill_null(False)
        right_value = _value(right)
        compared: pl.Expr = _OPERATORS[op](left, right_value)
        return compared.fill_null(False)
    if isinstance(node, ast.Call):
        step = node.args[0].value  # type: ignore[attr-defined]
        return pl.col(f"completed:{step}").fill_null(False)
    return _value(node)


def _value(node: ast.expr) -> pl.Expr:
    if isinstance(node, ast.Name):
        return pl.col(node.id)
    if isinstance(node, ast.Call) and node.func.id == "feature_count":  # type: ignore[attr-defined]
        return pl.col(f"feature:{node.args[0].value}").fill_null(0)  # type: ignore[attr-defined]
    if isinstance(node, ast.Call) and node.func.id == "event_count":  # type: ignore[attr-defined]
        return pl.col(count_column(_count_of(node))).fill_null(0)
    if isinstance(node, (ast.Call, ast.Compare, ast.BoolOp)) or (
        isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not)
    ):
        return _to_polars(node)  # a condition compared with true or false
    return pl.lit(_literal(node))


def _literal(node: ast.expr) -> Any:
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_literal(node.operand)
    return node.value  # type: ignore[attr-defined]


# ---------------------------------------------------------------------- inputs


#: How each number field is read from a user ``u`` as of ``now``: our own expressions (not a
#: rule's text), parsed once. :func:`compile_mask` inlines them into its functions (a call per
#: field would cost more than the rules themselves); :func:`rule_input` calls them compiled.
#: Right after an event (now in the newest bucket, nothing decayed yet) the fast paths apply.
_NUMBER_READERS: dict[str, str] = {
    "session_count": f"u.counters[{C_SESSIONS}]",
    "events_total": f"u.counters[{C_EVENTS}]",
    "events_5m": (
        f"u.counters[{C_WIN_EVENTS}] "
        f"if int(now) // {WINDOW_BUCKET_S} == u.counters[{C_WIN_HEAD}] else u.events_in_window(now)"
    ),
    "features_5m": "u.features_in_window(now)",
    "engagement": "u.engagement if now <= u.last_seen else u.engagement_at(now)",
    "steps_completed": "u.completed_steps.bit_count()",
    "tutorials_completed": f"u.counters[{int(EventKind.TUTORIAL_COMPLETED)}]",
    "days_since_first_seen": "max(0.0, now - u.first_seen) / 86400.0",
    "days_inactive": "max(0.0, now - u.last_seen) / 86400.0",
}
#: The same right after the user's newest event (``now`` is its time, see ``fresh`` in
#: :func:`compile_mask`): nothing has decayed or slid yet, and the user has been inactive for no
#: time at all, a constant that folds away rules such as ``days_inactive >= 3``.
_FRESH_READERS: dict[str, str] = {
    "events_5m": f"u.counters[{C_WIN_EVENTS}]",
    "engagement": "u.engagement",
    "days_since_first_seen": "(now - u.first_seen) / 86400.0",
    "days_inactive": "0.0",
}
#: Numbers read only when a rule gets to them (see :func:`compile_mask`): the rest cost less
#: than the check for "read yet?".
_LAZY_NUMBERS = frozenset({"features_5m"})
#: What the readers may call.
_READER_NAMES: dict[str, Any] = {"__builtins__": {}, "sum": sum, "max": max, "int": int}
_INLINE_NUMBERS: dict[str, ast.expr] = {
    name: ast.parse(text, mode="eval").body for name, text in _NUMBER_READERS.items()
}
_FRESH_NUMBERS: dict[str, ast.expr] = {
    **_INLINE_NUMBERS,
    **{name: ast.parse(text, mode="eval").body for name, text in _FRESH_READERS.items()},
}
# Evaluated text: the constants above, never a rule's.
_NUMBERS: dict[str, Callable[[UserState, float], float]] = {
    name: eval(f"lambda u, now: {text}", dict(_READER_NAMES)) for name, text in _NUMBER_READERS.items()
}


def rule_input(
    user: UserState | None,
    vocab: Vocabularies | None,
    now: float,
    context: Mapping[str, Any] | None = None,
    reads: RuleReads | None = None,
    schema: EventSchema = BUILTIN_SCHEMA,
) -> RuleInput:
    """What rules read from a user's live state as of ``now``: every field (built-in and
    declared in ``schema``), feature count, completed step and event count, or only ``reads``
    (on the decision path, hence the narrowing). A user never seen has zero counts. The
    request's context fields, where given, win over the profile's (as for the built-in
    segments); a declared one only with a value of its declared type."""
    wanted: Collection[str] = (
        {*FIELDS, *declared_fields(schema)} if reads is None or reads.fields is None else reads.fields
    )
    fields: dict[str, Any] = {}
    for name in wanted:
        number = _NUMBERS.get(name)
        if number is not None:
            fields[name] = number(user, now) if user is not None else 0
        elif name == "cluster":
            fields[name] = user.cluster if user is not None and user.cluster >= 0 else None
        elif user is None:
            continue
        elif name in FIELDS:
            fields[name] = getattr(user, name)
        elif vocab is not None:
            fields[name] = user.extra(vocab.custom_fields.find(name))
    if context:
        for name in (*CONTEXT_FIELDS, *schema.context):
            value = context.get(name)
            if value is not None and name in wanted:
                if name not in CONTEXT_FIELDS:
                    value = _of_type(value, schema.field_type(name))
                    if value is None:
                        continue
                fields[name] = value
    if user is None or vocab is None:
        return RuleInput(fields=fields)
    if reads is None:
        names = vocab.features.names
        features = {names[i]: user.feature_count(i) for i in user.feature_ids()}
        steps = vocab.steps.names
        mask = user.completed_steps
        completed = frozenset(steps[i] for i in range(len(steps)) if mask >> i & 1)
        return RuleInput(
            fields=fields, features=features, completed=completed, counts=_all_counts(user, vocab)
        )
    features = {f: user.feature_count(vocab.features.find(f)) for f in reads.features}
    done = set()
    for step in reads.steps:
        ident = vocab.steps.find(step)
        if ident is not None and user.completed_steps >> ident & 1:
            done.add(step)
    counts = {count: _event_count(user, vocab, count) for count in reads.event_counts}
    return RuleInput(fields=fields, features=features, completed=frozenset(done), counts=counts)


def declared_fields(schema: EventSchema) -> tuple[str, ...]:
    """The declared traits and context fields rules can read: all but PII traits."""
    return tuple(n for n in (*schema.traits, *schema.context) if n not in schema.pii_traits)


def _of_type(value: Any, declared: str | None) -> Any:
    """A request's value of a declared context field, if it has the declared type (else None:
    a request cannot make a rule compare text with a number)."""
    if declared == "number":
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return float(value) if ok else None
    if declared == "boolean":
        return value if isinstance(value, bool) else None
    return value if isinstance(value, str) else None


def _event_count(user: UserState, vocab: Vocabularies, count: EventCount) -> int:
    event_type, prop, value = count
    kind = BUILTIN_TYPES.get(event_type)
    if kind is not None:
        return user.count(kind)
    if prop is None:
        return user.custom_count(vocab.custom_types.find(event_type))
    return user.value_count(
        vocab.custom_keys.find(f"{event_type}.{prop}"), vocab.custom_values.find(value or "")
    )


def _all_counts(user: UserState, vocab: Vocabularies) -> dict[EventCount, int]:
    """Every event count of a user: per built-in type, per custom type, per counted value."""
    counts: dict[EventCount, int] = {(k.wire_name, None, None): user.count(k) for k in BUILTIN_KINDS}
    x = user.custom or ()  # (type id, count, first, last) quads
    for i in range(0, len(x), 4):
        counts[vocab.custom_types.name(x[i]), None, None] = x[i + 1]
    v = user.custom_values or ()  # (key id, value id, count) triples
    for i in range(0, len(v), 3):
        event_type, prop = vocab.custom_keys.name(v[i]).split(".", 1)
        counts[event_type, prop, vocab.custom_values.name(v[i + 1])] = v[i + 2]
    return counts


def profile_table(
    inputs: list[RuleInput], rules: list[Rule], schema: EventSchema = BUILTIN_SCHEMA
) -> pl.DataFrame:
    """Rule inputs as the table :meth:`Rule.polars` reads: a column per field (built-in, and
    typed as declared in ``schema``), and one per feature count, completed step and event
    count the rules use."""
    columns: dict[str, Any] = {}
    for name, kind in FIELDS.items():
        dtype = pl.Float64 if kind == "number" else pl.String
        columns[name] = pl.Series(name, [i.fields.get(name) for i in inputs], dtype=dtype)
    for name in declared_fields(schema):
        dtype = _DTYPES[DECLARED_KINDS[schema.field_type(name) or "string"]]
        columns[name] = pl.Series(name, [i.fields.get(name) for i in inputs], dtype=dtype)
    for feature in sorted({f for r in rules for f in r.features}):
        columns[f"feature:{feature}"] = pl.Series(
            [i.features.get(feature, 0) for i in inputs], dtype=pl.Int64
        )
    for step in sorted({s for r in rules for s in r.steps}):
        columns[f"completed:{step}"] = pl.Series([step in i.completed for i in inputs], dtype=pl.Boolean)
    for count in sorted({c for r in rules for c in r.event_counts}, key=count_column):
        columns[count_column(count)] = pl.Series([i.counts.get(count, 0) for i in inputs], dtype=pl.Int64)
    return pl.DataFrame(columns)


_DTYPES: dict[Kind, Any] = {"number": pl.Float64, "text": pl.String, "bool": pl.Boolean}


# ---------------------------------------------------------------------- membership

#: ``mask(user, now, vocab)``: the bits of the rules that match the user as of ``now``.
MaskFunction = Callable[[UserState, float, Vocabularies], int]


def compile_mask(rules: Sequence[tuple[int, Rule]], fresh: bool = False) -> MaskFunction:
    """One function that evaluates several rules over a user's live state at once and returns
    the bits (``1 << bit``) of those that match. ``fresh``: only ever called with ``now`` the
    time of the user's newest event (``now == u.last_seen``), which reads time fields cheaper
    and folds away what cannot hold then.

    Live membership evaluates every segment whose fields an event changed, after every event;
    one call that reads each field once (into a local) and tests every rule costs a fraction
    of a call per rule over a :class:`RuleInput` (see ``headstart bench ingest``). Built from
    the same checked trees as :meth:`Rule.matches`, with the same answers: a seen user's
    numbers are never missing, text fields, declared fields and the cluster may be. Declared
    fields and custom event counts are read by the partition's ids (``vocab.custom_*``).

    >>> mask = compile_mask([(0, parse_rule("session_count >= 1")), (3, parse_rule('os == "ios"'))])
    >>> from engine.profile import UserState, Vocabularies
    >>> mask(UserState.new(0.0), 0.0, Vocabularies())
    0
    >>> dormant = compile_mask([(0, parse_rule("days_inactive >= 3"))], fresh=True)
    >>> dormant(UserState.new(0.0), 0.0, Vocabularies())  # folded to 0
    0
    """
    fields = sorted({f for _, rule in rules for f in rule.fields})
    features = sorted({f for _, rule in rules for f in rule.features})
    steps = sorted({s for _, rule in rules for s in rule.steps})
    counts = sorted({c for _, rule in rules for c in rule.event_counts}, key=count_column)
    feature_var = {name: f"f_{i}" for i, name in enumerate(features)}
    step_var = {name: f"c_{i}" for i, name in enumerate(steps)}
    count_var = {count: f"n_{i}" for i, count in enumerate(counts)}

    def load(name: str) -> ast.Name:
        return ast.Name(name, ast.Load())

    def call(function: ast.expr, *args: ast.expr) -> ast.Call:
        return ast.Call(func=function, args=list(args), keywords=[])

    def attribute(value: ast.expr, *names: str) -> ast.expr:
        for name in names:
            value = ast.Attribute(value=value, attr=name, ctx=ast.Load())
        return value

    def vocab_id(vocabulary: str, name: str) -> ast.expr:
        """``vocab.<vocabulary>.ids.get(name)``: the partition's id of ``name`` (None: unseen)."""
        return call(attribute(load("vocab"), vocabulary, "ids", "get"), ast.Constant(name))

    def var_of(node: ast.AST) -> str | None:
        if isinstance(node, ast.Name):
            return f"v_{node.id}"  # declared names are identifiers that no built-in field takes
        if isinstance(node, ast.Call):
            name = node.func.id  # type: ignore[attr-defined]
            if name == "event_count":
                return count_var[_count_of(node)]
            arg = node.args[0].value  # type: ignore[attr-defined]
            return feature_var[arg] if name == "feature_count" else step_var[arg]
        return None

    # Costly reads (a scan of the user's features, a sum, a lookup by name) are made on first
    # use: a rule's "and"/"or" often decides before reaching them ("engagement >= 20 and
    # features_5m >= 3" for a user below 20), and a read shared by rules is still made once.
    lazy: dict[str, ast.expr] = {}
    # Lazy reads that may be None (declared fields): "read yet?" compares with a sentinel.
    maybe_none: set[str] = set()
    # How many times the rules read each variable: one read needs no "read yet?" check.
    reads: dict[str, int] = {}
    for _, rule in rules:
        for node in ast.walk(rule.tree.body):
            var = var_of(node)
            if var is not None:
                reads[var] = reads.get(var, 0) + 1

    def read(var: str) -> ast.expr:
        if var not in lazy:
            return load(var)
        if reads[var] == 1:
            return lazy[var]
        # (var if var is not <unread> else (var := <read>))
        unread = load("unread") if var in maybe_none else ast.Constant(None)
        compute = ast.NamedExpr(target=ast.Name(var, ast.Store()), value=lazy[var])
        is_set = ast.Compare(left=load(var), ops=[ast.IsNot()], comparators=[unread])
        return ast.IfExp(test=is_set, body=load(var), orelse=compute)

    numbers = _FRESH_NUMBERS if fresh else _INLINE_NUMBERS

    def leaf(node: ast.expr) -> ast.expr:
        if isinstance(node, ast.Name):
            value = numbers.get(node.id)
            if isinstance(value, ast.Constant):
                return value  # known without reading the user: folded below
        var = var_of(node)
        assert var is not None
        return read(var)

    def nullable(node: ast.expr) -> bool:
        return isinstance(node, ast.Name) and (node.id in NULLABLE_FIELDS or node.id not in FIELDS)

    body: list[ast.stmt] = []

    def assign(name: str, value: ast.expr) -> None:
        body.append(ast.Assign(targets=[ast.Name(name, ast.Store())], value=value))

    def deferred(var: str, value: ast.expr, may_be_none: bool = False) -> None:
        lazy[var] = value
        if may_be_none:
            maybe_none.add(var)
        if reads[var] > 1:
            assign(var, load("unread") if may_be_none else ast.Constant(None))

    for name in fields:
        if isinstance(numbers.get(name), ast.Constant):
            continue
        if name in _LAZY_NUMBERS:
            deferred(f"v_{name}", numbers[name])
        elif name in numbers:
            assign(f"v_{name}", numbers[name])
        elif name == "cluster":
            assign("v_cluster", call(load("cluster_of"), load("u")))
        elif name in FIELDS:
            assign(f"v_{name}", attribute(load("u"), name))
        else:  # declared: u.extra(vocab.custom_fields.ids.get(name))
            deferred(f"v_{name}", call(attribute(load("u"), "extra"), vocab_id("custom_fields", name)), True)
    for name, var in feature_var.items():
        # count_of(u.features, vocab.features.ids.get(name)): one call
        deferred(var, call(load("count_of"), attribute(load("u"), "features"), vocab_id("features", name)))
    for name, var in step_var.items():
        deferred(var, call(load("step_done"), load("u"), load("vocab"), ast.Constant(name)))
    for (event_type, prop, value), var in count_var.items():
        kind = BUILTIN_TYPES.get(event_type)
        if kind is not None and kind in FLOW_KINDS:  # counted in the flow records: u.count(kind)
            assign(var, call(attribute(load("u"), "count"), ast.Constant(int(kind))))
        elif kind is not None:  # u.counters[kind]: cheaper than any check
            assign(
                var,
                ast.Subscript(
                    value=attribute(load("u"), "counters"), slice=ast.Constant(int(kind)), ctx=ast.Load()
                ),
            )
        elif prop is None:  # custom_count(u.custom, vocab.custom_types.ids.get(type))
            deferred(
                var,
                call(
                    load("custom_count"), attribute(load("u"), "custom"), vocab_id("custom_types", event_type)
                ),
            )
        else:  # value_count(u.custom_values, <id of "type.prop">, <id of value>)
            deferred(
                var,
                call(
                    load("value_count"),
                    attribute(load("u"), "custom_values"),
                    vocab_id("custom_keys", f"{event_type}.{prop}"),
                    vocab_id("custom_values", value or ""),
                ),
            )
    result: ast.expr = ast.Constant(0)
    constant = 0  # the bits of rules folded to true
    for bit, rule in rules:
        test = _fold(_condition(rule.tree.body, leaf, nullable))
        if isinstance(test, ast.Constant):
            constant |= (1 << bit) if test.value else 0
            continue
        term = ast.IfExp(test=test, body=ast.Constant(1 << bit), orelse=ast.Constant(0))
        result = (
            term if isinstance(result, ast.Constant) else ast.BinOp(left=result, op=ast.BitOr(), right=term)
        )
    if constant:
        result = ast.BinOp(left=result, op=ast.BitOr(), right=ast.Constant(constant))
    body.append(ast.Return(value=result))
    arguments = ast.arguments(
        posonlyargs=[],
        args=[ast.arg(a) for a in ("u", "now", "vocab")],
        kwonlyargs=[],
        kw_defaults=[],
        defaults=[],
    )
    function = ast.FunctionDef(name="mask", args=arguments, body=body, decorator_list=[], returns=None)
    module = ast.fix_missing_locations(ast.Module(body=[function], type_ignores=[]))
    # Built from checked trees only (see parse_rule); the namespace holds the readers it calls.
    namespace: dict[str, Any] = {
        **_READER_NAMES,
        "cluster_of": _cluster_of,
        "step_done": _step_done,
        "count_of": feature_count,
        "custom_count": custom_count,
        "value_count": value_count,
        "unread": _UNREAD,
    }
    exec(compile(module, "<segments>", "exec"), namespace)
    return namespace["mask"]  # type: ignore[no-any-return]


#: What a lazily read declared field holds before it is read (None is a value there: missing).
_UNREAD = object()


def _fold(node: ast.expr) -> ast.expr:
    """``node`` with comparisons of two constants computed and ``and``/``or``/``not`` over the
    results simplified (a rule over a field known to be constant, see ``fresh``)."""
    if isinstance(node, ast.Compare):
        left, right = _fold(node.left), _fold(node.comparators[0])
        compare = _OPERATORS.get(_COMPARE.get(type(node.ops[0]), ""))
        if isinstance(left, ast.Constant) and isinstance(right, ast.Constant) and compare is not None:
            return ast.Constant(compare(left.value, right.value))
        return ast.Compare(left=left, ops=node.ops, comparators=[right])
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        operand = _fold(node.operand)
        if isinstance(operand, ast.Constant):
            return ast.Constant(not operand.value)
        return ast.UnaryOp(op=node.op, operand=operand)
    if isinstance(node, ast.BoolOp):
        # and: a false part decides, true parts drop out; or: the other way round.
        decisive = not isinstance(node.op, ast.And)
        values = []
        for value in map(_fold, node.values):
            if isinstance(value, ast.Constant):
                if bool(value.value) == decisive:
                    return ast.Constant(decisive)
                continue
            values.append(value)
        if not values:
            return ast.Constant(not decisive)
        return values[0] if len(values) == 1 else ast.BoolOp(op=node.op, values=values)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        operand = _fold(node.operand)
        if isinstance(operand, ast.Constant) and isinstance(operand.value, (int, float)):
            return ast.Constant(-operand.value)
    return node


def _cluster_of(user: UserState) -> int | None:
    return user.cluster if user.cluster >= 0 else None


def _step_done(user: UserState, vocab: Vocabularies, step: str) -> bool:
    ident = vocab.steps.find(step)
    return ident is not None and bool(user.completed_steps >> ident & 1)
