"""The Python client and the OpenFeature provider work where only the client is installed.

A product backend installs ``headstart`` for :mod:`headstart.client` and
:mod:`headstart.feature_flags`, with the packages of the ``client`` extra, not the server's
(Ray, NATS, numpy, river, polars, pydantic, FastAPI, cryptography, ...). Here a fresh
interpreter refuses to import every base dependency the ``client`` extra does not list, imports
both modules, builds a client and a provider, and reports which packages it loaded: nothing but
the standard library, Headstart's own light modules and what the ``client`` extra pulls in.
"""

from __future__ import annotations

import importlib.metadata
import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = """
import importlib.abc, json, sys

ALLOWED = set(json.loads(sys.argv[1]))
present = {name.partition(".")[0] for name in sys.modules}  # the interpreter's own start-up


class ClientInstall(importlib.abc.MetaPathFinder):
    \"\"\"Refuses what a client-only install would not have.\"\"\"

    def find_spec(self, name, path=None, target=None):
        top = name.partition(".")[0]
        if top not in ALLOWED and top not in present:
            raise ImportError(f"{name} is not installed with the client")
        return None


sys.meta_path.insert(0, ClientInstall())

from headstart.client import AsyncClient, Client
from headstart.feature_flags import HeadstartProvider

Client("http://127.0.0.1:9", api_key="k").close()
AsyncClient("http://127.0.0.1:9", api_key="k")
assert HeadstartProvider("http://127.0.0.1:9", api_key="k").get_metadata().name
print(json.dumps(sorted({name.partition(".")[0] for name in sys.modules} - present)))
"""


def _name(requirement: str) -> str:
    match = re.match(r"[A-Za-z0-9._-]+", requirement)
    assert match, requirement
    return re.sub(r"[-_.]+", "-", match.group()).lower()


def _modules_of(distributions: set[str]) -> set[str]:
    """The top-level modules these distributions install (their own name when not installed)."""
    by_distribution: dict[str, set[str]] = {}
    for module, owners in importlib.metadata.packages_distributions().items():
        for owner in owners:
            by_distribution.setdefault(_name(owner), set()).add(module)
    return set().union(*(by_distribution.get(d, {d.replace("-", "_")}) for d in distributions))


def _closure(distributions: set[str]) -> set[str]:
    """``distributions`` and everything they require (without their own extras)."""
    seen: set[str] = set()
    todo = list(distributions)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        todo += [_name(r) for r in requires if "extra ==" not in r.replace('"', "").replace("'", "")]
    return seen


def test_the_client_and_the_provider_import_without_server_packages() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    client = {_name(r) for r in project["optional-dependencies"]["client"]}
    base = {_name(r) for r in project["dependencies"]}
    assert client <= base, f"the client extra lists packages the server does not: {client - base}"
    installed = _modules_of(_closure(client))
    allowed = set(sys.stdlib_module_names) | {"headstart", "engine"} | installed
    # Among what the finder refuses: the server's own dependencies (Ray, the NATS client, the
    # numeric and learning stack, the web stack, the PII cipher).
    server_only = _modules_of(base - _closure(client))
    assert {"ray", "nats", "numpy", "river", "polars", "pydantic", "fastapi", "cryptography"} <= server_only
    assert not server_only & allowed

    run = subprocess.run(
        [sys.executable, "-c", SCRIPT, json.dumps(sorted(allowed))],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    loaded = set(json.loads(run.stdout.strip().splitlines()[-1]))
    assert loaded <= allowed and {"headstart", "httpx", "openfeature"} <= loaded, loaded
