"""The onboarding kit of headstart.js in a real headless Chromium, rendering fixed decide
answers (as the engine's contract gives them, docs/kit.md): checklist, tours, tooltips, the
banner, <html> classes, keyboard, right-to-left, motion, theming and axe-core's WCAG 2.1 AA check.

The answers come from a small loopback server written here (it also records the events the kit
sends), so what is tested is the rendering; tests/actors/test_kit_browser_integration.py runs the kit
against the real engine.
"""

from __future__ import annotations

import copy
import json
import subprocess
import time
import urllib.parse
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest

from headstart.adapters.broker import free_port
from tests.browser import STATIC, axe_violations, chromium, js_dependency, product_page, site

JOURNEY = [
    {"id": "welcome", "title": "Welcome to Acme", "url": "/welcome", "done": True},
    {"id": "profile", "title": "Tell us about you", "url": "/profile", "done": False},
    {"id": "first_project", "title": "Create your first project", "url": None, "done": False},
]
SHOW = {"show": True, "reason": ""}


def step(target: str, title: str, placement: str = "bottom") -> dict[str, str]:
    return {"target": target, "title": title, "body": f"About {title.lower()}.", "placement": placement}


def answer(
    decision_id: str = "d-1",
    tour: list[dict[str, str]] | None = None,
    surface: str = "tour",
    resume_at: int = 0,
    surfaces: dict[str, dict[str, Any]] | None = None,
    **fields: Any,
) -> dict[str, Any]:
    """A decide answer as the engine gives it (with the kit's fields), the tutorial's tour
    ``tour`` (None: no tutorial)."""
    tutorial = None
    if tour is not None:
        tutorial = {
            "id": "first_project",
            "variant": "interactive",
            "eligible": ["interactive", "video"],
            "surface": surface,
            "tour": tour,
            "resume_at": resume_at,
        }
    base = {
        "decision_id": decision_id,
        "step": {"id": "profile", "kind": "profile", "title": "Tell us about you"},
        "tutorial": tutorial,
        "message": "Welcome to Acme! Let's set up your workspace.",
        "step_message": "",
        "flags": {"new_onboarding": True, "advanced_tips": False},
        "segments": ["new_user", "device_desktop"],
        "experiments": {},
        "completed_steps": ["welcome"],
        "personalized": False,
        "explain": [],
        "catalog_version": 0,
        "journey": copy.deepcopy(JOURNEY),
        "surfaces": surfaces or {"tour": SHOW, "tooltip": SHOW, "banner": {"show": False, "reason": "test"}},
    }
    base.update(fields)
    return base


class FixedAnswers(BaseHTTPRequestHandler):
    """The test's pages, headstart/static/*, and Headstart's two routes the kit calls:
    ``/v1/decide`` answers ``server.answers[user_id]``, ``/v1/events`` records the events."""

    server: Any

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, status: int, body: bytes, media_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", media_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        path = urllib.parse.urlsplit(self.path).path
        name = path.removeprefix("/static/")
        if path.startswith("/static/") and (STATIC / name).is_file():
            self._send(200, (STATIC / name).read_bytes(), "text/javascript; charset=utf-8")
        elif path in self.server.pages:
            self._send(200, self.server.pages[path].encode(), "text/html; charset=utf-8")
        elif path in self.server.scripts:
            self._send(200, self.server.scripts[path].read_bytes(), "text/javascript; charset=utf-8")
        else:
            self._send(404, b"not found", "text/plain")

    def do_POST(self) -> None:
        path = urllib.parse.urlsplit(self.path).path
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if path == "/v1/decide":
            self.server.decide_bodies.append(body)
            found = self.server.answers.get(body["user_id"])
            if found is None:
                self._send(
                    404, b'{"error": {"code": "not_found", "message": "no answer"}}', "application/json"
                )
            else:
                self._send(200, json.dumps(found).encode(), "application/json")
        elif path == "/v1/events":
            self.server.events.extend(body["events"])
            self._send(200, json.dumps({"accepted": len(body["events"])}).encode(), "application/json")
        else:
            self._send(404, b"{}", "application/json")


