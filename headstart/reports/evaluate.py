"""``headstart evaluate``: a candidate policy's value estimated from logged bandit data.

The log is a Parquet or CSV file, one row per logged decision:

=================  =====================================================================
column             meaning
=================  =====================================================================
``action``         the action (arm) that was shown, a string
``reward``         what it earned, a number in [0, 1]
``propensity``     the logging policy's probability of that action, in (0, 1]
any other column   a numeric context feature (the context vector, in column order)
=================  =====================================================================

``point``           optional: the decision point (``step``, ``tutorial:<id>``); with it,
                   each point is evaluated on its own rows (it is not a context column)
=================  =====================================================================

This is the layout Headstart's own decision log is exported in (``headstart evaluate
--export``), so logs from an existing system can be evaluated the same way. The candidate
learns from the first part of the log (``train_share``, in order, as it would have on-line from
those rewards) and is then frozen and evaluated on the rest by IPS, SNIPS and DR
(:mod:`engine.ope`).

Without ``--data``, the log is the running instance's own: its events stream (events,
decisions, explicit rewards) replayed through the engine's attribution rules
(:func:`logged_decisions`), which gives each logged decision exactly the reward the policies
learned from, with its propensity and the context vector it was chosen in. Each decision's
context is read with the feature names of the layout it was logged with (its layout id, the
names registered in ``HS_LEARN``): after a catalog change, the columns are every layout's
features by name, empty (null) where a decision's layout had no such feature.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import polars as pl
from nats.js import JetStreamContext
from nats.js.errors import BucketNotFoundError

from engine import ope
from engine.catalog import Catalog
from engine.decision import Decider
from engine.errors import ConfigError, InvalidEvent
from engine.features import record_names
from engine.learning import AUDIENCE_FIELDS, Learner, decision_decoder
from engine.partition import PartitionSetup, PartitionState
from headstart.adapters.broker import NatsAuth, connect_nats
from headstart.adapters.merge import known_layouts
from headstart.adapters.topology import EVENTS_PREFIX, EVENTS_STREAM, LEARN_BUCKET
from policies import available, create

REQUIRED = ("action", "reward", "propensity")
POINT = "point"
#: Logged decisions a decision point needs before it is evaluated: below that, half of them
#: (the other half trains the candidate) gives intervals too wide to say anything.
MIN_DECISIONS = 20
#: A logged context: its layout's feature names and its values.
Context = tuple[tuple[str, ...], np.ndarray]


@dataclass(frozen=True)
class LoggedData:
    arms: list[str]
    features: list[str]
    x: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    propensities: np.ndarray


def read_log(path: Path, arms: list[str] | None = None, point: str | None = None) -> LoggedData:
    """Read and validate a log; every problem names the file and the column."""
    if not path.exists():
        raise ConfigError(f"{path}: no such file")
    try:
        frame = pl.read_parquet(path) if path.suffix.lower() == ".parquet" else pl.read_csv(path)
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise ConfigError(f"{path}: not a readable Parquet or CSV file ({exc})") from exc
    return frame_to_log(frame, str(path), arms, point)


def frame_to_log(
    frame: pl.DataFrame, path: str, arms: list[str] | None = None, point: str | None = None
) -> LoggedData:
    """Validate a logged-decisions frame (the layout above) for one decision point; ``path``
    names it in errors."""
    frame = frame.drop([c for c in frame.columns if c.startswith("group_")])
    if POINT in frame.columns:
        points = sorted(frame[POINT].cast(pl.String).unique().to_list())
        if point is None and len(points) > 1:
            raise ConfigError(f"{path}: rows of several decision points {points}; choose one with --point")
        if point is not None:
            frame = frame.filter(pl.col(POINT) == point)
        frame = frame.drop(POINT)
    missing = [c for c in REQUIRED if c not in frame.columns]
    if missing:
        raise ConfigError(f"{path}: missing column(s) {', '.join(missing)} (needs {', '.join(REQUIRED)})")
    if frame.height < 4:
        raise ConfigError(f"{path}: {frame.height} rows; at least 4 logged decisions are needed")
    features = [c for c in frame.columns if c not in REQUIRED]
    for column in features:
        if not frame[column].dtype.is_numeric():
            raise ConfigError(
                f"{path}: column {column!r} is {frame[column].dtype}; context columns must be numeric"
            )
    for column, low, high, closed in (("reward", 0.0, 1.0, "both"), ("propensity", 0.0, 1.0, "right")):
        values = frame[column].cast(pl.Float64, strict=False)
        outside = values.is_null() | ~values.is_between(low, high, closed=closed)  # type: ignore[arg-type]
        if outside.any():
            row = int(outside.arg_true()[0])
            bounds = "[0, 1]" if closed == "both" else "(0, 1]"
            raise ConfigError(
                f"{path}: column {column!r}, row {row}: {frame[column][row]!r} is not in {bounds}"
            )
    logged_actions = frame["action"].cast(pl.String).to_list()
    arms = arms or sorted(set(logged_actions))
    unknown = sorted(set(logged_actions) - set(arms))
    if unknown:
        raise ConfigError(f"{path}: column 'action' has {unknown}, not among the arms {arms}")
    index = {arm: i for i, arm in enumerate(arms)}
    context = (
        frame.select(features).cast(pl.Float64).fill_null(0.0).to_numpy()
        if features
        else np.zeros((frame.height, 0))
    )
    return LoggedData(
        arms=arms,
        features=features,
        # A bias term first: the layout of Headstart's own context vectors.
        x=np.column_stack([np.ones(frame.height), context]),
        actions=np.array([index[a] for a in logged_actions], dtype=int),
        rewards=frame["reward"].cast(pl.Float64).to_numpy(),
        propensities=frame["propensity"].cast(pl.Float64).to_numpy(),
    )


def evaluate_policy(
    name: str,
    log: LoggedData,
    train_share: float = 0.5,
    seed: int = 0,
    *,
    eligible: Sequence[str] | None = None,
    **params: Any,
) -> dict[str, Any]:
    """Train ``name`` on the first ``train_share`` of the log, estimate its value on the rest.

    ``eligible``: the arms the candidate may choose (default: every arm of the log); the
    others, e.g. a variant a catalog change removes, keep probability 0 but are learned from.
    ``arm_shares`` in the answer: how often the candidate would choose each arm in the
    evaluated contexts.
    """
    if not 0.0 <= train_share < 1.0:
        raise ConfigError(f"train_share: {train_share} is not in [0, 1)")
    policies = available()
    if name not in policies:
        raise ConfigError(f"--policy: no policy named {name!r}; known: {', '.join(sorted(policies))}")
    contextual = policies[name].contextual
    policy = create(name, log.arms, dim=log.x.shape[1] if contextual else 0, seed=seed, **params)
    n = len(log.actions)
    split = int(n * train_share)
    if n - split < 2:
        raise ConfigError("too few logged decisions left to evaluate on; lower --train-share")
    for i in range(split):
        policy.update(log.x[i] if contextual else None, int(log.actions[i]), float(log.rewards[i]))
    unknown = sorted(set(eligible or ()) - set(log.arms))
    if unknown:
        raise ConfigError(f"eligible arms {unknown} are not among the log's arms {log.arms}")
    allowed = list(range(len(log.arms))) if eligible is None else [log.arms.index(a) for a in eligible]
    target = np.zeros((n - split, len(log.arms)))
    for row, i in enumerate(range(split, n)):
        target[row, allowed] = policy.probabilities(log.x[i] if contextual else None, allowed)
    estimates = ope.evaluate(
        target, log.x[split:], log.actions[split:], log.rewards[split:], log.propensities[split:]
    )
    return {
        "policy": name,
        "arms": log.arms,
        "context_features": log.features,
        "trained_on": split,
        "evaluated_on": n - split,
        "logging_policy_value": float(log.rewards[split:].mean()),
        "estimates": {k: v._asdict() for k, v in estimates.items()},
        "arm_shares": {arm: float(target[:, j].mean()) for j, arm in enumerate(log.arms)},
    }


# ---------------------------------------------------------------------- the instance's own log


def logged_decisions(
    messages: Iterable[tuple[int, str, bytes]],
    catalog: Catalog,
    layouts: Mapping[str, Sequence[str]] | None = None,
) -> pl.DataFrame:
    """Replay the events stream's messages (sequence, subject, payload) through the engine's
    attribution rules: one row per decision closed by its immediate reward, in the layout
    :func:`frame_to_log` reads, with the context vector as ``x<i>_<feature>`` columns
    (``layouts``: feature names of other layouts by id, as :func:`read_layouts` reads them)."""
    return replay_log(messages, catalog, layouts).decisions


@dataclass(frozen=True)
class ReplayedLog:
    #: One row per decision closed by its immediate reward: point, action, reward, propensity,
    #: the context columns, and the decision's audience (``group_<field>`` columns).
    decisions: pl.DataFrame
    #: One row per activation outcome the activation model learned: context columns, activated.
    outcomes: pl.DataFrame
    #: What each closed decision earned, by (decision id, decision point).
    rewards: dict[tuple[str, str], float]
    #: Per decision point, the closed decisions a shadow policy scored (its probabilities of
    #: every arm, logged at decision time): what the apprentice report evaluates.
    shadow: dict[str, ShadowLog] = field(default_factory=dict)
    #: The served and the shadow policy, as the last decision logged names them.
    served_policy: str | None = None
    shadow_policy: str | None = None


@dataclass(frozen=True)
class ShadowLog:
    """One decision point's closed decisions that a shadow policy scored: the served choice, its
    propensity and reward, and the shadow's probability of each of the point's arms."""

    arms: list[str]
    x: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    propensities: np.ndarray
    #: ``target[i, a]``: the shadow's probability of arm ``a`` in decision ``i``'s context.
    target: np.ndarray
    #: The shadow's own draw was the served arm.
    agreed: np.ndarray


def replay_log(
    messages: Iterable[tuple[int, str, bytes]],
    catalog: Catalog,
    layouts: Mapping[str, Sequence[str]] | None = None,
) -> ReplayedLog:
    """Replay the events stream (sequence, subject, payload) through the engine's attribution
    rules: what every decision earned, and every activation outcome. ``layouts``: the feature
    names of the layouts decisions may have been logged with, by layout id (the catalog's own
    and the built-in one are always known)."""
    learner = Learner(catalog, Decider(catalog))
    for known in (layouts or {}).values():
        learner.register_layout(known)
    rows: list[tuple[str, str, str, float, float]] = []
    contexts: list[Context] = []
    outcomes: list[tuple[Context, bool]] = []
    groups: dict[str, dict[str, str]] = {}
    #: (decision id, point) -> (eligible arms, the shadow's probabilities of them, its draw).
    scored: dict[tuple[str, str], tuple[list[str], list[float], str]] = {}
    shadow_rows: dict[str, list[tuple[np.ndarray, int, float, float, np.ndarray, bool]]] = {}
    policies: list[str | None] = [None, None]
    # The contexts of decisions logged with another layout than the catalog's, as logged, with
    # their layout's names: columns are read by name, so decisions of several layouts (a catalog
    # change) line up feature by feature. (The learner reads them in the catalog's layout, where
    # a feature the decision's layout lacked would read 0, not "unknown".)
    logged: dict[str, Context] = {}
    own = learner.layout.names

    def by_name(decision_id: str, x: np.ndarray) -> Context:
        return logged.get(decision_id) or (own, x.copy())

    def closed(
        decision_id: str, point: str, arm: int, x: np.ndarray, reward: float, propensity: float
    ) -> None:
        rows.append((decision_id, point, learner.points[point][arm], reward, propensity))
        contexts.append(by_name(decision_id, x))
        shadow = scored.pop((decision_id, point), None)
        if shadow is not None:
            eligible, probabilities, drawn = shadow
            arms = learner.points[point]
            target = np.zeros(len(arms))
            for name, q in zip(eligible, probabilities, strict=True):
                if name in arms:
                    target[arms.index(name)] = q
            if target.sum() > 0:
                shadow_rows.setdefault(point, []).append(
                    (x.copy(), arm, reward, propensity, target / target.sum(), drawn == arms[arm])
                )

    learner.on_close = closed
    learner.on_outcome = lambda decision_id, x, activated: outcomes.append(
        (by_name(decision_id, x), activated)
    )
    partitions: dict[int, PartitionState] = {}
    for seq, subject, data in messages:
        _, _, partition, tail = subject.split(".", 3)
        if tail.endswith("-decision"):
            with contextlib.suppress(msgspec.DecodeError):
                record = decision_decoder.decode(data)
                groups[record.decision_id] = record.groups
                policies[:] = [record.policy, record.shadow_policy]
                for choice in record.choices:
                    if choice.shadow_probabilities is not None and choice.shadow_arm is not None:
                        scored[(record.decision_id, choice.point)] = (
                            choice.eligible,
                            choice.shadow_probabilities,
                            choice.shadow_arm,
                        )
                found = record_names(record.layout, record.features_version, learner.layouts)
                if found is not None and found != own and len(found) == len(record.context):
                    logged[record.decision_id] = (found, np.array(record.context))
        part = partitions.get(int(partition))
        if part is None:
            # The catalog's schema: its own events count (rewards, features) as the shards saw them.
            setup = PartitionSetup(learner, schema=catalog.event_schema)
            part = partitions[int(partition)] = PartitionState(int(partition), setup)
        with contextlib.suppress(InvalidEvent):  # dead-lettered by the shards too
            part.apply_message(seq, tail, data)
    # The catalog's features first, in its order, then those only other layouts had.
    features = list(own)
    for names in {names: None for names, _ in (*contexts, *(c for c, _ in outcomes))}:
        features += [name for name in names if name not in features]
    columns: dict[str, Any] = {
        POINT: [r[1] for r in rows],
        "action": [r[2] for r in rows],
        "reward": [r[3] for r in rows],
        "propensity": [r[4] for r in rows],
        **_context_columns(contexts, features),
    }
    for audience in AUDIENCE_FIELDS:
        columns[f"group_{audience}"] = [groups.get(r[0], {}).get(audience) for r in rows]
    outcome_columns = {
        **_context_columns([c for c, _ in outcomes], features),
        "activated": [activated for _, activated in outcomes],
    }
    return ReplayedLog(
        pl.DataFrame(columns, schema_overrides={f"group_{f}": pl.String for f in AUDIENCE_FIELDS}),
        pl.DataFrame(outcome_columns, schema_overrides=dict.fromkeys(_names(features), pl.Float64)),
        {(r[0], r[1]): r[3] for r in rows},
        shadow={point: _shadow_log(learner.points[point], rows_) for point, rows_ in shadow_rows.items()},
        served_policy=policies[0],
        shadow_policy=policies[1],
    )


def _shadow_log(
    arms: list[str], rows: list[tuple[np.ndarray, int, float, float, np.ndarray, bool]]
) -> ShadowLog:
    return ShadowLog(
        arms=list(arms),
        x=np.array([r[0] for r in rows]),
        actions=np.array([r[1] for r in rows], dtype=int),
        rewards=np.array([r[2] for r in rows]),
        propensities=np.array([r[3] for r in rows]),
        target=np.array([r[4] for r in rows]),
        agreed=np.array([r[5] for r in rows], dtype=bool),
    )


def _names(features: list[str]) -> list[str]:
    # The bias (always 1) is left out: reading a log adds it back.
    return [f"x{i}_{name}" for i, name in enumerate(features[1:], start=1)]


def _context_columns(contexts: list[Context], features: list[str]) -> dict[str, pl.Series]:
    """One column per feature, by name; null where a decision's layout had no such feature."""
    slots = {names: {name: i for i, name in enumerate(names)} for names, _ in contexts}
    columns = {}
    for column, name in zip(_names(features), features[1:], strict=True):
        values = []
        for names, x in contexts:
            slot = slots[names].get(name)
            values.append(None if slot is None else float(x[slot]))
        columns[column] = pl.Series(column, values, dtype=pl.Float64)
    return columns


