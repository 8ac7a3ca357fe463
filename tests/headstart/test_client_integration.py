"""The Python client against a running engine (real NATS, Ray and Serve)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import httpx
import pytest

from actors.cluster import ShardGroup
from engine.catalog import DEFAULT_CATALOG, load_catalog
from headstart.adapters.broker import free_port
from headstart.client import AsyncClient, Client, Decision, HeadstartApiError
from tests.actors.conftest import serving

pytestmark = pytest.mark.integration

KEYS = {"frontend": "client-frontend-key", "admin": "client-admin-key"}


@pytest.fixture(scope="module")
def api(ray_local: None, nats_url: str) -> Iterator[tuple[httpx.Client, ShardGroup]]:
    with serving(nats_url, load_catalog(DEFAULT_CATALOG), KEYS) as served:
        yield served


def test_decide_track_in_batches_and_see_the_next_step(api: tuple[httpx.Client, ShardGroup]) -> None:
    http, _ = api
    with Client(str(http.base_url), KEYS["frontend"], batch_size=3) as hs:
        first = hs.decide("sdk-user@example.com", context={"device_type": "desktop", "locale": "en"})
        assert isinstance(first, Decision) and first.step is not None and first.step.id == "welcome"
        hs.track("sdk-user@example.com", "session_started")
        hs.track("sdk-user@example.com", "step_completed", props={"step": "welcome"})
        assert len(hs._buffer) == 2  # below the batch size: still buffered
        hs.track("sdk-user@example.com", "step_completed", props={"step": "profile"})
        assert hs._buffer == []  # the third filled the batch: sent
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            decision = hs.decide("sdk-user@example.com", context={"device_type": "desktop"})
            if set(decision.completed_steps) >= {"welcome", "profile"}:
                break
            time.sleep(0.2)
        assert decision.step is not None and decision.step.id not in ("welcome", "profile")
        hs.reward(decision.decision_id, 1.0)
        hs.set_consent("sdk-user@example.com", personalization=False)
        choice = hs.select_tutorial("sdk-user@example.com", step="first_project")
        assert choice.tutorial == "first_project" and choice.variant is not None
        hs.track("sdk-user@example.com", "feature_clicked", props={"feature": "export"})
    # Closing flushed the last, partial batch.
    assert hs._buffer == []


def test_the_async_client_and_errors(api: tuple[httpx.Client, ShardGroup]) -> None:
    http, _ = api

    async def run() -> None:
        async with AsyncClient(str(http.base_url), KEYS["frontend"]) as hs:
            decision = await hs.decide("async-user@example.com", context={"device_type": "mobile"})
            assert decision.step is not None and "device_mobile" in decision.segments
            await hs.track("async-user@example.com", "session_started")
            assert await hs.flush() == 1
        async with AsyncClient(str(http.base_url), "wrong-key") as bad:
            with pytest.raises(HeadstartApiError) as refused:
                await bad.decide("someone")
            assert refused.value.status == 401

    asyncio.run(run())
    with Client(str(http.base_url), KEYS["frontend"]) as hs, pytest.raises(HeadstartApiError) as bad_body:
        hs.select_tutorial("x")  # neither step nor feature
    assert bad_body.value.status == 400 and bad_body.value.code


def test_an_unreachable_engine_is_retried_then_reported() -> None:
    started = time.monotonic()
    with Client(f"http://127.0.0.1:{free_port()}", "k", retries=2, backoff_s=0.05) as hs:
        with pytest.raises(httpx.ConnectError):
            hs.decide("someone")
        hs._buffer.clear()  # nothing to flush on close
    assert time.monotonic() - started < 5
