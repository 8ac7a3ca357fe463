"""The demo onboarding page in a real headless Chromium (Debian's, driven by Playwright) against
a running engine: clicks send events, and what the engine decides next changes."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import httpx
import pytest
import yaml

from actors.cluster import ShardGroup
from engine.catalog import DEFAULT_CATALOG, load_catalog
from tests.actors.conftest import serving

pytestmark = pytest.mark.integration

KEYS = {"frontend": "demo-frontend-key", "admin": "demo-admin-key"}
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture(scope="module")
def api(ray_local: None, nats_url: str) -> Iterator[tuple[httpx.Client, ShardGroup]]:
    with serving(nats_url, load_catalog(DEFAULT_CATALOG), KEYS) as served:
        yield served


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield chromium
        finally:
            chromium.close()


def test_clicking_through_the_page_changes_what_the_engine_decides(
    api: tuple[httpx.Client, ShardGroup], browser: object
) -> None:
    from playwright.sync_api import Browser, expect

    http, _ = api
    assert isinstance(browser, Browser)
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(f"{http.base_url}/#key={KEYS['frontend']}&admin={KEYS['admin']}")
    step = page.locator("#step-title")
    expect(step).to_have_attribute("data-step", "welcome", timeout=15_000)
    expect(page.locator("#status")).to_contain_text("live decision")
    # The onboarding kit renders the journey as a checklist, the decided step current.
    current = page.locator("#checklist [data-hs-surface=checklist] [aria-current=step]")
    expect(current).to_have_attribute("data-hs-step", "welcome")
    # Each completed step is an event through /v1/events; the next decision moves on.
    page.click("#complete-step")
    expect(step).to_have_attribute("data-step", "profile", timeout=15_000)
    expect(current).to_have_attribute("data-hs-step", "profile")
    page.click("#complete-step")
    expect(step).not_to_have_attribute("data-step", "profile", timeout=15_000)
    after_profile = step.get_attribute("data-step")
    assert after_profile in ("connect_data", "first_project")
    # A device change is context for the decision: phones get the simplified flow flag.
    page.select_option("#device", "mobile")
    expect(page.locator("#flags")).to_contain_text("simplified_mobile_flow=true", timeout=15_000)
    expect(page.locator("#segments")).to_contain_text("device_mobile")
    # Each step shown was sent as a step_viewed event.
    user = page.evaluate("() => localStorage.getItem('demo-user')")
    admin = {"Authorization": f"Bearer {KEYS['admin']}"}
    viewed: list[str] = []
    for _ in range(50):
        viewed = http.get(f"/v1/users/{user}", headers=admin).json().get("steps_viewed", [])
        if {"welcome", "profile"} <= set(viewed):
            break
        page.wait_for_timeout(200)
    assert {"welcome", "profile"} <= set(viewed)
    # The operator panel shows live segments and what the policy learned.
    expect(page.locator("#segment-sizes .segment-row").first).to_be_visible(timeout=15_000)
    expect(page.locator("#policy")).to_contain_text("step")
    # ... and the catalog: none stored yet (this app was handed its catalog), then a version
    # stored over HTTP is served and listed with who stored it.
    expect(page.locator("#catalog-serving")).to_contain_text("no version stored", timeout=15_000)
    document = yaml.safe_load(DEFAULT_CATALOG.read_text())
    stored = http.put("/v1/catalog", json=document, headers={**admin, "If-Match": '"0"'})
    assert stored.status_code == 200 and stored.json()["version"] == 1, stored.text
    expect(page.locator("#catalog-serving")).to_contain_text("serving version 1", timeout=15_000)
    expect(page.locator("#catalog-history .catalog-row").first).to_contain_text("admin:")
    assert errors == []


def test_the_page_keeps_working_from_its_last_decision_when_headstart_is_unreachable(
    api: tuple[httpx.Client, ShardGroup], browser: object
) -> None:
    from playwright.sync_api import Browser, Route, expect

    http, _ = api
    assert isinstance(browser, Browser)
    page = browser.new_page()
    page.goto(f"{http.base_url}/#key={KEYS['frontend']}")
    expect(page.locator("#status")).to_contain_text("live decision", timeout=15_000)
    # The signed ruleset is loaded and verified with WebCrypto before it is kept.
    page.wait_for_function("() => localStorage.getItem('hs:ruleset') !== null", timeout=15_000)
    flags_live = page.locator("#flags").inner_text()

    def unreachable(route: Route) -> None:
        route.abort("connectionrefused")

    page.route("**/v1/decide", unreachable)
    page.click("#refresh")
    expect(page.locator("#status")).to_contain_text("offline", timeout=15_000)
    assert page.locator("#step-title").get_attribute("data-step") == "welcome"
    assert page.locator("#flags").inner_text() == flags_live  # from the ruleset and last segments
    # A tampered ruleset is refused by the signature check.
    tampered = page.evaluate(
        """async (key) => {
            const hs = new Headstart({ apiKey: key });
            const original = window.fetch;
            window.fetch = async (url, init) => {
                const response = await original(url, init);
                if (!String(url).endsWith('/v1/ruleset')) return response;
                const body = await response.json();
                body.ruleset = body.ruleset.replace('"default":false', '"default":true');
                return new Response(JSON.stringify(body), { status: 200 });
            };
            try { await hs.loadRuleset(); return 'accepted'; }
            catch (e) { return e.message; }
            finally { window.fetch = original; }
        }""",
        KEYS["frontend"],
    )
    assert "signature does not match" in tampered
