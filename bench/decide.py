"""``headstart bench decide``: latency and throughput of ``POST /v1/decide``, against a floor.

Set-up: embedded broker, local Ray, 2 shards, the Serve app with the settings Headstart ships
with, and 20,000 users with live state (5 events each). In the same run a no-op Serve
endpoint (constant JSON, no auth, same deployment settings) is measured: the floor. A lean
load generator in its own process (``bench/loadgen.py``) drives each at concurrency 1, 16 and
64 for a fixed duration, alternating floor and engine so both see the same machine.

Freshness: an event is published to JetStream and ``/v1/decide`` is polled for that user; the
time from the publish call to the first decision that reflects the event is recorded.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import gc
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import nats
import numpy as np
from fastapi import FastAPI, Response
from ray import serve

from actors.ingress import GC_GEN0_THRESHOLD
from bench.common import embedded_broker, local_ray, write_result
from bench.loadgen import http_post, pack_requests
from bench.population import DEVICES, LOCALES, onboarding_events, user_id
from engine.catalog import DEFAULT_CATALOG, load_catalog
from engine.keys import Pseudonymizer
from headstart.adapters.broker import free_port
from headstart.adapters.provision import ensure_streams
from headstart.adapters.streams import EventPublisher, publish_prepared
from headstart.settings import Settings
from headstart.web.auth import key_hashes

SECRET = b"bench-secret-not-for-production-use"
KEYS = {"frontend": "bench-frontend-key", "admin": "bench-admin-key"}
PARTITIONS = 64
CONCURRENCIES = (1, 16, 64)
#: Alternating floor/engine runs per concurrency; medians are reported (the machine is noisy:
#: single 8 s runs of the same code varied by ±15% here).
REPETITIONS = 3

noop_app = FastAPI()
_NOOP_BODY = b'{"decision_id":"0","step":{"id":"welcome"},"flags":{}}'


@serve.deployment(name="NoOp", max_ongoing_requests=2000, ray_actor_options={"num_cpus": 0})
@serve.ingress(noop_app)
class NoOp:
    """The floor: what Serve itself costs for a constant JSON answer (with the ingress's GC
    setting, so the comparison is of the request path alone)."""

    def __init__(self) -> None:
        gc.set_threshold(GC_GEN0_THRESHOLD, 10, 10)

    @noop_app.post("/v1/decide")
    async def decide(self) -> Response:
        return Response(_NOOP_BODY, media_type="application/json")


def run(quick: bool = False, out_dir: Path | None = None) -> Path:
    from actors.cluster import ShardGroup
    from actors.serving import apply_serve_environment, start_app

    started = dt.datetime.now(dt.UTC)
    users = 2_000 if quick else 20_000
    duration = 2.0 if quick else 6.0
    reps = 1 if quick else REPETITIONS
    freshness_trials = 50 if quick else 300
    apply_serve_environment("haproxy")
    port = free_port()
    settings = Settings(partitions=PARTITIONS, shards=2, shard_num_cpus=0.5, port=port)
    pseudonymizer = Pseudonymizer(SECRET)
    catalog = load_catalog(DEFAULT_CATALOG)
    with embedded_broker() as broker, local_ray(num_cpus=2), tempfile.TemporaryDirectory() as tmp:
        asyncio.run(_populate(broker.url, pseudonymizer, users))
        group = ShardGroup(settings, broker.url, catalog).start()
        group.wait_ready()
        group.wait_caught_up(timeout=300)
        grpc_port = free_port()
        base = start_app(settings, broker.url, catalog, SECRET, key_hashes(KEYS), grpc_port=grpc_port)
        serve.run(NoOp.bind(), name="noop", route_prefix="/noop", blocking=False)  # type: ignore[attr-defined]
        _wait_ready(base)
        engine_file, floor_file = Path(tmp) / "engine.bin", Path(tmp) / "floor.bin"
        engine_file.write_bytes(
            _requests(port, "/v1/decide", users, {"Authorization": f"Bearer {KEYS['frontend']}"})
        )
        floor_file.write_bytes(_requests(port, "/noop/v1/decide", users, {}))
        engine: dict[str, Any] = {}
        floor: dict[str, Any] = {}
        samples: dict[str, dict[str, list[dict[str, Any]]]] = {}
        client_cpu: list[float] = []
        for concurrency in CONCURRENCIES:
            runs: dict[str, list[dict[str, Any]]] = {"engine": [], "floor": []}
            for _ in range(reps):  # alternate, so both see the same machine
                runs["floor"].append(_load(port, floor_file, concurrency, duration, tmp))
                runs["engine"].append(_load(port, engine_file, concurrency, duration, tmp))
            client_cpu += [r["client_cpu_share"] for r in runs["engine"] + runs["floor"]]
            engine[str(concurrency)] = _median_of(runs["engine"])
            floor[str(concurrency)] = _median_of(runs["floor"])
            samples[str(concurrency)] = runs
        grpc_engine: dict[str, Any] = {}
        for concurrency in CONCURRENCIES:
            grpc_runs = [
                asyncio.run(_grpc_load(grpc_port, users, concurrency, duration)) for _ in range(reps)
            ]
            grpc_engine[str(concurrency)] = _median_of(grpc_runs)
        freshness = asyncio.run(_freshness(broker.url, base, pseudonymizer, freshness_trials))
        serve.shutdown()  # type: ignore[no-untyped-call]
        group.stop()
    top = str(CONCURRENCIES[-1])
    metrics = {
        "by_concurrency": engine,
        "freshness_p50_ms": float(np.percentile(freshness, 50)),
        "freshness_p99_ms": float(np.percentile(freshness, 99)),
        "client_cpu_share": max(client_cpu),
        "rps_ratio_to_floor_at_64": engine[top]["rps"] / floor[top]["rps"],
        "p99_ratio_to_floor_at_64": engine[top]["p99_ms"] / floor[top]["p99_ms"],
        # Ratio per alternating pair, to show the spread behind the medians.
        "rps_ratio_to_floor_at_64_per_rep": [
            e["rps"] / f["rps"] for e, f in zip(samples[top]["engine"], samples[top]["floor"], strict=True)
        ],
        "runs": samples,
        # The same decisions through Serve's gRPC ingress (headstart/protos), same concurrencies.
        "grpc_by_concurrency": grpc_engine,
    }
    params = {
        "users": users,
        "duration_s_per_run": duration,
        "repetitions": reps,
        "statistic": "median over alternating repetitions (floor, engine, floor, engine, ...)",
        "concurrency": list(CONCURRENCIES),
        "shards": 2,
        "serve_mode": "haproxy",
        "freshness_trials": freshness_trials,
        "client": "bench/loadgen.py (raw keep-alive HTTP/1.1 on uvloop, own process)",
        "grpc_client": "grpc.aio, one channel, N concurrent unary calls, in the benchmark's process",
        "client_cpu_share": "load generator CPU seconds / wall seconds (share of one core), worst run",
        "quick": quick,
    }
    return write_result(
        "decide", params, metrics, {"by_concurrency": floor}, out_dir=out_dir, started_at=started
    )


async def _grpc_load(port: int, users: int, concurrency: int, duration: float) -> dict[str, Any]:
    """``concurrency`` gRPC clients calling ``Decide`` back to back for ``duration`` seconds."""
    import grpc

    from headstart.protos import headstart_pb2 as pb
    from headstart.protos import headstart_pb2_grpc as pb_grpc

    devices = ("mobile", "desktop", "tablet")
    requests = [
        pb.DecideRequest(user_id=user_id(i), context=pb.Context(device_type=devices[i % 3]))
        for i in range(min(users, 5000))
    ]
    metadata = (("authorization", f"Bearer {KEYS['frontend']}"), ("application", "headstart"))
    latencies: list[float] = []
    errors = 0
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.DecisionServiceStub(channel)  # type: ignore[no-untyped-call]
        await channel.channel_ready()
        stop_at = time.perf_counter() + duration

        async def worker(k: int) -> None:
            nonlocal errors
            i = k * 7919
            while time.perf_counter() < stop_at:
                started = time.perf_counter()
                try:
                    await stub.Decide(requests[i % len(requests)], metadata=metadata, timeout=5)
                    latencies.append(time.perf_counter() - started)
                except grpc.aio.AioRpcError:
                    errors += 1
                i += 1

        began = time.perf_counter()
        await asyncio.gather(*(worker(k) for k in range(concurrency)))
        wall = time.perf_counter() - began
    ms = np.array(latencies) * 1000
    return {
        "p50_ms": float(np.percentile(ms, 50)) if len(ms) else float("nan"),
        "p99_ms": float(np.percentile(ms, 99)) if len(ms) else float("nan"),
        "mean_ms": float(ms.mean()) if len(ms) else float("nan"),
        "rps": len(ms) / wall,
        "requests": len(ms),
        "errors": errors,
        "percentiles": {str(q): float(np.percentile(ms, q)) for q in PERCENTILES} if len(ms) else {},
    }


async def _populate(url: str, pseudonymizer: Pseudonymizer, users: int) -> None:
    nc = await nats.connect(url)
    js = nc.jetstream()
    await ensure_streams(js, PARTITIONS)
    publisher = EventPublisher(js, pseudonymizer)
    prepared = [publisher.prepare(e) for e in onboarding_events(users=users, events=users * 5, seed=21)]
    await publish_prepared(js, prepared)
    await nc.close()


def _requests(port: int, path: str, users: int, headers: dict[str, str]) -> bytes:
    requests = []
    for i in range(0, users, max(1, users // 5000)):
        body = json.dumps(
            {
                "user_id": user_id(i),
                "context": {"device_type": DEVICES[i % 3], "locale": LOCALES[i % len(LOCALES)]},
            }
        ).encode()
        requests.append(http_post("127.0.0.1", port, path, body, headers))
    return pack_requests(requests)


PERCENTILES = (1, 5, 10, 25, 50, 75, 90, 95, 99, 99.9)


def _load(port: int, requests: Path, concurrency: int, duration: float, tmp: str) -> dict[str, Any]:
    out = Path(tmp) / f"result-{concurrency}-{time.monotonic_ns()}.json"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.loadgen",
            "--port",
            str(port),
            "--requests",
            str(requests),
            "--concurrency",
            str(concurrency),
            "--duration",
            str(duration),
            "--out",
            str(out),
        ],
        check=True,
        timeout=duration + 120,
    )
    raw = json.loads(out.read_text())
    latencies = np.array(raw["latencies"]) * 1000
    ok = raw["statuses"].get("200", 0)
    errors = sum(n for status, n in raw["statuses"].items() if status != "200") + len(raw["errors"])
    return {
        "p50_ms": float(np.percentile(latencies, 50)) if len(latencies) else float("nan"),
        "p99_ms": float(np.percentile(latencies, 99)) if len(latencies) else float("nan"),
        "mean_ms": float(latencies.mean()) if len(latencies) else float("nan"),
        "rps": ok / raw["wall_s"],
        "requests": len(latencies),
        # The distribution (bench/plots.py): latency at each of these percentiles.
        "percentiles": {str(q): float(np.percentile(latencies, q)) for q in PERCENTILES}
        if len(latencies)
        else {},
        "errors": errors,
        "client_cpu_share": raw["cpu_s"] / raw["wall_s"],
    }


def _median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    keys = ("p50_ms", "p99_ms", "mean_ms", "rps")
    out: dict[str, Any] = {k: statistics.median(r[k] for r in runs) for k in keys}
    out["requests"] = sum(r["requests"] for r in runs)
    out["errors"] = sum(r["errors"] for r in runs)
    out["percentiles"] = {
        q: statistics.median(r["percentiles"][q] for r in runs if q in r.get("percentiles", {}))
        for q in runs[0].get("percentiles", {})
    }
    return out


def _wait_ready(base: str) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if (
                httpx.get(f"{base}/readyz").status_code == 200
                and httpx.post(f"{base}/noop/v1/decide").status_code == 200
            ):
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise TimeoutError("the Serve app did not become ready")


async def _freshness(url: str, base: str, pseudonymizer: Pseudonymizer, trials: int) -> list[float]:
    """Milliseconds from publishing an event to the first decision that reflects it."""
    nc = await nats.connect(url)
    publisher = EventPublisher(nc.jetstream(), pseudonymizer)
    headers = {"Authorization": f"Bearer {KEYS['frontend']}"}
    samples: list[float] = []
    async with httpx.AsyncClient(base_url=base, headers=headers) as http:
        for trial in range(trials):
            user = f"fresh-{trial}@example.com"
            body = {"user_id": user, "context": {"device_type": "desktop"}}
            first = (await http.post("/v1/decide", json=body)).json()
            assert first["step"]["id"] == "welcome"
            t0 = time.perf_counter()
            await publisher.publish(
                {
                    "event_id": f"fresh-{trial}-{time.time_ns()}",
                    "user_id": user,
                    "type": "step_completed",
                    "ts": time.time(),
                    "props": {"step": "welcome"},
                }
            )
            while True:
                decision = (await http.post("/v1/decide", json=body)).json()
                if "welcome" in decision["completed_steps"]:
                    break
                if time.perf_counter() - t0 > 5:
                    raise TimeoutError("an event did not show in decisions within 5 s")
            samples.append((time.perf_counter() - t0) * 1000)
    await nc.close()
    return samples


def summary(path: Path) -> str:
    """One line per concurrency, for the console."""
    doc = json.loads(path.read_text())
    lines = []
    for c, m in doc["metrics"]["by_concurrency"].items():
        f = doc["baseline"]["by_concurrency"][c]
        lines.append(
            f"c={c}: engine p50 {m['p50_ms']:.2f} ms p99 {m['p99_ms']:.2f} ms {m['rps']:.0f} rps | "
            f"floor p50 {f['p50_ms']:.2f} ms p99 {f['p99_ms']:.2f} ms {f['rps']:.0f} rps"
        )
    return (
        "\n".join(lines) + f"\nfreshness p99 {statistics.fmean([doc['metrics']['freshness_p99_ms']]):.1f} ms"
    )
