"""engine.pacing: caps, gaps and quiet hours in the user's time zone, and learned tolerance."""

from __future__ import annotations

import datetime as dt

import pytest

from engine.catalog import Pacing
from engine.pacing import ACCEPT_AT_LEAST, acceptance, day_start, in_quiet_hours, local_time, surfaces
from engine.profile import SURFACE_CODES

TOUR, TOOLTIP, BANNER = SURFACE_CODES["tour"], SURFACE_CODES["tooltip"], SURFACE_CODES["banner"]
NO_ANSWERS: tuple[list[int], list[int]] = ([], [])


def at(iso: str) -> float:
    """An instant given in UTC."""
    return dt.datetime.fromisoformat(iso).replace(tzinfo=dt.UTC).timestamp()


def pacing(**section: object) -> Pacing:
    return Pacing.model_validate({"learned": False, **section})


def allowed(
    rules: Pacing,
    shows: list[tuple[int, int]],
    now: float,
    timezone: str | None = "UTC",
    content: tuple[str, ...] = ("tour",),
    tolerance: tuple[list[int], list[int]] = NO_ANSWERS,
    continuing: str | None = None,
) -> dict[str, tuple[bool, str]]:
    answer = surfaces(rules, shows, tolerance, now, timezone, dict.fromkeys(content, True), continuing)
    return {name: (a.show, a.reason) for name, a in answer.items()}


@pytest.mark.parametrize(
    ("start", "end", "clock", "quiet"),
    [
        ("22:00", "07:00", "21:59", False),
        ("22:00", "07:00", "22:00", True),
        ("22:00", "07:00", "00:00", True),
        ("22:00", "07:00", "06:59", True),
        ("22:00", "07:00", "07:00", False),
        ("12:00", "13:30", "13:29", True),  # the same day
        ("12:00", "13:30", "13:30", False),
        ("23:30", "00:15", "00:10", True),  # a few minutes across midnight
        ("23:30", "00:15", "23:00", False),
    ],
)
def test_quiet_hours_across_midnight(start: str, end: str, clock: str, quiet: bool) -> None:
    rules = pacing(quiet_hours={"start": start, "end": end})
    assert rules.quiet_hours is not None
    local = dt.datetime.fromisoformat(f"2026-01-05T{clock}")
    assert in_quiet_hours(local, rules.quiet_hours) is quiet


def test_quiet_hours_are_the_users_local_time() -> None:
    rules = pacing(quiet_hours={"start": "22:00", "end": "07:00"})
    now = at("2026-01-05T22:30")  # 23:30 in Berlin, 17:30 in New York, 07:30 in Tokyo
    berlin = allowed(rules, [], now, "Europe/Berlin")["tour"]
    assert berlin == (False, "quiet hours 22:00-07:00 (23:30 in Europe/Berlin)")
    assert allowed(rules, [], now, "America/New_York")["tour"] == (True, "allowed")
    assert allowed(rules, [], now, "Asia/Tokyo")["tour"] == (True, "allowed")
    # Missing or unknown: UTC (22:30 there: quiet).
    assert allowed(rules, [], now, None)["tour"][1] == "quiet hours 22:00-07:00 (22:30 in UTC)"
    assert allowed(rules, [], now, "Nowhere/Land")["tour"][1].endswith("(22:30 in UTC)")


def test_a_day_is_the_users_local_day() -> None:
    rules = pacing(overall={"max_per_day": 1})
    shown = int(at("2026-01-05T22:30"))  # 23:30 in Berlin on the 5th; 17:30 in New York
    now = at("2026-01-05T23:30")  # 00:30 in Berlin on the 6th; 18:30 in New York on the 5th
    assert allowed(rules, [(TOUR, shown)], now, "Europe/Berlin")["tour"] == (True, "allowed")
    assert allowed(rules, [(TOUR, shown)], now, "America/New_York")["tour"] == (
        False,
        "overall cap: 1 today (at most 1 a day)",
    )


def test_day_start_is_local_midnight_also_on_a_daylight_saving_day() -> None:
    local, zone = local_time(at("2026-03-29T12:00"), "Europe/Berlin")  # clocks went forward at 02:00
    assert zone == "Europe/Berlin" and local.hour == 14
    assert day_start(local) == at("2026-03-28T23:00")


