"""What the browser tests share: Debian's headless Chromium driven by Playwright, a loopback
site for a product's pages, the npm packages the JS tests use (``tests/js``, installed by
``.ci/run`` with ``npm ci``) and axe-core's WCAG check."""

from __future__ import annotations

import contextlib
import functools
import http.server
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
STATIC = ROOT / "headstart" / "static"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
NODE_MODULES = ROOT / "tests" / "js" / "node_modules"
#: The rules axe-core runs: WCAG 2.0 and 2.1, levels A and AA.
WCAG_21_AA = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"]

#: A product's page for the kit's tests: targets for tours (``#nav``, ``#search``, ``#create``,
#: and any the page adds late with ``later(id, ms)``), a focusable ``#before``, a container
#: ``#onboarding``; headstart.js loaded from ``{headstart}`` ("" for the page's own origin).
PRODUCT_PAGE = """<!doctype html>
<html lang="en" class="js"><head><meta charset="utf-8"><title>Acme projects</title>{head}</head>
<body>
<header>
<nav id="nav" aria-label="Main"><a href="/">Home</a> <button id="search">Search</button></nav>
</header>
<main>
<h1>Acme projects</h1>
<p><button id="before">Projects</button></p>
<div id="onboarding"></div>
<p style="margin-top: 240px"><button id="create">New project</button></p>
</main>
<script src="{headstart}/static/headstart.js"></script>
<script>
  // A target the page adds late (a view rendered after data arrives).
  window.later = (id, ms) => setTimeout(() => {
    const button = document.createElement("button");
    button.id = id;
    button.textContent = "Late " + id;
    document.querySelector("main").appendChild(button);
  }, ms);
</script>
</body></html>
"""


def product_page(headstart: str = "", head: str = "", lang: str = "en", direction: str = "ltr") -> str:
    """:data:`PRODUCT_PAGE` loading headstart.js from ``headstart``, with ``head`` (e.g. a
    ``<style>``) and the page's language and direction."""
    page = PRODUCT_PAGE.replace("{headstart}", headstart).replace("{head}", head)
    return page.replace('<html lang="en"', f'<html lang="{lang}" dir="{direction}"')


@contextlib.contextmanager
def chromium() -> Iterator[Any]:
    """Debian's Chromium, headless (a test tool's own browser download cannot work offline)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield browser
        finally:
            browser.close()


def js_dependency(relative: str) -> Path:
    """A file of an npm package the JS tests use; fails saying how to install them."""
    path = NODE_MODULES / relative
    if not path.exists():
        pytest.fail(f"{path} is missing: run `npm ci --prefix tests/js` (.ci/run does)")
    return path


class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def site(port: int, handler: type[http.server.BaseHTTPRequestHandler], **attributes: Any) -> Iterator[str]:
    """``handler`` on ``http://127.0.0.1:<port>`` (a thread) with ``attributes`` set on the
    server (the handler reads them as ``self.server.<name>``)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    for name, value in attributes.items():
        setattr(server, name, value)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.shutdown()
        server.server_close()


def static_site(port: int, root: Path) -> contextlib.AbstractContextManager[str]:
    """The files under ``root`` on ``http://127.0.0.1:<port>/``."""
    return site(port, functools.partial(Quiet, directory=str(root)))


def axe_violations(page: Any, selector: str) -> list[dict[str, Any]]:
    """axe-core's WCAG 2.1 A and AA violations within the elements ``selector`` matches (the
    script injected into the page once), each as ``{id, help, nodes: [html...]}``."""
    if not page.evaluate("() => typeof axe === 'object'"):
        page.add_script_tag(path=str(js_dependency("axe-core/axe.min.js")))
    found: list[dict[str, Any]] = page.evaluate(
        """async ([selector, tags]) => {
            const result = await axe.run(
                { include: [[selector]] }, { runOnly: { type: "tag", values: tags } });
            if (!result.passes.length && !result.violations.length && !result.incomplete.length) {
                throw new Error("axe checked nothing in " + selector);
            }
            return result.violations.map(
                (v) => ({ id: v.id, help: v.help, nodes: v.nodes.map((n) => n.html) }));
        }""",
        [selector, WCAG_21_AA],
    )
    return found
