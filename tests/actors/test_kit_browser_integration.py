"""The onboarding kit end to end: headstart.js on a product's page served from another loopback
origin (CORS, identity verification ``required``), in Debian's headless Chromium, against the
real engine (nats-server, Ray, the Serve app) with a catalog whose tours point at the page.

What the engine keeps (tour position, dismissals, pacing) is what the kit shows after a reload;
tests/headstart/static/test_kit_browser.py covers the rendering against fixed answers.
"""

from __future__ import annotations

import re
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from actors.cluster import ShardGroup
from engine.catalog import DEFAULT_CATALOG, Catalog, parse_catalog_document
from headstart.adapters.broker import free_port
from headstart.web.identity import user_hash
from tests.actors.conftest import serving
from tests.browser import STATIC, axe_violations, chromium, js_dependency, product_page, static_site
from tests.conftest import TEST_IDENTITY_SECRET

pytestmark = pytest.mark.integration

KEYS = {"frontend": "kit-frontend-key", "admin": "kit-admin-key"}
FRONTEND = {"Authorization": f"Bearer {KEYS['frontend']}"}
PRODUCT_PORT = free_port()
PRODUCT = f"http://127.0.0.1:{PRODUCT_PORT}"
DESKTOP = {"device_type": "desktop"}
#: The pacing of the test catalog: a tour at most every hour, nothing else held back (no quiet
#: hours, so the tests pass at any hour; no learned tolerance, so a new user's second tour is
#: held back by the gap alone).
PACING = {
    "overall": {"max_per_day": None, "min_gap_minutes": None},
    "surfaces": {
        "tour": {"max_per_day": 5, "min_gap_minutes": 60},
        "tooltip": {"max_per_day": None, "min_gap_minutes": None},
        "banner": {"max_per_day": None, "min_gap_minutes": None},
    },
    "quiet_hours": None,
    "learned": False,
}


def tour_step(target: str, en: str, ar: str | None = None, placement: str = "bottom") -> dict[str, Any]:
    title = {"en": en} | ({"ar": ar} if ar else {})
    return {"target": target, "title": title, "body": {"en": f"About {en.lower()}."}, "placement": placement}


def kit_catalog() -> Catalog:
    """The default catalog with tours on the test page's elements: a 3-step tour at ``welcome``
    (its second target comes late), another at ``profile``, a tooltip at ``connect_data``, and
    nothing to interrupt with at ``first_project`` but the banner; steps in journey order."""
    data = yaml.safe_load(DEFAULT_CATALOG.read_text())
    data["learning"]["steps"] = False
    first_project = next(t for t in data["tutorials"] if t["id"] == "first_project")
    first_project["variants"] = [{"id": "video"}]
    data["tutorials"] = [
        first_project,
        {
            "id": "workspace_tour",
            "step": "welcome",
            "variants": [
                {
                    "id": "guided",
                    "tour": [
                        tour_step("#nav", "Navigation", "التنقل"),
                        tour_step("#late", "Reports", "التقارير", "right"),
                        tour_step("#create", "Projects", "المشاريع", "top"),
                    ],
                }
            ],
        },
        {
            "id": "profile_tour",
            "step": "profile",
            "variants": [
                {"id": "guided", "tour": [tour_step("#nav", "Your profile"), tour_step("#create", "Save")]}
            ],
        },
        {
            "id": "import_tip",
            "step": "connect_data",
            "variants": [
                {
                    "id": "tip",
                    "surface": "tooltip",
                    "tour": [tour_step("#search", "Import a CSV", placement="right")],
                }
            ],
        },
    ]
    data["pacing"] = PACING
    catalog, errors = parse_catalog_document(data, "kit test catalog")
    assert catalog is not None, errors
    return catalog


@pytest.fixture(scope="module")
def api(ray_local: None, nats_url: str) -> Iterator[tuple[httpx.Client, ShardGroup]]:
    with serving(
        nats_url, kit_catalog(), KEYS, cors_origins=(PRODUCT,), identity_verification="required"
    ) as served:
        yield served


@pytest.fixture(scope="module")
def http(api: tuple[httpx.Client, ShardGroup]) -> httpx.Client:
    return api[0]


