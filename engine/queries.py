"""Shard-wide queries: reports over every user of the partitions a shard consumes.

Each is a function of the partitions (and the shard's decider or learner), answering a typed
Struct that is sent as JSON. The long ones are coroutines that give the event loop a turn every
:data:`YIELD_EVERY` users, so a shard keeps applying events while it reports.

>>> import asyncio
>>> from engine.catalog import DEFAULT_CATALOG, load_catalog
>>> from engine.decision import Decider
>>> from engine.events import encode_event
>>> from engine.learning import Learner
>>> from engine.partition import PartitionState
>>> catalog = load_catalog(DEFAULT_CATALOG)
>>> decider = Decider(catalog)
>>> part = PartitionState(0)
>>> event = {"event_id": "e", "user_id": "k", "type": "session_started", "ts": 5}
>>> part.apply_message(1, "k", encode_event(event))
>>> sizes = asyncio.run(segment_sizes({0: part}, decider, Learner(catalog, decider), now=5.0, shard=0))
>>> sizes.users, sizes.segments["new_user"].size
(1, 1)
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Mapping
from typing import Any

import msgspec

from engine.decision import Decider
from engine.experiments import ExperimentPlan, ExposedUser, Moments, cumulative_moments
from engine.learning import Learner
from engine.partition import PartitionState
from engine.profile import UserState
from engine.rules import FIELDS, EventCount, RuleReads, declared_fields, rule_input
from engine.schema import BUILTIN_SCHEMA
from engine.segments import user_segments

#: Users a report walks between two turns given to the event loop (each user costs a few µs:
#: events wait at most a few tens of ms behind a report).
YIELD_EVERY = 5000
#: Profiles per page at most (a page stays well under NATS's 1 MiB message limit).
MAX_PAGE = 5000

Partitions = Mapping[int, PartitionState]


class SegmentSize(msgspec.Struct):
    """A segment's members, their summed engagement, and how many activated."""

    size: int = 0
    engagement_sum: float = 0.0
    activated: int = 0


class SegmentSizes(msgspec.Struct):
    """Per segment over a shard's users, with the entries and exits counted since tracking
    began (``tracked_from``/``tracked_to``: None when no change was counted)."""

    shard: int
    users: int
    segments: dict[str, SegmentSize]
    changes: dict[str, list[int]]
    tracked_from: float | None
    tracked_to: float | None


class TutorialStats(msgspec.Struct):
    """Rows of (tutorial, variant, segment or ``all``, users started, users completed)."""

    shard: int
    rows: list[tuple[str, str, str, int, int]]


class ProfileSample(msgspec.Struct):
    """Users drawn at random (``rows``: their numeric rule fields) out of ``users``."""

    shard: int
    users: int
    rows: list[dict[str, Any]]


class ProfilesPage(msgspec.Struct):
    """A page of a partition's profiles in key order; ``more``: ask again after the last key."""

    partition: int
    rows: list[dict[str, Any]]
    more: bool


class ExperimentMoments(msgspec.Struct):
    """An experiment over a shard's exposed users: how many, the first exposure, and per metric
    and cut time the arms' :class:`~engine.experiments.Moments`."""

    shard: int
    exposed: int
    first: float | None
    moments: list[list[dict[str, Moments]]]


class LearnedPoint(msgspec.Struct):
    """A served policy at one decision point: its arms, per arm the weighted count of rewards
    and their sum, and how many drifts it detected."""

    arms: list[str]
    n: list[float]
    rewards: list[float]
    drifts: int


def segments_of(part: PartitionState, user: UserState, decider: Decider, now: float) -> list[str]:
    """A user's segments: from live membership where it is tracked, else worked out now."""
    if part.segments is not None:
        return user_segments(part, user)
    return decider.segments(user, {}, now, part.vocab)


def change_counts(parts: Partitions) -> dict[str, list[int]]:
    """Entries and exits per segment over ``parts``."""
    counts: dict[str, list[int]] = {}
    for part in parts.values():
        if part.segments is not None:
            for segment, (entered, exited) in part.segments.counts().items():
                entry = counts.setdefault(segment, [0, 0])
                entry[0] += entered
                entry[1] += exited
    return counts


def events_without_consent(parts: Partitions) -> dict[str, int]:
    """Events of users without analytics consent over ``parts``, counted by type (and dropped)."""
    counts: dict[str, int] = {}
    for part in parts.values():
        for kind, n in part.anonymous.items():
            counts[kind] = counts.get(kind, 0) + n
    return counts


def retired_events(parts: Partitions) -> dict[str, int]:
    """Stored events of custom types the catalog no longer declares over ``parts``, skipped, by type."""
    counts: dict[str, int] = {}
    for part in parts.values():
        for kind, n in part.retired.items():
            counts[kind] = counts.get(kind, 0) + n
    return counts


