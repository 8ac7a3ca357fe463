"""``GET /v1/segments``, ``headstart report segments`` and ``headstart report tutorials``.

Shards count exactly over the users they own (:meth:`actors.shard.ShardActor.segment_sizes`,
``tutorial_stats``, ``profile_sample``); this module adds the shards' answers up with polars:

- **segments**: per segment, its definition, size, share of users, mean engagement, activation
  rate (the journey's activation, ``learning.journey``), entries and exits and their rates per
  day over the tracked period (event time), and for clusters what distinguishes them;
- **suggestions**: a hierarchical clustering (scipy, Ward linkage on standardized fields) of a
  random sample of users' numeric fields (built-in, declared in the catalog's ``schema:``, and
  the counts of its custom event types), cut into groups; each group is described by the
  fields where it differs most from everyone, with a rule over them that can be pasted into the
  catalog (checked by the rule parser against the catalog's schema);
- **tutorials**: per tutorial, variant and segment, users who started and completed it: start
  rate (of the segment's users) and completion rate (of those who started).

>>> rows = [{"session_count": float(s), "engagement": float(e)} for s, e in
...         [(1, 1), (1, 2), (2, 1), (9, 30), (10, 28), (11, 35)]]
>>> groups = suggest_segments(rows, groups=2)
>>> sorted(g["size"] for g in groups), groups[0]["rule"] is not None
([3, 3], True)
"""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl
from scipy.cluster.hierarchy import fcluster, linkage

from engine.catalog import BUILTIN_SEGMENTS, Catalog
from engine.clusters import describe_export
from engine.rules import RuleError, parse_rule
from engine.schema import BUILTIN_SCHEMA, EventSchema

DAY_S = 86400.0


def segment_report(
    answers: list[dict[str, Any]], catalog: Catalog, clusters: dict[str, Any] | None
) -> dict[str, Any]:
    """The shards' ``segment_sizes`` answers added up, per segment of the catalog (and every
    locale segment seen)."""
    users = sum(a["users"] for a in answers)
    sizes = pl.DataFrame(
        [
            {
                "id": seg,
                "size": e["size"],
                "engagement_sum": e["engagement_sum"],
                "activated": e.get("activated", 0),
            }
            for a in answers
            for seg, e in a["segments"].items()
        ],
        schema={"id": pl.String, "size": pl.Int64, "engagement_sum": pl.Float64, "activated": pl.Int64},
    )
    changes = pl.DataFrame(
        [
            {"id": seg, "entered": e, "exited": x}
            for a in answers
            for seg, (e, x) in a.get("changes", {}).items()
        ],
        schema={"id": pl.String, "entered": pl.Int64, "exited": pl.Int64},
    )
    starts = [a["tracked_from"] for a in answers if a.get("tracked_from")]
    ends = [a["tracked_to"] for a in answers if a.get("tracked_to")]
    days = max((max(ends) - min(starts)) / DAY_S, 1 / 24) if starts and ends else None
    totals = sizes.group_by("id").agg(pl.sum("size"), pl.sum("engagement_sum"), pl.sum("activated"))
    moved = changes.group_by("id").agg(pl.sum("entered"), pl.sum("exited"))
    table = totals.join(moved, on="id", how="full", coalesce=True).fill_null(0)
    by_id = {row["id"]: row for row in table.iter_rows(named=True)}

    definitions: dict[str, dict[str, Any]] = {s: {"kind": "built-in"} for s in sorted(BUILTIN_SEGMENTS)}
    definitions.update({s: {"kind": "built-in"} for s in sorted(by_id) if s.startswith("locale_")})
    described = {f"cluster_{c['cluster']}": c for c in describe_export(clusters)} if clusters else {}
    for segment in catalog.cluster_segments:
        definitions[segment] = {"kind": "cluster", "rule": f"cluster == {segment.split('_')[1]}"}
        if segment in described:
            definitions[segment]["center"] = described[segment]["center"]
            definitions[segment]["distinguishing"] = described[segment]["distinguishing"]
    for rule_segment in catalog.segments:
        definitions[rule_segment.id] = {
            "kind": "rule",
            "rule": rule_segment.rule,
            "description": rule_segment.description,
        }
    out = []
    for segment, definition in definitions.items():
        row = by_id.get(segment, {})
        size = int(row.get("size", 0))
        entered, exited = int(row.get("entered", 0)), int(row.get("exited", 0))
        out.append(
            {
                "id": segment,
                **definition,
                "size": size,
                "share": size / users if users else 0.0,
                "mean_engagement": row["engagement_sum"] / size if size else None,
                "activation_rate": row["activated"] / size if size else None,
                "entered": entered,
                "exited": exited,
                "entered_per_day": entered / days if days else None,
                "exited_per_day": exited / days if days else None,
            }
        )
    return {
        "users": users,
        "tracked_days": days,
        "cluster_model_version": (clusters or {}).get("version"),
        "segments": out,
    }


