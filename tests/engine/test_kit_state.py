"""The in-app kit's flow state in the live profile, and the decide answer built from it."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from engine.answers import Answers
from engine.catalog import DEFAULT_CATALOG, Catalog, load_catalog
from engine.decision import Decider, DecisionAnswer
from engine.events import EventKind, encode_event, event_from_object
from engine.keys import Pseudonymizer
from engine.learning import Learner
from engine.partition import PartitionSetup, PartitionState
from engine.profile import UserState, Vocabularies

NOW = 1_767_618_000.0  # 2026-01-05 13:00 UTC
KEY = Pseudonymizer(b"s" * 32).key("someone")
DESKTOP = {"device_type": "desktop", "locale": "de-DE", "timezone": "UTC"}


def event(kind: str, ts: float, **props: Any) -> dict[str, Any]:
    return {"type": kind, "ts": ts, "props": props}


def viewed(
    index: int, ts: float, tutorial: str = "first_project", variant: str = "interactive"
) -> dict[str, Any]:
    return event("tour_step_viewed", ts, tutorial=tutorial, variant=variant, index=index)


def shown(surface: str, ts: float, ident: str = "first_project") -> dict[str, Any]:
    return event("surface_shown", ts, surface=surface, id=ident)


def play(*bodies: dict[str, Any]) -> tuple[UserState, Vocabularies]:
    vocab, user = Vocabularies(), UserState.new(NOW)
    for n, body in enumerate(bodies):
        user.apply(event_from_object({"event_id": f"e{n}", "user_id": "k", **body}), vocab)
    return user, vocab


# ---------------------------------------------------------------------- the live profile


def test_tour_progress_resumes_at_the_last_step_seen_or_after_a_skip() -> None:
    user, vocab = play(shown("tour", NOW), viewed(0, NOW + 1), viewed(2, NOW + 20), viewed(1, NOW + 30))
    ids = vocab.tutorials.find("first_project"), vocab.variants.find("interactive")
    assert user.tour_state(*ids) == (1, 1, int(NOW + 30))  # back to step 1: the last one seen
    skip = event("tour_step_skipped", NOW + 40, tutorial="first_project", variant="interactive", index=1)
    user.apply(event_from_object({"event_id": "s", "user_id": "k", **skip}), vocab)
    assert user.tour_state(*ids)[0] == 2
    assert user.count(EventKind.TOUR_STEP_VIEWED) == 3 and user.count(EventKind.TOUR_STEP_SKIPPED) == 1


def test_a_dismissal_closes_every_variant_and_a_completion_starts_over() -> None:
    user, vocab = play(
        shown("tour", NOW),
        viewed(1, NOW + 1),
        event("surface_dismissed", NOW + 5, surface="tour", id="first_project", index=1),
    )
    tour = user.view(vocab, NOW + 10)["flow"]["tours"][0]
    assert tour["dismissed"] and not tour["in_progress"] and tour["resume_at"] == 0
    user, vocab = play(
        shown("tooltip", NOW, "connect_data"),
        viewed(0, NOW + 1, "connect_data"),
        event("tutorial_completed", NOW + 9, tutorial="connect_data", variant="interactive"),
    )
    tour = user.view(vocab, NOW + 10)["flow"]["tours"][0]
    assert tour["completed"] and not tour["dismissed"] and not tour["in_progress"]
    assert user.tolerance() == ([1, 0, 0, 0, 0, 0], [0] * 6)  # accepted at depth 0


def test_a_tour_continued_is_no_new_interruption_and_old_shows_go() -> None:
    user, _ = play(shown("tour", NOW), viewed(0, NOW + 1), shown("tour", NOW + 60), viewed(1, NOW + 61))
    assert [s for _, s in user.shows()] == [int(NOW)]  # the reload's show is the same interruption
    assert user.count(EventKind.SURFACE_SHOWN) == 2  # both counted as events
    later = [shown("banner", NOW + 3 * 86400 + k * 60, "welcome") for k in range(3)]
    user, _ = play(shown("tour", NOW), *later)
    assert [s for _, s in user.shows()] == [int(NOW + 3 * 86400 + k * 60) for k in range(3)]  # 2 days kept
    user, _ = play(shown("tour", NOW), shown("banner", NOW + 5 * 86400, "welcome"))
    assert user.shows() == [(3, int(NOW + 5 * 86400))]


def test_tolerance_counts_answers_by_depth() -> None:
    user, _ = play(
        shown("banner", NOW, "welcome"),
        shown("tour", NOW + 600),
        event("surface_dismissed", NOW + 700, surface="tour", id="first_project"),
        shown("banner", NOW + 2 * 86400, "welcome"),
        event("surface_dismissed", NOW + 2 * 86400 + 5, surface="banner", id="welcome"),
    )
    # The tour closed after the banner: declined at depth 1. Closing a banner is how it ends.
    assert user.tolerance() == ([0] * 6, [0, 1, 0, 0, 0, 0])
    assert user.count(EventKind.SURFACE_DISMISSED) == 2


def test_users_without_flow_events_keep_their_state_as_it_was() -> None:
    user, vocab = play(event("tutorial_completed", NOW, tutorial="connect_data", variant="video"))
    assert user.tutorials is not None and len(user.tutorials) == 4  # one tutorial entry, nothing else
    assert "flow" not in user.view(vocab, NOW)
    assert user.tolerance() == ([0] * 6, [0] * 6)  # a completion outside the kit teaches nothing


FLOW = [
    event("session_started", NOW),
    shown("banner", NOW, "welcome"),
    shown("tour", NOW + 600),
    viewed(0, NOW + 601),
    event("tutorial_started", NOW + 601, tutorial="first_project", variant="interactive"),
    viewed(1, NOW + 620),
    event("surface_dismissed", NOW + 700, surface="tour", id="first_project", index=1),
    shown("tooltip", NOW + 4000, "connect_data"),
    viewed(0, NOW + 4001, "connect_data"),
    event("tutorial_completed", NOW + 4010, tutorial="connect_data", variant="interactive"),
    event("tour_step_skipped", NOW + 5000, tutorial="collaboration", variant="interactive", index=0),
]


@pytest.mark.parametrize("cut", range(len(FLOW) + 1))
def test_flow_state_snapshot_restore_mid_stream_equals_uninterrupted(cut: int) -> None:
    """Cold start (all events) and recovery (a snapshot, then the rest) are one path."""
    straight, vocab = play(*FLOW)
    first, vocab_first = play(*FLOW[:cut])
    restored = UserState.restore(msgspec.msgpack.decode(msgspec.msgpack.encode(first.snapshot())))
    vocab_restored = Vocabularies(vocab_first.snapshot())
    for n, body in enumerate(FLOW[cut:]):
        restored.apply(event_from_object({"event_id": f"r{n}", "user_id": "k", **body}), vocab_restored)
    assert restored.view(vocab_restored, NOW + 6000) == straight.view(vocab, NOW + 6000)
    assert restored.shows() == straight.shows() and restored.tolerance() == straight.tolerance()


def test_a_partition_snapshot_keeps_the_flow_state() -> None:
    part = PartitionState(0)
    for seq, body in enumerate(FLOW, 1):
        part.apply_message(seq, "k", encode_event({"event_id": f"e{seq}", "user_id": "k", **body}))
    again = PartitionState.restore(part.snapshot())
    assert again.view("k", NOW + 6000) == part.view("k", NOW + 6000)
    assert again.view("k", NOW + 6000)["flow"]["tours"][0]["dismissed"] is True  # type: ignore[index]


# ---------------------------------------------------------------------- the answer


def setup(catalog: Catalog | None = None) -> tuple[Answers, PartitionState]:
    catalog = catalog or load_catalog(DEFAULT_CATALOG)
    decider = Decider(catalog)
    learner = Learner(catalog, decider, seed=1)
    return Answers(decider, learner), PartitionState.build(0, None, PartitionSetup(learner))


def apply(part: PartitionState, *bodies: dict[str, Any]) -> None:
    for body in bodies:
        seq = part.last_seq + 1
        part.apply_message(seq, KEY, encode_event({"event_id": f"e{seq}", "user_id": KEY, "ts": NOW, **body}))


def done(*steps: str) -> list[dict[str, Any]]:
    return [{"type": "step_completed", "props": {"step": s}} for s in steps]


def decide(answers: Answers, part: PartitionState, now: float = NOW, **context: Any) -> DecisionAnswer:
    return answers.decide(part, KEY, {**DESKTOP, **context}, now).answer


def test_the_answer_has_the_checklist_with_urls_and_the_decided_step() -> None:
    answers, part = setup()
    apply(part, {"type": "session_started"}, *done("welcome"))
    answer = decide(answers, part)
    assert answer.step is not None and answer.step.id == "profile"
    journey = [(item.id, item.url, item.done) for item in answer.journey]
    assert journey[:3] == [
        ("welcome", "/welcome", True),
        ("profile", "/settings/profile", False),
        ("connect_data", "/data/import", False),
    ]
    assert answer.journey[1].title == "Erzähl uns von dir"  # the user's locale
    encoded = msgspec.json.decode(msgspec.json.encode(answer))
    assert list(encoded)[-3:] == ["catalog_version", "journey", "surfaces"]  # added at the end


def first_project_answer(answers: Answers, part: PartitionState, now: float = NOW) -> DecisionAnswer:
    for _ in range(20):  # the policy chooses the variant; the tour is on "interactive"
        answer = decide(answers, part, now)
        if answer.tutorial is not None and answer.tutorial.variant == "interactive":
            return answer
    raise AssertionError("the interactive variant was never chosen")


def test_a_tours_progress_makes_the_next_answer_resume_and_a_dismissal_stops_it() -> None:
    answers, part = setup()
    apply(part, {"type": "session_started"}, *done("welcome", "profile", "connect_data"))
    answer = first_project_answer(answers, part)
    tutorial = answer.tutorial
    assert tutorial is not None and tutorial.surface == "tour" and tutorial.resume_at == 0
    assert [s.target for s in tutorial.tour] == ["#new-project", "#project-name", "#project-create"]
    assert tutorial.tour[0].title == "Projekt anlegen" and tutorial.tour[1].placement == "right"
    assert answer.surfaces["tour"].show and answer.surfaces["banner"].reason.startswith("one interruption")
    apply(part, shown("tour", NOW + 10), viewed(0, NOW + 11), viewed(1, NOW + 30))
    resumed = decide(answers, part, NOW + 60)
    assert resumed.tutorial is not None and resumed.tutorial.variant == "interactive"  # kept: in progress
    assert resumed.tutorial.resume_at == 1
    assert (
        resumed.surfaces["tour"].show and resumed.surfaces["tour"].reason == "tour in progress: its next step"
    )
    apply(part, event("surface_dismissed", NOW + 90, surface="tour", id="first_project", index=1))
    after = decide(answers, part, NOW + 120)
    assert after.tutorial is None and not after.surfaces["tour"].show  # no variant repeats
    assert any("dismissed by the user, not offered again" in line for line in after.explain)


def test_pacing_holds_back_a_second_tour_within_the_gap_and_says_why() -> None:
    answers, part = setup()
    apply(part, {"type": "session_started"}, *done("welcome", "profile", "connect_data"))
    first_project_answer(answers, part)
    # The banner was shown, then 2 minutes later: the overall gap (10 min) holds back the tour.
    apply(part, shown("banner", NOW + 10, "welcome"))
    answer = first_project_answer(answers, part, NOW + 130)
    assert answer.surfaces["tour"].show is False
    reason = "overall gap: the last interruption was 2 min ago (at least 10 min apart)"
    assert answer.surfaces["tour"].reason == reason
    assert f"tour: held back: {reason}" in answer.explain


def test_a_repeat_variant_is_offered_again() -> None:
    catalog = load_catalog(DEFAULT_CATALOG)
    data = catalog.model_dump(by_alias=True, exclude_none=True)
    variants = data["tutorials"][0]["variants"]
    variants[0]["repeat"] = True
    answers, part = setup(Catalog.model_validate(data))
    apply(part, {"type": "session_started"}, *done("welcome", "profile", "connect_data"))
    apply(part, shown("tour", NOW), viewed(2, NOW + 1))
    apply(part, event("tutorial_completed", NOW + 2, tutorial="first_project", variant="interactive"))
    # first_project is completed by its tutorial: the step is done. Its tour would show again
    # on a step that is not done; the variant stays eligible.
    user = part.users[KEY]
    assert answers.decider._not_seen_off(
        answers.decider.catalog.tutorials[0], ["interactive", "video"], user, part.vocab, []
    ) == ["interactive"]


def test_a_dismissal_is_a_zero_reward_for_the_decision_that_showed_the_tour() -> None:
    answers, part = setup()
    apply(part, {"type": "session_started"}, *done("welcome", "profile", "connect_data"))
    decided = answers.decide(part, KEY, DESKTOP, NOW)
    record = decided.logs.decision
    assert record is not None and decided.answer.tutorial is not None
    part.apply_message(part.last_seq + 1, f"{KEY}-decision", msgspec.msgpack.encode(record))
    learning = part.learning
    assert learning is not None and learning.open_arms(KEY)
    rewards = learning.counts["rewards"]
    apply(
        part,
        event(
            "surface_dismissed", NOW + 5, surface="tour", id="first_project", decision_id=record.decision_id
        ),
    )
    assert learning.counts["dismissed"] == 1 and learning.counts["rewards"] == rewards + 1
    assert "tutorial:first_project" not in learning.open_arms(KEY)