async def read_layouts(
    nats_url: str, timeout: float = 5.0, auth: NatsAuth | None = None
) -> dict[str, tuple[str, ...]]:
    """The feature layouts registered by the instance's shards: names by layout id."""
    nc = await connect_nats(nats_url, auth, connect_timeout=timeout, max_reconnect_attempts=1)
    try:
        return await layouts_of(nc.jetstream())
    finally:
        await nc.close()


async def layouts_of(js: JetStreamContext) -> dict[str, tuple[str, ...]]:
    """:func:`read_layouts` over an open connection."""
    try:
        kv = await js.key_value(LEARN_BUCKET)
    except BucketNotFoundError:
        return {}  # no shard ever ran
    return await known_layouts(kv)


async def read_events_stream(
    nats_url: str, timeout: float = 5.0, auth: NatsAuth | None = None
) -> list[tuple[int, str, bytes]]:
    """Every message of the events stream, in order (an ordered consumer; nothing is acked)."""
    nc = await connect_nats(nats_url, auth, connect_timeout=timeout, max_reconnect_attempts=1)
    try:
        return await events_of(nc.jetstream(), timeout)
    finally:
        await nc.close()


async def events_of(js: JetStreamContext, timeout: float = 5.0) -> list[tuple[int, str, bytes]]:
    """:func:`read_events_stream` over an open connection."""
    info = await js.stream_info(EVENTS_STREAM)
    last, held = info.state.last_seq, info.state.messages
    out: list[tuple[int, str, bytes]] = []
    if not held:
        return out
    sub = await js.subscribe(f"{EVENTS_PREFIX}.>", ordered_consumer=True, stream=EVENTS_STREAM)
    try:
        while True:
            msg = await sub.next_msg(timeout=timeout)
            seq = msg.metadata.sequence.stream
            out.append((seq, msg.subject, msg.data))
            # Every message held then: the last sequence may be gone (an erasure deletes a
            # user's messages, the stream's last among them), so its count ends the read too.
            if seq >= last or len(out) >= held:
                return out
    finally:
        await sub.unsubscribe()


def evaluate_logged(
    name: str, frame: pl.DataFrame, catalog: Catalog, train_share: float = 0.5, seed: int = 0
) -> dict[str, Any]:
    """:func:`evaluate_policy` for every decision point of the instance's log with enough rows."""
    learner = Learner(catalog, Decider(catalog))
    report: dict[str, Any] = {"policy": name, "points": {}, "skipped": {}}
    for point in sorted(frame[POINT].unique().to_list()) if frame.height else []:
        rows = frame.filter(pl.col(POINT) == point)
        if rows.height < MIN_DECISIONS:
            report["skipped"][point] = f"{rows.height} logged decisions; {MIN_DECISIONS} are needed"
            continue
        log = frame_to_log(rows, "decisions log", learner.points.get(point), point)
        report["points"][point] = evaluate_policy(name, log, train_share=train_share, seed=seed)
    return report
