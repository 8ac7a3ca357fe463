"""The backend snippets in docs/identity.md compute the hash Headstart checks."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from headstart.web.identity import user_hash

PAGE = Path(__file__).resolve().parents[3] / "docs" / "identity.md"
SECRET = "3b1f0c6e9a4d2f7b8c5e1a0d9f6b3c2e7a4d1f8b5c2e9a6d3f0b7c4e1a8d5f2b"  # as <home>/identity_secret holds
USERS = ("alice@example.com", "Zoë Ünicode", "anon-ignored-but-hashable")


def snippet(language: str, containing: str) -> str:
    """The page's first ``language`` code block with ``containing`` in it."""
    blocks = re.findall(rf"^```{language}\n(.*?)^```", PAGE.read_text(), re.S | re.M)
    found = [block for block in blocks if containing in block]
    assert found, f"no {language} snippet with {containing!r} in {PAGE.name}"
    return str(found[0])


def test_the_python_snippet_matches_headstart() -> None:
    namespace: dict[str, object] = {}
    exec(snippet("python", "hmac.new"), namespace)
    compute = namespace["user_hash"]
    assert callable(compute)
    for user in USERS:
        assert compute(SECRET.encode(), user) == user_hash(SECRET.encode(), user)


@pytest.mark.skipif(shutil.which("node") is None, reason="Node.js is not installed")
def test_the_node_snippet_matches_headstart() -> None:
    each = "for (const id of JSON.parse(process.argv[2])) console.log(userHash(process.argv[1], id));"
    program = f"{snippet('js', 'createHmac')}\n{each}\n"
    command = ["node", "-e", program, SECRET, json.dumps(USERS)]
    out = subprocess.run(command, capture_output=True, text=True, check=True, timeout=30).stdout.split()
    assert out == [user_hash(SECRET.encode(), user) for user in USERS]
