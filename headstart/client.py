"""Python client for a running Headstart: decisions, tutorials, events, rewards and consent.

Meant for a product's backend, with a **server key** (``keys.json``'s ``"server"``; role
``server``): decisions, flags, events and consent for any user, no ``user_hash`` needed even
with identity verification on. It cannot read profiles, export, erase or change the catalog
(the admin key does). With a frontend key under identity verification, pass each user's
``user_hash`` (``headstart.web.identity.user_hash``) to the calls that name a user: a batch of
tracked events is then sent per user.

Sync (:class:`Client`) and async (:class:`AsyncClient`) with the same methods; both retry
connection failures, timeouts, 429 and 5xx-while-unavailable answers with exponential backoff
and jitter (honouring ``Retry-After``; ``httpx-retries``), time out every call (2 s by default:
a frontend asking "what next?" must not hang), decode answers into typed structs, and batch
tracked events (sent when ``batch_size`` are buffered, by :meth:`Client.flush`, and on close).
Retrying is safe for every call: events are deduplicated by ``event_id``, a reward closes its
decision once, and a decision asked twice is two decisions.

Example (against a running engine; ``tests/headstart/test_client_integration.py`` runs it)::

    with Client("http://127.0.0.1:8000", api_key=SERVER_KEY) as hs:
        decision = hs.decide("alice@example.com", context={"device_type": "mobile"})
        hs.track("alice@example.com", "step_completed", props={"step": decision.step.id})
        print(decision.step.id, decision.flags)
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import httpx
import msgspec
from httpx_retries import Retry, RetryTransport

#: Events per ``/v1/events`` request at most (the engine refuses larger batches).
MAX_EVENTS_PER_REQUEST = 1000
#: Calls are retried on these answers (the engine is starting, overloaded or rate limiting).
RETRY_STATUSES = (429, 502, 503, 504)


class Step(msgspec.Struct):
    id: str
    kind: str
    title: str = ""


class TutorialShown(msgspec.Struct):
    id: str
    variant: str
    eligible: list[str] = msgspec.field(default_factory=list)


class Decision(msgspec.Struct):
    """The answer of ``/v1/decide``."""

    decision_id: str
    step: Step | None
    tutorial: TutorialShown | None
    message: str
    flags: dict[str, bool]
    segments: list[str]
    experiments: dict[str, str] = msgspec.field(default_factory=dict)
    step_message: str = ""
    completed_steps: list[str] = msgspec.field(default_factory=list)
    personalized: bool = False
    explain: list[str] = msgspec.field(default_factory=list)
    activation_probability: float | None = None
    recommended_features: list[str] = msgspec.field(default_factory=list)
    #: The stored catalog version the decision was made from (0: a catalog not stored).
    catalog_version: int = 0


class TutorialChoice(msgspec.Struct):
    """The answer of ``/v1/tutorials/select``."""

    tutorial: str
    variant: str | None
    eligible: list[str] = msgspec.field(default_factory=list)
    segments: list[str] = msgspec.field(default_factory=list)
    experiments: dict[str, str] = msgspec.field(default_factory=dict)
    decision_id: str | None = None
    explain: list[str] = msgspec.field(default_factory=list)
    catalog_version: int = 0


class FlagValue(msgspec.Struct):
    value: bool
    reason: str  # TARGETING_MATCH, SPLIT or DEFAULT
    rule: int | None = None
    description: str = ""


class Flags(msgspec.Struct):
    """The answer of ``/v1/flags``; ``stale``: worked out from the request's context alone,
    the user's shard being unavailable."""

    flags: dict[str, FlagValue]
    segments: list[str] = msgspec.field(default_factory=list)
    stale: bool = False


