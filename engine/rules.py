"""Rule segments: a small expression language over a user's live state.

``session_count < 3 and device_type == "mobile"``, ``country in ("DE", "FR")``,
``events_5m >= 10 or feature_count("export") > 0``, ``not completed("profile")``.

Why Python's own parser: the grammar is a subset of Python's expressions, so :mod:`ast` parses
it (``mode="eval"``: one expression, no statements) and this module accepts only the node types
listed in :func:`_check`; the rule's text is never evaluated, only a function compiled from
the checked tree. A rule is type-checked
against :data:`FIELDS` when the catalog loads (an unknown field, a string compared with a
number, a function called wrong: each an error with its column), then compiled twice from the
same tree: to a Python function over one user (:meth:`Rule.matches`, microseconds) and to a
polars expression over a profile table (:meth:`Rule.polars`, batch reports). Both read a
missing value (a user without a country) the same way: every comparison with it is false.

>>> rule = parse_rule('session_count < 3 and device_type == "mobile"')
>>> sorted(rule.fields)
['device_type', 'session_count']
>>> rule.matches(RuleInput(fields={"session_count": 1, "device_type": "mobile"}))
True
>>> parse_rule('country == 3')
Traceback (most recent call last):
engine.rules.RuleError: column 1: 'country' is text; it cannot be compared with a number
"""

from __future__ import annotations

import ast
import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import polars as pl

from engine.errors import ConfigError
from engine.events import CONTEXT_FIELDS, EventKind
from engine.profile import (
    C_EVENTS,
    C_SESSIONS,
    C_WIN_EVENTS,
    C_WIN_HEAD,
    WINDOW_BUCKET_S,
    UserState,
    Vocabularies,
    feature_count,
)

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
#: Functions a rule can call, with their result type; each takes one text constant.
FUNCTIONS: dict[str, Kind] = {"feature_count": "number", "completed": "bool"}

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
    """What a rule reads: field values (None: missing), feature counts and completed steps."""

    fields: Mapping[str, Any]
    features: Mapping[str, int] = field(default_factory=dict)
    completed: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Rule:
    """A parsed, type-checked rule (build with :func:`parse_rule`)."""

    source: str
    tree: ast.Expression
    fields: frozenset[str]
    features: frozenset[str]
    steps: frozenset[str]
    _matches: Callable[[RuleInput], bool]

    def matches(self, data: RuleInput) -> bool:
        return self._matches(data)

    @property
    def time_based(self) -> bool:
        """Whether membership can change with time alone."""
        return bool(self.fields & TIME_FIELDS)

    def polars(self) -> pl.Expr:
        """The rule over a profile table: a column per field, ``feature:<name>`` per feature
        count and ``completed:<step>`` per step, as :func:`profile_table` builds it."""
        return _to_polars(self.tree.body)


def parse_rule(source: str) -> Rule:
    """Parse, type-check and compile a rule; :class:`RuleError` says what is wrong and where."""
    if len(source) > MAX_RULE_LENGTH:
        raise RuleError(f"a rule is at most {MAX_RULE_LENGTH} characters")
    try:
        tree = ast.parse(source.strip(), mode="eval")
    except SyntaxError as exc:
        raise RuleError(f"column {exc.offset or 0}: not a valid rule ({exc.msg})") from None
    used: dict[str, set[str]] = {"fields": set(), "features": set(), "steps": set()}
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
            body=_to_python(tree.body),
        )
    )
    code = compile(ast.fix_missing_locations(function_tree), "<rule>", "eval")
    function = eval(code, {"__builtins__": {}})
    return Rule(
        source=source,
        tree=tree,
        fields=frozenset(used["fields"]),
        features=frozenset(used["features"]),
        steps=frozenset(used["steps"]),
        _matches=function,
    )


# ---------------------------------------------------------------------- type-checking


def _where(node: ast.AST) -> str:
    return f"column {getattr(node, 'col_offset', 0) + 1}"


def _check(node: ast.expr, used: dict[str, set[str]]) -> Kind:
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
        return "bool"
    if isinstance(node, ast.Name):
        kind = FIELDS.get(node.id)
        if kind is None:
            raise RuleError(f"{_where(node)}: unknown field {node.id!r} (known: {', '.join(sorted(FIELDS))})")
        used["fields"].add(node.id)
        return kind
    if isinstance(node, ast.Call):
        name = node.func.id if isinstance(node.func, ast.Name) else None
        if name not in FUNCTIONS:
            raise RuleError(f"{_where(node)}: unknown function (known: {', '.join(sorted(FUNCTIONS))})")
        if node.keywords or len(node.args) != 1 or not _is_text(node.args[0]):
            raise RuleError(f'{_where(node)}: {name}() takes one name in quotes, e.g. {name}("export")')
        value = node.args[0].value  # type: ignore[attr-defined]
        used["features" if name == "feature_count" else "steps"].add(value)
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