def test_caps_overall_and_per_surface_and_gaps() -> None:
    rules = pacing(
        overall={"max_per_day": 3, "min_gap_minutes": 10},
        surfaces={"tour": {"max_per_day": 1}, "banner": {"min_gap_minutes": 120}},
    )
    now = at("2026-01-05T15:00")
    morning = int(at("2026-01-05T09:00"))
    # One tour this morning: the tour's cap is reached, a banner may come.
    answer = allowed(rules, [(TOUR, morning)], now, content=("tour", "banner"))
    assert answer["tour"] == (False, "tour cap: 1 today (at most 1 a day)")
    assert answer["banner"] == (True, "allowed")
    # A banner 5 minutes ago: the overall gap holds back everything.
    answer = allowed(rules, [(BANNER, int(now) - 300)], now, content=("tooltip", "banner"))
    assert answer["tooltip"] == (
        False,
        "overall gap: the last interruption was 5 min ago (at least 10 min apart)",
    )
    # A banner an hour ago: past the overall gap, within the banner's own.
    answer = allowed(rules, [(BANNER, int(now) - 3600)], now, content=("tooltip", "banner"))
    assert answer["tooltip"] == (True, "allowed")
    assert answer["banner"] == (
        False,
        "one interruption at a time: the tooltip is shown",
    )
    answer = allowed(rules, [(BANNER, int(now) - 3600)], now, content=("banner",))
    assert answer["banner"] == (False, "banner gap: the last banner was 60 min ago (at least 120 min apart)")
    # Three today: the overall cap.
    three = [(TOOLTIP, morning), (BANNER, morning + 60), (TOOLTIP, morning + 120)]
    assert (
        allowed(rules, three, now, content=("tooltip",))["tooltip"][1]
        == "overall cap: 3 today (at most 3 a day)"
    )


def test_nothing_to_show_and_one_interruption_at_a_time() -> None:
    answer = allowed(pacing(), [], at("2026-01-05T12:00"), content=("tour", "banner"))
    assert answer == {
        "tour": (True, "allowed"),
        "tooltip": (False, "nothing to show"),
        "banner": (False, "one interruption at a time: the tour is shown"),
    }


def test_a_tour_in_progress_continues_whatever_pacing_says() -> None:
    rules = pacing(
        overall={"max_per_day": 1, "min_gap_minutes": 60}, quiet_hours={"start": "00:00", "end": "23:59"}
    )
    now = at("2026-01-05T12:00")
    answer = allowed(rules, [(TOUR, int(now) - 60)], now, continuing="tour", content=("tour", "banner"))
    assert answer["tour"] == (True, "tour in progress: its next step")
    assert answer["banner"] == (False, "one interruption at a time: the tour is shown")


def test_the_prior_allows_two_interruptions_a_day_and_holds_back_a_third() -> None:
    assert acceptance([], [], 0) > acceptance([], [], 1) >= ACCEPT_AT_LEAST > acceptance([], [], 2)
    rules = Pacing()  # learned, no caps
    now = at("2026-01-05T12:00")
    two = [(TOUR, int(now) - 7200), (BANNER, int(now) - 3600)]
    assert allowed(rules, two[:1], now)["tour"] == (True, "allowed")
    show, reason = allowed(rules, two, now)["tour"]
    assert not show
    assert reason == (
        "learned tolerance: a 3rd interruption within a day is accepted with p=0.42 by this user (below 0.5)"
    )
    # A day later the depth is back to 0.
    assert allowed(rules, two, now + 86400)["tour"] == (True, "allowed")


def test_learned_tolerance_follows_the_users_answers() -> None:
    rules = Pacing()
    now = at("2026-01-05T12:00")
    one = [(TOUR, int(now) - 7200)]
    # Declined second interruptions twice: a second is held back for this user.
    declines = ([1, 0], [0, 2])
    assert not allowed(rules, one, now, tolerance=declines)["tour"][0]
    # Accepted third interruptions: a third passes.
    two = [(TOUR, int(now) - 7200), (TOOLTIP, int(now) - 3600)]
    assert not allowed(rules, two, now)["tour"][0]
    assert allowed(rules, two, now, tolerance=([0, 0, 2], [0, 0, 0]))["tour"] == (True, "allowed")
    # Monotone: accepting deep means accepting shallow; declining shallow means declining deep.
    assert acceptance([0, 0, 0, 3], [], 1) > acceptance([], [], 1)
    assert acceptance([], [2], 3) < acceptance([], [], 3)


def test_learned_false_ignores_tolerance() -> None:
    now = at("2026-01-05T12:00")
    two = [(TOUR, int(now) - 7200), (BANNER, int(now) - 3600)]
    assert allowed(pacing(), two, now, tolerance=([], [5, 5, 5]))["tour"] == (True, "allowed")