class HeadstartApiError(Exception):
    """Headstart refused a call: its HTTP status, error code and message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message = status, code, message


def _retry(retries: int, backoff_s: float) -> Retry:
    return Retry(
        total=retries,
        backoff_factor=backoff_s,
        status_forcelist=RETRY_STATUSES,
        allowed_methods=["GET", "POST", "PUT", "DELETE"],  # all idempotent here (see above)
        max_backoff_wait=5.0,
    )


def _event(
    user_id: str,
    type_: str,
    props: Mapping[str, Any] | None,
    context: Mapping[str, Any] | None,
    event_id: str | None,
    ts: float | None,
) -> dict[str, Any]:
    event: dict[str, Any] = {
        "event_id": event_id or uuid.uuid4().hex,
        "user_id": user_id,
        "type": type_,
        "ts": time.time() if ts is None else ts,
    }
    if props:
        event["props"] = dict(props)
    if context:
        event["context"] = dict(context)
    return event


def _consent_path(user_id: str) -> str:
    """The consent route for a raw user id, escaped as one path segment (``?``, ``#``, spaces).

    >>> _consent_path("a/b?c")
    '/v1/users/a%2Fb%3Fc/consent'
    """
    return f"/v1/users/{quote(user_id, safe='')}/consent"


def _consent(
    analytics: bool | None, personalization: bool | None, user_hash: str | None
) -> dict[str, bool | str]:
    return {
        k: v
        for k, v in (("analytics", analytics), ("personalization", personalization), ("user_hash", user_hash))
        if v is not None
    }


def _decoded(response: httpx.Response, into: type[Any]) -> Any:
    if response.status_code >= 400:
        try:
            error = response.json()["error"]
            code, message = str(error.get("code")), str(error.get("message"))
        except (ValueError, KeyError, TypeError):
            code, message = "http_error", response.text[:200]
        raise HeadstartApiError(response.status_code, code, message)
    return msgspec.json.decode(response.content, type=into)


class _Base:
    """What both clients share: settings, the event buffer and the request bodies.

    ``api_key``: a server key for a product's backend (see the module's docstring); a frontend
    key under identity verification needs ``user_hash`` on every call naming a user.
    """

    _http_class: Any = httpx.Client

    def __init__(
        self,
        base_url: str,
        api_key: str,
        timeout: float = 2.0,
        retries: int = 3,
        backoff_s: float = 0.05,
        batch_size: int = 100,
    ) -> None:
        self.batch_size = batch_size
        #: Events not yet sent, each with the user_hash it was tracked with (or None).
        self._buffer: list[tuple[dict[str, Any], str | None]] = []
        self._http = self._http_class(
            base_url=base_url,
            headers={"Authorization": f"Bearer {api_key}", "User-Agent": "headstart-python"},
            timeout=timeout,
            transport=RetryTransport(retry=_retry(retries, backoff_s)),
        )

    @staticmethod
    def _user(
        user_id: str, context: Mapping[str, Any] | None, user_hash: str | None = None, **more: Any
    ) -> dict[str, Any]:
        body = {"user_id": user_id, "context": dict(context or {}), **more}
        if user_hash is not None:
            body["user_hash"] = user_hash
        return body

    def _queue(self, user_hash: str | None, *event: Any) -> bool:
        """Buffer an event; whether the buffer is full (time to send)."""
        self._buffer.append((_event(*event), user_hash))
        return len(self._buffer) >= self.batch_size

    def _next_batch(self) -> tuple[int, dict[str, Any]]:
        """How many of the buffered events the next ``/v1/events`` body carries, and the body.

        Events without a hash go together, up to the request's maximum; events with one are
        sent as their user's own batch with that hash (the engine takes a frontend-key batch
        under identity verification for one user). The buffer's order is kept.
        """
        first, signed = self._buffer[0]
        events = []
        for event, user_hash in self._buffer[:MAX_EVENTS_PER_REQUEST]:
            if user_hash != signed or (signed is not None and event["user_id"] != first["user_id"]):
                break
            events.append(event)
        body: dict[str, Any] = {"events": events}
        if signed is not None:
            body["user_hash"] = signed
        return len(events), body


class Client(_Base):
    """A blocking client. Use as a context manager, or call :meth:`close` (which flushes).

    ``user_hash`` (each call naming a user): only for a frontend key under identity
    verification; a server key needs none.
    """

    def decide(
        self, user_id: str, context: Mapping[str, Any] | None = None, *, user_hash: str | None = None
    ) -> Decision:
        body = self._user(user_id, context, user_hash)
        decision: Decision = _decoded(self._http.post("/v1/decide", json=body), Decision)
        return decision

    def select_tutorial(
        self,
        user_id: str,
        step: str | None = None,
        feature: str | None = None,
        context: Mapping[str, Any] | None = None,
        *,
        user_hash: str | None = None,
    ) -> TutorialChoice:
        body = self._user(user_id, context, user_hash, step=step, feature=feature)
        choice: TutorialChoice = _decoded(self._http.post("/v1/tutorials/select", json=body), TutorialChoice)
        return choice

    def flags(
        self, user_id: str, context: Mapping[str, Any] | None = None, *, user_hash: str | None = None
    ) -> Flags:
        """Every flag's value for a user, with the reason and rule (no decision is logged)."""
        body = self._user(user_id, context, user_hash)
        flags: Flags = _decoded(self._http.post("/v1/flags", json=body), Flags)
        return flags

    def track(
        self,
        user_id: str,
        type_: str,
        props: Mapping[str, Any] | None = None,
        context: Mapping[str, Any] | None = None,
        event_id: str | None = None,
        ts: float | None = None,
        *,
        user_hash: str | None = None,
    ) -> None:
        """Buffer an event; sent with the next full batch, :meth:`flush` or :meth:`close`."""
        if self._queue(user_hash, user_id, type_, props, context, event_id, ts):
            self.flush()

    def flush(self) -> int:
        """Send the buffered events; returns how many the engine stored (duplicates excluded).
        On an error the events stay buffered, to be sent again."""
        stored = 0
        while self._buffer:
            count, body = self._next_batch()
            answer = _decoded(self._http.post("/v1/events", json=body), dict[str, int])
            del self._buffer[:count]
            stored += answer["accepted"]
        return stored

    def reward(self, decision_id: str, reward: float) -> None:
        _decoded(self._http.post("/v1/rewards", json={"decision_id": decision_id, "reward": reward}), dict)

    def set_consent(
        self,
        user_id: str,
        analytics: bool | None = None,
        personalization: bool | None = None,
        *,
        user_hash: str | None = None,
    ) -> None:
        body = _consent(analytics, personalization, user_hash)
        _decoded(self._http.put(_consent_path(user_id), json=body), dict)

    def close(self) -> None:
        try:
            self.flush()
        finally:
            self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


