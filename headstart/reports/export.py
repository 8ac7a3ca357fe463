"""``headstart export --out DIR``: a star schema in Parquet for a warehouse (polars).

=========================  ==========================================================================
table                      rows
=========================  ==========================================================================
``user_profiles``          fact: one per user the shards hold now, keyed by ``user_key`` (the
                           pseudonymized id): first/last seen, sessions, events, engagement,
                           steps completed, activated, segments, cluster, consent
``dim_demographics``       one per user: role, company size, age band, and a column per trait
                           the catalog's ``schema:`` declares (never a name nor a ``pii: true``
                           trait: PII stays)
``dim_context``            one per user: device type, OS, locale, country, referrer, app
                           version, and a column per declared context field
``dim_custom_events``      one per user and custom event type the user sent: count, first and
                           last time
``dim_custom_values``      one per user, custom event type, ``count_by`` prop and value: count
``behaviour_daily``        one per user, UTC day and event type: events (from ``HS_EVENTS``),
                           custom types too
``segment_history``        one per segment enter/exit (from ``HS_SEGMENTS``)
``decisions``              one per decision point of a logged decision (``HS_DECISIONS``): arm,
                           propensity, policy; and the reward it earned under the engine's own
                           attribution rules (the events stream replayed, as ``evaluate`` does;
                           null while its window is open); with shadow mode, what the shadow
                           policy drew and its probability (null without one)
``exposures``              one per user and experiment: arm, when (``HS_EXPOSURES``)
=========================  ==========================================================================

Every table is written, empty ones too, so a load job never misses a file; the declared columns
are typed as declared (string, number: double, boolean), so they follow the catalog. ``--since`` and
``--until`` (ISO 8601 or epoch seconds) export the rows stored in that time range (profiles are
always the current ones), so a daily job exports each day once; ``_manifest.json`` records the
range and row counts. Parquet from polars loads into DuckDB (``read_parquet('DIR/*.parquet')``),
BigQuery (``bq load --source_format=PARQUET``), Snowflake (``COPY INTO ... FILE_FORMAT =
(TYPE = PARQUET)``) and Redshift (``COPY ... FORMAT AS PARQUET``).

>>> frame = behaviour_daily([(86400.5, "k1", "session_started"), (86401.0, "k1", "session_started")])
>>> frame.to_dicts()
[{'user_key': 'k1', 'day': datetime.date(1970, 1, 2), 'event_type': 'session_started', 'events': 2}]
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path
from typing import Any

import msgspec
import polars as pl
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.errors import BucketNotFoundError, NotFoundError

from engine.catalog import Catalog
from engine.errors import InvalidEvent
from engine.events import CONTEXT_FIELDS
from engine.experiments import exposure_decoder
from engine.learning import decision_decoder
from engine.schema import BUILTIN_SCHEMA, EventSchema
from engine.segments import batch_decoder
from headstart.adapters.broker import NatsAuth, connect_nats
from headstart.adapters.merge import known_layouts
from headstart.adapters.rpc import ProfilesRequest, ShardClient, ShardUnavailable, is_error
from headstart.adapters.topology import (
    DECISIONS_STREAM,
    EVENTS_STREAM,
    EXPOSURES_STREAM,
    LEARN_BUCKET,
    SEGMENTS_STREAM,
)

Progress = Callable[[str, int], None]
#: The traits exported (a name never is: PII stays in the engine).
DEMOGRAPHIC_FIELDS = ("role", "company_size", "age_band")

SCHEMAS: dict[str, dict[str, Any]] = {
    "user_profiles": {
        "user_key": pl.String,
        "first_seen": pl.Datetime("ms", "UTC"),
        "last_seen": pl.Datetime("ms", "UTC"),
        "sessions": pl.Int64,
        "avg_session_seconds": pl.Float64,
        "events_total": pl.Int64,
        "engagement": pl.Float64,
        "steps_completed": pl.List(pl.String),
        "activated": pl.Boolean,
        "segments": pl.List(pl.String),
        "cluster": pl.Int64,
        "consent_analytics": pl.Boolean,
        "consent_personalization": pl.Boolean,
    },
    "dim_demographics": {
        "user_key": pl.String,
        "role": pl.String,
        "company_size": pl.String,
        "age_band": pl.String,
    },
    "dim_context": {"user_key": pl.String, **dict.fromkeys(CONTEXT_FIELDS, pl.String)},
    "dim_custom_events": {
        "user_key": pl.String,
        "event_type": pl.String,
        "count": pl.Int64,
        "first_seen": pl.Datetime("ms", "UTC"),
        "last_seen": pl.Datetime("ms", "UTC"),
    },
    "dim_custom_values": {
        "user_key": pl.String,
        "event_type": pl.String,
        "prop": pl.String,
        "value": pl.String,
        "count": pl.Int64,
    },
    "behaviour_daily": {
        "user_key": pl.String,
        "day": pl.Date,
        "event_type": pl.String,
        "events": pl.Int64,
    },
    "segment_history": {
        "user_key": pl.String,
        "segment": pl.String,
        "change": pl.String,
        "ts": pl.Datetime("ms", "UTC"),
        "partition": pl.Int64,
    },
    "decisions": {
        "decision_id": pl.String,
        "user_key": pl.String,
        "ts": pl.Datetime("ms", "UTC"),
        "policy": pl.String,
        "policy_version": pl.Int64,
        "point": pl.String,
        "arm": pl.String,
        "propensity": pl.Float64,
        "eligible": pl.List(pl.String),
        "reward": pl.Float64,
        "shadow_policy": pl.String,
        "shadow_arm": pl.String,
        "shadow_propensity": pl.Float64,
    },
    "exposures": {
        "user_key": pl.String,
        "experiment": pl.String,
        "arm": pl.String,
        "ts": pl.Datetime("ms", "UTC"),
        "pre_engagement": pl.Float64,
    },
}


def parse_time(value: str | None) -> float | None:
    """Epoch seconds from ISO 8601 (a date alone is midnight UTC) or a number; None stays None."""
    if value is None:
        return None
    with contextlib.suppress(ValueError):
        return float(value)
    parsed = dt.datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return parsed.timestamp()


def _ms(ts: float) -> int:
    return int(ts * 1000)


#: How a declared field's type is exported.
DECLARED_DTYPES: dict[str, Any] = {"string": pl.String, "number": pl.Float64, "boolean": pl.Boolean}


def table_schemas(schema: EventSchema = BUILTIN_SCHEMA) -> dict[str, dict[str, Any]]:
    """Every table's columns and types: :data:`SCHEMAS`, with a column per trait (but PII) and
    context field ``schema`` (the catalog's) declares."""
    traits = [name for name in schema.traits if name not in schema.pii_traits]
    return {
        **SCHEMAS,
        "dim_demographics": {
            **SCHEMAS["dim_demographics"],
            **{name: DECLARED_DTYPES[schema.field_type(name) or "string"] for name in traits},
        },
        "dim_context": {
            **SCHEMAS["dim_context"],
            **{name: DECLARED_DTYPES[schema.field_type(name) or "string"] for name in schema.context},
        },
    }


def profile_tables(
    rows: list[dict[str, Any]], schema: EventSchema = BUILTIN_SCHEMA
) -> dict[str, pl.DataFrame]:
    """The fact table and the demographics, context and custom event dimensions from the
    shards' profiles (:func:`engine.queries.profiles_page`'s rows)."""
    schemas = table_schemas(schema)
    trait_columns = [c for c in schemas["dim_demographics"] if c != "user_key"]
    context_columns = [c for c in schemas["dim_context"] if c != "user_key"]
    fact, demographics, context, custom, values = [], [], [], [], []
    for row in rows:
        key, consent, traits = row["user_key"], row.get("consent") or {}, row.get("traits") or {}
        fact.append(
            {
                "user_key": key,
                "first_seen": _ms(row["first_seen"]),
                "last_seen": _ms(row["last_seen"]),
                "sessions": row["sessions"],
                "avg_session_seconds": row["avg_session_seconds"],
                "events_total": row["events_total"],
                "engagement": row["engagement"],
                "steps_completed": row["steps_completed"],
                "activated": row["activated"],
                "segments": row["segments"],
                "cluster": row.get("cluster"),
                "consent_analytics": consent.get("analytics"),
                "consent_personalization": consent.get("personalization"),
            }
        )
        demographics.append({"user_key": key, **{f: traits.get(f) for f in trait_columns}})
        context.append({"user_key": key, **{f: (row.get("context") or {}).get(f) for f in context_columns}})
        for event_type, entry in (row.get("custom_events") or {}).items():
            if "first_seen" in entry:  # a type only counted by value has no entry of its own
                custom.append(
                    {
                        "user_key": key,
                        "event_type": event_type,
                        "count": entry["count"],
                        "first_seen": _ms(entry["first_seen"]),
                        "last_seen": _ms(entry["last_seen"]),
                    }
                )
            for prop, counts in (entry.get("by") or {}).items():
                values += [
                    {"user_key": key, "event_type": event_type, "prop": prop, "value": value, "count": n}
                    for value, n in counts.items()
                ]
    return {
        "user_profiles": _timed_frame("user_profiles", fact),
        "dim_demographics": _timed_frame("dim_demographics", demographics, schemas),
        "dim_context": _timed_frame("dim_context", context, schemas),
        "dim_custom_events": _timed_frame("dim_custom_events", custom),
        "dim_custom_values": _timed_frame("dim_custom_values", values),
    }


def behaviour_daily(events: Iterable[tuple[float, str, str]]) -> pl.DataFrame:
    """Events per user, UTC day and type from (ts, user key, type)."""
    rows = list(events)
    if not rows:
        return pl.DataFrame(schema=SCHEMAS["behaviour_daily"])
    frame = pl.DataFrame(rows, schema=["ts", "user_key", "event_type"], orient="row")
    return (
        frame.with_columns(day=pl.from_epoch(pl.col("ts"), time_unit="s").dt.date())
        .group_by("user_key", "day", "event_type")
        .agg(events=pl.len().cast(pl.Int64))
        .sort("user_key", "day", "event_type")
        .select(list(SCHEMAS["behaviour_daily"]))
    )


async def _stream_messages(
    js: JetStreamContext, stream: str, since: float | None, until: float | None
) -> AsyncIterator[tuple[int, float, str, bytes]]:
    """(sequence, time stored, subject, payload) of the stream's messages stored in
    [since, until), in order (an ordered consumer starting at ``since``; nothing is acknowledged
    or changed)."""
    try:
        info = await js.stream_info(stream)
    except NotFoundError:
        return
    if not info.state.messages:
        return
    last = info.state.last_seq
    config = ConsumerConfig(deliver_policy=DeliverPolicy.ALL)
    if since is not None:
        start = dt.datetime.fromtimestamp(since, dt.UTC)
        config = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_TIME, opt_start_time=start)
    sub = await js.subscribe(">", stream=stream, ordered_consumer=True, config=config)
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=2.0)
            except TimeoutError:
                return  # nothing stored after ``since``
            meta = msg.metadata
            stored_at = meta.timestamp.timestamp()
            if until is not None and stored_at >= until:
                return
            yield meta.sequence.stream, stored_at, msg.subject, msg.data
            if meta.sequence.stream >= last:
                return
    finally:
        await sub.unsubscribe()


