"""``headstart bench catalog``: pushing catalog versions live, under steady decision traffic.

Set-up: embedded broker, local Ray, 2 shards and the Serve app in live mode (the catalog read
from the ``HS_CATALOG`` store, version 1 stored first), 5,000 users with live state. The load
generator (``bench/loadgen.py``, its own process) sends 500 decisions per second for the whole
run, which alternates windows without pushes (the baseline) and windows with pushes through
``PUT /v1/catalog`` (If-Match: the version it replaces). Every version N marks its step titles
and messages with ``[vN]``, so each answer shows which version(s) it was made from.

- ``propagation_p99_s``: from the push's 200 to the moment every shard answers with the new
  version (probe decisions for users of every shard, every 10 ms). The replica that took the
  push serves it before answering (one replica on this machine).
- ``failed_decisions``: answers other than 200, and connection errors, over the whole run.
- ``mixed_version_decisions``: answers without ``catalog_version``, or whose ``[vN]`` markers
  name another version than their ``catalog_version`` (or several versions).
- ``decide_p99_ratio_during_pushes``: p99 latency of the decisions sent in push windows over
  that of the baseline windows of the same run.
"""

from __future__ import annotations

import asyncio
import copy
import datetime as dt
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import nats
import numpy as np
import yaml

from bench.common import embedded_broker, local_ray, write_result
from bench.loadgen import http_post, pack_requests
from bench.population import DEVICES, LOCALES, onboarding_events, user_id
from engine.catalog import DEFAULT_CATALOG, parse_catalog_document
from engine.keys import Pseudonymizer, partition_of
from headstart.adapters.broker import free_port
from headstart.adapters.catalog_store import CatalogStore
from headstart.adapters.provision import ensure_streams
from headstart.adapters.streams import EventPublisher, publish_prepared
from headstart.settings import Settings
from headstart.web.auth import key_hashes

SECRET = b"bench-secret-not-for-production-use"
KEYS = {"frontend": "bench-frontend-key", "admin": "bench-admin-key"}
PARTITIONS = 64
RATE = 500.0
CONCURRENCY = 16


def marked(document: dict[str, Any], version: int) -> dict[str, Any]:
    """The catalog with every step title, step message and welcome message marked ``[vN]``.

    >>> doc = {"journey": {"steps": [{"id": "a", "title": {"en": "A"}}]}}
    >>> doc["messages"] = {"welcome": {"en": "Hi"}}
    >>> marked(doc, 3)["journey"]["steps"][0]["title"], marked(doc, 3)["messages"]["welcome"]
    ({'en': 'A [v3]'}, {'en': 'Hi [v3]'})
    """
    out = copy.deepcopy(document)
    tag = f" [v{version}]"

    def mark(texts: dict[str, str]) -> dict[str, str]:
        return {locale: text + tag for locale, text in texts.items()}

    for step in out["journey"]["steps"]:
        for field in ("title", "message"):
            if step.get(field):
                step[field] = mark(step[field])
    messages = out.setdefault("messages", {})
    messages["welcome"] = mark(messages.get("welcome") or {"en": "Welcome to {{product}}"})
    for rule in messages.get("by_segment") or []:
        rule["welcome"] = mark(rule["welcome"])
    return out


