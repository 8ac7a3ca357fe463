"""What deciding (:mod:`engine.decision`) and learning (:mod:`engine.learning`) need of each other.

The decider asks a learning session to choose among eligible arms; the learner asks the decider
whether a step is complete (to credit a step decision). Each side depends on the small protocol
here, not on the other module, so neither imports the other.

>>> tutorial_point("first_project")
'tutorial:first_project'
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from engine.catalog import Step
    from engine.profile import UserState, Vocabularies

#: The decision point that chooses the next journey step.
POINT_STEP = "step"
TUTORIAL_POINT_PREFIX = "tutorial:"


def tutorial_point(tutorial_id: str) -> str:
    """The decision point that chooses a variant of ``tutorial_id``."""
    return TUTORIAL_POINT_PREFIX + tutorial_id


class Chooser(Protocol):
    """Chooses an arm per decision point for one request (:class:`engine.learning.ChoiceSession`)."""

    @property
    def decision_id(self) -> str | None:
        """The id of the decision the choices make, or None when nothing was chosen."""
        ...

    def choose(self, point: str, eligible: list[str]) -> tuple[str, str]:
        """The arm to serve at ``point`` among ``eligible`` (in catalog order), and why."""
        ...

    def serve(self, policy_name: str) -> None:
        """Let ``policy_name`` choose in this request (an experiment's arm names it)."""
        ...


class StepRules(Protocol):
    """Whether a user completed a journey step (:class:`engine.decision.Decider`)."""

    def completed(self, step: Step, user: UserState | None, vocab: Vocabularies | None) -> bool: ...
