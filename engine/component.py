"""The contract of a partition component: one part of a partition's state (learning, live
segments, experiment exposures...) that the partition drives in stream order.

A :class:`~engine.partition.PartitionState` owns its users' profiles and the stream position;
everything else it keeps is a component, built from a
:class:`~engine.partition.PartitionSetup` by :data:`engine.partition.COMPONENTS`. The partition
hands each component, in that order, every event it keeps (after the user's profile took it),
every decoded record of the learning loop, every user it forgets, and snapshots and restores
each under its own key. Fed the same stream, a component ends in the same state: that is what
makes a replay after a crash exact. ``tests/engine/test_component_contract.py`` holds every
registered component to this.

>>> from engine.experiments import ExperimentPlan, PartitionExperiments
>>> isinstance(PartitionExperiments(ExperimentPlan([])), PartitionComponent)
True
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

from engine.events import Event
from engine.profile import UserState, Vocabularies


@runtime_checkable
class PartitionComponent(Protocol):
    """What a partition asks of each of its components."""

    def on_event(
        self, user_key: str, user: UserState, event: Event, seq: int, vocab: Vocabularies, changed: int
    ) -> None:
        """``event`` (stream sequence ``seq``) was applied to ``user``; ``changed`` is what
        :meth:`UserState.apply <engine.profile.UserState.apply>` reported. Runs for every kept
        event: the common case must cost little."""

    def on_record(self, user_key: str, record: object, seq: int) -> None:
        """A decoded record of the learning loop (a decision, reward or exposure: see
        :meth:`~engine.partition.PartitionState.apply_message`) for ``user_key``; a component
        ignores the kinds it does not use. May raise
        :class:`~engine.errors.InvalidEvent` for a record it cannot take."""

    def forget_user(
        self, user_key: str, user: UserState | None, now: float, origin: int | str, erase: bool = False
    ) -> None:
        """Drop what this component keeps about ``user_key`` (consent withdrawn, profile expired,
        erased). ``user`` is their profile as it was (None: the partition had none), ``origin``
        what caused it (a stream sequence, or an expiry's name); with ``erase`` nothing about the
        user may be left to publish either."""

    def snapshot(self) -> Any:
        """This component's state as msgpack-encodable values (under its key in the partition's
        snapshot)."""

    def restore(self, snap: Any, users: Mapping[str, UserState]) -> None:
        """Load ``snap`` (what :meth:`snapshot` returned, possibly by an older version; None or
        empty: nothing) into this freshly built component. ``users`` are the partition's
        restored profiles, for a component that keeps something in them."""
