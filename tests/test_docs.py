"""The README stays a first read and the reference in ``docs/`` stays reachable and current.

Checks the README's length, that every docs page exists, that every relative link in the
README and ``docs/`` points to a file that exists (and, for ``#anchors`` into a page, to one of
its headings), and that the operations page lists every setting.
"""

import re
from pathlib import Path

import pytest

from headstart.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = (
    "README.md",
    "architecture.md",
    "api.md",
    "catalog.md",
    "segments.md",
    "learning.md",
    "experiments.md",
    "privacy.md",
    "identity.md",
    "kit.md",
    "export.md",
    "operations.md",
    "benchmarks.md",
)
#: ``[text](target)`` outside code; images too (``![alt](target)``).
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)


def markdown_files() -> list[Path]:
    return [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]


def anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lowercase, punctuation dropped, spaces to hyphens."""
    text = FENCE.sub("", page.read_text())
    found = set()
    for heading in re.findall(r"^#+\s+(.+)$", text, re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        found.add(slug)
    return found


def relative_links(page: Path) -> list[str]:
    text = FENCE.sub("", page.read_text())
    text = re.sub(r"`[^`\n]*`", "", text)  # inline code is not a link
    return [t for t in LINK.findall(text) if not re.match(r"^[a-z][a-z0-9+.-]*:", t)]


def test_readme_is_short() -> None:
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 300, f"README.md has {len(lines)} lines; the reference belongs in docs/"


def test_docs_pages_exist() -> None:
    missing = [name for name in PAGES if not (DOCS / name).is_file()]
    assert not missing, f"missing docs pages: {missing}"


@pytest.mark.parametrize("page", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page: Path) -> None:
    broken = []
    for target in relative_links(page):
        path_part, _, anchor = target.partition("#")
        resolved = (page.parent / path_part).resolve() if path_part else page
        missing_anchor = bool(anchor) and resolved.suffix == ".md" and anchor not in anchors(resolved)
        if not resolved.exists() or missing_anchor:
            broken.append(target)
    assert not broken, f"{page.relative_to(ROOT)}: links to nothing: {broken}"


def test_every_setting_is_documented() -> None:
    text = (DOCS / "operations.md").read_text()
    names = [f"HEADSTART_{name.upper()}" for name in Settings.model_fields]
    missing = [name for name in names if f"`{name}`" not in text]
    assert not missing, f"docs/operations.md does not list: {missing}"