def _to_python(
    node: ast.expr, leaf: Leaf | None = None, nullable: Callable[[ast.expr], bool] | None = None
) -> ast.expr:
    """The checked tree as Python; comparisons with a missing value are false.

    ``leaf`` turns a field or function call into the expression that reads it (by default from
    ``d``, a :class:`RuleInput`); ``nullable`` says which of them may be missing (by default all
    fields), so the guards are only where a value can be None.
    """
    leaf = leaf or _input_leaf
    nullable = nullable or (lambda n: isinstance(n, ast.Name))
    if isinstance(node, ast.BoolOp):
        return ast.BoolOp(op=node.op, values=[_to_python(v, leaf, nullable) for v in node.values])
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        return ast.UnaryOp(op=ast.Not(), operand=_to_python(node.operand, leaf, nullable))
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


def _input_leaf(node: ast.expr) -> ast.expr:
    """A field or function read from ``d``, a :class:`RuleInput`."""
    if isinstance(node, ast.Name):
        return _lookup("fields", node.id)
    name = node.func.id  # type: ignore[attr-defined]
    arg = node.args[0].value  # type: ignore[attr-defined]
    if name == "feature_count":
        return _lookup("features", arg, default=0)
    return ast.Compare(
        left=ast.Constant(arg),
        ops=[ast.In()],
        comparators=[ast.Attribute(value=ast.Name("d", ast.Load()), attr="completed", ctx=ast.Load())],
    )


def _lookup(table: str, key: str, default: Any = None) -> ast.expr:
    """``d.<table>.get(key[, default])``."""
    args: list[ast.expr] = [ast.Constant(key)]
    if default is not None:
        args.append(ast.Constant(default))
    mapping = ast.Attribute(value=ast.Name("d", ast.Load()), attr=table, ctx=ast.Load())
    return ast.Call(func=ast.Attribute(value=mapping, attr="get", ctx=ast.Load()), args=args, keywords=[])


def _to_polars(node: ast.expr) -> pl.Expr:
    if isinstance(node, ast.BoolOp):
        parts = [_to_polars(v) for v in node.values]
        out = parts[0]
        for part in parts[1:]:
            out = (out & part) if isinstance(node.op, ast.And) else (out | part)
        return out
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        return ~_to_polars(node.operand)
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
    if isinstance(node, ast.Call):
        return _to_polars(node)
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
    needed: frozenset[str] | None = None,
    reads: tuple[frozenset[str], frozenset[str]] | None = None,
) -> RuleInput:
    """What rules read from a user's live state as of ``now`` (``needed``: only these fields;
    ``reads``: only these feature counts and steps; a user never seen has zero counts).
    The request's context fields, where given, win over the profile's (as for the built-in
    segments). On the decision path, hence the narrowing."""
    wanted = FIELDS.keys() if needed is None else needed
    fields: dict[str, Any] = {}
    for name in wanted:
        number = _NUMBERS.get(name)
        if number is not None:
            fields[name] = number(user, now) if user is not None else 0
        elif name == "cluster":
            fields[name] = user.cluster if user is not None and user.cluster >= 0 else None
        elif user is not None:
            fields[name] = getattr(user, name)
    if context:
        for name in CONTEXT_FIELDS:
            value = context.get(name)
            if value is not None and name in wanted:
                fields[name] = value
    if user is None or vocab is None:
        return RuleInput(fields=fields)
    if reads is None:
        names = vocab.features.names
        features = {names[i]: user.feature_count(i) for i in user.feature_ids()}
        steps = vocab.steps.names
        mask = user.completed_steps
        completed = frozenset(steps[i] for i in range(len(steps)) if mask >> i & 1)
        return RuleInput(fields=fields, features=features, completed=completed)
    wanted_features, wanted_steps = reads
    features = {f: user.feature_count(vocab.features.find(f)) for f in wanted_features}
    done = set()
    for step in wanted_steps:
        ident = vocab.steps.find(step)
        if ident is not None and user.completed_steps >> ident & 1:
            done.add(step)
    return RuleInput(fields=fields, features=features, completed=frozenset(done))


