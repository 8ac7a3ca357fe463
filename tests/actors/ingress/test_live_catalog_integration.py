"""The live catalog through the real HTTP API: a Serve app started live (``catalog_version=1``)
on a real nats-server, without shards, so every decision is the ingress's own default flow and
shows the catalog version the replica serves."""

from __future__ import annotations

import asyncio
import concurrent.futures
import copy
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import nats
import pytest
import yaml

from actors.serving import start_app, stop_app
from engine.catalog import DEFAULT_CATALOG, load_catalog, parse_catalog_document
from headstart.adapters.broker import free_port
from headstart.adapters.catalog_store import CatalogStore
from headstart.settings import Settings
from headstart.web.auth import key_hashes
from tests.conftest import TEST_PARTITIONS, TEST_SECRET, reset_streams

pytestmark = pytest.mark.integration

KEYS = {"frontend": "live-frontend-key", "admin": "live-admin-key"}
FRONTEND = {"Authorization": f"Bearer {KEYS['frontend']}"}
ADMIN = {"Authorization": f"Bearer {KEYS['admin']}"}
DOCUMENT: dict[str, Any] = yaml.safe_load(DEFAULT_CATALOG.read_text())
#: A propagation slower than this fails the issue's bar (every replica within a second).
SWITCH_WITHIN_S = 1.0


async def store_version(nats_url: str, document: dict[str, Any], who: str) -> int:
    """``document`` stored straight into the store (not through the API); its version."""
    nc = await nats.connect(nats_url)
    try:
        store = await CatalogStore.open(nc.jetstream())
        return (await store.push(document, who)).stored.version
    finally:
        await nc.close()


@pytest.fixture(scope="module")
def api(ray_local: None, nats_url: str) -> Iterator[httpx.Client]:
    asyncio.run(reset_streams(nats_url))
    assert asyncio.run(store_version(nats_url, DOCUMENT, "test:setup")) == 1
    settings = Settings(partitions=TEST_PARTITIONS, port=free_port())
    catalog = load_catalog(DEFAULT_CATALOG)
    url = start_app(settings, nats_url, catalog, TEST_SECRET, key_hashes(KEYS), catalog_version=1)
    client = httpx.Client(base_url=url, timeout=10)
    deadline = time.monotonic() + 60
    while True:
        try:
            if client.get("/v1/catalog/history", headers=ADMIN).status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "the app did not come up"
        time.sleep(0.2)
    try:
        yield client
    finally:
        client.close()
        stop_app()


def latest(client: httpx.Client) -> tuple[int, dict[str, Any]]:
    r = client.get("/v1/catalog", headers=ADMIN)
    assert r.status_code == 200, r.text
    body = r.json()
    assert r.headers["etag"] == f'"{body["version"]}"'
    return body["version"], body["catalog"]


def with_welcome(document: dict[str, Any], text: str) -> dict[str, Any]:
    changed = copy.deepcopy(document)
    changed["messages"]["welcome"]["en"] = text
    return changed


def put(client: httpx.Client, document: Any, version: int | None, **kwargs: Any) -> httpx.Response:
    headers = {**ADMIN, **({"If-Match": f'"{version}"'} if version is not None else {})}
    return client.put("/v1/catalog", json=document, headers=headers, **kwargs)


def decide(client: httpx.Client, context: dict[str, Any] | None = None) -> dict[str, Any]:
    r = client.post("/v1/decide", json={"user_id": "ada", "context": context or {}}, headers=FRONTEND)
    assert r.status_code == 200, r.text
    answer: dict[str, Any] = r.json()
    assert "shard unavailable" in answer["explain"][0]  # the ingress's default flow: no shards here
    return answer


def test_get_and_put_round_trip_with_the_etag(api: httpx.Client) -> None:
    version, document = latest(api)
    assert document == DOCUMENT or version > 1
    new = with_welcome(document, "Hello from a live catalog!")
    r = put(api, new, version)
    assert r.status_code == 200, r.text
    assert r.json()["version"] == version + 1 and r.json()["changed"] is True
    assert "messages" in r.json()["summary"] and "Hello from a live catalog!" in r.json()["diff"]
    assert r.headers["etag"] == f'"{version + 1}"'
    # The replica that stored it serves it before it answers.
    assert latest(api) == (version + 1, new)
    answer = decide(api)
    assert answer["catalog_version"] == version + 1 and answer["message"] == "Hello from a live catalog!"
    # The same catalog again stores nothing.
    again = put(api, new, version + 1)
    assert again.status_code == 200 and again.json()["changed"] is False
    assert again.json()["version"] == version + 1
    # A dry run answers what would be stored, and stores nothing.
    dry = put(api, with_welcome(new, "Only a dry run"), version + 1, params={"dry_run": "true"})
    assert dry.status_code == 200 and dry.json()["dry_run"] is True and dry.json()["version"] == version + 2
    assert latest(api)[0] == version + 1