async def segment_sizes(
    parts: Partitions, decider: Decider, learner: Learner, now: float, shard: int
) -> SegmentSizes:
    """Per segment, over every user of ``parts``: members, their summed engagement, how many
    activated, and the entries and exits counted since tracking began."""
    users = 0
    sizes: dict[str, SegmentSize] = {}
    tracked_from, tracked_to = float("inf"), 0.0
    for part in list(parts.values()):
        for i, user in enumerate(list(part.users.values())):
            users += 1
            engagement = user.engagement_at(now)
            activated = int(learner.has_activated(user, part.vocab))
            for segment in segments_of(part, user, decider, now):
                entry = sizes.get(segment)
                if entry is None:
                    entry = sizes[segment] = SegmentSize()
                entry.size += 1
                entry.engagement_sum += engagement
                entry.activated += activated
            if i % YIELD_EVERY == YIELD_EVERY - 1:
                await asyncio.sleep(0)  # events keep flowing during a report
        if part.segments is not None and part.segments.since:
            tracked_from = min(tracked_from, part.segments.since)
            tracked_to = max(tracked_to, part.segments.clock)
    changes = change_counts(parts)
    return SegmentSizes(
        shard=shard,
        users=users,
        segments=sizes,
        changes=changes,
        tracked_from=tracked_from if changes else None,
        tracked_to=tracked_to if changes else None,
    )


async def tutorial_stats(parts: Partitions, shard: int) -> TutorialStats:
    """Per tutorial, variant and segment (and ``all``): users who started and completed it."""
    rows: dict[tuple[str, str, str], list[int]] = {}
    for part in list(parts.values()):
        names = part.vocab
        for i, user in enumerate(list(part.users.values())):
            entries = user.tutorial_entries()
            if not entries:
                continue
            segments = ["all", *user_segments(part, user)] if part.segments is not None else ["all"]
            for tutorial_id, variant_id, starts, completions in entries:
                tutorial, variant = names.tutorials.name(tutorial_id), names.variants.name(variant_id)
                started, completed = int(starts > 0 or completions > 0), int(completions > 0)
                for segment in segments:
                    row = rows.setdefault((tutorial, variant, segment), [0, 0])
                    row[0] += started
                    row[1] += completed
            if i % YIELD_EVERY == YIELD_EVERY - 1:
                await asyncio.sleep(0)
    return TutorialStats(shard, [(*key, started, completed) for key, (started, completed) in rows.items()])


def profile_sample(parts: Partitions, size: int, now: float, shard: int, seed: int = 0) -> ProfileSample:
    """Up to ``size`` users drawn at random: their numeric rule fields (for clustering), the
    built-in ones, then those the catalog declares and its custom event counts, each under the
    name a rule reads it by (``seats``, ``event_count("created_board")``)."""
    keys = [(p, k) for p, part in parts.items() for k in part.users]
    chosen = random.Random(seed).sample(keys, min(size, len(keys)))
    numeric = sorted(name for name, kind in FIELDS.items() if kind == "number")
    schema = next(iter(parts.values())).schema if parts else BUILTIN_SCHEMA  # a shard's catalog
    declared = [name for name in declared_fields(schema) if schema.field_type(name) == "number"]
    counts: list[EventCount] = [(event_type, None, None) for event_type in schema.custom_types]
    reads = RuleReads(fields=frozenset(numeric + declared), event_counts=frozenset(counts))
    rows = []
    for p, key in chosen:
        part = parts[p]
        facts = rule_input(part.users[key], part.vocab, now, reads=reads, schema=schema)
        row = {name: facts.fields.get(name) for name in numeric + declared}
        row.update(
            {
                f'event_count("{event_type}")': facts.counts[event_type, None, None]
                for event_type, _, _ in counts
            }
        )
        rows.append(row)
    return ProfileSample(shard, len(keys), rows)


def profiles_page(
    part: PartitionState, after: str, limit: int, now: float, decider: Decider, learner: Learner
) -> ProfilesPage:
    """A page of a partition's user profiles for the warehouse export, in key order after
    ``after`` (no name, no PII trait: PII is not exported)."""
    keys = sorted(k for k in part.users if k > after)[: max(1, min(limit, MAX_PAGE))]
    rows = []
    for key in keys:
        user = part.users[key]
        view = user.view(part.vocab, now, part.schema)
        view.pop("features", None)
        for pii in ("name", *part.schema.pii_traits):
            view["traits"].pop(pii, None)
        view["user_key"] = key
        view["activated"] = learner.has_activated(user, part.vocab)
        view["segments"] = segments_of(part, user, decider, now)
        view["cluster"] = user.cluster if user.cluster >= 0 else None
        rows.append(view)
    return ProfilesPage(part.partition, rows, len(keys) == limit)


async def experiment_moments(
    parts: Partitions, plan: ExperimentPlan, experiment: str, cuts: list[float], shard: int
) -> ExperimentMoments:
    """Over the users of ``parts`` exposed to ``experiment``: how many, the first exposure, and
    per metric and cut time the arms' sufficient statistics (see
    :func:`engine.experiments.cumulative_moments`). Raises KeyError for an unknown experiment."""
    exp = plan.by_id.get(experiment)
    if exp is None:
        raise KeyError(f"no experiment {experiment!r}")
    exposed: list[ExposedUser] = []
    for part in list(parts.values()):
        if part.experiments is not None:
            exposed += part.experiments.exposures(experiment)
            await asyncio.sleep(0)  # events keep flowing during a report
    moments = cumulative_moments(exposed, 1 + len(exp.guardrails), cuts) if cuts else []
    return ExperimentMoments(
        shard=shard,
        exposed=len(exposed),
        first=min((e.ts for e in exposed), default=None),
        moments=moments,
    )


def learned(learner: Learner) -> dict[str, LearnedPoint]:
    """What the served policies learned, per decision point (the merged statistics a shard
    serves)."""
    out = {}
    for point, policy in learner.served.items():
        n, total = policy.reward_totals()
        out[point] = LearnedPoint(policy.arms, n.tolist(), total.tolist(), policy.drifts)
    return out