def suggest_segments(
    rows: list[dict[str, Any]], groups: int = 4, seed_rows: int = 2000, schema: EventSchema = BUILTIN_SCHEMA
) -> list[dict[str, Any]]:
    """Natural groupings of users from their numeric fields (Ward linkage on z-scores); the
    rules suggested read the fields as named in ``rows`` (``schema``: the catalog's, for the
    declared ones)."""
    frame = pl.DataFrame(rows[:seed_rows]).drop("cluster", strict=False)
    frame = frame.select(
        [c for c in frame.columns if frame[c].null_count() == 0 and frame[c].std() not in (None, 0.0)]
    )
    if frame.height < max(groups, 2) or not frame.columns:
        return []
    values = frame.to_numpy().astype(float)
    mean, std = values.mean(axis=0), values.std(axis=0)
    z = (values - mean) / std
    labels = fcluster(linkage(z, method="ward"), t=groups, criterion="maxclust")
    out = []
    for label in sorted(set(labels.tolist())):
        members = labels == label
        centre = z[members].mean(axis=0)
        order = np.argsort(-np.abs(centre))[:2]
        features = [
            {
                "field": frame.columns[i],
                "z": float(centre[i]),
                "mean": float(values[members, i].mean()),
                "everyone_mean": float(mean[i]),
            }
            for i in order
        ]
        out.append(
            {
                "group": int(label),
                "size": int(members.sum()),
                "share": float(members.mean()),
                "distinguishing": features,
                "rule": _suggested_rule(values[members], values[~members], frame.columns, order, schema),
            }
        )
    return sorted(out, key=lambda g: -g["size"])


def _suggested_rule(
    inside: np.ndarray, outside: np.ndarray, columns: list[str], order: np.ndarray, schema: EventSchema
) -> str | None:
    """A threshold per distinguishing field, halfway between the group's mean and the rest's."""
    if not len(outside):
        return None
    parts = []
    for i in order:
        inner, outer = float(inside[:, i].mean()), float(outside[:, i].mean())
        threshold = round((inner + outer) / 2, 2)
        parts.append(f"{columns[i]} {'>=' if inner > outer else '<'} {threshold}")
    rule = " and ".join(parts)
    try:
        parse_rule(rule, schema)
    except RuleError:
        return None
    return rule


def tutorial_report(answers: list[dict[str, Any]], segment_sizes: dict[str, int]) -> pl.DataFrame:
    """Per tutorial, variant and segment: users started and completed, start and completion rates."""
    frame = pl.DataFrame(
        [row for a in answers for row in a["rows"]],
        schema={
            "tutorial": pl.String,
            "variant": pl.String,
            "segment": pl.String,
            "started": pl.Int64,
            "completed": pl.Int64,
        },
        orient="row",
    )
    sizes = pl.DataFrame(
        {"segment": list(segment_sizes), "segment_users": list(segment_sizes.values())},
        schema={"segment": pl.String, "segment_users": pl.Int64},
    )
    return (
        frame.group_by("tutorial", "variant", "segment")
        .agg(pl.sum("started"), pl.sum("completed"))
        .join(sizes, on="segment", how="left")
        .with_columns(
            start_rate=pl.col("started") / pl.col("segment_users"),
            completion_rate=pl.when(pl.col("started") > 0).then(pl.col("completed") / pl.col("started")),
        )
        .sort("tutorial", "variant", "segment")
    )
