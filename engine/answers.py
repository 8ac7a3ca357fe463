"""Answering one user from their partition: a decision, a tutorial variant, flags, the user's view.

This is what a shard does with a request for a user, minus the transport: whether the user
permits personalization, the learning policy's session for them, the models' insights, the
decision itself (:class:`engine.decision.Decider`), and what must be logged for it (the
:class:`~engine.learning.DecisionRecord` of a choice, and the user's first exposure to each
experiment the answer reached). The shard publishes the logs; nothing here does I/O.

>>> from engine.catalog import DEFAULT_CATALOG, load_catalog
>>> from engine.decision import Decider
>>> from engine.learning import Learner
>>> from engine.partition import PartitionState
>>> catalog = load_catalog(DEFAULT_CATALOG)
>>> decider = Decider(catalog)
>>> answers = Answers(decider, Learner(catalog, decider))
>>> part = PartitionState(0)
>>> decided = answers.decide(part, "k" * 26, {"device_type": "mobile"}, now=0.0)
>>> decided.answer.step.id, decided.logs.decision, decided.logs.exposures
('welcome', None, [])
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar

import msgspec

from engine.decision import Decider, DecisionAnswer, Exposure, TutorialAnswer
from engine.experiments import ExposureRecord
from engine.learning import ChoiceSession, DecisionRecord, Learner
from engine.partition import PartitionState
from engine.profile import UserState, consent_allows

#: Exposures published and not yet seen applied, kept at most (then forgotten at once: a
#: duplicate publish is still dropped by JetStream's duplicate window and by the partition).
PENDING_EXPOSURES = 100_000

T = TypeVar("T")


class Logs(msgspec.Struct):
    """What an answer must log to its user's partition: the decision record of a choice (it
    opens the decision's reward window) and the user's first exposures to experiments."""

    partition: int
    decision: DecisionRecord | None = None
    exposures: list[ExposureRecord] = msgspec.field(default_factory=list)


class Answered(msgspec.Struct, Generic[T]):
    """An answer for the client and what the shard must log for it."""

    answer: T
    logs: Logs


class FlagsAnswer(msgspec.Struct):
    """Every flag's value for a user with why (``value``, ``reason``, ``rule``), and the
    user's segments: the answer of the ``flags`` request."""

    flags: dict[str, dict[str, Any]]
    segments: list[str]


