"""What a shard's answers log: decisions (where their rewards are attributed) and experiment
exposures, published to the user's partition and to their logs off the reply's path.

A decision is answered before its record is stored: a failed publish loses what the decision
would have taught, never the answer. The counters say how often that happened.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import Any

from nats.js import JetStreamContext

from engine.answers import Logs
from engine.experiments import encode_exposure
from engine.learning import encode_record
from headstart.adapters.streams import publish_prepared
from headstart.adapters.topology import record_subjects

log = logging.getLogger(__name__)

Spawn = Callable[[Coroutine[Any, Any, Any]], None]


class DecisionLog:
    """Publishes an answer's :class:`~engine.answers.Logs` in the background.

    ``spawn`` runs a coroutine without waiting for it (the shard's background tasks); ``js`` is
    given once the shard is connected. Each record's id is its JetStream message id, so a
    retried publish is stored once.
    """

    def __init__(self, spawn: Spawn) -> None:
        self._spawn = spawn
        self._js: JetStreamContext | None = None
        self.decisions_logged = 0
        self.exposures_logged = 0
        #: Decision or exposure records whose publish failed (the answer was served).
        self.failures = 0

    def connect(self, js: JetStreamContext) -> None:
        self._js = js

    def publish(self, logs: Logs) -> None:
        """A decision that made a choice goes to its user's partition, where applying it opens
        its reward window, and to the decisions log; the user's first exposures go to their
        partition (where applying one keeps one per user and experiment) and to HS_EXPOSURES."""
        record = logs.decision
        if record is not None:
            subjects = record_subjects(logs.partition, record.user_id, "decision")
            self._spawn(self._publish(subjects, encode_record(record), record.decision_id, "decision"))
        for exposure in logs.exposures:
            subjects = record_subjects(logs.partition, exposure.user_id, "exposure")
            message_id = f"{exposure.experiment}:{exposure.user_id}"
            self._spawn(self._publish(subjects, encode_exposure(exposure), message_id, "exposure"))

    async def _publish(self, subjects: tuple[str, str], data: bytes, message_id: str, kind: str) -> None:
        assert self._js is not None, "publish before connect"
        headers = {"Nats-Msg-Id": message_id}
        try:
            await publish_prepared(self._js, [(subject, data, headers) for subject in subjects])
        except Exception as exc:  # noqa: BLE001 - the decision was served; only its learning is lost
            self.failures += 1
            log.warning("%s log publish failed: %s", kind, type(exc).__name__)
            return
        if kind == "exposure":
            self.exposures_logged += 1
        else:
            self.decisions_logged += 1