#: Profiles per request (a profile is ~0.4 KB of JSON: a page stays well within 1 MiB).
PAGE = 1000


async def _profiles(shards: ShardClient, partitions: int, progress: Progress) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for partition in range(partitions):
        after = ""
        while True:
            try:
                reply = await shards.call_raw_partition(
                    partition, ProfilesRequest(key="", after=after, limit=2000)
                )
            except ShardUnavailable as exc:
                raise RuntimeError(f"partition {partition}: no shard answered ({exc})") from exc
            if is_error(reply):
                raise RuntimeError(f"partition {partition}: {reply.decode()[:200]}")
            page = json.loads(reply)
            rows += page["rows"]
            if not page["more"] or not page["rows"]:
                break
            after = page["rows"][-1]["user_key"]
        progress("profiles", len(rows))
    return rows


async def collect(
    nats_url: str,
    partitions: int,
    catalog: Catalog,
    since: float | None = None,
    until: float | None = None,
    auth: NatsAuth | None = None,
    progress: Progress | None = None,
) -> dict[str, pl.DataFrame]:
    """Every table of the export, read from the running instance."""
    from headstart.reports.evaluate import replay_log

    report: Progress = progress or (lambda _stage, _n: None)
    nc = await connect_nats(nats_url, auth, connect_timeout=5, max_reconnect_attempts=1)
    try:
        js = nc.jetstream()
        shards = ShardClient(nc, partitions, timeout=30.0)
        schema = catalog.event_schema
        tables = profile_tables(await _profiles(shards, partitions, report), schema)

        # The events stream whole: the replay needs every message to attribute rewards; the
        # behaviour table counts the events stored in the range.
        everything: list[tuple[int, str, bytes]] = []
        in_range: list[tuple[float, str, str]] = []
        schema = catalog.event_schema  # the catalog's own types are behaviour too
        async for seq, stored_at, subject, data in _stream_messages(js, EVENTS_STREAM, None, until):
            everything.append((seq, subject, data))
            if len(everything) % 50_000 == 0:
                report("events", len(everything))
            tail = subject.rsplit(".", 1)[1]
            if "-" in tail or (since is not None and stored_at < since):
                continue  # a record of the learning loop, or stored before the range
            with contextlib.suppress(InvalidEvent):  # a custom type since removed from the catalog
                event = schema.decode(data)
                in_range.append((float(event.ts), tail, event.type_name))
        report("events", len(everything))
        tables["behaviour_daily"] = behaviour_daily(in_range)

        try:
            layouts = await known_layouts(await js.key_value(LEARN_BUCKET))
        except BucketNotFoundError:
            layouts = {}
        rewards = replay_log(everything, catalog, layouts).rewards
        decisions = []
        async for *_, data in _stream_messages(js, DECISIONS_STREAM, since, until):
            with contextlib.suppress(msgspec.DecodeError):
                record = decision_decoder.decode(data)
                for choice in record.choices:
                    decisions.append(
                        {
                            "decision_id": record.decision_id,
                            "user_key": record.user_id,
                            "ts": _ms(record.ts),
                            "policy": record.policy,
                            "policy_version": record.policy_version,
                            "point": choice.point,
                            "arm": choice.arm,
                            "propensity": choice.propensity,
                            "eligible": choice.eligible,
                            "reward": rewards.get((record.decision_id, choice.point)),
                            "shadow_policy": record.shadow_policy,
                            "shadow_arm": choice.shadow_arm,
                            "shadow_propensity": choice.shadow_propensity,
                        }
                    )
        report("decisions", len(decisions))
        tables["decisions"] = _timed_frame("decisions", decisions)

        changes = []
        async for *_, data in _stream_messages(js, SEGMENTS_STREAM, since, until):
            with contextlib.suppress(msgspec.DecodeError):
                for change in batch_decoder.decode(data):
                    changes.append(
                        {
                            "user_key": change.user_id,
                            "segment": change.segment,
                            "change": change.change,
                            "ts": _ms(change.ts),
                            "partition": change.partition,
                        }
                    )
        report("segment changes", len(changes))
        tables["segment_history"] = _timed_frame("segment_history", changes)

        exposures = []
        async for *_, data in _stream_messages(js, EXPOSURES_STREAM, since, until):
            with contextlib.suppress(msgspec.DecodeError):
                exposure = exposure_decoder.decode(data)
                exposures.append(
                    {
                        "user_key": exposure.user_id,
                        "experiment": exposure.experiment,
                        "arm": exposure.arm,
                        "ts": _ms(exposure.ts),
                        "pre_engagement": exposure.pre,
                    }
                )
        report("exposures", len(exposures))
        tables["exposures"] = _timed_frame("exposures", exposures)
        return tables
    finally:
        await nc.close()