class Headstart:
    """The fixed-answer server's state, as a test sees it."""

    def __init__(self, url: str, server_state: dict[str, Any]) -> None:
        self.url = url
        self.answers: dict[str, dict[str, Any]] = server_state["answers"]
        self.events: list[dict[str, Any]] = server_state["events"]
        self.decide_bodies: list[dict[str, Any]] = server_state["decide_bodies"]
        self.pages: dict[str, str] = server_state["pages"]
        self.scripts: dict[str, Path] = server_state["scripts"]

    def events_of(self, user: str, kind: str | None = None) -> list[dict[str, Any]]:
        return [e for e in self.events if e["user_id"] == user and (kind is None or e["type"] == kind)]

    def wait_event(self, user: str, kind: str, count: int = 1, timeout: float = 10.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.events_of(user, kind)
            if len(found) >= count:
                return found
            time.sleep(0.05)
        raise AssertionError(f"no {count} {kind} events for {user}: {self.events_of(user)}")


@pytest.fixture(scope="module")
def headstart() -> Iterator[Headstart]:
    state: dict[str, Any] = {
        "answers": {},
        "events": [],
        "decide_bodies": [],
        "pages": {"/": product_page(), "/welcome": product_page(), "/profile": product_page()},
        "scripts": {},
    }
    with site(free_port(), FixedAnswers, **state) as url:
        yield Headstart(url, state)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as launched:
        yield launched


Mounter = Callable[..., Any]


@pytest.fixture
def mount(headstart: Headstart, browser: Any) -> Iterator[Mounter]:
    """``mount(user, answer, path="/", **options)``: a new page (fresh storage) where the kit is
    mounted for ``user``, whose decisions are ``answer``; returns the page."""
    pages: list[Any] = []

    def open_and_mount(
        user: str, decided: dict[str, Any], path: str = "/", page: Any = None, **options: Any
    ) -> Any:
        headstart.answers[user] = decided
        if page is None:
            page = browser.new_page(**options.pop("page_options", {}))
            pages.append(page)
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.errors = errors
            page.goto(headstart.url + path)
        focus = options.pop("focus", None)
        if focus:
            page.focus(focus)
        page.evaluate(
            """async ([user, options]) => {
                window.hs = new Headstart({ apiKey: "frontend-key", flushMs: 50 });
                window.kit = await hs.mount(user, options);
            }""",
            [user, options],
        )
        return page

    yield open_and_mount
    for page in pages:
        assert page.errors == [], page.errors
        page.context.close()


def box(page: Any, selector: str) -> dict[str, float]:
    found: dict[str, float] = page.locator(selector).bounding_box()
    assert found is not None, selector
    return found


def inside(page: Any, selector: str) -> bool:
    return bool(page.evaluate("(s) => document.querySelector(s).contains(document.activeElement)", selector))


# ---------------------------------------------------------------------- checklist


def test_the_checklist_lists_the_journey_with_the_decided_step_current(mount: Mounter) -> None:
    from playwright.sync_api import expect

    page = mount("cl-1", answer(), container="#onboarding")
    checklist = page.locator("#onboarding [data-hs-surface=checklist]")
    expect(checklist).to_be_visible()
    items = checklist.locator("li[data-hs-step]")
    assert items.evaluate_all("(els) => els.map((e) => e.dataset.hsStep)") == [
        "welcome",
        "profile",
        "first_project",
    ]
    assert checklist.locator("[aria-current=step]").get_attribute("data-hs-step") == "profile"
    assert checklist.locator("[aria-current]").count() == 1
    assert "hs-done" in (items.nth(0).get_attribute("class") or "")
    assert items.nth(0).inner_text().endswith("(done)")  # said to screen readers too
    assert checklist.locator("ol").count() == 1 and checklist.get_attribute("aria-labelledby")
    expect(checklist.locator(".hs-meta")).to_have_text("1 of 3 done")
    assert checklist.locator("progress").evaluate("(p) => [p.value, p.max]") == [1, 3]
    # No url: not a link. A url: clicking the item goes there.
    assert items.nth(2).locator("a").count() == 0
    items.nth(1).locator("a").click()
    page.wait_for_url("**/profile")


def test_without_a_container_the_checklist_is_a_fixed_panel_and_can_be_collapsed(mount: Mounter) -> None:
    from playwright.sync_api import expect

    page = mount("cl-2", answer(step=None, journey=[dict(s, done=True) for s in JOURNEY]))
    panel = page.locator("body > .hs-panel [data-hs-surface=checklist]")
    expect(panel).to_be_visible()
    expect(panel.locator(".hs-meta")).to_have_text("All set!")
    assert panel.locator("[aria-current]").count() == 0
    assert page.locator(".hs-panel").evaluate("(p) => getComputedStyle(p).position") == "fixed"
    toggle = panel.locator(".hs-head button")
    assert toggle.get_attribute("aria-expanded") == "true"
    toggle.click()
    assert toggle.get_attribute("aria-expanded") == "false"
    expect(panel.locator("ol")).to_be_hidden()


# ---------------------------------------------------------------------- tours


def test_a_tour_is_anchored_to_its_targets_waits_for_a_late_one_and_records_each_step(
    headstart: Headstart, mount: Mounter
) -> None:
    from playwright.sync_api import expect

    tour = [step("#nav", "Navigation"), step("#late", "Reports", "right"), step("#create", "Projects", "top")]
    page = mount("tour-1", answer("d-tour", tour), focus="#before")
    dialog = page.locator("[data-hs-surface=tour]")
    expect(dialog).to_have_attribute("data-hs-index", "0")
    assert dialog.get_attribute("role") == "dialog" and dialog.get_attribute("aria-modal") == "true"
    assert dialog.get_attribute("dir") == "ltr" and dialog.get_attribute("lang") == "en"
    labelled = page.evaluate(
        "() => { const d = document.querySelector('[role=dialog]');"
        " return [document.getElementById(d.getAttribute('aria-labelledby')).textContent,"
        " document.getElementById(d.getAttribute('aria-describedby')).textContent]; }"
    )
    assert labelled == ["Navigation", "About navigation."]
    expect(dialog.locator(".hs-meta")).to_have_text("Step 1 of 3")
    # Below its target (placement bottom), overlapping it horizontally.
    nav, shown = box(page, "#nav"), box(page, "[data-hs-surface=tour]")
    assert shown["y"] >= nav["y"] + nav["height"]
    assert shown["x"] < nav["x"] + nav["width"] and shown["x"] + shown["width"] > nav["x"]
    spot = box(page, ".hs-spot")
    assert spot["x"] <= nav["x"] and spot["x"] + spot["width"] >= nav["x"] + nav["width"]
    # Focus moved into the step, and Tab stays there.
    assert page.evaluate("() => document.activeElement.dataset.hsAction") == "next"
    for key in ["Tab", "Tab", "Tab", "Shift+Tab", "Shift+Tab", "Shift+Tab", "Shift+Tab"]:
        page.keyboard.press(key)
        assert inside(page, "[data-hs-surface=tour]"), key
    # The next step's target comes a second late: it is waited for, then anchored.
    page.evaluate("() => later('late', 1000)")
    started = time.monotonic()
    dialog.locator("[data-hs-action=next]").click()
    expect(dialog).to_have_attribute("data-hs-index", "1", timeout=5_000)
    assert time.monotonic() - started >= 0.9
    late, shown = box(page, "#late"), box(page, "[data-hs-surface=tour]")
    assert dialog.get_attribute("data-hs-placement") == "right"
    assert shown["x"] >= late["x"] + late["width"]
    dialog.locator("[data-hs-action=next]").click()
    expect(dialog).to_have_attribute("data-hs-index", "2")
    create, shown = box(page, "#create"), box(page, "[data-hs-surface=tour]")
    assert shown["y"] + shown["height"] <= create["y"]
    expect(dialog.locator("[data-hs-action=next]")).to_have_text("Finish")
    dialog.locator("[data-hs-action=back]").click()
    expect(dialog).to_have_attribute("data-hs-index", "1")
    dialog.locator("[data-hs-action=next]").click()
    dialog.locator("[data-hs-action=next]").click()
    expect(dialog).to_have_count(0)
    expect(page.locator(".hs-spot")).to_have_count(0)
    assert page.evaluate("() => document.activeElement.id") == "before"  # focus came back
    completed = headstart.wait_event("tour-1", "tutorial_completed")
    assert completed[0]["props"] == {
        "tutorial": "first_project",
        "variant": "interactive",
        "decision_id": "d-tour",
    }
    viewed = [e["props"]["index"] for e in headstart.events_of("tour-1", "tour_step_viewed")]
    assert viewed == [0, 1, 2, 1, 2]
    kinds = [e["type"] for e in headstart.events_of("tour-1")]
    assert kinds[:3] == ["surface_shown", "tutorial_started", "tour_step_viewed"]
    shown_event = headstart.events_of("tour-1", "surface_shown")[0]
    assert shown_event["props"] == {"surface": "tour", "id": "first_project", "decision_id": "d-tour"}
    assert all(e["props"]["decision_id"] == "d-tour" for e in headstart.events_of("tour-1"))


def test_a_step_whose_target_never_appears_is_skipped_and_the_skip_recorded(
    headstart: Headstart, mount: Mounter
) -> None:
    from playwright.sync_api import expect

    tour = [step("#nav", "Navigation"), step("#never", "Nowhere"), step("#create", "Projects")]
    page = mount("tour-skip", answer("d-skip", tour), targetTimeoutMs=700)
    dialog = page.locator("[data-hs-surface=tour]")
    expect(dialog).to_have_attribute("data-hs-index", "0")
    dialog.locator("[data-hs-action=next]").click()
    expect(dialog).to_have_count(0)
    expect(page.locator("[data-hs-surface=tour]")).to_have_attribute("data-hs-index", "2", timeout=5_000)
    skipped = headstart.wait_event("tour-skip", "tour_step_skipped")
    assert skipped[0]["props"] == {
        "tutorial": "first_project",
        "variant": "interactive",
        "index": 1,
        "reason": "target_not_found",
        "decision_id": "d-skip",
    }


def test_a_tour_opens_at_resume_at_or_at_the_later_step_whose_target_is_on_the_page(
    headstart: Headstart, mount: Mounter
) -> None:
    from playwright.sync_api import expect

    tour = [step("#nav", "Navigation"), step("#search", "Search"), step("#create", "Projects")]
    page = mount("tour-resume", answer("d-resume", tour, resume_at=1))
    expect(page.locator("[data-hs-surface=tour]")).to_have_attribute("data-hs-index", "1")
    headstart.wait_event("tour-resume", "tour_step_viewed")
    # Resumed, not started: no new interruption counted.
    assert headstart.events_of("tour-resume", "surface_shown") == []
    assert headstart.events_of("tour-resume", "tutorial_started") == []
    # A page with only the last step's target (the tour spans pages): that step.
    elsewhere = [
        step("#on-another-page", "Elsewhere"),
        step("#also-elsewhere", "Too"),
        step("#create", "Here"),
    ]
    page = mount("tour-pages", answer("d-pages", elsewhere), targetTimeoutMs=700)
    expect(page.locator("[data-hs-surface=tour]")).to_have_attribute("data-hs-index", "2")
    assert headstart.events_of("tour-pages", "tour_step_skipped") == []  # on other pages, not missing
    # ... but the step to resume at is waited for first: its target may just be late (a reload).
    tour = [step("#nav", "Navigation"), step("#late-again", "Reports"), step("#create", "Projects")]
    page = mount("tour-late", answer("d-late", tour, resume_at=1), targetTimeoutMs=3000)
    page.evaluate("() => later('late-again', 500)")
    expect(page.locator("[data-hs-surface=tour]")).to_have_attribute("data-hs-index", "1", timeout=5_000)
    # A page where the target comes late: the tour waits for it.
    page = mount("tour-wait", answer("d-wait", [step("#late-first", "Late")]))
    page.evaluate("() => later('late-first', 1000)")
    expect(page.locator("[data-hs-surface=tour]")).to_have_count(0)
    expect(page.locator("[data-hs-surface=tour]")).to_have_attribute("data-hs-index", "0", timeout=5_000)


def test_a_reload_mid_tour_does_not_count_a_new_interruption(headstart: Headstart, mount: Mounter) -> None:
    from playwright.sync_api import expect

    tour = [step("#nav", "Navigation"), step("#search", "Search")]
    page = mount("tour-reload", answer("d-reload", tour))
    expect(page.locator("[data-hs-surface=tour]")).to_have_attribute("data-hs-index", "0")
    headstart.wait_event("tour-reload", "tour_step_viewed")
    page.reload()
    mount("tour-reload", answer("d-reload-2", tour), page=page)  # the engine still at step 0
    expect(page.locator("[data-hs-surface=tour]")).to_have_attribute("data-hs-index", "0")
    headstart.wait_event("tour-reload", "tour_step_viewed", count=2)
    assert len(headstart.events_of("tour-reload", "surface_shown")) == 1
    assert len(headstart.events_of("tour-reload", "tutorial_started")) == 1


def test_escape_dismisses_the_tour_records_it_and_gives_focus_back(
    headstart: Headstart, mount: Mounter
) -> None:
    from playwright.sync_api import expect

    tour = [step("#nav", "Navigation"), step("#search", "Search")]
    page = mount("tour-esc", answer("d-esc", tour), focus="#before")
    dialog = page.locator("[data-hs-surface=tour]")
    expect(dialog).to_be_visible()
    page.keyboard.press("Escape")
    expect(dialog).to_have_count(0)
    assert page.evaluate("() => document.activeElement.id") == "before"
    dismissed = headstart.wait_event("tour-esc", "surface_dismissed")
    assert dismissed[0]["props"] == {
        "surface": "tour",
        "id": "first_project",
        "index": 0,
        "decision_id": "d-esc",
    }
    # A decision made before Headstart applied the dismissal does not bring it back here.
    page.evaluate("() => kit.refresh()")
    page.wait_for_timeout(300)
    expect(dialog).to_have_count(0)
    # The close button is a dismissal too.
    page = mount("tour-close", answer("d-close", tour))
    page.locator("[data-hs-surface=tour] [data-hs-action=close]").click()
    assert headstart.wait_event("tour-close", "surface_dismissed")[0]["props"]["index"] == 0


def test_only_the_surfaces_the_decision_allows_are_shown(headstart: Headstart, mount: Mounter) -> None:
    from playwright.sync_api import expect

    held = {"show": False, "reason": "pacing: a tour was shown 3 minutes ago (min gap 60 min)"}
    page = mount(
        "paced",
        answer(
            "d-paced", [step("#nav", "Navigation")], surfaces={"tour": held, "tooltip": held, "banner": held}
        ),
        container="#onboarding",
    )
    expect(page.locator("[data-hs-surface=checklist]")).to_be_visible()  # not an interruption
    page.wait_for_timeout(300)
    for surface in ("tour", "tooltip", "banner"):
        expect(page.locator(f"[data-hs-surface={surface}]")).to_have_count(0)
    assert headstart.events_of("paced") == []
    # Allowed at the next decision: shown then.
    headstart.answers["paced"] = answer("d-paced-2", [step("#nav", "Navigation")])
    page.evaluate("() => kit.refresh()")
    expect(page.locator("[data-hs-surface=tour]")).to_be_visible()


# ---------------------------------------------------------------------- tooltip, banner


def test_a_tooltip_variant_is_a_hotspot_beside_its_target(headstart: Headstart, mount: Mounter) -> None:
    from playwright.sync_api import expect

    page = mount("tip-1", answer("d-tip", [step("#search", "Search everything", "right")], surface="tooltip"))
    tip = page.locator("[data-hs-surface=tooltip]")
    expect(tip).to_be_visible()
    assert tip.get_attribute("role") == "tooltip"
    hotspot = page.locator("[data-hs-hotspot]")
    assert hotspot.get_attribute("aria-describedby") == tip.get_attribute("id")
    assert hotspot.get_attribute("aria-expanded") == "true"
    search, shown = box(page, "#search"), box(page, "[data-hs-surface=tooltip]")
    assert shown["x"] >= search["x"] + search["width"]
    assert page.locator("[data-hs-surface=tour]").count() == 0  # not a modal step
    hotspot.click()
    expect(tip).to_be_hidden()
    assert hotspot.get_attribute("aria-expanded") == "false"
    hotspot.click()
    expect(tip).to_be_visible()
    shown_event = headstart.wait_event("tip-1", "surface_shown")[0]
    assert shown_event["props"] == {"surface": "tooltip", "id": "first_project", "decision_id": "d-tip"}
    viewed = headstart.wait_event("tip-1", "tour_step_viewed")[0]["props"]
    assert viewed == {
        "tutorial": "first_project",
        "variant": "interactive",
        "index": 0,
        "decision_id": "d-tip",
    }
    tip.locator("[data-hs-action=next]").click()  # "Got it"
    expect(tip).to_have_count(0)
    expect(hotspot).to_have_count(0)
    headstart.wait_event("tip-1", "tutorial_completed")
    # Esc closes a tooltip too, as a dismissal.
    page = mount("tip-2", answer("d-tip-2", [step("#search", "Search everything")], surface="tooltip"))
    expect(page.locator("[data-hs-surface=tooltip]")).to_be_visible()
    page.keyboard.press("Escape")
    expect(page.locator("[data-hs-surface=tooltip]")).to_have_count(0)
    dismissed = headstart.wait_event("tip-2", "surface_dismissed")[0]["props"]
    assert dismissed == {"surface": "tooltip", "id": "first_project", "index": 0, "decision_id": "d-tip-2"}


def test_the_banner_shows_the_welcome_message_and_records_its_dismissal(
    headstart: Headstart, mount: Mounter
) -> None:
    from playwright.sync_api import expect

    surfaces = {"tour": SHOW, "tooltip": SHOW, "banner": SHOW}
    page = mount("banner-1", answer("d-banner", surfaces=surfaces), container="#onboarding")
    banner = page.locator("[data-hs-surface=banner]")
    expect(banner).to_have_text("Welcome to Acme! Let's set up your workspace.×")
    assert page.evaluate("() => document.body.firstElementChild.dataset.hsSurface") == "banner"
    assert banner.get_attribute("role") == "region" and banner.get_attribute("aria-label") == "Welcome"
    assert headstart.wait_event("banner-1", "surface_shown")[0]["props"]["surface"] == "banner"
    banner.locator("button").click()
    expect(banner).to_have_count(0)
    dismissed = headstart.wait_event("banner-1", "surface_dismissed")[0]["props"]
    assert dismissed == {"surface": "banner", "id": "welcome", "index": None, "decision_id": "d-banner"}


# ---------------------------------------------------------------------- html classes


def test_html_classes_follow_each_decision(headstart: Headstart, mount: Mounter) -> None:
    page = mount(
        "classes", answer(segments=["device_mobile", "new_user"], flags={"mobile": True, "tips": False})
    )

    def classes() -> set[str]:
        return set(page.evaluate("() => [...document.documentElement.classList]"))

    assert classes() == {"js", "hs-seg-device_mobile", "hs-seg-new_user", "hs-flag-mobile"}
    headstart.answers["classes"] = answer(segments=["device_desktop"], flags={"mobile": False, "tips": True})
    page.evaluate("() => kit.refresh()")
    assert classes() == {"js", "hs-seg-device_desktop", "hs-flag-tips"}
    # Any decision for the mounted user, not only the kit's own.
    headstart.answers["classes"] = answer(segments=["power_user"], flags={})
    page.evaluate("() => hs.decide('classes', {})")
    assert classes() == {"js", "hs-seg-power_user"}
    page.evaluate("() => hs.decide('someone-else', {}).catch(() => null)")
    assert classes() == {"js", "hs-seg-power_user"}
    page.evaluate("() => kit.unmount()")
    assert classes() == {"js"}


# ---------------------------------------------------------------------- locale, motion, theme


def test_an_arabic_locale_renders_right_to_left(headstart: Headstart, mount: Mounter) -> None:
    from playwright.sync_api import expect

    tour = [step("#search", "بحث", "right")]
    headstart.pages["/ar"] = product_page(lang="ar", direction="rtl")
    page = mount("rtl", answer("d-rtl", tour), path="/ar", locale="ar")
    checklist = page.locator("[data-hs-surface=checklist]")
    expect(checklist).to_be_visible()
    assert checklist.get_attribute("dir") == "rtl" and checklist.get_attribute("lang") == "ar"
    assert checklist.evaluate("(e) => getComputedStyle(e).direction") == "rtl"
    expect(checklist.locator("h2")).to_have_text("لنبدأ")
    expect(checklist.locator(".hs-meta")).to_have_text("تم 1 من 3")  # Chromium's Arabic digits are Latin
    # The panel sits at the inline end: the left in a right-to-left page.
    panel = box(page, ".hs-panel")
    assert panel["x"] < page.viewport_size["width"] / 2
    dialog = page.locator("[data-hs-surface=tour]")
    expect(dialog).to_be_visible()
    assert dialog.get_attribute("dir") == "rtl"
    assert dialog.evaluate("(e) => getComputedStyle(e).direction") == "rtl"
    # "right" means after the target in reading order: its left in Arabic.
    assert dialog.get_attribute("data-hs-placement") == "left"
    search, shown = box(page, "#search"), box(page, "[data-hs-surface=tour]")
    assert shown["x"] + shown["width"] <= search["x"]
    expect(dialog.locator("[data-hs-action=next]")).to_have_text("إنهاء")
    # Hebrew too.
    page = mount("rtl-he", answer(), locale="he-IL")
    assert page.locator("[data-hs-surface=checklist]").get_attribute("dir") == "rtl"


def test_animations_only_for_those_who_did_not_ask_for_reduced_motion(mount: Mounter) -> None:
    from playwright.sync_api import expect

    def animation(page: Any) -> str:
        return str(
            page.evaluate(
                "() => getComputedStyle(document.querySelector('[data-hs-hotspot]'), '::after').animationName"
            )
        )

    tip = answer("d-motion", [step("#search", "Search")], surface="tooltip")
    moving = mount("motion-1", tip)
    expect(moving.locator("[data-hs-hotspot]")).to_be_visible()
    assert animation(moving) == "hs-pulse"
    still = mount("motion-2", tip, page_options={"reduced_motion": "reduce"})
    expect(still.locator("[data-hs-hotspot]")).to_be_visible()
    assert animation(still) == "none"
    tour = mount(
        "motion-3", answer("d-motion-3", [step("#nav", "Nav")]), page_options={"reduced_motion": "reduce"}
    )
    expect(tour.locator("[data-hs-surface=tour]")).to_be_visible()
    assert (
        tour.locator("[data-hs-surface=tour]").evaluate("(e) => getComputedStyle(e).animationName") == "none"
    )


def test_a_page_themes_the_kit_with_css_custom_properties(headstart: Headstart, mount: Mounter) -> None:
    from playwright.sync_api import expect

    theme = ":root { --hs-accent: rgb(120, 20, 90); --hs-radius: 2px; --hs-font: Georgia, serif; }"
    headstart.pages["/themed"] = product_page(head=f"<style>{theme}</style>")
    page = mount("themed", answer("d-theme", [step("#nav", "Navigation")]), path="/themed")
    next_button = page.locator("[data-hs-surface=tour] [data-hs-action=next]")
    expect(next_button).to_be_visible()
    style = next_button.evaluate(
        "(e) => [getComputedStyle(e).backgroundColor, getComputedStyle(e).fontFamily]"
    )
    assert style == ["rgb(120, 20, 90)", "Georgia, serif"]
    radius = page.locator("[data-hs-surface=tour]").evaluate("(e) => getComputedStyle(e).borderTopLeftRadius")
    assert radius == "2px"


def test_decisions_carry_the_browsers_time_zone(headstart: Headstart, mount: Mounter) -> None:
    mount("tz", answer(), page_options={"timezone_id": "Asia/Tokyo"}, context={"device_type": "desktop"})
    body = next(b for b in reversed(headstart.decide_bodies) if b["user_id"] == "tz")
    assert body["context"] == {"locale": "en", "device_type": "desktop", "timezone": "Asia/Tokyo"}
    mount("tz-given", answer(), context={"timezone": "Europe/Berlin"})
    body = next(b for b in reversed(headstart.decide_bodies) if b["user_id"] == "tz-given")
    assert body["context"]["timezone"] == "Europe/Berlin"


# ---------------------------------------------------------------------- accessibility


def test_axe_finds_no_wcag_21_aa_violations_in_the_kits_surfaces(mount: Mounter) -> None:
    from playwright.sync_api import expect

    surfaces = {"tour": SHOW, "tooltip": SHOW, "banner": SHOW}
    page = mount(
        "axe-1", answer("d-axe", [step("#nav", "Navigation"), step("#create", "Projects")], surfaces=surfaces)
    )
    for surface in ("checklist", "tour", "banner"):
        expect(page.locator(f"[data-hs-surface={surface}]")).to_be_visible()
        assert axe_violations(page, f"[data-hs-surface={surface}]") == [], surface
    tip = mount(
        "axe-2",
        answer("d-axe-2", [step("#search", "Search")], surface="tooltip", surfaces=surfaces),
        locale="ar",
    )
    expect(tip.locator("[data-hs-surface=tooltip]")).to_be_visible()
    for selector in ("[data-hs-surface=tooltip]", "[data-hs-hotspot]", "[data-hs-surface=checklist]"):
        assert axe_violations(tip, selector) == [], selector


# ---------------------------------------------------------------------- ES module, React


def test_the_es_module_exports_the_client(headstart: Headstart, browser: Any) -> None:
    headstart.pages["/esm"] = """<!doctype html><html lang="en"><head><title>esm</title></head><body>
<script type="module">
  import Headstart, { Headstart as Named } from "/static/headstart.mjs";
  window.loaded = { same: Headstart === Named && Headstart === window.Headstart,
                    mount: typeof new Headstart({}).mount, rtl: Headstart.isRtl("he") };
</script></body></html>"""
    page = browser.new_page()
    try:
        page.goto(headstart.url + "/esm")
        page.wait_for_function("() => window.loaded !== undefined")
        assert page.evaluate("() => window.loaded") == {"same": True, "mount": "function", "rtl": True}
    finally:
        page.context.close()


REACT_APP = """
import { StrictMode, createElement as h } from "react";
import { createRoot } from "react-dom/client";
import { Headstart, useHeadstart, HeadstartChecklist } from "{react_module}";

const hs = new Headstart({ apiKey: "frontend-key" });
function Onboarding({ userId }) {
  const options = { context: { device_type: "desktop" }, locale: "en" };
  const { decision, loading } = useHeadstart(hs, userId, options);
  if (loading) return h("p", { id: "loading" }, "Loading");
  return h(HeadstartChecklist, { decision, locale: "en" });
}
window.hs = hs;
// StrictMode mounts, unmounts and mounts again: one kit must be left.
const app = h(StrictMode, null, h(Onboarding, { userId: "react-user" }));
createRoot(document.getElementById("root")).render(app);
"""


def test_the_react_hook_renders_the_checklist(headstart: Headstart, browser: Any, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    esbuild = js_dependency(".bin/esbuild")
    (tmp_path / "app.js").write_text(REACT_APP.replace("{react_module}", str(STATIC / "headstart-react.js")))
    bundle = tmp_path / "bundle.js"
    subprocess.run(
        [
            str(esbuild),
            str(tmp_path / "app.js"),
            "--bundle",
            "--format=iife",
            f"--outfile={bundle}",
            '--define:process.env.NODE_ENV="production"',
            "--log-level=warning",
        ],
        check=True,
        env={"NODE_PATH": str(esbuild.parent.parent), "PATH": "/usr/bin:/bin"},
    )
    headstart.scripts["/react-app.js"] = bundle
    headstart.pages["/react"] = """<!doctype html><html lang="en"><head><title>React</title></head>
<body><nav id="nav">Nav</nav><div id="root"></div><script src="/react-app.js"></script></body></html>"""
    headstart.answers["react-user"] = answer("d-react", [step("#nav", "Navigation")], segments=["new_user"])
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        page.goto(headstart.url + "/react")
        checklist = page.locator("#root [data-hs-surface=checklist]")
        expect(checklist).to_be_visible()
        items = checklist.locator("li[data-hs-step]")
        assert items.evaluate_all("(els) => els.map((e) => e.dataset.hsStep)") == [
            "welcome",
            "profile",
            "first_project",
        ]
        assert checklist.locator("[aria-current=step]").get_attribute("data-hs-step") == "profile"
        expect(checklist.locator(".hs-meta")).to_have_text("1 of 3 done")
        # The same markup and styles as the kit's own checklist, and no second one from the kit.
        assert page.locator("[data-hs-surface=checklist]").count() == 1
        assert checklist.evaluate("(e) => getComputedStyle(e).borderTopLeftRadius") == "8px"
        checklist.locator(".hs-head button").click()
        expect(checklist.locator("ol")).to_be_hidden()
        # The hook mounted the kit: the tour and the <html> classes are there too.
        expect(page.locator("[data-hs-surface=tour]")).to_be_visible()
        page.wait_for_timeout(300)
        assert page.locator("[data-hs-surface=tour]").count() == 1
        assert page.evaluate("() => document.documentElement.classList.contains('hs-seg-new_user')")
        assert axe_violations(page, "#root [data-hs-surface=checklist]") == []
        assert errors == []
    finally:
        page.context.close()
