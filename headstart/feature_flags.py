"""An OpenFeature provider backed by Headstart's flags and segment targeting.

Product code keeps its OpenFeature calls; the provider asks Headstart (``POST /v1/flags``) for
every flag of the user named by the evaluation context's targeting key, with the context's
``device_type``, ``os``, ``locale``, ``country``, ``referrer`` and ``app_version`` as the
request's context, and keeps the answer for ``ttl_s`` (5 s) per user and context, so a page
that reads ten flags makes one call. Reasons map one to one: ``TARGETING_MATCH`` (a segment
rule), ``SPLIT`` (a percentage rollout), ``DEFAULT`` (no rule applied), ``STALE`` (the user's
shard was unavailable: the flags from the context alone); a failure is the SDK's ``ERROR`` with
the default value. Flag metadata carries the rule index and the flag's description.

The provider runs in a product's backend: give it a **server key** (``keys.json``'s
``"server"``), which asks for any user's flags with no ``user_hash`` even with identity
verification on. With a frontend key under identity verification, put the user's
``user_hash`` in the evaluation context's attributes: it is sent along.

Example (``tests/headstart/test_feature_flags_integration.py`` runs it against a live engine)::

    from openfeature import api
    from openfeature.evaluation_context import EvaluationContext

    api.set_provider(HeadstartProvider("http://127.0.0.1:8000", api_key=SERVER_KEY))
    user = EvaluationContext(targeting_key="alice", attributes={"device_type": "mobile"})
    api.get_client().get_boolean_value("simplified_mobile_flow", False, user)  # True
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from typing import Any

import httpx
from cachetools import TTLCache
from openfeature.evaluation_context import EvaluationContext
from openfeature.exception import (
    FlagNotFoundError,
    GeneralError,
    TargetingKeyMissingError,
    TypeMismatchError,
)
from openfeature.flag_evaluation import FlagResolutionDetails, Reason
from openfeature.provider import AbstractProvider, Metadata

from engine.events import CONTEXT_FIELDS
from headstart.client import Client, Flags, HeadstartApiError

#: Headstart's reasons as OpenFeature's.
REASONS = {"TARGETING_MATCH": Reason.TARGETING_MATCH, "SPLIT": Reason.SPLIT, "DEFAULT": Reason.DEFAULT}


class HeadstartProvider(AbstractProvider):
    """Boolean flags from a running Headstart, cached per user and context for ``ttl_s``.

    ``api_key``: a server key (a frontend key needs ``user_hash`` among the attributes under
    identity verification).
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        ttl_s: float = 5.0,
        timeout: float = 1.0,
        max_users: int = 10_000,
    ) -> None:
        self._client = Client(base_url, api_key, timeout=timeout, retries=1)
        self._cache: TTLCache[tuple[Any, ...], Flags] = TTLCache(maxsize=max_users, ttl=ttl_s)
        self._lock = threading.Lock()  # TTLCache is not thread-safe; providers are shared
        self.calls = 0

    def get_metadata(self) -> Metadata:
        return Metadata(name="headstart")

    def shutdown(self) -> None:
        self._client.close()

    def _flags(self, context: EvaluationContext | None) -> Flags:
        user = context.targeting_key if context is not None else None
        if not user:
            raise TargetingKeyMissingError("Headstart's flags are per user: set the targeting key")
        attributes: Mapping[str, Any] = context.attributes if context is not None else {}
        request = {f: str(attributes[f]) for f in CONTEXT_FIELDS if attributes.get(f) is not None}
        user_hash = attributes.get("user_hash")
        signed = str(user_hash) if user_hash is not None else None
        # The hash is part of the key: an answer given for one hash is not reused for another.
        key = (user, tuple(sorted(request.items())), signed)
        with self._lock:
            cached = self._cache.get(key)
        if cached is not None:
            return cached
        try:
            answer = self._client.flags(user, request, user_hash=signed)
        except (HeadstartApiError, httpx.HTTPError) as exc:
            raise GeneralError(f"Headstart did not answer: {exc}") from exc
        self.calls += 1
        with self._lock:
            self._cache[key] = answer
        return answer

    def resolve_boolean_details(
        self, flag_key: str, default_value: bool, evaluation_context: EvaluationContext | None = None
    ) -> FlagResolutionDetails[bool]:
        answer = self._flags(evaluation_context)
        flag = answer.flags.get(flag_key)
        if flag is None:
            raise FlagNotFoundError(f"no flag {flag_key!r} in Headstart's catalog")
        metadata: dict[str, int | float | str | bool] = {"description": flag.description}
        if flag.rule is not None:
            metadata["rule"] = flag.rule
        return FlagResolutionDetails(
            value=flag.value,
            reason=Reason.STALE if answer.stale else REASONS.get(flag.reason, Reason.UNKNOWN),
            variant="on" if flag.value else "off",
            flag_metadata=metadata,
        )

    def _not_boolean(self, flag_key: str) -> Any:
        raise TypeMismatchError(f"Headstart's flags are booleans; {flag_key!r} was asked as another type")

    def resolve_string_details(
        self, flag_key: str, default_value: str, evaluation_context: EvaluationContext | None = None
    ) -> FlagResolutionDetails[str]:
        return self._not_boolean(flag_key)  # type: ignore[no-any-return]

    def resolve_integer_details(
        self, flag_key: str, default_value: int, evaluation_context: EvaluationContext | None = None
    ) -> FlagResolutionDetails[int]:
        return self._not_boolean(flag_key)  # type: ignore[no-any-return]

    def resolve_float_details(
        self, flag_key: str, default_value: float, evaluation_context: EvaluationContext | None = None
    ) -> FlagResolutionDetails[float]:
        return self._not_boolean(flag_key)  # type: ignore[no-any-return]

    def resolve_object_details(
        self,
        flag_key: str,
        default_value: Sequence[Any] | Mapping[str, Any],
        evaluation_context: EvaluationContext | None = None,
    ) -> FlagResolutionDetails[Sequence[Any] | Mapping[str, Any]]:
        return self._not_boolean(flag_key)  # type: ignore[no-any-return]