@pytest.fixture(scope="module")
def product(http: httpx.Client, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The product's site (its files under the returned folder), on its own origin."""
    root = tmp_path_factory.mktemp("product")
    headstart = str(http.base_url).rstrip("/")
    (root / "index.html").write_text(product_page(headstart))
    (root / "ar.html").write_text(product_page(headstart, lang="ar", direction="rtl"))
    with static_site(PRODUCT_PORT, root):
        yield root


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as launched:
        yield launched


def new_user(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}@acme.example"


def signed(user: str, body: dict[str, Any]) -> dict[str, Any]:
    return {**body, "user_hash": user_hash(TEST_IDENTITY_SECRET, user)}


def decide(http: httpx.Client, user: str, context: dict[str, Any] | None = None) -> dict[str, Any]:
    """The user's decision, as the page's frontend key gets it."""
    answer = http.post(
        "/v1/decide", json=signed(user, {"user_id": user, "context": context or DESKTOP}), headers=FRONTEND
    )
    assert answer.status_code == 200, answer.text
    found: dict[str, Any] = answer.json()
    return found


def until(check: Callable[[], Any], what: str, timeout: float = 15.0) -> Any:
    """``check()``'s first truthy value (the shard applies stored events within milliseconds)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"not within {timeout} s: {what}")


def complete_steps(http: httpx.Client, user: str, *steps: str) -> None:
    """``step_completed`` for each of ``steps``, then waits until the decision moved past them."""
    now = time.time()
    events = [
        {
            "event_id": uuid.uuid4().hex,
            "user_id": user,
            "type": "step_completed",
            "ts": now,
            "props": {"step": s},
        }
        for s in steps
    ]
    stored = http.post("/v1/events", json=signed(user, {"events": events}), headers=FRONTEND)
    assert stored.status_code == 200, stored.text
    until(lambda: set(steps) <= set(decide(http, user)["completed_steps"]), f"{steps} completed")


def open_kit(browser: Any, http: httpx.Client, user: str, path: str = "/", **options: Any) -> Any:
    """A new page of the product (fresh storage) with the kit mounted for ``user``."""
    page = browser.new_page(**options.pop("page_options", {}))
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.errors = errors
    page.goto(PRODUCT + path)
    mount(page, http, user, **options)
    return page


def mount(page: Any, http: httpx.Client, user: str, **options: Any) -> None:
    options.setdefault("context", DESKTOP)
    page.wait_for_function("() => typeof Headstart === 'function'", timeout=15_000)
    page.evaluate(
        """async ([key, base, user, hash, options]) => {
            window.hs = new Headstart(
                { apiKey: key, baseUrl: base, userId: user, userHash: hash, flushMs: 50 });
            window.kit = await hs.mount(user, options);
        }""",
        [
            KEYS["frontend"],
            str(http.base_url).rstrip("/"),
            user,
            user_hash(TEST_IDENTITY_SECRET, user),
            options,
        ],
    )


def box(page: Any, selector: str) -> dict[str, float]:
    found: dict[str, float] = page.locator(selector).bounding_box()
    assert found is not None, selector
    return found


def test_the_checklist_lists_the_eligible_steps_with_the_decided_one_current(
    http: httpx.Client, product: Path, browser: Any
) -> None:
    from playwright.sync_api import expect

    user = new_user("checklist")
    page = open_kit(browser, http, user, container="#onboarding")
    checklist = page.locator("#onboarding [data-hs-surface=checklist]")
    expect(checklist).to_be_visible(timeout=15_000)
    journey = decide(http, user)["journey"]
    assert [s["id"] for s in journey][:4] == ["welcome", "profile", "connect_data", "first_project"]
    items = checklist.locator("li[data-hs-step]")
    assert items.evaluate_all("(els) => els.map((e) => e.dataset.hsStep)") == [s["id"] for s in journey]
    assert checklist.locator("[aria-current=step]").get_attribute("data-hs-step") == "welcome"
    assert checklist.locator("[data-hs-step=welcome] a").get_attribute("href") == "/welcome"
    complete_steps(http, user, "welcome")
    page.evaluate("() => kit.refresh()")
    expect(checklist.locator("[aria-current=step]")).to_have_attribute("data-hs-step", "profile")
    expect(checklist.locator("[data-hs-step=welcome]")).to_have_class(re.compile(r"\bhs-done\b"))
    expect(checklist.locator(".hs-meta")).to_have_text(f"1 of {len(journey)} done")
    assert page.errors == []
    page.context.close()


def test_a_tour_waits_for_its_late_target_survives_a_reload_and_stays_dismissed(
    http: httpx.Client, product: Path, browser: Any
) -> None:
    from playwright.sync_api import expect

    user = new_user("tour")
    page = open_kit(browser, http, user)
    dialog = page.locator("[data-hs-surface=tour]")
    expect(dialog).to_have_attribute("data-hs-index", "0", timeout=15_000)
    expect(dialog.locator("h2")).to_have_text("Navigation")
    nav, shown = box(page, "#nav"), box(page, "[data-hs-surface=tour]")
    assert shown["y"] >= nav["y"] + nav["height"]  # placement bottom
    # The second step's target comes a second late: waited for, then anchored beside it.
    page.evaluate("() => later('late', 1000)")
    started = time.monotonic()
    dialog.locator("[data-hs-action=next]").click()
    expect(dialog).to_have_attribute("data-hs-index", "1", timeout=5_000)
    assert time.monotonic() - started >= 0.9
    late, shown = box(page, "#late"), box(page, "[data-hs-surface=tour]")
    assert shown["x"] >= late["x"] + late["width"]  # placement right
    # The engine keeps the position: after a reload the tour opens at the same step.
    until(lambda: (decide(http, user)["tutorial"] or {}).get("resume_at") == 1, "resume_at 1")
    page.reload()
    page.evaluate("() => later('late', 300)")
    mount(page, http, user)
    expect(dialog).to_have_attribute("data-hs-index", "1", timeout=5_000)
    expect(dialog.locator("h2")).to_have_text("Reports")
    # Dismissed (Esc): the engine does not offer it again, so a reload shows no tour.
    page.keyboard.press("Escape")
    expect(dialog).to_have_count(0)
    until(lambda: (decide(http, user)["tutorial"] or {}).get("id") != "workspace_tour", "not offered again")
    page.reload()
    page.evaluate("() => later('late', 0)")
    mount(page, http, user, container="#onboarding")
    expect(page.locator("[data-hs-surface=checklist]")).to_be_visible()
    page.wait_for_timeout(1_000)
    expect(dialog).to_have_count(0)
    assert page.errors == []
    page.context.close()


def test_pacing_holds_back_a_second_tour_within_the_gap(
    http: httpx.Client, product: Path, browser: Any
) -> None:
    from playwright.sync_api import expect

    user = new_user("pacing")
    page = open_kit(browser, http, user)
    page.evaluate("() => later('late', 0)")
    dialog = page.locator("[data-hs-surface=tour]")
    for index in ("0", "1", "2"):  # the whole first tour, to its end
        expect(dialog).to_have_attribute("data-hs-index", index, timeout=15_000)
        dialog.locator("[data-hs-action=next]").click()
    expect(dialog).to_have_count(0)
    complete_steps(http, user, "welcome")
    answer = decide(http, user)
    assert answer["step"]["id"] == "profile" and answer["tutorial"]["id"] == "profile_tour"
    held = answer["surfaces"]["tour"]
    assert held["show"] is False and "gap" in held["reason"], held
    assert any(held["reason"] in line for line in answer["explain"]), answer["explain"]
    page.evaluate("() => kit.refresh()")
    expect(page.locator("[data-hs-surface=checklist] [aria-current=step]")).to_have_attribute(
        "data-hs-step", "profile"
    )
    page.wait_for_timeout(500)
    expect(dialog).to_have_count(0)
    assert page.errors == []
    page.context.close()


def test_html_classes_follow_a_segment_change(http: httpx.Client, product: Path, browser: Any) -> None:
    user = new_user("classes")
    page = open_kit(browser, http, user, context={"device_type": "mobile"})

    def classes() -> set[str]:
        return {
            c for c in page.evaluate("() => [...document.documentElement.classList]") if c.startswith("hs-")
        }

    assert {"hs-seg-device_mobile", "hs-flag-simplified_mobile_flow"} <= classes()
    page.evaluate("() => kit.refresh({ device_type: 'desktop' })")
    after = classes()
    assert "hs-seg-device_desktop" in after
    assert not {"hs-seg-device_mobile", "hs-flag-simplified_mobile_flow"} & after
    assert after == {f"hs-seg-{s}" for s in decide(http, user)["segments"]} | {
        f"hs-flag-{f}" for f, on in decide(http, user)["flags"].items() if on is True
    }
    page.context.close()


def test_an_arabic_locale_renders_right_to_left(http: httpx.Client, product: Path, browser: Any) -> None:
    from playwright.sync_api import expect

    page = open_kit(browser, http, new_user("arabic"), path="/ar.html", locale="ar")
    checklist = page.locator("[data-hs-surface=checklist]")
    expect(checklist).to_be_visible(timeout=15_000)
    assert checklist.evaluate("(e) => getComputedStyle(e).direction") == "rtl"
    expect(checklist.locator("h2")).to_have_text("لنبدأ")
    dialog = page.locator("[data-hs-surface=tour]")
    expect(dialog.locator("h2")).to_have_text("التنقل")  # the engine rendered the step in Arabic
    assert dialog.evaluate("(e) => getComputedStyle(e).direction") == "rtl"
    page.context.close()


def test_axe_finds_no_wcag_violations_on_the_engines_answers(
    http: httpx.Client, product: Path, browser: Any
) -> None:
    from playwright.sync_api import expect

    page = open_kit(browser, http, new_user("axe-tour"))
    for surface in ("checklist", "tour"):
        expect(page.locator(f"[data-hs-surface={surface}]")).to_be_visible(timeout=15_000)
        assert axe_violations(page, f"[data-hs-surface={surface}]") == [], surface
    page.context.close()
    tip_user = new_user("axe-tip")
    complete_steps(http, tip_user, "welcome", "profile")
    page = open_kit(browser, http, tip_user)
    expect(page.locator("[data-hs-surface=tooltip]")).to_be_visible(timeout=15_000)
    assert axe_violations(page, "[data-hs-surface=tooltip]") == []
    page.context.close()
    banner_user = new_user("axe-banner")
    complete_steps(http, banner_user, "welcome", "profile", "connect_data")
    page = open_kit(browser, http, banner_user)
    expect(page.locator("[data-hs-surface=banner]")).to_be_visible(timeout=15_000)
    assert axe_violations(page, "[data-hs-surface=banner]") == []
    page.context.close()


REACT_APP = """
import { createElement as h } from "react";
import { createRoot } from "react-dom/client";
import { Headstart, useHeadstart, HeadstartChecklist } from "{react_module}";

const hs = new Headstart({ apiKey: "{key}", baseUrl: "{base}", userId: "{user}", userHash: "{hash}" });
function Onboarding() {
  const { decision } = useHeadstart(hs, "{user}", { context: { device_type: "desktop" } });
  return decision ? h(HeadstartChecklist, { decision }) : null;
}
createRoot(document.getElementById("onboarding")).render(h(Onboarding));
"""


def test_the_react_hook_renders_the_checklist(http: httpx.Client, product: Path, browser: Any) -> None:
    from playwright.sync_api import expect

    user = new_user("react")
    values = {
        "{react_module}": str(STATIC / "headstart-react.js"),
        "{key}": KEYS["frontend"],
        "{base}": str(http.base_url).rstrip("/"),
        "{user}": user,
        "{hash}": user_hash(TEST_IDENTITY_SECRET, user),
    }
    source = REACT_APP
    for name, value in values.items():
        source = source.replace(name, value)
    (product / "react-app.js").write_text(source)
    esbuild = js_dependency(".bin/esbuild")
    subprocess.run(
        [
            str(esbuild),
            str(product / "react-app.js"),
            "--bundle",
            "--format=iife",
            f"--outfile={product / 'react-bundle.js'}",
            '--define:process.env.NODE_ENV="production"',
            "--log-level=warning",
        ],
        check=True,
        env={"NODE_PATH": str(esbuild.parent.parent), "PATH": "/usr/bin:/bin"},
    )
    page_html = product_page().replace('<script src="/static/headstart.js"></script>', "")
    (product / "react.html").write_text(
        page_html.replace("</body>", '<script src="/react-bundle.js"></script></body>')
    )
    page = browser.new_page()
    page.goto(PRODUCT + "/react.html")
    checklist = page.locator("#onboarding [data-hs-surface=checklist]")
    expect(checklist).to_be_visible(timeout=15_000)
    journey = decide(http, user)["journey"]
    assert checklist.locator("li[data-hs-step]").evaluate_all(
        "(els) => els.map((e) => e.dataset.hsStep)"
    ) == [s["id"] for s in journey]
    assert checklist.locator("[aria-current=step]").get_attribute("data-hs-step") == "welcome"
    expect(page.locator("[data-hs-surface=tour]")).to_be_visible()  # the hook mounted the kit
    page.context.close()


def test_the_es_module_and_the_declarations_are_served_to_other_origins(
    http: httpx.Client, product: Path, browser: Any
) -> None:
    headstart = str(http.base_url).rstrip("/")
    (product / "esm.html").write_text(
        f"""<!doctype html><html lang="en"><head><title>esm</title></head><body><script type="module">
  import Headstart from "{headstart}/static/headstart.mjs";
  window.loaded = typeof Headstart.prototype.mount;
</script></body></html>"""
    )
    page = browser.new_page()
    page.goto(PRODUCT + "/esm.html")
    page.wait_for_function("() => window.loaded !== undefined", timeout=15_000)
    assert page.evaluate("() => window.loaded") == "function"  # a module from another origin: CORS
    page.context.close()
    declarations = http.get("/static/headstart.d.ts")
    assert declarations.status_code == 200 and "interface MountOptions" in declarations.text
    assert declarations.headers["content-type"].startswith("application/typescript")
    assert http.get("/static/headstart.mjs").headers["content-type"].startswith("text/javascript")
    assert http.get("/static/index.html").status_code == 404  # only the client's files
