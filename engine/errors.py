"""Exception types raised by the engine package, defined in one place."""

from __future__ import annotations


class HeadstartError(Exception):
    """Base class of every error Headstart raises on purpose."""


class InvalidEvent(HeadstartError):
    """An event could not be decoded or failed validation.

    ``reason`` is a short machine-readable code (used as the dead-letter reason),
    ``detail`` a human-readable explanation that never contains the raw user id.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class ConfigError(HeadstartError):
    """A configuration file or setting is invalid; the message names the source and field."""


class InvalidEvents(InvalidEvent):
    """Some events of a batched message are invalid; the valid ones were applied. ``rejected``
    holds each invalid one as (its index in the batch, why), for dead letters of their own."""

    def __init__(self, rejected: list[tuple[int, InvalidEvent]]) -> None:
        super().__init__("invalid_in_batch", f"{len(rejected)} events of the batch are invalid")
        self.rejected = rejected
