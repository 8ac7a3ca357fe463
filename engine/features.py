"""The context a policy sees: a fixed-length vector built from a user's live state and the
request's context, in a few microseconds, laid out by the catalog.

The built-in features come first (bias, device, language, referrer group, engagement, sessions,
recent activity, newness, progress, role, company size, behavioural cluster; their categories
in ``learning.builtin_features``), then the declared ones (``learning.features``: the schema's
traits, context fields and event counts). Categorical fields are one-hot over their values
(anything else is all zeros, so an unseen value is "none of these", not an error); counts and
numbers are log-scaled so a heavy user does not dominate a linear model.

A layout is named by its id, a short hash of its feature names, and every logged decision
carries it: a policy's state is only valid with the layout it learned on, and a vector of
another layout is read by feature name (:func:`remap_index`), never by position.

>>> from engine.catalog import DEFAULT_CATALOG, load_catalog
>>> from engine.profile import UserState, Vocabularies
>>> layout = FeatureLayout.from_catalog(load_catalog(DEFAULT_CATALOG))
>>> request = {"device_type": "mobile", "locale": "de-DE"}
>>> x = layout.vector(UserState.new(ts=0.0), Vocabularies(), request, now=60.0)
>>> len(x) == layout.dim, [float(x[layout.index(n)]) for n in ("bias", "device=mobile", "lang=de")]
(True, [1.0, 1.0, 1.0])
>>> layout.layout_id == BUILTIN_LAYOUT.layout_id  # the default catalog: the built-in layout
True
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from engine.catalog import DEVICE_TYPES, MAX_CLUSTERS, BuiltinFeatures, Catalog, FeatureSpec
from engine.errors import ConfigError
from engine.events import EventKind
from engine.profile import C_SESSIONS, UserState, Vocabularies
from engine.schema import BUILTIN_SCHEMA, EventSchema

#: 3: the layout is named by its id (``DecisionRecord.layout``); 2 added the behavioural
#: cluster (issue 6). Records of versions 1 and 2 carry no id: see :data:`LEGACY_NAMES`.
LAYOUT_VERSION = 3
NEW_USER_S = 86_400.0

# Kinds of declared feature.
_CATEGORY, _NUMBER, _BOOLEAN, _COUNT = range(4)


def layout_id(names: Sequence[str]) -> str:
    """A short stable name of a layout: equal feature names in the same order, equal ids."""
    return hashlib.sha256("\n".join(names).encode()).hexdigest()[:12]


class FeatureLayout:
    """The context vector's layout: its feature ``names`` (in order), ``dim``, ``layout_id``,
    and :meth:`vector`, which builds it from a user's live state and a request's context.

    >>> from engine.catalog import FeatureSpec
    >>> from engine.schema import EventSchema, SchemaSection
    >>> schema = EventSchema(SchemaSection.model_validate({
    ...     "traits": {"plan": {"type": "string", "values": ["free", "pro"]}},
    ...     "events": {"created_board": {}}}))
    >>> specs = [FeatureSpec(trait="plan"), FeatureSpec(event_count="created_board")]
    >>> layout = FeatureLayout(features=specs, schema=schema)
    >>> layout.names[-3:]
    ('trait:plan=free', 'trait:plan=pro', 'event_count:created_board')
    """

    __slots__ = (
        "_base",
        "_cluster",
        "_declared",
        "_device",
        "_index",
        "_lang",
        "_large",
        "_referrer",
        "_technical",
        "dim",
        "layout_id",
        "names",
        "request_fields",
    )

    def __init__(
        self,
        builtin: BuiltinFeatures | None = None,
        features: Sequence[FeatureSpec] = (),
        schema: EventSchema = BUILTIN_SCHEMA,
    ) -> None:
        builtin = builtin or BuiltinFeatures()
        groups = list(builtin.referrer_groups)
        names = [
            "bias",
            *(f"device={d}" for d in DEVICE_TYPES),
            *(f"lang={lang}" for lang in builtin.languages),
            *(f"referrer={g}" for g in groups),
        ]
        self._device = {d: names.index(f"device={d}") for d in DEVICE_TYPES}
        self._lang = {lang: names.index(f"lang={lang}") for lang in builtin.languages}
        self._referrer = {
            referrer.lower(): names.index(f"referrer={group}")
            for group, referrers in builtin.referrer_groups.items()
            for referrer in referrers
        }
        self._base = len(names)
        names += [
            "log_engagement",
            "log_sessions",
            "log_events_5m",
            "new_user",
            "steps_completed",
            "log_tutorials_completed",
            "log_features_clicked",
            "role_technical",
            "company_large",
        ]
        self._cluster = len(names)
        names += [f"cluster={c}" for c in range(MAX_CLUSTERS)]
        self._technical = frozenset(builtin.technical_roles)
        self._large = frozenset(builtin.large_company_sizes)
        declared: list[tuple[int, str, bool, int, dict[str, int] | None]] = []
        for spec in features:
            source, name = spec.source
            slot = len(names)
            if source == "event_count":
                if name not in schema.custom_types:
                    raise ConfigError(f"learning.features: unknown event type {name!r}")
                names.append(f"event_count:{name}")
                declared.append((_COUNT, name, False, slot, None))
                continue
            field = (schema.section.traits if source == "trait" else schema.section.context).get(name)
            if field is None:
                raise ConfigError(f"learning.features: no declared {source} {name!r}")
            context = source == "context"
            if field.type == "string":
                values = spec.values if spec.values is not None else field.values
                if values is None:
                    raise ConfigError(f"learning.features: string field {name!r} needs 'values'")
                names += [f"{source}:{name}={v}" for v in values]
                declared.append((_CATEGORY, name, context, slot, {v: slot + j for j, v in enumerate(values)}))
            else:
                names.append(f"{source}:{name}")
                declared.append((_NUMBER if field.type == "number" else _BOOLEAN, name, context, slot, None))
        if len(set(names)) != len(names):
            raise ConfigError("learning.features: a feature is listed twice")
        self._declared = tuple(declared)
        self.names: tuple[str, ...] = tuple(names)
        self.dim = len(names)
        self.layout_id = layout_id(self.names)
        self._index = {n: i for i, n in enumerate(names)}
        #: The request's context fields the vector reads (a cache of anything derived from the
        #: vector keys on them).
        self.request_fields: tuple[str, ...] = (
            "device_type",
            "locale",
            "referrer",
            *(name for _, name, context, _, _ in declared if context),
        )

    @classmethod
    def from_catalog(cls, catalog: Catalog) -> FeatureLayout:
        learning = catalog.learning
        return cls(learning.builtin_features, learning.features, catalog.event_schema)

    def index(self, name: str) -> int:
        """The slot of the feature ``name`` (``KeyError`` if the layout has none)."""
        return self._index[name]

    def vector(
        self,
        user: UserState | None,
        vocab: Vocabularies | None,
        request: Mapping[str, Any] | None,
        now: float,
    ) -> np.ndarray:
        """The policy context for ``user`` (None: never seen; ``vocab``: its partition's
        vocabularies, for declared fields) and the request's context fields.

        The request's device, locale, referrer and declared context fields win over the
        profile's (they describe this visit); the profile supplies them when the request does not.
        """
        x = [0.0] * self.dim
        x[0] = 1.0
        request = request or {}
        device = request.get("device_type") or (user.device_type if user else None)
        locale = request.get("locale") or (user.locale if user else None)
        referrer = request.get("referrer") or (user.referrer if user else None)
        if device in self._device:
            x[self._device[device]] = 1.0
        if locale:
            slot = self._lang.get(locale[:2].lower())
            if slot is not None:
                x[slot] = 1.0
        if referrer:
            slot = self._referrer.get(referrer.lower())
            if slot is not None:
                x[slot] = 1.0
        base = self._base
        if user is not None:
            counters = user.counters
            x[base] = math.log1p(user.engagement_at(now))
            x[base + 1] = math.log1p(counters[C_SESSIONS])
            x[base + 2] = math.log1p(user.events_in_window(now))
            x[base + 3] = 1.0 if now - user.first_seen < NEW_USER_S else 0.0
            x[base + 4] = user.completed_steps.bit_count() / 4.0
            x[base + 5] = math.log1p(counters[EventKind.TUTORIAL_COMPLETED])
            x[base + 6] = math.log1p(counters[EventKind.FEATURE_CLICKED])
            x[base + 7] = 1.0 if user.role in self._technical else 0.0
            x[base + 8] = 1.0 if user.company_size in self._large else 0.0
            if 0 <= user.cluster < MAX_CLUSTERS:
                x[self._cluster + user.cluster] = 1.0
        else:
            x[base + 3] = 1.0  # never seen: new
        if self._declared:
            self._fill_declared(x, user, vocab, request)
        return np.array(x)

    def _fill_declared(
        self, x: list[float], user: UserState | None, vocab: Vocabularies | None, request: Mapping[str, Any]
    ) -> None:
        profile = user is not None and vocab is not None
        for kind, name, context, slot, values in self._declared:
            if kind == _COUNT:
                if profile:
                    n = user.custom_count(vocab.custom_types.find(name))  # type: ignore[union-attr]
                    if n:
                        x[slot] = math.log1p(n)
                continue
            value = request.get(name) if context else None
            if value is None and profile:
                value = user.extra(vocab.custom_fields.find(name))  # type: ignore[union-attr]
            if value is None:
                continue
            if kind == _CATEGORY:
                at = values.get(value) if isinstance(value, str) else None  # type: ignore[union-attr]
                if at is not None:
                    x[at] = 1.0
            elif kind == _NUMBER:
                if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
                    # Signed, so a negative number (a balance) keeps its side of zero.
                    x[slot] = math.copysign(math.log1p(abs(value)), value)
            elif value is True:
                x[slot] = 1.0

    def __repr__(self) -> str:
        return f"FeatureLayout({self.layout_id}, dim={self.dim})"


#: The layout of a catalog that says nothing about features: the built-in features with their
#: default categories (the default catalog's, too).
BUILTIN_LAYOUT = FeatureLayout()
#: The feature names of records and state from before layouts had ids, by ``features_version``
#: (1: before the behavioural cluster).
LEGACY_NAMES: dict[int, tuple[str, ...]] = {
    1: tuple(n for n in BUILTIN_LAYOUT.names if not n.startswith("cluster=")),
    2: BUILTIN_LAYOUT.names,
}


def record_names(
    layout: str | None, features_version: int, known: Mapping[str, tuple[str, ...]]
) -> tuple[str, ...] | None:
    """The feature names of a logged context: by its layout id among ``known`` layouts, else
    (a record from before layouts had ids) by its version; None: a layout nobody registered."""
    if layout:
        return known.get(layout)
    return LEGACY_NAMES.get(features_version)


def remap_index(source: Sequence[str], target: Sequence[str]) -> np.ndarray:
    """For each feature of ``target``, its slot in ``source`` (-1: ``source`` has none), for
    :func:`remap`.

    >>> remap_index(["bias", "a", "b"], ["bias", "b", "c"]).tolist()
    [0, 2, -1]
    """
    where = {name: i for i, name in enumerate(source)}
    return np.array([where.get(name, -1) for name in target], dtype=np.intp)


def remap(values: np.ndarray, index: np.ndarray, axes: Sequence[int] = (0,)) -> np.ndarray:
    """``values`` (a vector, or statistics with feature ``axes``) read in another layout by
    feature name: a feature the source lacks reads 0, one the target lacks is dropped.

    For additive statistics over the vector (a Gram matrix, Σ r·x) that is exact: what the same
    observations sum to with the target's layout, had its new features been 0 in them.

    >>> remap(np.array([1.0, 5.0, 7.0]), remap_index(["bias", "a", "b"], ["bias", "b", "c"])).tolist()
    [1.0, 7.0, 0.0]
    """
    out = values
    for axis in axes:
        pad = [(0, 0)] * out.ndim
        pad[axis] = (0, 1)
        # Index -1 takes the zero appended at the end of the axis.
        out = np.take(np.pad(out, pad), index, axis=axis)
    return out
