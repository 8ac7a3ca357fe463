"""A product's page on another origin calls Headstart: CORS through the real Serve app, and
headstart.js in a real headless Chromium (Debian's, driven by Playwright) with identity
verification ``required``.

The product page is served by a small ``http.server`` on a second loopback port (the allowed
origin) and on a third one (an origin not allowed); it loads ``headstart.js`` from Headstart's
own origin, as a product's page would.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from actors.cluster import ShardGroup
from engine.catalog import DEFAULT_CATALOG, load_catalog
from headstart.adapters.broker import free_port
from headstart.web.identity import user_hash
from tests.actors.conftest import serving
from tests.conftest import TEST_IDENTITY_SECRET

pytestmark = pytest.mark.integration

KEYS = {"frontend": "cors-frontend-key", "admin": "cors-admin-key"}
ADMIN = {"Authorization": f"Bearer {KEYS['admin']}"}
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
PRODUCT_PORT, OTHER_PORT = free_port(), free_port()
PRODUCT = f"http://127.0.0.1:{PRODUCT_PORT}"  # allowed
OTHER = f"http://127.0.0.1:{OTHER_PORT}"  # not allowed

PAGE = """<!doctype html>
<html><head><title>Acme app</title></head>
<body><h1>Acme</h1>
<script src="{headstart}/static/headstart.js"></script>
</body></html>
"""


@pytest.fixture(scope="module")
def api(ray_local: None, nats_url: str) -> Iterator[tuple[httpx.Client, ShardGroup]]:
    with serving(
        nats_url,
        load_catalog(DEFAULT_CATALOG),
        KEYS,
        cors_origins=(PRODUCT,),
        identity_verification="required",
    ) as served:
        yield served


@contextlib.contextmanager
def product_site(port: int, headstart: str, root: Path) -> Iterator[str]:
    """The product's page at ``http://127.0.0.1:<port>/``, loading headstart.js from ``headstart``."""
    (root / "index.html").write_text(PAGE.format(headstart=headstart))

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", port), functools.partial(Quiet, directory=str(root))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def sites(
    api: tuple[httpx.Client, ShardGroup], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, str]]:
    http, _ = api
    headstart = str(http.base_url).rstrip("/")
    with (
        product_site(PRODUCT_PORT, headstart, tmp_path_factory.mktemp("product")) as product,
        product_site(OTHER_PORT, headstart, tmp_path_factory.mktemp("other")) as other,
    ):
        yield {"product": product, "other": other, "headstart": headstart}


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield chromium
        finally:
            chromium.close()


def open_page(browser: Any, url: str) -> Any:
    page = browser.new_page()
    page.goto(url)
    page.wait_for_function("() => typeof Headstart === 'function'", timeout=15_000)
    return page


def refused(http: httpx.Client, kind: str) -> float:
    for line in http.get("/metrics", headers=ADMIN).text.splitlines():
        if line.startswith(f'hs_cors_refused_total{{kind="{kind}"}}'):
            return float(line.split()[-1])
    return 0.0


def completed_steps(http: httpx.Client, user: str, step: str) -> list[str]:
    """The user's completed steps (admin API) once ``step`` is among them (the shard applies
    events within milliseconds of their storing), or as last read."""
    steps: list[str] = []
    for _ in range(100):
        answer = http.get(f"/v1/users/{user}", headers=ADMIN)
        steps = answer.json().get("steps_completed", []) if answer.status_code == 200 else []
        if step in steps:
            break
        time.sleep(0.1)
    return steps


# ---------------------------------------------------------------------- CORS over HTTP


