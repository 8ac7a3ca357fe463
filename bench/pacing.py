"""Learned pacing against fixed caps, on simulated users with a latent tolerance (``bench learn``
writes it as ``metrics.pacing``).

The world: each user visits the product a few times a day (their own rate) for as long as they
stay; onboarding needs :data:`TO_ACTIVATE` completed tours, and every visit is a chance to show
one. Each user has a latent *tolerance*, the interruptions within 24 hours they take well
(:data:`TOLERANCES`). An interruption within it is completed with :data:`P_IN` and dismissed with
:data:`D_IN`; one beyond it mostly dismissed (:data:`D_OUT`), and each such dismissal may make
the user leave for good (:data:`QUIT_AFTER_ANNOYED`). Users also drift away on their own: each
day a not yet activated user stays with :data:`STAY`. A low cap is too slow for the tolerant
users, who drift away before they finish; a high one annoys the others into leaving.

Every contestant decides through the engine's own objects: each user is a
:class:`engine.profile.UserState` that the simulated events (``surface_shown``,
``tour_step_viewed``, ``tutorial_completed``, ``surface_dismissed``) are applied to, and
:func:`engine.pacing.surfaces` decides whether the tour may be shown at each visit, with a fixed
cap (``overall.max_per_day``, nothing learned) or with ``learned: true`` and no cap. Every
contestant sees the same users, the same visits and the same random draws (common random numbers:
a user's answer to the n-th interruption and their daily stay or leave are drawn once).

>>> result = compare(users=40, seed=3, caps=(1, 2))
>>> sorted(result)
['best_fixed_cap', 'fixed_caps', 'learned']
>>> 0 <= result["learned"]["activation"] <= 1
True
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from engine.catalog import Pacing
from engine.events import event_from_object
from engine.pacing import surfaces
from engine.profile import UserState, Vocabularies

#: Latent tolerance (interruptions within 24 hours taken well) and its share of users.
TOLERANCES = (1, 2, 3, 4, 6)
TOLERANCE_SHARES = (0.25, 0.3, 0.2, 0.15, 0.1)
#: Within tolerance: completed, dismissed (else ignored: neither).
P_IN, D_IN = 0.5, 0.15
#: Beyond it.
P_OUT, D_OUT = 0.05, 0.8
#: A dismissal beyond tolerance makes the user leave with this probability.
QUIT_AFTER_ANNOYED = 0.2
#: A not yet activated user comes back the next day with this probability.
STAY = 0.8
#: Completed tours that make a user activated.
TO_ACTIVATE = 3
#: Days simulated (the journey reward's default horizon).
DAYS = 14
#: A user's visits per day: uniform in this range (Poisson around it each day).
VISITS_PER_DAY = (2.0, 8.0)
#: Visits fall between these hours (UTC; the users' time zone).
WAKING_HOURS = (8.0, 22.0)
#: The fixed caps compared (interruptions per day).
FIXED_CAPS = (1, 2, 3, 4, 6)
START = 1_767_571_200.0  # 2026-01-05 00:00 UTC


class SimUser:
    """A simulated user: latent tolerance and visit rate, and the random draws every contestant
    shares."""

    __slots__ = ("answers", "stays", "tolerance", "visits")

    def __init__(self, rng: np.random.Generator) -> None:
        self.tolerance = int(rng.choice(TOLERANCES, p=TOLERANCE_SHARES))
        rate = float(rng.uniform(*VISITS_PER_DAY))
        self.visits: list[list[float]] = []
        for day in range(DAYS):
            n = int(rng.poisson(rate))
            hours = np.sort(rng.uniform(*WAKING_HOURS, size=n))
            self.visits.append([START + day * 86400 + float(h) * 3600 for h in hours])
        #: The user's answer to their n-th interruption (a uniform draw) and whether they leave
        #: after an annoying one; whether they stay after each day.
        self.answers = rng.random((64, 2))
        self.stays = rng.random(DAYS) < STAY


def population(users: int, seed: int) -> list[SimUser]:
    rng = np.random.default_rng(seed)
    return [SimUser(rng) for _ in range(users)]


def _event(kind: str, ts: float, **props: Any) -> Any:
    return event_from_object(
        {"event_id": f"{kind}-{ts}", "user_id": "u", "type": kind, "ts": ts, "props": props}
    )


def onboard(user: SimUser, pacing: Pacing) -> dict[str, int]:
    """One user's onboarding under ``pacing``: shown, completed, dismissed, activated."""
    state, vocab = UserState.new(START), Vocabularies()
    shown = completed = dismissed = 0
    for day, visits in enumerate(user.visits):
        for ts in visits:
            allowed = surfaces(pacing, state.shows(), state.tolerance(), ts, "UTC", {"tour": True})
            if not allowed["tour"].show or shown >= len(user.answers):
                continue
            tutorial = f"nudge{shown % 8}"
            depth = sum(1 for _, s in state.shows() if ts - 86400 <= s < ts)
            draw, leave = user.answers[shown]
            shown += 1
            state.apply(_event("surface_shown", ts, surface="tour", id=tutorial), vocab)
            state.apply(_event("tour_step_viewed", ts + 1, tutorial=tutorial, variant="v", index=0), vocab)
            within = depth < user.tolerance
            complete, dismiss = (P_IN, D_IN) if within else (P_OUT, D_OUT)
            if draw < complete:
                completed += 1
                state.apply(_event("tutorial_completed", ts + 60, tutorial=tutorial, variant="v"), vocab)
                if completed >= TO_ACTIVATE:
                    return {"shown": shown, "completed": completed, "dismissed": dismissed, "activated": 1}
            elif draw < complete + dismiss:
                dismissed += 1
                state.apply(_event("surface_dismissed", ts + 20, surface="tour", id=tutorial, index=0), vocab)
                if not within and leave < QUIT_AFTER_ANNOYED:
                    return {"shown": shown, "completed": completed, "dismissed": dismissed, "activated": 0}
        if not user.stays[day]:
            break
    return {"shown": shown, "completed": completed, "dismissed": dismissed, "activated": 0}


def run_policy(users: Sequence[SimUser], pacing: Pacing) -> dict[str, float]:
    totals = {"shown": 0, "completed": 0, "dismissed": 0, "activated": 0}
    for user in users:
        for key, value in onboard(user, pacing).items():
            totals[key] += value
    activated = totals["activated"]
    return {
        "activation": activated / len(users),
        "dismissals_per_activated": totals["dismissed"] / activated if activated else float("inf"),
        "interruptions_per_user": totals["shown"] / len(users),
        "dismissals_per_user": totals["dismissed"] / len(users),
    }


def fixed(cap: int) -> Pacing:
    return Pacing.model_validate({"overall": {"max_per_day": cap}, "learned": False})


LEARNED = Pacing.model_validate({"learned": True})


def compare(users: int, seed: int, caps: Sequence[int] = FIXED_CAPS) -> dict[str, Any]:
    """Learned pacing and each fixed cap on the same population; the best fixed cap is the one
    with the highest activation (fewer dismissals per activated user on a tie)."""
    population_ = population(users, seed)
    by_cap = {cap: run_policy(population_, fixed(cap)) for cap in caps}
    best_cap = max(by_cap, key=lambda c: (by_cap[c]["activation"], -by_cap[c]["dismissals_per_activated"]))
    return {
        "learned": run_policy(population_, LEARNED),
        "best_fixed_cap": {**by_cap[best_cap], "cap": best_cap},
        "fixed_caps": {str(cap): result for cap, result in by_cap.items()},
    }