class AsyncClient(_Base):
    """The same as :class:`Client`, for asyncio code."""

    _http_class = httpx.AsyncClient

    async def decide(
        self, user_id: str, context: Mapping[str, Any] | None = None, *, user_hash: str | None = None
    ) -> Decision:
        response = await self._http.post("/v1/decide", json=self._user(user_id, context, user_hash))
        decision: Decision = _decoded(response, Decision)
        return decision

    async def select_tutorial(
        self,
        user_id: str,
        step: str | None = None,
        feature: str | None = None,
        context: Mapping[str, Any] | None = None,
        *,
        user_hash: str | None = None,
    ) -> TutorialChoice:
        body = self._user(user_id, context, user_hash, step=step, feature=feature)
        choice: TutorialChoice = _decoded(
            await self._http.post("/v1/tutorials/select", json=body), TutorialChoice
        )
        return choice

    async def flags(
        self, user_id: str, context: Mapping[str, Any] | None = None, *, user_hash: str | None = None
    ) -> Flags:
        body = self._user(user_id, context, user_hash)
        flags: Flags = _decoded(await self._http.post("/v1/flags", json=body), Flags)
        return flags

    async def track(
        self,
        user_id: str,
        type_: str,
        props: Mapping[str, Any] | None = None,
        context: Mapping[str, Any] | None = None,
        event_id: str | None = None,
        ts: float | None = None,
        *,
        user_hash: str | None = None,
    ) -> None:
        if self._queue(user_hash, user_id, type_, props, context, event_id, ts):
            await self.flush()

    async def flush(self) -> int:
        stored = 0
        while self._buffer:
            count, body = self._next_batch()
            answer = _decoded(await self._http.post("/v1/events", json=body), dict[str, int])
            del self._buffer[:count]
            stored += answer["accepted"]
        return stored

    async def reward(self, decision_id: str, reward: float) -> None:
        body = {"decision_id": decision_id, "reward": reward}
        _decoded(await self._http.post("/v1/rewards", json=body), dict)

    async def set_consent(
        self,
        user_id: str,
        analytics: bool | None = None,
        personalization: bool | None = None,
        *,
        user_hash: str | None = None,
    ) -> None:
        body = _consent(analytics, personalization, user_hash)
        _decoded(await self._http.put(_consent_path(user_id), json=body), dict)

    async def aclose(self) -> None:
        try:
            await self.flush()
        finally:
            await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()
