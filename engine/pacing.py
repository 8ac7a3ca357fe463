"""Pacing: which of the in-app kit's interruptions (a tour, a tooltip, the banner) may be shown
to a user now, and why not otherwise.

The catalog's ``pacing:`` section sets the fixed rules: at most N interruptions per day in the
user's time zone and a minimum gap, overall and per surface, and quiet hours in the user's local
time. Beyond them, each user's *tolerance* is learned from their own answers (``learned``): every
interruption they completed counts as accepted and every one they dismissed as declined, by how
deep into their day it came (the interruptions in the 24 hours before it). The chance that the
user accepts one more now is the mean of a Beta posterior (:func:`acceptance`); below
:data:`ACCEPT_AT_LEAST` it is held back.

Everything here is pure: the inputs are the user's flow state (:mod:`engine.profile`), the
request's time zone and the decision's time.

>>> from engine.catalog import Pacing
>>> pacing = Pacing.model_validate({"overall": {"max_per_day": 2, "min_gap_minutes": 30},
...                                 "quiet_hours": {"start": "22:00", "end": "07:00"}})
>>> now = 1_767_618_000.0  # 2026-01-05 13:00 UTC, 14:00 in Berlin
>>> held = surfaces(pacing, [(1, int(now) - 600)], ([], []), now, "Europe/Berlin",
...                 content={"tour": True, "banner": True})
>>> held["tour"]
SurfaceAllowed(show=False, reason='overall gap: the last interruption was 10 min ago (at least 30 min apart)')
>>> night = surfaces(pacing, [], ([], []), now + 9 * 3600, "Europe/Berlin", content={"tour": True})
>>> night["tour"].reason
'quiet hours 22:00-07:00 (23:00 in Europe/Berlin)'
"""

from __future__ import annotations

import datetime as dt
import functools
import zoneinfo
from collections.abc import Callable

import msgspec

from engine.catalog import SURFACES, Cap, Pacing, QuietHours
from engine.profile import MAX_DEPTH, SURFACE_CODES, show_depth

#: Show one more interruption only if the user accepts it with at least this chance: a
#: dismissal is taken to cost as much as a completion is worth.
ACCEPT_AT_LEAST = 0.5
#: Before any answer of theirs: the chance a user accepts a first interruption of the day, and
#: how much lower each later one is. Two interruptions a day pass; a third waits for evidence.
PRIOR_FIRST = 0.75
PRIOR_DECAY = 0.75
#: How many answers of the user's the prior is worth.
PRIOR_STRENGTH = 2.0
#: Where the request's time zone is missing or unknown.
DEFAULT_TIMEZONE = "UTC"


class SurfaceAllowed(msgspec.Struct):
    """Whether a surface may be shown now, and why (``surfaces`` of a decision's answer)."""

    show: bool
    reason: str


ALLOWED = "allowed"
NOTHING = "nothing to show"


@functools.lru_cache(maxsize=512)
def _zone(name: str) -> zoneinfo.ZoneInfo | None:
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return None


def local_time(now: float, timezone: str | None) -> tuple[dt.datetime, str]:
    """``now`` in the user's time zone (UTC when it is missing or unknown), and the zone used.

    >>> local_time(1_767_618_000.0, "America/New_York")[0].strftime("%H:%M")
    '08:00'
    >>> local_time(1_767_618_000.0, "Mars/Olympus")[1]
    'UTC'
    """
    zone = _zone(timezone) if timezone else None
    name = timezone if zone is not None and timezone else DEFAULT_TIMEZONE
    return dt.datetime.fromtimestamp(now, zone or dt.UTC), name


def _minutes(clock: str) -> int:
    hours, minutes = clock.split(":")
    return int(hours) * 60 + int(minutes)


def in_quiet_hours(local: dt.datetime, quiet: QuietHours) -> bool:
    """Whether a local time falls in the quiet hours (an end before the start spans midnight).

    >>> night = QuietHours(start="22:00", end="07:00")
    >>> times = [dt.datetime(2026, 1, 5, h, m) for h, m in ((21, 59), (22, 0), (6, 59), (7, 0))]
    >>> [in_quiet_hours(local, night) for local in times]
    [False, True, True, False]
    """
    minute = local.hour * 60 + local.minute
    start, end = _minutes(quiet.start), _minutes(quiet.end)
    if start < end:
        return start <= minute < end
    return minute >= start or minute < end


def day_start(local: dt.datetime) -> float:
    """The epoch second of the local midnight that began ``local``'s day (a day with a
    daylight-saving change is as long as it is).

    >>> day_start(local_time(1_767_618_000.0, "Asia/Tokyo")[0])  # 22:00 in Tokyo, 15:00 UTC
    1767538800.0
    """
    return local.replace(hour=0, minute=0, second=0, microsecond=0).timestamp()