def test_an_allowed_origin_gets_preflights_and_readable_answers(
    api: tuple[httpx.Client, ShardGroup],
) -> None:
    http, _ = api
    for path in ("/v1/decide", "/v1/events", "/segment/v1/batch", "/v1/users/u%201/consent"):
        preflight = http.options(
            path,
            headers={
                "Origin": PRODUCT,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization, content-type",
            },
        )
        assert preflight.status_code == 204, (path, preflight.text)
        assert preflight.headers["access-control-allow-origin"] == PRODUCT
        assert "POST" in preflight.headers["access-control-allow-methods"]
        assert "Authorization" in preflight.headers["access-control-allow-headers"]
        assert preflight.headers["access-control-max-age"] == "600"
    anonymous = {"user_id": "anon-cors-http", "context": {}}
    answer = http.post(
        "/v1/decide",
        json=anonymous,
        headers={"Origin": PRODUCT, "Authorization": f"Bearer {KEYS['frontend']}"},
    )
    assert answer.status_code == 200, answer.text
    assert answer.headers["access-control-allow-origin"] == PRODUCT and answer.headers["vary"] == "Origin"
    assert "Retry-After" in answer.headers["access-control-expose-headers"]
    # An error answer (FastAPI's, here: no key) carries them too, so the page can read why.
    unauthorized = http.get("/v1/segments", headers={"Origin": PRODUCT})
    assert unauthorized.status_code == 401
    assert unauthorized.headers["access-control-allow-origin"] == PRODUCT


def test_another_origin_gets_no_cors_headers_and_is_counted(api: tuple[httpx.Client, ShardGroup]) -> None:
    http, _ = api
    preflights, requests = refused(http, "preflight"), refused(http, "request")
    preflight = http.options("/v1/decide", headers={"Origin": OTHER, "Access-Control-Request-Method": "POST"})
    assert preflight.status_code == 403 and preflight.json()["error"]["code"] == "origin_not_allowed"
    assert not any(name.startswith("access-control-") for name in preflight.headers)
    answer = http.get("/v1/ruleset/key", headers={"Origin": OTHER})
    assert answer.status_code == 200 and "access-control-allow-origin" not in answer.headers
    # The same origin (the demo page's) is neither decorated nor counted.
    own = http.get("/v1/ruleset/key", headers={"Origin": str(http.base_url).rstrip("/")})
    assert own.status_code == 200 and "access-control-allow-origin" not in own.headers
    assert refused(http, "preflight") == preflights + 1
    assert refused(http, "request") == requests + 1


# ---------------------------------------------------------------------- the SDK in Chromium


def test_a_page_on_an_allowed_origin_gets_decisions_and_its_events_are_stored(
    api: tuple[httpx.Client, ShardGroup], sites: dict[str, str], browser: Any
) -> None:
    http, _ = api
    page = open_page(browser, sites["product"])
    bodies: list[str] = []
    page.on("request", lambda r: bodies.append(r.post_data or "") if r.url.endswith("/v1/events") else None)
    alice, bob = "alice@acme.example", "bob@acme.example"
    answer = page.evaluate(
        """async ([key, base, alice, aliceHash, bob, bobHash]) => {
            const hs = new Headstart({ apiKey: key, baseUrl: base, userId: alice, userHash: aliceHash });
            hs.identify(bob, bobHash);
            const decision = await hs.decide(alice, { device_type: "desktop" });
            const flags = await hs.flags(alice, {});
            const consent = await hs.consent(alice, { analytics: true });
            hs.track(alice, "step_completed", { step: decision.step.id });
            hs.track(bob, "step_completed", { step: "welcome" });
            hs.track(alice, "feature_clicked", { feature: "search" });
            const stored = await hs.flush();  // one batch per user, each with its hash
            return { offline: decision.offline, step: decision.step.id, stored,
                     flags: Object.keys(flags.flags).length, consent: consent.accepted };
        }""",
        [
            KEYS["frontend"],
            sites["headstart"],
            alice,
            user_hash(TEST_IDENTITY_SECRET, alice),
            bob,
            user_hash(TEST_IDENTITY_SECRET, bob),
        ],
    )
    assert answer == {
        "offline": False,
        "step": "welcome",
        "stored": 3,
        "flags": answer["flags"],
        "consent": True,
    }
    assert answer["flags"] > 0
    assert len(bodies) == 2 and all('"user_hash"' in body for body in bodies)
    assert completed_steps(http, alice, "welcome") == ["welcome"]
    assert completed_steps(http, bob, "welcome") == ["welcome"]