def test_a_yaml_body_is_taken_like_json(api: httpx.Client) -> None:
    version, document = latest(api)
    for media in ("application/yaml", "application/x-yaml"):
        new = with_welcome(document, f"Welcome, sent as {media}.")
        headers = {**ADMIN, "If-Match": f'"{version}"', "Content-Type": media}
        r = api.put("/v1/catalog", content=yaml.safe_dump(new, sort_keys=False), headers=headers)
        assert r.status_code == 200 and r.json()["version"] == version + 1, r.text
        version += 1
        assert latest(api) == (version, new)


def test_a_put_needs_if_match_and_a_body_it_can_read(api: httpx.Client) -> None:
    version, document = latest(api)
    missing = put(api, document, None)
    assert missing.status_code == 428 and "If-Match" in missing.json()["error"]["message"]
    garbled = api.put("/v1/catalog", json=document, headers={**ADMIN, "If-Match": "latest"})
    assert garbled.status_code == 400
    headers = {**ADMIN, "If-Match": f'"{version}"'}
    yaml_error = api.put(
        "/v1/catalog", content=b"journey: [", headers={**headers, "Content-Type": "text/yaml"}
    )
    assert yaml_error.status_code == 400 and "YAML" in yaml_error.json()["error"]["message"]
    json_error = api.put("/v1/catalog", content=b"{", headers={**headers, "Content-Type": "application/json"})
    assert json_error.status_code == 400
    other = api.put("/v1/catalog", content=b"x", headers={**headers, "Content-Type": "text/plain"})
    assert other.status_code == 415
    huge = b"# padding\n" * 120_000 + yaml.safe_dump(document).encode()
    too_big = api.put("/v1/catalog", content=huge, headers={**headers, "Content-Type": "application/yaml"})
    assert too_big.status_code == 413
    assert (
        api.put("/v1/catalog", json=document, headers={**FRONTEND, "If-Match": f'"{version}"'}).status_code
        == 403
    )
    assert latest(api)[0] == version


def test_an_invalid_catalog_is_refused_with_every_problem_and_changes_nothing(api: httpx.Client) -> None:
    version, document = latest(api)
    served = decide(api)["catalog_version"]
    broken = copy.deepcopy(document)
    del broken["journey"]
    broken["flags"][0]["rules"] = [{"segments": ["nobody"], "rollout": 250}]
    r = put(api, broken, version)
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    expected = parse_catalog_document(broken, "catalog")[1]  # check-config's messages
    assert error["code"] == "invalid_catalog" and error["details"] == expected and len(expected) >= 2
    assert latest(api) == (version, document)
    assert decide(api)["catalog_version"] == served == version


def test_concurrent_puts_naming_the_same_version_store_exactly_one(api: httpx.Client) -> None:
    version, document = latest(api)
    bodies = [with_welcome(document, f"Racer {i}") for i in range(4)]
    with concurrent.futures.ThreadPoolExecutor(len(bodies)) as pool:
        answers = list(pool.map(lambda body: put(api, body, version), bodies))
    statuses = sorted(r.status_code for r in answers)
    assert statuses == [200, 412, 412, 412], [r.text for r in answers]
    for refused in (r for r in answers if r.status_code == 412):
        assert f"is {version + 1}, not {version}" in refused.json()["error"]["message"]
    winner = next(r for r in answers if r.status_code == 200)
    assert winner.json()["version"] == version + 1 and latest(api)[0] == version + 1


def test_history_and_each_version(api: httpx.Client) -> None:
    version, document = latest(api)
    r = api.get("/v1/catalog/history", headers=ADMIN)
    assert r.status_code == 200
    history = r.json()
    assert history["serving"] == version
    assert [v["version"] for v in history["versions"]] == list(range(1, version + 1))
    first, *later = history["versions"]
    assert first["who"] == "test:setup" and first["summary"] == "first version"
    for line in later:
        assert line["who"].startswith("admin:") and KEYS["admin"] not in line["who"]
        assert {"at", "summary", "rollback_of", "forced"} <= set(line)
    one = api.get("/v1/catalog/versions/1", headers=ADMIN)
    assert one.status_code == 200 and one.json()["catalog"] == DOCUMENT and one.headers["etag"] == '"1"'
    assert api.get(f"/v1/catalog/versions/{version}", headers=ADMIN).json()["catalog"] == document
    for missing in (0, version + 1, 10**30):
        assert api.get(f"/v1/catalog/versions/{missing}", headers=ADMIN).status_code == 404
    assert api.get("/v1/catalog/history", headers=FRONTEND).status_code == 403