def run(quick: bool = False, out_dir: Path | None = None) -> Path:
    from actors.cluster import ShardGroup
    from actors.serving import apply_serve_environment, start_app

    started = dt.datetime.now(dt.UTC)
    users = 1_000 if quick else 5_000
    rounds = 2 if quick else 4
    window_s = 4.0 if quick else 8.0
    pushes_per_window = 3 if quick else 5
    apply_serve_environment("haproxy")
    settings = Settings(partitions=PARTITIONS, shards=2, shard_num_cpus=0.5, port=free_port())
    base_document = yaml.safe_load(DEFAULT_CATALOG.read_text())
    pseudonymizer = Pseudonymizer(SECRET)
    with embedded_broker() as broker, local_ray(num_cpus=2), tempfile.TemporaryDirectory() as tmp:
        asyncio.run(_populate(broker.url, pseudonymizer, users))
        first = asyncio.run(_store_first(broker.url, marked(base_document, 1)))
        catalog, errors = parse_catalog_document(first, "bench catalog")
        assert catalog is not None and not errors, errors
        group = ShardGroup(settings, broker.url, catalog, catalog_version=1).start()
        group.wait_ready()
        group.wait_caught_up(timeout=300)
        base = start_app(settings, broker.url, catalog, SECRET, key_hashes(KEYS), catalog_version=1)
        _wait_ready(base)
        probes = _probe_users(pseudonymizer, users, group.assignment.partitions_of)
        requests = Path(tmp) / "decide.bin"
        requests.write_bytes(_requests(settings.port, users))
        out = Path(tmp) / "load.json"
        warmup = 2.0
        duration = rounds * 2 * window_s + 1.0
        load = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench.loadgen",
                "--port",
                str(settings.port),
                "--requests",
                str(requests),
                "--concurrency",
                str(CONCURRENCY),
                "--rate",
                str(RATE),
                "--duration",
                str(duration),
                "--warmup",
                str(warmup),
                "--versions",
                "--out",
                str(out),
            ]
        )
        try:
            time.sleep(warmup + 0.5)
            pushes = asyncio.run(
                _push_rounds(base, base_document, probes, rounds, window_s, pushes_per_window)
            )
            load.wait(timeout=duration + 120)
        finally:
            if load.poll() is None:
                load.kill()
        raw = json.loads(out.read_text())
        from ray import serve

        serve.shutdown()  # type: ignore[no-untyped-call]
        group.stop()
    metrics = _metrics(raw, pushes)
    params = {
        "users": users,
        "shards": 2,
        "ingress_replicas": 1,
        "decisions_per_s": RATE,
        "concurrency": CONCURRENCY,
        "rounds": rounds,
        "window_s": window_s,
        "pushes": len(pushes["propagation_s"]),
        "what_changes": "every step title, step message and welcome message, marked [vN]",
        "statistic": "p99 of pooled windows; baseline windows alternate with push windows",
        "quick": quick,
    }
    baseline = {"decide_p99_ms_without_pushes": metrics["decide_p99_ms_without_pushes"]}
    return write_result("catalog", params, metrics, baseline, out_dir=out_dir, started_at=started)


async def _populate(url: str, pseudonymizer: Pseudonymizer, users: int) -> None:
    nc = await nats.connect(url)
    js = nc.jetstream()
    await ensure_streams(js, PARTITIONS)
    publisher = EventPublisher(js, pseudonymizer)
    prepared = [publisher.prepare(e) for e in onboarding_events(users=users, events=users * 5, seed=21)]
    await publish_prepared(js, prepared)
    await nc.close()


async def _store_first(url: str, document: dict[str, Any]) -> dict[str, Any]:
    nc = await nats.connect(url)
    try:
        store = await CatalogStore.open(nc.jetstream())
        result = await store.push(document, who="bench")
        assert result.stored.version == 1, "bench catalog needs an empty store"
        return result.stored.document
    finally:
        await nc.close()


def _probe_users(pseudonymizer: Pseudonymizer, users: int, partitions_of: Any) -> list[str]:
    """Two users of every shard, so a probe round hears from each."""
    wanted = {shard: 2 for shard in range(2)}
    owner = {p: shard for shard in range(2) for p in partitions_of(shard)}
    chosen = []
    for i in range(users):
        shard = owner[partition_of(pseudonymizer.key(user_id(i)), PARTITIONS)]
        if wanted[shard]:
            wanted[shard] -= 1
            chosen.append(user_id(i))
        if not any(wanted.values()):
            break
    return chosen


