"""What changes between two versions of a catalog: a one-line summary, a readable diff, and the
changes a running experiment cannot take.

A version is kept as its *document*: the structure of the YAML file (or JSON body) it was
given as, not the model with every default filled in, so what ``catalog show`` prints and
``catalog diff`` compares is what the team wrote.

>>> old = {"version": 1, "product": "p", "flags": [{"id": "a"}, {"id": "b", "default": True}]}
>>> new = {"version": 1, "product": "p", "flags": [{"id": "b"}, {"id": "c"}]}
>>> summarize(old, new)
'flags: +c -a ~b'
>>> summarize(None, new), summarize(new, new)
('first version', 'no change')
>>> fingerprint(old) == fingerprint(dict(reversed(old.items())))
True
"""

from __future__ import annotations

import difflib
import hashlib
import json
from typing import Any

import msgspec
import yaml

from engine.catalog import Catalog

_Dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)

#: Sections that are lists of entries with an ``id``: summarized by id.
_BY_ID = ("tutorials", "flags", "segments", "webhooks", "experiments")


def as_stored(data: Any) -> Any:
    """``data`` as a version keeps it: as JSON carries it (a YAML file's timestamps become ISO
    strings), so the same catalog from a file or a JSON body is the same version. TypeError if
    JSON cannot hold it.

    >>> import datetime as dt
    >>> as_stored({"start": dt.datetime(2026, 1, 1, tzinfo=dt.UTC)})
    {'start': '2026-01-01T00:00:00Z'}
    """
    try:
        return msgspec.json.decode(msgspec.json.encode(data))
    except msgspec.EncodeError as exc:
        raise TypeError(str(exc)) from None


def canonical(document: dict[str, Any]) -> bytes:
    """The document as canonical JSON (keys sorted, no spaces): equal documents, equal bytes."""
    return json.dumps(
        document, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str
    ).encode()


def fingerprint(document: dict[str, Any]) -> str:
    """SHA-256 of :func:`canonical` (hex): what tells two versions' contents apart."""
    return hashlib.sha256(canonical(document)).hexdigest()


def as_yaml(document: dict[str, Any]) -> str:
    """The document as YAML, in its own key order (what ``catalog show`` prints)."""
    # libyaml's emitter where PyYAML was built with it: the pure-Python one took ~10 ms per
    # catalog, on an ingress replica's event loop for every PUT's diff.
    return yaml.dump(document, Dumper=_Dumper, sort_keys=False, allow_unicode=True, default_flow_style=False)


def diff(
    old: dict[str, Any] | None, new: dict[str, Any], old_name: str = "served", new_name: str = "new"
) -> str:
    """A unified diff of the two documents as YAML (empty: the same catalog)."""
    if old is not None and canonical(old) == canonical(new):
        return ""
    before = as_yaml(old).splitlines(keepends=True) if old is not None else []
    after = as_yaml(new).splitlines(keepends=True)
    return "".join(difflib.unified_diff(before, after, old_name, new_name))


def _entries(value: Any) -> dict[str, Any] | None:
    """A list of mappings with unique ids, by id (None: not one)."""
    if not isinstance(value, list) or not all(isinstance(v, dict) and "id" in v for v in value):
        return None
    by_id = {str(v["id"]): v for v in value}
    return by_id if len(by_id) == len(value) else None


def _changed(old: Any, new: Any) -> bool:
    return json.dumps(old, sort_keys=True, default=str) != json.dumps(new, sort_keys=True, default=str)


def _section(name: str, old: Any, new: Any) -> str | None:
    """One section's change in a few words (None: unchanged)."""
    if not _changed(old, new):
        return None
    if name == "journey" and isinstance(old, dict) and isinstance(new, dict):
        old, new = old.get("steps"), new.get("steps")
        name = "journey.steps"
    before, after = _entries(old), _entries(new)
    if before is not None and after is not None:
        parts = [f"+{i}" for i in after if i not in before]
        parts += [f"-{i}" for i in before if i not in after]
        parts += [f"~{i}" for i in after if i in before and _changed(before[i], after[i])]
        if not parts and list(before) != list(after):
            parts = ["reordered"]
        return f"{name}: {' '.join(parts)}"
    if isinstance(old, dict) and isinstance(new, dict):
        keys = [k for k in {**old, **new} if _changed(old.get(k), new.get(k))]
        return f"{name}: {', '.join(map(str, keys))} changed"
    if old is None:
        return f"{name}: added"
    if new is None:
        return f"{name}: removed"
    return f"{name} changed"


def summarize(old: dict[str, Any] | None, new: dict[str, Any]) -> str:
    """What changed, section by section (``+id`` added, ``-id`` removed, ``~id`` changed),
    ``first version`` or ``no change``."""
    if old is None:
        return "first version"
    parts = [
        part
        for name in {**old, **new}
        if (part := _section(str(name), old.get(name), new.get(name))) is not None
    ]
    return "; ".join(parts) if parts else "no change"


def experiment_conflicts(old: Catalog | None, new: Catalog, now: float) -> list[str]:
    """Changes to an experiment that runs under ``old`` (started and not ended at ``now``) that
    would break its analysis: its arms, salt, traffic or place in its layer. Each a message
    naming the experiment and what changed; empty: nothing refused.

    Adding, removing (it stops assigning) or editing anything else of an experiment is allowed.
    """
    if old is None:
        return []
    running = {e.id: e for e in old.experiments if e.active(now)}
    problems = []
    for experiment in new.experiments:
        before = running.get(experiment.id)
        if before is None:
            continue
        changed = [
            what
            for what, a, b in (
                (
                    "arms",
                    [a.model_dump(mode="json") for a in before.arms],
                    [a.model_dump(mode="json") for a in experiment.arms],
                ),
                ("salt", before.salt, experiment.salt),
                ("traffic", before.traffic, experiment.traffic),
                ("layer", (before.layer, before.layer_range), (experiment.layer, experiment.layer_range)),
            )
            if a != b
        ]
        if changed:
            problems.append(
                f"experiments.{experiment.id}: its {', '.join(changed)} changed while it runs, which "
                "breaks its analysis (users would switch arms); force the push to change it anyway"
            )
    return problems
