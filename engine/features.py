"""The context a policy sees: a fixed-length vector built from a user's live state and the
request's context, in a few microseconds.

Categorical fields are one-hot over their common values (anything else is all zeros, so an
unseen value is "none of these", not an error); counts are log-scaled so a heavy user does not
dominate a linear model. The layout is versioned: a policy's state is only valid with the
layout it learned on.

>>> from engine.profile import UserState
>>> user = UserState.new(ts=0.0)
>>> x = context_vector(user, {"device_type": "mobile", "locale": "de-DE"}, now=60.0)
>>> len(x) == DIM, [float(x[FEATURE_NAMES.index(n)]) for n in ("bias", "device=mobile", "lang=de")]
(True, [1.0, 1.0, 1.0])
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from engine.catalog import DEVICE_TYPES, MAX_CLUSTERS
from engine.events import EventKind
from engine.profile import C_SESSIONS, UserState

#: 2: the behavioural cluster, one-hot (issue 6).
LAYOUT_VERSION = 2

DEVICES = DEVICE_TYPES
LANGUAGES = ("en", "de", "fr", "es")
#: Referrers grouped by intent: paid and search, community, and everything direct.
REFERRER_GROUPS = {
    "google": "search",
    "bing": "search",
    "producthunt": "community",
    "linkedin": "community",
    "twitter": "community",
    "newsletter": "owned",
    "partner": "owned",
}
REFERRERS = ("search", "community", "owned")
TECHNICAL_ROLES = frozenset({"engineer", "developer", "analyst", "data"})
LARGE_COMPANIES = frozenset({"201-1000", "1000+"})
NEW_USER_S = 86_400.0

FEATURE_NAMES: tuple[str, ...] = (
    "bias",
    *(f"device={d}" for d in DEVICES),
    *(f"lang={lang}" for lang in LANGUAGES),
    *(f"referrer={r}" for r in REFERRERS),
    "log_engagement",
    "log_sessions",
    "log_events_5m",
    "new_user",
    "steps_completed",
    "log_tutorials_completed",
    "log_features_clicked",
    "role_technical",
    "company_large",
    *(f"cluster={c}" for c in range(MAX_CLUSTERS)),
)
DIM = len(FEATURE_NAMES)

_DEVICE = {d: 1 + i for i, d in enumerate(DEVICES)}
_LANG = {lang: 1 + len(DEVICES) + i for i, lang in enumerate(LANGUAGES)}
_REFERRER = {r: 1 + len(DEVICES) + len(LANGUAGES) + i for i, r in enumerate(REFERRERS)}
_BASE = 1 + len(DEVICES) + len(LANGUAGES) + len(REFERRERS)
_CLUSTER = FEATURE_NAMES.index("cluster=0")


def context_vector(user: UserState | None, request: Mapping[str, Any] | None, now: float) -> np.ndarray:
    """The policy context for ``user`` (None: never seen) and the request's context fields.

    The request's device, locale and referrer win over the profile's (they describe this
    visit); the profile supplies them when the request does not.
    """
    x = [0.0] * DIM
    x[0] = 1.0
    request = request or {}
    device = request.get("device_type") or (user.device_type if user else None)
    locale = request.get("locale") or (user.locale if user else None)
    referrer = request.get("referrer") or (user.referrer if user else None)
    if device in _DEVICE:
        x[_DEVICE[device]] = 1.0
    if locale:
        slot = _LANG.get(locale[:2].lower())
        if slot is not None:
            x[slot] = 1.0
    if referrer:
        group = REFERRER_GROUPS.get(referrer.lower())
        if group is not None:
            x[_REFERRER[group]] = 1.0
    if user is not None:
        counters = user.counters
        x[_BASE] = math.log1p(user.engagement_at(now))
        x[_BASE + 1] = math.log1p(counters[C_SESSIONS])
        x[_BASE + 2] = math.log1p(user.events_in_window(now))
        x[_BASE + 3] = 1.0 if now - user.first_seen < NEW_USER_S else 0.0
        x[_BASE + 4] = user.completed_steps.bit_count() / 4.0
        x[_BASE + 5] = math.log1p(counters[EventKind.TUTORIAL_COMPLETED])
        x[_BASE + 6] = math.log1p(counters[EventKind.FEATURE_CLICKED])
        x[_BASE + 7] = 1.0 if user.role in TECHNICAL_ROLES else 0.0
        x[_BASE + 8] = 1.0 if user.company_size in LARGE_COMPANIES else 0.0
        if 0 <= user.cluster < MAX_CLUSTERS:
            x[_CLUSTER + user.cluster] = 1.0
    else:
        x[_BASE + 3] = 1.0  # never seen: new
    return np.array(x)