def _requests(port: int, users: int) -> bytes:
    headers = {"Authorization": f"Bearer {KEYS['frontend']}"}
    out = []
    for i in range(0, users, max(1, users // 2000)):
        body = {
            "user_id": user_id(i),
            "context": {"device_type": DEVICES[i % 3], "locale": LOCALES[i % len(LOCALES)]},
        }
        out.append(http_post("127.0.0.1", port, "/v1/decide", json.dumps(body).encode(), headers))
    return pack_requests(out)


async def _push_rounds(
    base: str,
    base_document: dict[str, Any],
    probes: list[str],
    rounds: int,
    window_s: float,
    pushes_per_window: int,
) -> dict[str, Any]:
    admin = {"Authorization": f"Bearer {KEYS['admin']}"}
    frontend = {"Authorization": f"Bearer {KEYS['frontend']}"}
    windows: list[tuple[str, float, float]] = []
    propagation: list[float] = []
    probe_failures = 0
    probe_mixed = 0
    version = 1
    async with httpx.AsyncClient(base_url=base, timeout=10.0) as http:
        for _ in range(rounds):
            began = time.time()
            await asyncio.sleep(window_s)
            windows.append(("baseline", began, time.time()))
            began = time.time()
            spacing = window_s / pushes_per_window
            for _ in range(pushes_per_window):
                slot = time.monotonic() + spacing
                document = marked(base_document, version + 1)
                r = await http.put(
                    "/v1/catalog", json=document, headers={**admin, "If-Match": f'"{version}"'}
                )
                if r.status_code != 200:
                    raise RuntimeError(f"push refused: {r.status_code} {r.text[:300]}")
                answered = time.monotonic()
                version = r.json()["version"]
                waiting = set(probes)
                while waiting:
                    answers = await asyncio.gather(
                        *(http.post("/v1/decide", json={"user_id": u}, headers=frontend) for u in waiting),
                        return_exceptions=True,
                    )
                    for user, answer in zip(list(waiting), answers, strict=True):
                        if isinstance(answer, BaseException) or answer.status_code != 200:
                            probe_failures += 1
                            continue
                        body = answer.json()
                        served = body.get("catalog_version", -1)
                        if f"[v{served}]" not in answer.text or answer.text.count("[v") != answer.text.count(
                            f"[v{served}]"
                        ):
                            probe_mixed += 1
                        if served >= version:
                            waiting.discard(user)
                    if waiting:
                        if time.monotonic() - answered > 30:
                            raise TimeoutError(f"version {version} not served by every shard within 30 s")
                        await asyncio.sleep(0.01)
                propagation.append(time.monotonic() - answered)
                await asyncio.sleep(max(0.0, slot - time.monotonic()))
            windows.append(("pushes", began, time.time()))
    return {
        "windows": windows,
        "propagation_s": propagation,
        "probe_failures": probe_failures,
        "probe_mixed": probe_mixed,
        "last_version": version,
    }


def _metrics(raw: dict[str, Any], pushes: dict[str, Any]) -> dict[str, Any]:
    seen = raw["versions"]
    started = np.array(seen["started"])
    latencies = np.array(raw["latencies"]) * 1000
    status = np.array(seen["status"])
    version = np.array(seen["version"])
    marker = np.array(seen["marker"])
    in_window = {"baseline": np.zeros(len(started), bool), "pushes": np.zeros(len(started), bool)}
    for kind, begin, end in pushes["windows"]:
        in_window[kind] |= (started >= begin) & (started < end)
    ok = status == 200
    mixed = ok & ((version < 1) | (marker != version))
    failed = int((~ok).sum()) + len(raw["errors"]) + pushes["probe_failures"]
    p99_base = float(np.percentile(latencies[in_window["baseline"]], 99))
    p99_push = float(np.percentile(latencies[in_window["pushes"]], 99))
    propagation = np.array(pushes["propagation_s"])
    versions_seen = sorted({int(v) for v in version[ok]})
    return {
        "propagation_p99_s": float(np.percentile(propagation, 99)),
        "propagation_p50_s": float(np.percentile(propagation, 50)),
        "propagation_max_s": float(propagation.max()),
        "failed_decisions": failed,
        "mixed_version_decisions": int(mixed.sum()) + pushes["probe_mixed"],
        "decide_p99_ratio_during_pushes": p99_push / p99_base,
        "decide_p99_ms_during_pushes": p99_push,
        "decide_p99_ms_without_pushes": p99_base,
        "decide_p50_ms_during_pushes": float(np.percentile(latencies[in_window["pushes"]], 50)),
        "decide_p50_ms_without_pushes": float(np.percentile(latencies[in_window["baseline"]], 50)),
        "decisions": len(latencies),
        "decisions_during_pushes": int(in_window["pushes"].sum()),
        "decisions_per_s": len(latencies) / raw["wall_s"],
        "pushes": len(propagation),
        "versions_served": len(versions_seen),
        "last_version": pushes["last_version"],
        "client_cpu_share": raw["cpu_s"] / raw["wall_s"],
    }


def _wait_ready(base: str) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/readyz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise TimeoutError("the Serve app did not become ready")


def summary(path: Path) -> str:
    m = json.loads(path.read_text())["metrics"]
    return (
        f"{m['pushes']} pushes: propagation p99 {m['propagation_p99_s']:.3f} s, "
        f"failed {m['failed_decisions']}, mixed {m['mixed_version_decisions']}, "
        f"decide p99 {m['decide_p99_ms_during_pushes']:.1f} ms during pushes vs "
        f"{m['decide_p99_ms_without_pushes']:.1f} ms without "
        f"(ratio {m['decide_p99_ratio_during_pushes']:.2f})"
    )
