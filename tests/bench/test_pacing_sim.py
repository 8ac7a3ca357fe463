"""bench.pacing: the simulated users behave as documented, and every contestant sees the same ones."""

from __future__ import annotations

from bench.pacing import LEARNED, compare, fixed, onboard, population


def test_the_same_population_gives_the_same_result() -> None:
    users = population(50, seed=11)
    again = population(50, seed=11)
    assert [u.tolerance for u in users] == [u.tolerance for u in again]
    assert [onboard(u, fixed(2)) for u in users] == [onboard(u, fixed(2)) for u in again]


def test_a_cap_of_one_never_shows_two_a_day() -> None:
    for user in population(30, seed=2):
        result = onboard(user, fixed(1))
        assert result["shown"] <= len([day for day in user.visits if day])


def test_learned_pacing_is_compared_with_the_best_fixed_cap() -> None:
    result = compare(users=300, seed=5, caps=(1, 2, 3))
    best = result["best_fixed_cap"]
    assert best["cap"] in (1, 2, 3)
    assert best["activation"] == max(r["activation"] for r in result["fixed_caps"].values())
    learned = result["learned"]
    # The simulated world rewards knowing each user's tolerance: fewer dismissals per activated user.
    assert learned["dismissals_per_activated"] < best["dismissals_per_activated"]
    assert LEARNED.learned and not fixed(2).learned