def profile_table(inputs: list[RuleInput], rules: list[Rule]) -> pl.DataFrame:
    """Rule inputs as the table :meth:`Rule.polars` reads: a column per field, and one per
    feature count and completed step the rules use."""
    columns: dict[str, Any] = {}
    for name, kind in FIELDS.items():
        dtype = pl.Float64 if kind == "number" else pl.String
        columns[name] = pl.Series(name, [i.fields.get(name) for i in inputs], dtype=dtype)
    for feature in sorted({f for r in rules for f in r.features}):
        columns[f"feature:{feature}"] = pl.Series(
            [i.features.get(feature, 0) for i in inputs], dtype=pl.Int64
        )
    for step in sorted({s for r in rules for s in r.steps}):
        columns[f"completed:{step}"] = pl.Series([step in i.completed for i in inputs], dtype=pl.Boolean)
    return pl.DataFrame(columns)


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
    numbers are never missing, text fields and the cluster may be.

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
    feature_var = {name: f"f_{i}" for i, name in enumerate(features)}
    step_var = {name: f"c_{i}" for i, name in enumerate(steps)}

    def load(name: str) -> ast.Name:
        return ast.Name(name, ast.Load())

    def call(function: ast.expr, *args: ast.expr) -> ast.Call:
        return ast.Call(func=function, args=list(args), keywords=[])

    # Costly reads (a scan of the user's features, a sum, a lookup by name) are made on first
    # use: a rule's "and"/"or" often decides before reaching them ("engagement >= 20 and
    # features_5m >= 3" for a user below 20), and a read shared by rules is still made once.
    lazy: dict[str, ast.expr] = {}
    # How many times the rules read each variable: one read needs no "read yet?" check.
    reads: dict[str, int] = {}
    for _, rule in rules:
        for node in ast.walk(rule.tree.body):
            if isinstance(node, ast.Name) and node.id in FIELDS:
                var = f"v_{node.id}"
            elif isinstance(node, ast.Call):
                arg = node.args[0].value  # type: ignore[attr-defined]
                var = feature_var[arg] if node.func.id == "feature_count" else step_var[arg]  # type: ignore[attr-defined]
            else:
                continue
            reads[var] = reads.get(var, 0) + 1

    def read(var: str) -> ast.expr:
        if var not in lazy:
            return load(var)
        if reads[var] == 1:
            return lazy[var]
        # (var if var is not None else (var := <read>))
        compute = ast.NamedExpr(target=ast.Name(var, ast.Store()), value=lazy[var])
        is_set = ast.Compare(left=load(var), ops=[ast.IsNot()], comparators=[ast.Constant(None)])
        return ast.IfExp(test=is_set, body=load(var), orelse=compute)

    numbers = _FRESH_NUMBERS if fresh else _INLINE_NUMBERS

    def leaf(node: ast.expr) -> ast.expr:
        if isinstance(node, ast.Name):
            value = numbers.get(node.id)
            if isinstance(value, ast.Constant):
                return value  # known without reading the user: folded below
            return read(f"v_{node.id}")
        arg = node.args[0].value  # type: ignore[attr-defined]
        return read(feature_var[arg] if node.func.id == "feature_count" else step_var[arg])  # type: ignore[attr-defined]

    def nullable(node: ast.expr) -> bool:
        return isinstance(node, ast.Name) and node.id in NULLABLE_FIELDS

    body: list[ast.stmt] = []

    def assign(name: str, value: ast.expr) -> None:
        body.append(ast.Assign(targets=[ast.Name(name, ast.Store())], value=value))

    def deferred(var: str, value: ast.expr) -> None:
        lazy[var] = value
        if reads[var] > 1:
            assign(var, ast.Constant(None))

    for name in fields:
        if isinstance(numbers.get(name), ast.Constant):
            continue
        if name in _LAZY_NUMBERS:
            deferred(f"v_{name}", numbers[name])
        elif name in numbers:
            assign(f"v_{name}", numbers[name])
        elif name == "cluster":
            assign("v_cluster", call(load("cluster_of"), load("u")))
        else:
            assign(f"v_{name}", ast.Attribute(value=load("u"), attr=name, ctx=ast.Load()))
    for name, var in feature_var.items():
        # count_of(u.features, vocab.features.ids.get(name)): one call
        ids = ast.Attribute(
            value=ast.Attribute(value=load("vocab"), attr="features", ctx=ast.Load()),
            attr="ids",
            ctx=ast.Load(),
        )
        ident = call(ast.Attribute(value=ids, attr="get", ctx=ast.Load()), ast.Constant(name))
        user_features = ast.Attribute(value=load("u"), attr="features", ctx=ast.Load())
        deferred(var, call(load("count_of"), user_features, ident))
    for name, var in step_var.items():
        deferred(var, call(load("step_done"), load("u"), load("vocab"), ast.Constant(name)))
    result: ast.expr = ast.Constant(0)
    constant = 0  # the bits of rules folded to true
    for bit, rule in rules:
        test = _fold(_to_python(rule.tree.body, leaf, nullable))
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
    }
    exec(compile(module, "<segments>", "exec"), namespace)
    return namespace["mask"]  # type: ignore[no-any-return]


def _fold(node: ast.expr) -> ast.expr:
    """``node`` with comparisons of two constants computed and ``and``/``or``/``not`` over the
    results simplified (a rule over a field known to be constant, see ``fresh``)."""
    if isinstance(node, ast.Compare):
        left, right = _fold(node.left), _fold(node.comparators[0])
        compare = _OPERATORS.get(_COMPARE[type(node.ops[0])])
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