def test_an_anonymous_visitor_needs_no_hash_and_is_linked_when_signing_in(
    api: tuple[httpx.Client, ShardGroup], sites: dict[str, str], browser: Any
) -> None:
    http, _ = api
    page = open_page(browser, sites["product"])
    bodies: list[str] = []
    page.on("request", lambda r: bodies.append(r.post_data or "") if r.url.endswith("/v1/events") else None)
    carol = "carol@acme.example"
    answer = page.evaluate(
        """async ([key, base, carol, carolHash]) => {
            const anonymous = Headstart.anonymousId();
            const hs = new Headstart({ apiKey: key, baseUrl: base });
            const decision = await hs.decide(anonymous, {});
            hs.track(anonymous, "step_viewed", { step: decision.step.id });
            const before = await hs.flush();
            hs.identify(carol, carolHash);  // signed in
            hs.track(carol, "step_completed", { step: "welcome" });
            const after = await hs.flush();
            return { anonymous, again: Headstart.anonymousId(), before, after };
        }""",
        [KEYS["frontend"], sites["headstart"], carol, user_hash(TEST_IDENTITY_SECRET, carol)],
    )
    assert answer["anonymous"].startswith("anon-") and answer["again"] == answer["anonymous"]
    assert answer["before"] == 1 and answer["after"] == 1
    assert '"user_hash"' not in bodies[0]
    assert f'"anonymous_id":"{answer["anonymous"]}"' in bodies[1] and '"user_hash"' in bodies[1]
    assert completed_steps(http, carol, "welcome") == ["welcome"]


def test_the_browser_refuses_calls_from_an_origin_not_allowed(
    api: tuple[httpx.Client, ShardGroup], sites: dict[str, str], browser: Any
) -> None:
    http, _ = api
    preflights = refused(http, "preflight")
    page = open_page(browser, sites["other"])  # headstart.js itself loads: a script is not CORS
    dave = "dave@acme.example"
    answer = page.evaluate(
        """async ([key, base, dave, daveHash]) => {
            const hs = new Headstart({ apiKey: key, baseUrl: base, userId: dave, userHash: daveHash });
            const decision = await hs.decide(dave, {});
            let consent;
            try { await hs.consent(dave, { analytics: true }); consent = "accepted"; }
            catch (e) { consent = e.name + ": " + e.message; }
            return { offline: decision.offline, reason: decision.offline_reason, consent };
        }""",
        [KEYS["frontend"], sites["headstart"], dave, user_hash(TEST_IDENTITY_SECRET, dave)],
    )
    assert answer["offline"] is True and "Failed to fetch" in answer["reason"]
    assert answer["consent"].startswith("TypeError")
    assert refused(http, "preflight") >= preflights + 2


def test_with_required_verification_a_missing_or_another_users_hash_gets_403(
    api: tuple[httpx.Client, ShardGroup], sites: dict[str, str], browser: Any
) -> None:
    page = open_page(browser, sites["product"])
    erin, frank = "erin@acme.example", "frank@acme.example"
    answer = page.evaluate(
        """async ([key, base, erin, frankHash]) => {
            const outcome = async (call) => {
                try { await call(); return "accepted"; }
                catch (e) { return e.status + " " + e.message; }
            };
            const unsigned = new Headstart({ apiKey: key, baseUrl: base });
            const forged = new Headstart({ apiKey: key, baseUrl: base, userId: erin, userHash: frankHash });
            return {
                missing: await outcome(() => unsigned.decide(erin, {})),
                missingEvents: await outcome(() => { unsigned.track(erin, "step_viewed", { step: "welcome" });
                                                     return unsigned.flush(); }),
                forged: await outcome(() => forged.decide(erin, {})),
                forgedConsent: await outcome(() => forged.consent(erin, { analytics: false })),
            };
        }""",
        [KEYS["frontend"], sites["headstart"], erin, user_hash(TEST_IDENTITY_SECRET, frank)],
    )
    for outcome in (answer["missing"], answer["missingEvents"]):
        assert outcome.startswith("403 ") and "user_hash" in outcome, answer
    for outcome in (answer["forged"], answer["forgedConsent"]):
        assert outcome.startswith("403 ") and "does not match" in outcome, answer
