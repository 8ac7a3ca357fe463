"""A simulated product population: users going through onboarding, as raw event dicts.

The mix follows a typical SaaS onboarding funnel: many feature clicks and step views, fewer
completions, occasional profile and consent changes. Seeded, so every run sees the same events.

>>> events = list(onboarding_events(users=3, events=30, seed=1))
>>> len(events), {e["type"] for e in events} <= set(EVENT_MIX)
(30, True)

:func:`custom_schema_events` is the same stream for a product that declares its own event types,
traits and context fields (``bench/catalogs/custom_schema.yaml``): every other event is one of
its own types, and its users carry its traits and context.

>>> events = list(custom_schema_events(users=3, events=30, seed=1))
>>> sum(e["type"] in CUSTOM_MIX for e in events), sorted(events[0]["context"])[:2]
(15, ['app_theme', 'app_version'])
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

#: The product's own event types (``bench/catalogs/custom_schema.yaml``) and their relative
#: frequency among its events.
CUSTOM_MIX: dict[str, float] = {
    "created_card": 25,
    "commented": 20,
    "viewed_report": 12,
    "created_board": 8,
    "uploaded_file": 8,
    "invited_teammate": 8,
    "connected_integration": 8,
    "shared_board": 6,
    "connected_slack": 3,
    "upgraded_plan": 2,
}
INTEGRATIONS = ["slack", "github", "jira", "gdrive", "figma", "zoom", "salesforce", "zapier"]
COLUMNS = ["backlog", "todo", "doing", "review", "done"]
REPORTS = ["velocity", "burndown", "workload", "cycle_time"]
THEMES = ["light", "dark", "system"]
REGIONS = ["eu", "us", "apac"]
PLANS = ["free", "pro", "enterprise"]
INDUSTRIES = ["software", "agency", "education", "finance", "retail", "healthcare"]

#: Simulated time starts here (2026-01-05, a Monday) so runs are reproducible.
EPOCH = 1_767_571_200.0


def user_id(i: int) -> str:
    return f"user-{i}@example.com"


def onboarding_events(
    users: int, events: int, seed: int = 7, start: float = EPOCH
) -> Iterator[dict[str, Any]]:
    """``events`` events over ``users`` users, interleaved in time as a live stream would be."""
    for _, event in _stream(users, events, seed, start):
        yield event


def custom_schema_events(
    users: int, events: int, seed: int = 7, start: float = EPOCH
) -> Iterator[dict[str, Any]]:
    """:func:`onboarding_events` of a product with its own schema: the same users, times and
    contexts, with every other event replaced by one of :data:`CUSTOM_MIX` (the rest keep the
    default mix). Users carry the declared traits (in ``profile_updated``) and context fields."""
    rng = random.Random(seed + 1)  # its own: the default half stays the default stream's
    kinds = list(CUSTOM_MIX)
    weights = list(CUSTOM_MIX.values())
    contexts: dict[int, dict[str, Any]] = {}
    traits: dict[int, dict[str, Any]] = {}
    for n, (i, event) in enumerate(_stream(users, events, seed, start)):
        context = contexts.get(i)
        if context is None:
            context = contexts[i] = {
                **event["context"],
                "app_theme": rng.choice(THEMES),
                "workspace_region": rng.choice(REGIONS),
            }
            traits[i] = _custom_traits(i, rng)
        event["context"] = context
        if n % 2:
            kind = rng.choices(kinds, weights)[0]
            event["type"] = kind
            event.pop("props", None)
            props = _custom_props(kind, rng)
            if props:
                event["props"] = props
        elif event["type"] == "profile_updated":
            event["props"] = {**event["props"], **traits[i]}
        yield event


def _stream(users: int, events: int, seed: int, start: float) -> Iterator[tuple[int, dict[str, Any]]]:
    """(user index, event) of :func:`onboarding_events`."""
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
        yield i, event


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


def _custom_traits(i: int, rng: random.Random) -> dict[str, Any]:
    traits: dict[str, Any] = {
        "plan": rng.choices(PLANS, [6, 3, 1])[0],
        "seats": rng.randint(1, 200),
        "industry": rng.choice(INDUSTRIES),
        "newsletter": rng.random() < 0.4,
    }
    if rng.random() < 0.5:  # half the users give a phone number: the PII trait
        traits["phone"] = f"+1555{i:07d}"
    return traits


def _custom_props(kind: str, rng: random.Random) -> dict[str, Any] | None:
    if kind == "created_card":
        return {"column": rng.choice(COLUMNS), "has_due_date": rng.random() < 0.3}
    if kind == "commented":
        return {"length": rng.randint(1, 400)}
    if kind == "viewed_report":
        return {"report": rng.choice(REPORTS)}
    if kind == "created_board":
        return {"template": rng.choice(["kanban", "scrum", "blank", "roadmap"]), "cards": rng.randint(0, 50)}
    if kind == "uploaded_file":
        kind_of = rng.choice(["image", "pdf", "spreadsheet", "other"])
        return {"kind": kind_of, "size_kb": rng.randint(1, 20_000)}
    if kind == "invited_teammate":
        return {"role": rng.choice(["admin", "member", "guest"]), "via": rng.choice(["email", "link"])}
    if kind == "connected_integration":
        return {"integration": rng.choice(INTEGRATIONS)}
    if kind == "shared_board":
        return {"channel": rng.choice(["link", "email", "slack"])}
    if kind == "upgraded_plan":
        return {"tier": rng.choice(["pro", "enterprise"])}
    return None  # connected_slack: no props