def _timed_frame(
    table: str, rows: list[dict[str, Any]], schemas: dict[str, dict[str, Any]] = SCHEMAS
) -> pl.DataFrame:
    schema = schemas[table]
    if not rows:
        return pl.DataFrame(schema=schema)
    plain = {c: (pl.Int64 if t == pl.Datetime("ms", "UTC") else t) for c, t in schema.items()}
    frame = pl.DataFrame(rows, schema=plain)
    timed = [c for c, t in schema.items() if t == pl.Datetime("ms", "UTC")]
    return frame.with_columns(
        [pl.from_epoch(pl.col(c), time_unit="ms").dt.replace_time_zone("UTC").cast(schema[c]) for c in timed]
    )


def write(
    tables: dict[str, pl.DataFrame],
    out: Path,
    since: float | None,
    until: float | None,
    schemas: dict[str, dict[str, Any]] = SCHEMAS,
) -> dict[str, int]:
    """Write every table of ``schemas`` (:func:`table_schemas`; empty ones too) as
    ``<table>.parquet`` and ``_manifest.json``."""
    out.mkdir(parents=True, exist_ok=True)
    counts = {}
    for table, schema in schemas.items():
        frame = tables.get(table, pl.DataFrame(schema=schema))
        frame.write_parquet(out / f"{table}.parquet")
        counts[table] = frame.height
    manifest = {
        "exported_at": dt.datetime.now(dt.UTC).isoformat(),
        "since": since,
        "until": until,
        "rows": counts,
        "tables": {t: {c: str(ty) for c, ty in s.items()} for t, s in schemas.items()},
    }
    (out / "_manifest.json").write_text(json.dumps(manifest, indent=2))
    return counts


def export(
    nats_url: str,
    partitions: int,
    catalog: Catalog,
    out: Path,
    since: float | None = None,
    until: float | None = None,
    auth: NatsAuth | None = None,
    progress: Progress | None = None,
) -> dict[str, int]:
    tables = asyncio.run(collect(nats_url, partitions, catalog, since, until, auth, progress))
    return write(tables, out, since, until, table_schemas(catalog.event_schema))
