"""Webhook delivery with a real nats-server and a real HTTP endpoint: signed, retried with
backoff, each change delivered, nothing acknowledged before it is delivered or given up."""

from __future__ import annotations

import asyncio
import http.server
import json
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import nats
import pytest

from engine.catalog import Webhook
from engine.segments import SegmentChange, change_encoder
from headstart.adapters.topology import changes_subject
from headstart.web import webhooks
from headstart.web.webhooks import SIGNATURE_HEADER, WebhookDelivery, verify
from tests.conftest import reset_streams

pytestmark = pytest.mark.integration

SECRET = b"webhook-secret"


class Endpoint:
    """An HTTP server on 127.0.0.1 that fails the first ``fail_first`` POSTs with 503."""

    def __init__(self, fail_first: int) -> None:
        self.fail_first = fail_first
        self.requests: list[tuple[dict[str, str], bytes]] = []
        endpoint = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                endpoint.requests.append((dict(self.headers), body))
                failing = len(endpoint.requests) <= endpoint.fail_first
                self.send_response(503 if failing else 204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def delivered(self) -> list[dict[str, Any]]:
        ok = self.requests[self.fail_first :]
        return [change for _, body in ok for change in json.loads(body)["changes"]]


@pytest.fixture
def endpoint() -> Iterator[Endpoint]:
    server = Endpoint(fail_first=2)
    server.thread.start()
    try:
        yield server
    finally:
        server.server.shutdown()
        server.server.server_close()


def changes(segment: str, n: int, start: int = 0) -> list[SegmentChange]:
    return [
        SegmentChange(f"user{i}", segment, "enter" if i % 2 == 0 else "exit", 1000.0 + i, str(i), 0)
        for i in range(start, start + n)
    ]


async def deliver(nats_url: str, endpoint: Endpoint, monkeypatch: pytest.MonkeyPatch) -> WebhookDelivery:
    monkeypatch.setattr(webhooks, "RETRY_BASE_S", 0.05)
    await reset_streams(nats_url)
    nc = await nats.connect(nats_url)
    hook = Webhook(
        id="crm", url=endpoint.url, secret_env="X", segments=["power_user"], changes=["enter"], batch=3
    )
    delivery = WebhookDelivery(nc, hook, SECRET, httpx.AsyncClient(timeout=2))
    task = asyncio.create_task(delivery.run())
    await asyncio.sleep(0.5)  # the consumer exists (new changes only)
    js = nc.jetstream()
    # A partition's batches mix segments: the webhook picks out the ones it wants.
    mixed = changes("power_user", 8) + changes("dormant", 4)  # dormant: not wanted
    await js.publish(changes_subject(0), change_encoder.encode(mixed))
    await js.publish(changes_subject(1), change_encoder.encode(changes("power_user", 2, start=8)))
    for _ in range(100):
        if delivery.delivered >= 5:
            break
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.3)
    pending = (await js.consumer_info("HS_SEGMENTS", "hs-webhook-crm")).num_ack_pending
    task.cancel()
    await nc.close()
    assert pending == 0  # every message acknowledged once delivered
    return delivery


def test_changes_are_delivered_signed_after_retries(
    nats_url: str, endpoint: Endpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    delivery = asyncio.run(deliver(nats_url, endpoint, monkeypatch))
    got = endpoint.delivered()
    # The wanted ones only (enters of power_user), each once, in order.
    assert [c["user_id"] for c in got] == ["user0", "user2", "user4", "user6", "user8"]
    assert {c["segment"] for c in got} == {"power_user"} and {c["change"] for c in got} == {"enter"}
    assert delivery.attempts_failed == 2 and delivery.given_up == 0 and delivery.delivered == 5
    for headers, body in endpoint.requests:
        assert verify(SECRET, body, headers[SIGNATURE_HEADER])
        assert not verify(b"wrong", body, headers[SIGNATURE_HEADER])
    # A retried delivery is the same delivery (the receiver can drop a repeat).
    first, second, third = (json.loads(b)["delivery"] for _, b in endpoint.requests[:3])
    assert first == second == third
    assert [h["Headstart-Attempt"] for h, _ in endpoint.requests[:3]] == ["1", "2", "3"]


def test_a_webhook_gives_up_after_its_attempts_and_counts_it(
    nats_url: str, endpoint: Endpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    endpoint.fail_first = 10**6
    monkeypatch.setattr(webhooks, "RETRY_BASE_S", 0.01)

    async def run() -> WebhookDelivery:
        await reset_streams(nats_url)
        nc = await nats.connect(nats_url)
        hook = Webhook(id="down", url=endpoint.url, secret_env="X", max_attempts=3)
        delivery = WebhookDelivery(nc, hook, SECRET, httpx.AsyncClient(timeout=2))
        task = asyncio.create_task(delivery.run())
        await asyncio.sleep(0.5)
        await nc.jetstream().publish(changes_subject(0), change_encoder.encode(changes("dormant", 4)))
        for _ in range(100):
            if delivery.given_up:
                break
            await asyncio.sleep(0.1)
        task.cancel()
        await nc.close()
        return delivery

    delivery = asyncio.run(run())
    assert delivery.given_up == 4 and delivery.attempts_failed == 3 and delivery.delivered == 0
    assert len(endpoint.requests) == 3


def test_a_missing_secret_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HS_TEST_HOOK_SECRET", raising=False)
    hook = Webhook(id="crm", url="http://127.0.0.1:1/", secret_env="HS_TEST_HOOK_SECRET")
    with pytest.raises(Exception, match="HS_TEST_HOOK_SECRET is not set"):
        webhooks.webhook_secret(hook)