def test_a_version_stored_elsewhere_is_served_within_a_second(api: httpx.Client, nats_url: str) -> None:
    """Pushed straight into the store (as the CLI or another replica does): the replica's watch
    switches its decoders, schema and default flow at once."""
    version, document = latest(api)
    new = copy.deepcopy(document)
    new.setdefault("schema", {}).setdefault("context", {})["app_theme"] = {"type": "string"}
    new["schema"].setdefault("events", {})["created_board"] = {"props": {"cards": {"type": "number"}}}
    new["segments"].append({"id": "dark_theme", "rule": 'app_theme == "dark"'})
    dark = {"app_theme": "dark"}
    board = {"event_id": f"b-{time.time_ns()}", "user_id": "ada", "type": "created_board", "ts": time.time()}
    before = decide(api, dark)
    assert before["catalog_version"] == version and "dark_theme" not in before["segments"]
    assert api.post("/v1/events", json={"events": [board]}, headers=FRONTEND).status_code == 400

    assert asyncio.run(store_version(nats_url, new, "cli:elsewhere")) == version + 1
    stored_at = time.monotonic()
    while api.get("/v1/catalog/history", headers=ADMIN).json()["serving"] != version + 1:
        assert time.monotonic() - stored_at < SWITCH_WITHIN_S, "the replica did not switch in time"
        time.sleep(0.01)

    assert api.get("/readyz").json()["catalog_version"] == version + 1  # 503 here: no shards
    after = decide(api, dark)
    assert after["catalog_version"] == version + 1 and "dark_theme" in after["segments"]
    stored = api.post("/v1/events", json={"events": [board]}, headers=FRONTEND)
    assert stored.status_code == 200 and stored.json()["accepted"] == 1


def test_an_experiment_report_names_the_catalog_versions_it_ran_under(api: httpx.Client) -> None:
    version, document = latest(api)
    experiment = {
        "id": "welcome_copy",
        "salt": "welcome-live",
        "arms": [{"id": "control"}, {"id": "short", "welcome": {"en": "Hi!"}}],
        "metric": {"event": "onboarding_completed", "within_days": 7},
    }
    started = put(api, {**document, "experiments": [experiment]}, version)
    assert started.status_code == 200, started.text
    kept = put(api, with_welcome({**document, "experiments": [experiment]}, "Unrelated change"), version + 1)
    assert kept.status_code == 200, kept.text
    report = api.get("/v1/experiments/welcome_copy/report", headers=ADMIN)
    assert report.status_code == 200, report.text
    assert report.json()["catalog_versions"] == [version + 1, version + 2]
    # A running experiment's arms are not changed without ?force=true.
    changed = {**experiment, "arms": [{"id": "control"}, {"id": "long", "welcome": {"en": "Hello there!"}}]}
    refused = put(api, {**document, "experiments": [changed]}, version + 2)
    assert refused.status_code == 422 and "force=true" in refused.json()["error"]["message"], refused.text
    # Removed, it stops assigning; its report still names the versions it ran under.
    assert put(api, document, version + 2).status_code == 200
    after = api.get("/v1/experiments/welcome_copy/report", headers=ADMIN)
    assert after.status_code == 200 and after.json()["catalog_versions"] == [version + 1, version + 2]
    assert api.get("/v1/experiments/never_declared/report", headers=ADMIN).status_code == 404


def test_decisions_under_pushes_neither_fail_nor_mix_versions(api: httpx.Client) -> None:
    """Each version says its own number in its welcome message: an answer whose message is not
    its ``catalog_version``'s was made from two versions."""
    version, document = latest(api)
    stop = threading.Event()
    answers: list[dict[str, Any]] = []
    failures: list[str] = []

    def traffic(worker: int) -> None:
        with httpx.Client(base_url=api.base_url, timeout=10) as client:
            n = 0
            while not stop.is_set():
                n += 1
                body = {"user_id": f"load-{worker}-{n}"}
                r = client.post("/v1/decide", json=body, headers=FRONTEND)
                if r.status_code == 200:
                    answers.append(r.json())
                else:
                    failures.append(f"{r.status_code} {r.text}")

    workers = [threading.Thread(target=traffic, args=(i,)) for i in range(6)]
    for worker in workers:
        worker.start()
    try:
        for i in range(1, 6):
            time.sleep(0.3)
            r = put(api, with_welcome(document, f"Version {version + i}"), version + i - 1)
            assert r.status_code == 200 and r.json()["version"] == version + i, r.text
        time.sleep(0.5)
    finally:
        stop.set()
        for worker in workers:
            worker.join()
    assert failures == []
    seen = {a["catalog_version"] for a in answers}
    assert version + 5 in seen and len(seen) >= 3, seen
    for answer in answers:
        if answer["catalog_version"] > version:
            assert answer["message"] == f"Version {answer['catalog_version']}", answer