class Answers:
    """A shard's answers to its users' requests, over the partition that holds each user.

    One per shard: it remembers the exposures it logged until their partition applies them, so
    a burst of decisions for one user logs one exposure per experiment.
    """

    def __init__(self, decider: Decider, learner: Learner, personalize_by_default: bool = True) -> None:
        self.decider = decider
        self.learner = learner
        self.personalize_by_default = personalize_by_default
        #: Below this activation probability a user is in the ``activation_low`` segment.
        self.activation_low_below = decider.catalog.learning.activation_low_below
        #: (experiment, user key) of exposures logged and not yet seen applied.
        self.exposures_pending: set[tuple[str, str]] = set()

    def personalize(self, part: PartitionState, key: str, user: UserState | None) -> bool:
        """Whether the user permits personalization (by the catalog's consent mode if unsaid)."""
        if user is None:
            # A user without analytics consent has only a consent record (or nothing yet).
            bits = part.consent_of(key)
            return consent_allows(bits or 0, "personalization", self.personalize_by_default)
        return bool(user.consent_given("personalization", self.personalize_by_default))

    def chooser(
        self,
        part: PartitionState,
        key: str,
        user: UserState | None,
        context: dict[str, Any] | None,
        now: float,
    ) -> ChoiceSession:
        """The learning policy's session for this request (keeping the user's open decisions)."""
        learning = part.learning
        open_arms = learning.open_arms(key) if learning is not None else {}
        return self.learner.session(key, user, context, now, open_arms, part.vocab)

    def decide(
        self, part: PartitionState, key: str, context: dict[str, Any] | None, now: float
    ) -> Answered[DecisionAnswer]:
        """The next step, tutorial variant, message and flags for ``key``, with the learning
        models' insights where the policy chooses for the user."""
        user = part.users.get(key)
        personalize = self.personalize(part, key, user)
        chooser = self.chooser(part, key, user, context, now) if personalize else None
        insights: dict[str, Any] = {}
        extra = []
        if chooser is not None and part.learning is not None:
            insights = part.learning.insights(key, user, part.vocab, chooser)
            probability = insights["activation_probability"]
            if probability is not None and probability < self.activation_low_below:
                extra.append("activation_low")
        decision = self.decider.decide(key, user, part.vocab, context, now, personalize, chooser, extra)
        answer = decision.answer
        if insights:
            answer.activation_probability = insights["activation_probability"]
            answer.recommended_features = insights["recommended_features"]
        logs = Logs(
            part.partition,
            chooser.record() if chooser is not None else None,
            self.exposures_to_log(part, key, user, decision.exposures, now),
        )
        return Answered(answer, logs)

    def tutorial(
        self,
        part: PartitionState,
        key: str,
        context: dict[str, Any] | None,
        now: float,
        step: str | None = None,
        feature: str | None = None,
    ) -> Answered[TutorialAnswer | None]:
        """Which variant of the tutorial for ``step`` or ``feature`` the user should see (None:
        the catalog has no such tutorial)."""
        user = part.users.get(key)
        chooser = self.chooser(part, key, user, context, now) if self.personalize(part, key, user) else None
        choice = self.decider.select_tutorial(
            user,
            context,
            now,
            step=step,
            feature=feature,
            chooser=chooser,
            vocab=part.vocab,
            user_key=key,
            personalize=chooser is not None,
        )
        logs = Logs(part.partition, chooser.record() if chooser is not None else None)
        if choice is None:
            return Answered(None, logs)
        logs.exposures = self.exposures_to_log(part, key, user, choice.exposures, now)
        return Answered(choice.answer, logs)

    def flags(
        self, part: PartitionState, key: str, context: dict[str, Any] | None, now: float
    ) -> FlagsAnswer:
        """Every flag for the user; without personalization, from the request's context alone."""
        user = part.users.get(key)
        if not self.personalize(part, key, user):
            user = None  # the default flow: flags from the request's context alone
        segments = self.decider.segments(user, context or {}, now, part.vocab if user else None)
        return FlagsAnswer(self.decider.flags(key, segments), segments)

    def user_view(self, part: PartitionState, key: str, now: float) -> dict[str, Any] | None:
        """The user's live state with the learning models' insights, or None if never seen."""
        view = part.view(key, now)
        if view is not None and part.learning is not None:
            user = part.users[key]
            session = self.learner.session(key, user, None, now, {}, part.vocab)
            view.update(part.learning.insights(key, user, part.vocab, session))
        return view

    def exposures_to_log(
        self, part: PartitionState, key: str, user: UserState | None, exposures: list[Exposure], now: float
    ) -> list[ExposureRecord]:
        """The user's first exposure to each experiment an answer reached, not logged yet: the
        partition applying it keeps one per user and experiment."""
        if not exposures or part.experiments is None:
            return []
        pending = self.exposures_pending
        records = []
        for experiment, arm in exposures:
            if part.experiments.is_exposed(key, experiment):
                pending.discard((experiment, key))
                continue
            if (experiment, key) in pending:
                continue
            if len(pending) > PENDING_EXPOSURES:
                pending.clear()  # bounded; a duplicate publish is still dropped downstream
            pending.add((experiment, key))
            records.append(
                ExposureRecord(
                    experiment=experiment,
                    arm=arm,
                    user_id=key,
                    ts=now,
                    pre=user.engagement_at(now) if user is not None else 0.0,
                )
            )
        return records
