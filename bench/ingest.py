"""``headstart bench ingest``: how fast shards drain the event stream, exactly once.

1. Publish N events (default 200,000 for 20,000 users, the population mix) into HS_EVENTS,
   plus retried publishes of 1% of them (same event id: the stream must drop them) and a few
   malformed messages (they must reach the dead-letter stream).
2. Start 1 shard, then (fresh) 2 shards, and time the drain: decode, validate, state update,
   ack, end to end inside the shard actors.
3. After each drain read every user's state back from the shards and compare event counts by
   type with what was published: ``lost`` and ``duplicated``.
4. Segmentation: the 2-shard drain again with 20 rule segments and the behavioural clusters
   tracked live (:data:`SEGMENT_RULES`), against the plain drains (no live membership) of the
   same run: ``events_per_s_with_segments`` and ``segmentation_cost``.
5. A product's own schema: the plain 2-shard drain again, with :data:`CUSTOM_SCHEMA` laid over
   the catalog (10 custom event types, 5 traits, 2 context fields, 3 policy features) and, from
   a second broker, as many events, half of them of the custom types
   (:func:`bench.population.custom_schema_events`): ``events_per_s_custom_schema`` and
   ``custom_schema_ratio`` (against the plain drain next to it).
6. Memory: the same engine code applies events for 100,000 users in this process under
   tracemalloc; ``bytes_per_user`` is the retained state divided by users, with the learning
   loop's state as a shard holds it (the feature recommender's queue fully learned);
   ``bytes_per_user_state_only`` without it; ``bytes_per_user_custom_schema`` the same with the
   custom schema and its events (users with custom counts, traits and context).
7. In this process, the drains' events applied with and without the segments, and the custom
   schema's: the shard's own CPU per event (``apply_us_per_event``, ``..._with_segments``,
   ``segments_us_per_event``, ``..._custom_schema``), steadier than drains on a shared machine;
   and the plain events as batches (``apply_us_per_event_batched``).
8. Batched messages: the plain 2-shard drain again, from a third broker whose stream holds
   messages of :data:`EVENTS_PER_MESSAGE` events of one user each (the same users, twice as
   many events: a user's events in time order, in tens; the few left over of each user are not
   published, so about as many events as the other drains'), plus
   retries of 1% of the messages as they were (the stream must drop them) and of 0.5% regrouped
   in two halves (stored: the shards must skip those events, :mod:`engine.recent`), and the
   malformed messages: ``events_per_s_batched``, counted per event, with ``lost`` and
   ``duplicated`` per event as for the others, and ``batched_ratio`` (against the plain drain
   of the same repetition).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
import gc
import statistics
import time
import tracemalloc
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import nats
import yaml
from nats.js.errors import NotFoundError

from bench.common import cpu_seconds, embedded_broker, local_ray, write_result
from bench.population import custom_schema_events, onboarding_events
from bench.traffic import lost_and_duplicated, read_back
from engine.batches import join_encoded
from engine.catalog import DEFAULT_CATALOG, Catalog, CatalogError, check_catalog_text, load_catalog
from engine.clusters import ClusterAssigner, ClusterModel, behaviour
from engine.decision import Decider
from engine.events import encode_event
from engine.keys import Pseudonymizer, partition_of
from engine.learning import Learner
from engine.partition import PartitionSetup
from engine.schema import BUILTIN_SCHEMA, EventSchema
from engine.segments import SegmentIndex
from engine.shard import ShardState
from headstart.adapters.broker import EmbeddedNats
from headstart.adapters.provision import ensure_streams
from headstart.adapters.streams import Prepared, batch_messages, publish_prepared
from headstart.adapters.topology import DLQ_STREAM, SNAPSHOT_BUCKET, ingest_subject
from headstart.settings import Settings

SECRET = b"bench-secret-not-for-production-use"
PARTITIONS = 64
RETRY_SHARE = 0.01
#: Drains per shard count; the median is reported (the machine is shared and noisy).
REPETITIONS = 5
MALFORMED = 10
#: Events of one user per message in the batched drain (issue 25's figure).
EVENTS_PER_MESSAGE = 10
#: Batched messages published again regrouped in two halves (new messages to JetStream).
REGROUPED_SHARE = 0.005
#: The batched drain's population (the same users as the others, events of their own).
BATCHED_SEED = 8

Expected = dict[str, collections.Counter[str]]
#: A stream message as a shard receives it: (partition, user key, payload).
Message = tuple[int, str, bytes]

#: What the custom-schema drain's product declares beyond the default catalog: its ``schema:``
#: section and ``learning.features`` (:func:`custom_schema_catalog` lays them over a catalog).
CUSTOM_SCHEMA = Path(__file__).resolve().parent / "catalogs" / "custom_schema.yaml"

#: Twenty segments a product team might define, reading every kind of field: counts, windows,
#: engagement, inactivity, context, traits, features, steps and the cluster.
SEGMENT_RULES = {
    "mobile_newcomer": 'session_count < 3 and device_type == "mobile"',
    "dach": 'country in ("DE", "AT", "CH")',
    "hot_now": 'events_5m >= 10 or feature_count("export") > 0',
    "power": "engagement >= 20 and features_5m >= 3",
    "dormant_3d": "days_inactive >= 3",
    "stalled": "steps_completed < 2 and days_since_first_seen >= 1",
    "tutorial_fan": "tutorials_completed >= 2",
    "exporter": 'feature_count("export") >= 3',
    "collaborator": 'feature_count("share") > 0 and feature_count("comments") > 0',
    "profile_done": 'completed("profile")',
    "ios": 'os == "ios"',
    "from_search": 'referrer in ("google", "bing")',
    "technical": 'role in ("engineer", "analyst")',
    "large_company": 'company_size in ("201-1000", "1000+")',
    "young": 'age_band == "18-24"',
    "fr_desktop": 'locale == "fr-FR" and device_type == "desktop"',
    "regular": "session_count >= 5 and days_inactive < 1",
    "busy_first_day": "days_since_first_seen < 1 and events_total >= 20",
    "cluster_2_mobile": 'cluster == 2 and device_type == "mobile"',
    "engaged_no_progress": "engagement >= 8 and steps_completed <= 1",
}


def bench_catalogs() -> dict[str, Catalog]:
    """The plain catalog (no live membership) and the one with segments and clusters."""
    default = load_catalog(DEFAULT_CATALOG)
    plain = default.model_copy(
        update={
            "membership": default.membership.model_copy(update={"track": False}),
            "clusters": default.clusters.model_copy(update={"enabled": False}),
        }
    )
    segments = [{"id": name, "rule": rule} for name, rule in SEGMENT_RULES.items()]
    data = default.model_dump()
    # Simulated time: sweeps go by the events' clock, not today's. Otherwise the defaults: a
    # sweep costs per user, not per event, and is measured on its own (`sweep_us_per_user`).
    # Clusters: a model as soon as one can be trained, so the drain assigns users with it.
    data.update(segments=segments, membership={"track": True, "clock": "event"})
    data["clusters"] = {**data["clusters"], "enabled": True, "publish_interval_s": 1.0}
    return {
        "plain": plain,
        "segments": Catalog.model_validate(data),
        "custom_schema": custom_schema_catalog(plain),
    }


def custom_schema_catalog(base: Catalog) -> Catalog:
    """``base`` with the ``schema:`` section and ``learning.features`` of :data:`CUSTOM_SCHEMA`,
    checked as ``headstart check-config`` checks a file (:class:`CatalogError` if not valid)."""
    overlay = yaml.safe_load(CUSTOM_SCHEMA.read_text())
    data = base.model_dump(mode="json", by_alias=True)
    data["schema"] = overlay["schema"]
    data["learning"] = {**data["learning"], **overlay["learning"]}
    errors = check_catalog_text(yaml.safe_dump(data, sort_keys=False), str(CUSTOM_SCHEMA))
    if errors:
        raise CatalogError(errors)
    return Catalog.model_validate(data)


def run(quick: bool = False, out_dir: Path | None = None) -> Path:
    started = dt.datetime.now(dt.UTC)
    n_events, n_users = (20_000, 2_000) if quick else (200_000, 20_000)
    mem_users = 10_000 if quick else 100_000
    pseudonymizer = Pseudonymizer(SECRET)
    metrics: dict[str, Any] = {}
    reps = 1 if quick else REPETITIONS
    catalogs = bench_catalogs()
    custom_schema = EventSchema(catalogs["custom_schema"].schema_)
    # The custom-schema drain reads its own stream, from a broker of its own (stream names are
    # fixed), idle while the others drain.
    with embedded_broker() as broker, embedded_broker() as custom_broker, embedded_broker() as batch_broker:
        url = broker.url
        default_events = list(onboarding_events(users=n_users, events=n_events))
        expected, publish_s = asyncio.run(_publish(url, pseudonymizer, default_events, BUILTIN_SCHEMA))
        # Twice the events of the same users: about three in four are in a full ten, as many
        # as the plain drain's in all.
        batched_events = onboarding_events(users=n_users, events=2 * n_events, seed=BATCHED_SEED)
        expected_batched, batched = asyncio.run(
            _publish_batched(batch_broker.url, pseudonymizer, batched_events)
        )
        custom_events = list(custom_schema_events(users=n_users, events=n_events))
        expected_custom, _ = asyncio.run(
            _publish(custom_broker.url, pseudonymizer, custom_events, custom_schema)
        )
        del default_events, custom_events
        metrics["publish_events_per_s"] = n_events / publish_s
        runs: dict[int | str, list[dict[str, Any]]] = {
            1: [],
            2: [],
            "2_segments": [],
            "2_custom_schema": [],
            "2_batched": [],
        }
        with local_ray(num_cpus=2):
            for rep in range(reps):
                runs[1].append(_drain(broker, 1, expected, n_events, catalogs["plain"]))
                # The drains compared, in alternating order: a machine speeding up or slowing
                # down over a repetition favours none.
                drains: list[tuple[int | str, EmbeddedNats, Expected, str]] = [
                    (2, broker, expected, "plain"),
                    ("2_segments", broker, expected, "segments"),
                    ("2_custom_schema", custom_broker, expected_custom, "custom_schema"),
                ]
                for name, source, counts, catalog in drains if rep % 2 == 0 else drains[::-1]:
                    runs[name].append(_drain(source, 2, counts, n_events, catalogs[catalog]))
                runs["2_batched"].append(
                    _drain(
                        batch_broker,
                        2,
                        expected_batched,
                        batched["events"],
                        catalogs["plain"],
                        messages=batched["messages"],
                    )
                )
        metrics["dead_letters"] = asyncio.run(_dead_letters(url))
        metrics["dead_letters_custom_schema"] = asyncio.run(_dead_letters(custom_broker.url))
        metrics["dead_letters_batched"] = asyncio.run(_dead_letters(batch_broker.url))
    rate = {k: statistics.median(r["events_per_s"] for r in v) for k, v in runs.items()}
    metrics["events_per_s"] = rate[2]
    metrics["events_per_s_1_shard"] = rate[1]
    metrics["scaling_2_vs_1"] = rate[2] / rate[1]
    metrics["events_per_s_with_segments"] = rate["2_segments"]
    # Per repetition, each against the plain 2-shard drain of that repetition (same noise).
    costs = [
        1 - s["events_per_s"] / p["events_per_s"] for p, s in zip(runs[2], runs["2_segments"], strict=True)
    ]
    metrics["segmentation_cost"] = statistics.median(costs)
    metrics["segment_rules"] = len(SEGMENT_RULES)
    metrics["events_per_s_custom_schema"] = rate["2_custom_schema"]
    metrics["custom_schema_ratio"] = statistics.median(
        c["events_per_s"] / p["events_per_s"] for p, c in zip(runs[2], runs["2_custom_schema"], strict=True)
    )
    metrics["events_per_s_batched"] = rate["2_batched"]
    metrics["batched_ratio"] = statistics.median(
        b["events_per_s"] / p["events_per_s"] for p, b in zip(runs[2], runs["2_batched"], strict=True)
    )
    all_runs = [r for v in runs.values() for r in v]
    metrics["lost"] = sum(r["lost"] for r in all_runs)
    metrics["duplicated"] = sum(r["duplicated"] for r in all_runs)
    metrics["runs"] = {str(k): v for k, v in runs.items()}
    metrics.update(_apply_cost(pseudonymizer, n_events, n_users))
    metrics.update(_memory(pseudonymizer, mem_users))
    params = {
        "events": n_events,
        "users": n_users,
        "partitions": PARTITIONS,
        "retried_publishes": int(n_events * RETRY_SHARE),
        "malformed": MALFORMED,
        "memory_users": mem_users,
        "repetitions": reps,
        "statistic": "median over repetitions",
        "custom_schema": str(CUSTOM_SCHEMA.relative_to(CUSTOM_SCHEMA.parents[2])),
        "custom_schema_share": 0.5,
        "batched_events": batched["events"],
        "batched_events_per_message": EVENTS_PER_MESSAGE,
        "batched_messages": batched["messages"],
        "batched_retried_messages": batched["retried"],
        "batched_regrouped_messages": batched["regrouped"],
        "quick": quick,
    }
    return write_result("ingest", params, metrics, out_dir=out_dir, started_at=started)


def _prepare(
    schema: EventSchema, pseudonymizer: Pseudonymizer, event: dict[str, Any]
) -> tuple[str, bytes, dict[str, str]]:
    """(subject, payload, headers) of one event, validated by ``schema``: what
    :meth:`~headstart.adapters.streams.EventPublisher.prepare` makes, for any schema."""
    typed = schema.from_object({**event, "user_id": pseudonymizer.key(event["user_id"])})
    return ingest_subject(typed.user_id), encode_event(typed), {"Nats-Msg-Id": typed.event_id}


async def _publish(
    url: str, pseudonymizer: Pseudonymizer, events: list[dict[str, Any]], schema: EventSchema
) -> tuple[Expected, float]:
    nc = await nats.connect(url)
    js = nc.jetstream()
    await ensure_streams(js, PARTITIONS)
    expected: Expected = collections.defaultdict(collections.Counter)
    prepared = []
    for event in events:
        subject, payload, headers = _prepare(schema, pseudonymizer, event)
        prepared.append((subject, payload, headers))
        expected[subject.rsplit(".", 1)[1]][event["type"]] += 1
    # Retries: the same event ids again. JetStream's duplicate window must drop every one.
    retries = prepared[:: int(1 / RETRY_SHARE)]
    t0 = time.perf_counter()
    acks = await publish_prepared(js, prepared)
    publish_s = time.perf_counter() - t0
    retry_acks = await publish_prepared(js, retries)
    assert all(ack.duplicate for ack in retry_acks), "retried publishes were stored twice"
    assert not any(ack.duplicate for ack in acks)
    for i in range(MALFORMED):
        await nc.publish(ingest_subject(pseudonymizer.key(f"bad-{i}")), b"\x92\x01not-an-event")
    await nc.flush()
    await nc.close()
    return expected, publish_s


async def _publish_batched(
    url: str, pseudonymizer: Pseudonymizer, events: Iterable[dict[str, Any]]
) -> tuple[Expected, dict[str, int]]:
    """``events`` as messages of :data:`EVENTS_PER_MESSAGE` events of one user: a user's events
    in time order, a message as soon as ten are there (a user's last few that do not fill one
    are left out); then retries (see the module docstring) and the malformed messages. Returns
    the expected counts and the numbers of events and of messages a drain handles."""
    expected: Expected = collections.defaultdict(collections.Counter)
    messages: list[Prepared] = []
    pending: dict[str, list[tuple[Prepared, str]]] = collections.defaultdict(list)
    every = int(1 / REGROUPED_SHARE)
    full = regrouped = 0
    for event in events:
        single = _prepare(BUILTIN_SCHEMA, pseudonymizer, event)
        mine = pending[single[0]]
        mine.append((single, event["type"]))
        if len(mine) < EVENTS_PER_MESSAGE:
            continue
        chunk = [prepared for prepared, _ in mine]
        messages += batch_messages(chunk, EVENTS_PER_MESSAGE)[0]
        for prepared, kind in mine:
            expected[prepared[0].rsplit(".", 1)[1]][kind] += 1
        mine.clear()
        full += 1
        if full % every == 1:
            # Right after it (as a producer's retry would come): well inside the user's window.
            half = len(chunk) // 2
            for part in (chunk[:half], chunk[half:]):
                messages += batch_messages(part)[0]
                regrouped += 1
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        await ensure_streams(js, PARTITIONS)
        acks = await publish_prepared(js, messages)
        assert not any(ack.duplicate for ack in acks)
        retried = messages[:: int(1 / RETRY_SHARE)]
        assert all(ack.duplicate for ack in await publish_prepared(js, retried)), (
            "a retried batch was stored twice"
        )
        for i in range(MALFORMED):
            await nc.publish(ingest_subject(pseudonymizer.key(f"bad-{i}")), b"\x92\x01not-an-event")
        await nc.flush()
    finally:
        await nc.close()
    counts = {
        "events": full * EVENTS_PER_MESSAGE,
        "messages": len(messages),
        "retried": len(retried),
        "regrouped": regrouped,
    }
    return expected, counts


def _drain(
    broker: EmbeddedNats,
    shards: int,
    expected: Expected,
    n_events: int,
    catalog: Catalog,
    messages: int | None = None,
) -> dict[str, Any]:
    """Time ``shards`` shards draining ``n_events`` events (in ``messages`` messages: one
    each by default; the malformed ones come on top)."""

    from actors.cluster import ShardGroup

    url = broker.url
    settings = Settings(partitions=PARTITIONS, shards=shards, shard_num_cpus=0.5, nats_url=url)
    # Every drain is a cold start: no snapshot of an earlier run (shards checkpoint on stop).
    asyncio.run(_drop_snapshots(url))
    broker_pid = [broker.pid] if broker.pid else []
    cpu_broker = cpu_seconds(broker_pid)  # the broker is idle until the shards start pulling
    t0 = time.time()
    group = ShardGroup(settings, url, catalog=catalog).start()
    try:
        group.wait_ready()
        target = (n_events if messages is None else messages) + MALFORMED
        deadline = time.monotonic() + 600
        # (wall time, messages handled, events applied): the rate over time
        series: list[tuple[float, int, int]] = []
        while time.monotonic() < deadline:
            stats = group.stats()
            handled = sum(s.handled for s in stats)
            series.append((time.time(), handled, sum(s.applied for s in stats)))
            if handled >= target:
                break
            time.sleep(0.05)
        else:
            raise TimeoutError("drain did not finish in 600 s")
        # With live segments, the drain ends when the last change it made is published too.
        while any(s.segments.queued for s in stats) and time.monotonic() < deadline:
            time.sleep(0.05)
            stats = group.stats()
        total_s = time.time() - t0
        cpu_broker = cpu_seconds(broker_pid) - cpu_broker
        # Each shard's own process CPU between its first handled event and its last ack.
        cpu_shards = sum(s.last_handled_cpu - s.first_handled_cpu for s in stats if s.handled)
        first = min(s.first_handled_at for s in stats if s.handled)
        last_handled = max(s.last_handled_at for s in stats)
        last = max(last_handled, *(s.segments.last_published_at for s in stats))
        lost, duplicated = lost_and_duplicated(expected, read_back(group, list(expected)))
        applied = sum(s.applied for s in stats)
        membership = [s.segments for s in stats]
        return {
            "segment_changes": sum(sum(e + x for e, x in m.changes.values()) for m in membership),
            "segment_changes_published": sum(m.published for m in membership),
            "events_per_s": n_events / (last - first),
            "drain_s": last - first,
            # From the last event handled to the last segment change stored (in drain_s).
            "publish_tail_s": last - last_handled,
            "total_s_including_startup": total_s,
            "applied": applied,
            "handled": sum(s.handled for s in stats),
            "lost": lost,
            "duplicated": duplicated,
            "consumer_restarts": sum(s.restarts for s in stats),
            "per_shard_handled": [s.handled for s in stats],
            "series": {
                "seconds": [round(t - first, 3) for t, n, _ in series if n],
                "handled": [n for _, n, _ in series if n],
                "applied": [a for _, n, a in series if n],
            },
            # Where the time goes: CPU seconds of the shard processes and of nats-server over
            # the drain (2 cores = 2 CPU-seconds per wall second at most).
            "cpu_s_shards": cpu_shards,
            "cpu_s_broker": cpu_broker,
            "shard_cpu_us_per_event": cpu_shards / n_events * 1e6,
            "broker_cpu_us_per_event": cpu_broker / n_events * 1e6,
        }
    finally:
        group.stop()
        time.sleep(0.5)


async def _drop_snapshots(url: str) -> None:
    nc = await nats.connect(url)
    try:
        with contextlib.suppress(NotFoundError):
            await nc.jetstream().delete_object_store(SNAPSHOT_BUCKET)
    finally:
        await nc.close()


async def _dead_letters(url: str) -> int:
    nc = await nats.connect(url)
    try:
        return int((await nc.jetstream().stream_info(DLQ_STREAM)).state.messages)
    finally:
        await nc.close()


def _messages(
    pseudonymizer: Pseudonymizer, events: Iterable[dict[str, Any]], schema: EventSchema = BUILTIN_SCHEMA
) -> list[Message]:
    """``events`` as a shard receives them."""
    messages = []
    for event in events:
        subject, payload, _ = _prepare(schema, pseudonymizer, event)
        key = subject.rsplit(".", 1)[1]
        messages.append((partition_of(key, PARTITIONS), key, payload))
    return messages


def _memory(pseudonymizer: Pseudonymizer, users: int) -> dict[str, Any]:
    """Retained bytes of shard state per user, by tracemalloc, on ``users`` users."""
    messages = _messages(pseudonymizer, onboarding_events(users, users * 10, seed=11))
    catalog = load_catalog(DEFAULT_CATALOG)
    out: dict[str, Any] = {"memory_users": 0, "memory_events_per_user": 10}
    # As a shard holds it (with the learning loop's state: open decisions, contributions, the
    # River models with every queued adoption learned), and the user state alone.
    for name, learner, index in (
        ("bytes_per_user", Learner(catalog, Decider(catalog)), SegmentIndex(catalog)),
        ("bytes_per_user_state_only", None, None),
    ):
        out[name], out["memory_users"] = _retained(messages, PartitionSetup(learner, index))
    out.update(_sweep_cost(messages))
    del messages
    # The same, as a shard of a product with its own schema holds it: half the events custom,
    # users with custom counts, counts by value, traits (one PII) and context fields.
    custom = custom_schema_catalog(catalog)
    schema = EventSchema(custom.schema_)
    messages = _messages(pseudonymizer, custom_schema_events(users, users * 10, seed=11), schema)
    setup = PartitionSetup(Learner(custom, Decider(custom)), SegmentIndex(custom), schema=schema)
    out["bytes_per_user_custom_schema"], _ = _retained(messages, setup)
    return out


def _retained(messages: list[Message], setup: PartitionSetup) -> tuple[float, int]:
    """Bytes per user a shard state retains once it applied ``messages``, and its users."""
    gc.collect()
    tracemalloc.start()
    before, _ = tracemalloc.get_traced_memory()
    state = ShardState.build(dict.fromkeys(range(PARTITIONS)), setup)
    for seq, (partition, key, payload) in enumerate(messages, 1):
        state.apply(seq, partition, key, payload)
    for part in state.partitions.values():
        if part.learning is not None:
            part.learning.recommender.train(len(messages))
        if part.segments is not None:
            part.segments.take(10**9)  # published within ~2 s by a shard
    gc.collect()
    after, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return (after - before) / state.users, state.users


def _sweep_cost(messages: list[tuple[int, str, bytes]]) -> dict[str, Any]:
    """Sweeps of every user's time-based segments with the 20 rules, 1, 2 and 3 days after the
    last event (the first also assigning clusters with a new model): CPU per user, the median
    of 3 (a sweep costs per user, every ``membership.sweep_interval_s``, 60 s by default)."""
    catalog = bench_catalogs()["segments"]
    index = SegmentIndex(catalog)
    state = ShardState.build(dict.fromkeys(range(PARTITIONS)), PartitionSetup(segment_index=index))
    for seq, (partition, key, payload) in enumerate(messages, 1):
        state.apply(seq, partition, key, payload)
    index.assigner = _served_clusters(state, catalog)
    timings = []
    for day in range(1, 4):
        started = time.process_time()
        for part in state.partitions.values():
            # As in a shard: clusters assigned again only in the first sweep after a new model.
            part.sweep_segments(part.watermark + day * 86400, list(part.users), reassign=day == 1)
        timings.append((time.process_time() - started) / state.users * 1e6)
    return {"sweep_us_per_user": statistics.median(timings)}


def _served_clusters(state: ShardState, catalog: Catalog) -> ClusterAssigner:
    """A cluster model learned from 10 users of each partition, as shards would serve it."""
    model = ClusterModel(catalog.clusters.k, catalog.clusters.halflife, catalog.clusters.seed)
    for part in state.partitions.values():
        for user in list(part.users.values())[:10]:
            model.learn(behaviour(user, part.watermark))
    return ClusterAssigner.from_export(model.export())


def _apply_cost(pseudonymizer: Pseudonymizer, n_events: int, n_users: int) -> dict[str, Any]:
    """A shard's own work per event in this process, without broker, Ray or acks: the drains'
    events applied with no live membership, then with the 20 segments and clusters (a served
    model; the changes taken for publishing every 2,000 events, as a publisher would), then the
    custom-schema drain's events with its schema (no live membership): CPU per event, the
    fastest of 3 each, alternated. Steadier than the drains on a shared machine; a shard also
    spends CPU on fetching, acknowledging and checkpointing, the same either way."""
    messages = _messages(pseudonymizer, onboarding_events(users=n_users, events=n_events))
    catalogs = bench_catalogs()
    schema = EventSchema(catalogs["custom_schema"].schema_)
    custom_messages = _messages(pseudonymizer, custom_schema_events(users=n_users, events=n_events), schema)
    warm = ShardState.build(
        dict.fromkeys(range(PARTITIONS)), PartitionSetup(segment_index=SegmentIndex(catalogs["segments"]))
    )
    for seq, (partition, key, payload) in enumerate(messages[: n_events // 4], 1):
        warm.apply(seq, partition, key, payload)
    assigner = _served_clusters(warm, catalogs["segments"])
    del warm
    batched, batched_events = _batched_messages(messages)
    timings: dict[str, list[float]] = {"plain": [], "segments": [], "custom_schema": [], "batched": []}
    for _ in range(3):
        for name, times in timings.items():
            index = SegmentIndex(catalogs[name]) if name == "segments" else None
            if index is not None:
                index.assigner = assigner
            setup = PartitionSetup(segment_index=index)
            applied = messages
            if name == "custom_schema":
                setup, applied = PartitionSetup(schema=schema), custom_messages
            elif name == "batched":
                applied = batched
            state = ShardState.build(dict.fromkeys(range(PARTITIONS)), setup)
            segments = [p.segments for p in state.partitions.values() if p.segments is not None]
            gc.collect()
            started = time.process_time()
            for seq, (partition, key, payload) in enumerate(applied, 1):
                state.apply(seq, partition, key, payload)
                if seq % 2000 == 0:
                    for queue in segments:
                        queue.take(1_000_000)
            for queue in segments:
                queue.take(1_000_000)
            events = batched_events if name == "batched" else len(applied)
            times.append((time.process_time() - started) / events * 1e6)
            del state, segments
    plain, with_segments = min(timings["plain"]), min(timings["segments"])
    custom = min(timings["custom_schema"])
    return {
        "apply_us_per_event": plain,
        "apply_us_per_event_with_segments": with_segments,
        "segments_us_per_event": with_segments - plain,
        "apply_us_per_event_custom_schema": custom,
        "custom_schema_apply_ratio": plain / custom,
        "apply_us_per_event_batched": min(timings["batched"]),
    }


def _batched_messages(messages: list[Message]) -> tuple[list[Message], int]:
    """``messages`` as the batched drain's: each user's in tens, in time order (the rest left
    out), ordered by their last events; and how many events they hold."""
    by_user: dict[str, list[int]] = collections.defaultdict(list)
    for i, (_, key, _) in enumerate(messages):
        by_user[key].append(i)
    chunks = []
    for indexes in by_user.values():
        full = len(indexes) - len(indexes) % EVENTS_PER_MESSAGE
        chunks += [indexes[s : s + EVENTS_PER_MESSAGE] for s in range(0, full, EVENTS_PER_MESSAGE)]
    chunks.sort(key=lambda chunk: chunk[-1])
    out = [(messages[c[0]][0], messages[c[0]][1], join_encoded([messages[i][2] for i in c])) for c in chunks]
    return out, len(chunks) * EVENTS_PER_MESSAGE