def acceptance(accepted: list[int], declined: list[int], depth: int) -> float:
    """The chance the user accepts an interruption coming ``depth`` deep into their day: the
    mean of Beta(prior + accepted at that depth or deeper, prior + declined at that depth or
    shallower). Tolerance is monotone: one who accepted a fourth interruption would have
    accepted a second, one who declined a second would decline a fourth.

    >>> round(acceptance([], [], 0), 2), round(acceptance([], [], 2), 2)  # the prior
    (0.75, 0.42)
    >>> round(acceptance([0, 0, 3], [], 2), 2)  # accepted three third-of-the-day ones
    0.77
    >>> round(acceptance([], [2, 0], 1), 2)  # declined two first ones
    0.28
    """
    depth = min(depth, MAX_DEPTH)
    prior = PRIOR_FIRST * PRIOR_DECAY**depth
    alpha = PRIOR_STRENGTH * prior + sum(accepted[depth:])
    beta = PRIOR_STRENGTH * (1 - prior) + sum(declined[: depth + 1])
    return alpha / (alpha + beta)


def _cap_reason(label: str, cap: Cap, shown: list[int], today_from: float, now: float) -> str | None:
    """Why ``cap`` holds back one more of the interruptions ``shown`` (seconds), or None."""
    if cap.max_per_day is not None:
        today = sum(1 for s in shown if s >= today_from)
        if today >= cap.max_per_day:
            return f"{label} cap: {today} today (at most {cap.max_per_day} a day)"
    if cap.min_gap_minutes is not None and shown:
        ago = (now - shown[-1]) / 60
        if ago < cap.min_gap_minutes:
            return (
                f"{label} gap: the last {'interruption' if label == 'overall' else label} was "
                f"{ago:.0f} min ago (at least {cap.min_gap_minutes:g} min apart)"
            )
    return None


def surfaces(
    pacing: Pacing,
    shows: list[tuple[int, int]],
    tolerance: tuple[list[int], list[int]],
    now: float,
    timezone: str | None,
    content: dict[str, bool],
    continuing: str | None = None,
) -> dict[str, SurfaceAllowed]:
    """What may be shown now, per surface: ``shows`` are the user's interruptions (surface
    code, second; :meth:`engine.profile.UserState.shows`), ``tolerance`` their accepted and
    declined counts by depth, ``content`` which surfaces have something to show and
    ``continuing`` a surface whose tour the user is in the middle of (its next step is no new
    interruption). At most one interruption per answer: the first allowed of tour, tooltip,
    banner."""
    every = [second for _, second in shows]
    # The user's local time, worked out once per answer and only if a rule needs it.
    clock: list[tuple[dt.datetime, str]] = []

    def local() -> tuple[dt.datetime, str]:
        if not clock:
            clock.append(local_time(now, timezone))
        return clock[0]

    out: dict[str, SurfaceAllowed] = {}
    chosen: str | None = None
    for surface in SURFACES:
        reason: str | None
        if not content.get(surface):
            reason = NOTHING
        elif surface == continuing:
            reason = None
        elif chosen is not None:
            reason = f"one interruption at a time: the {chosen} is shown"
        else:
            reason = _rule_reason(pacing, surface, shows, every, tolerance, now, local)
        if reason is None:
            if chosen is None:
                chosen = surface
                out[surface] = SurfaceAllowed(
                    True, "tour in progress: its next step" if surface == continuing else ALLOWED
                )
            else:
                out[surface] = SurfaceAllowed(False, f"one interruption at a time: the {chosen} is shown")
        else:
            out[surface] = SurfaceAllowed(False, reason)
    return out


def _rule_reason(
    pacing: Pacing,
    surface: str,
    shows: list[tuple[int, int]],
    every: list[int],
    tolerance: tuple[list[int], list[int]],
    now: float,
    local_now: Callable[[], tuple[dt.datetime, str]],
) -> str | None:
    quiet = pacing.quiet_hours
    # The local time only where a rule needs it (a decision without quiet hours, caps per day
    # or anything shown yet is the common case).
    today_from = now
    if quiet is not None or (shows and (pacing.overall.max_per_day is not None or _daily(pacing, surface))):
        local, zone = local_now()
        if quiet is not None and in_quiet_hours(local, quiet):
            return f"quiet hours {quiet.start}-{quiet.end} ({local:%H:%M} in {zone})"
        today_from = day_start(local)
    reason = _cap_reason("overall", pacing.overall, every, today_from, now)
    if reason is not None:
        return reason
    code = SURFACE_CODES[surface]
    mine = [second for c, second in shows if c == code]
    reason = _cap_reason(surface, getattr(pacing.surfaces, surface), mine, today_from, now)
    if reason is not None:
        return reason
    if pacing.learned:
        depth = show_depth(shows, int(now))
        chance = acceptance(*tolerance, depth)
        if chance < ACCEPT_AT_LEAST:
            nth = "5th or later" if depth >= MAX_DEPTH else _ordinal(depth + 1)
            return (
                f"learned tolerance: a {nth} interruption within a day is accepted with "
                f"p={chance:.2f} by this user (below {ACCEPT_AT_LEAST:g})"
            )
    return None


def _daily(pacing: Pacing, surface: str) -> bool:
    cap: Cap = getattr(pacing.surfaces, surface)
    return cap.max_per_day is not None


def _ordinal(n: int) -> str:
    return {1: "1st", 2: "2nd", 3: "3rd"}.get(n, f"{n}th")
