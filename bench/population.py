"""A simulated product population: users going through onboarding, as raw event dicts.

The mix follows a typical SaaS onboarding funnel: many feature clicks and step views, fewer
completions, occasional profile and consent changes. Seeded, so every run sees the same events.

>>> events = list(onboarding_events(users=3, events=30, seed=1))
>>> len(events), {e["type"] for e in events} <= set(EVENT_MIX)
(30, True)
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

#: Relative frequency of each event type in the stream.
EVENT_MIX: dict[str, float] = {
    "session_started": 10,
    "onboarding_started": 3,
    "onboarding_completed": 1,
    "step_viewed": 20,
    "step_completed": 12,
    "feature_clicked": 30,
    "tutorial_started": 8,
    "tutorial_completed": 5,
    "profile_updated": 8,
    "consent_updated": 3,
}
STEPS = ["welcome", "profile", "connect_data", "first_project", "invite_team", "integrations"]
FEATURES = [
    "create_project",
    "invite",
    "export",
    "share",
    "search",
    "dashboard",
    "import_csv",
    "api_keys",
    "comments",
    "templates",
    "notifications",
    "billing",
]
TUTORIALS = ["first_project", "connect_data", "collaboration"]
VARIANTS = ["video", "interactive", "checklist", "advanced"]
DEVICES = ["mobile", "desktop", "tablet"]
OSES = {"mobile": ["ios", "android"], "desktop": ["macos", "windows", "linux"], "tablet": ["ios", "android"]}
LOCALES = ["en-US", "en-GB", "de-DE", "fr-FR", "es-ES", "pt-BR", "ja-JP"]
COUNTRIES = {
    "en-US": "US",
    "en-GB": "GB",
    "de-DE": "DE",
    "fr-FR": "FR",
    "es-ES": "ES",
    "pt-BR": "BR",
    "ja-JP": "JP",
}
REFERRERS = ["google", "producthunt", "newsletter", "partner", "direct", "linkedin"]
ROLES = ["engineer", "designer", "manager", "founder", "analyst"]
COMPANY_SIZES = ["1-10", "11-50", "51-200", "201-1000", "1000+"]
AGE_BANDS = ["18-24", "25-34", "35-44", "45-54", "55+"]

#: Simulated time starts here (2026-01-05, a Monday) so runs are reproducible.
EPOCH = 1_767_571_200.0


def user_id(i: int) -> str:
    return f"user-{i}@example.com"


def onboarding_events(
    users: int, events: int, seed: int = 7, start: float = EPOCH
) -> Iterator[dict[str, Any]]:
    """``events`` events over ``users`` users, interleaved in time as a live stream would be."""
    rng = random.Random(seed)
    kinds = list(EVENT_MIX)
    weights = list(EVENT_MIX.values())
    contexts = []
    for _ in range(users):
        device = rng.choice(DEVICES)
        locale = rng.choice(LOCALES)
        contexts.append(
            {
                "device_type": device,
                "os": rng.choice(OSES[device]),
                "locale": locale,
                "country": COUNTRIES[locale],
                "referrer": rng.choice(REFERRERS),
                "app_version": "3.2.0",
            }
        )
    # Users arrive over a day; a stream of their events goes on for about a week.
    span = 7 * 86400.0
    clock = start
    step_gap = span / max(events, 1)
    for n in range(events):
        clock += rng.expovariate(1.0 / step_gap)
        i = rng.randrange(users)
        kind = rng.choices(kinds, weights)[0]
        event: dict[str, Any] = {
            "event_id": f"ev-{seed}-{n}",
            "user_id": user_id(i),
            "type": kind,
            "ts": round(clock, 3),
            "context": contexts[i],
        }
        props = _props(kind, rng)
        if props:
            event["props"] = props
        yield event


def _props(kind: str, rng: random.Random) -> dict[str, Any] | None:
    if kind in ("step_viewed", "step_completed"):
        return {"step": rng.choice(STEPS)}
    if kind == "feature_clicked":
        return {"feature": rng.choice(FEATURES)}
    if kind in ("tutorial_started", "tutorial_completed"):
        return {"tutorial": rng.choice(TUTORIALS), "variant": rng.choice(VARIANTS)}
    if kind == "profile_updated":
        return {
            "role": rng.choice(ROLES),
            "company_size": rng.choice(COMPANY_SIZES),
            "age_band": rng.choice(AGE_BANDS),
        }
    if kind == "consent_updated":
        return {"analytics": True, "personalization": rng.random() > 0.1}
    if kind == "session_started":
        return {"session_id": f"s{rng.randrange(1 << 30)}"}
    return None
