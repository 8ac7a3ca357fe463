"""``headstart bench decide``: latency and throughput of ``POST /v1/decide``, against a floor.

Set-up: embedded broker, local Ray, 2 shards, the Serve app with the settings Headstart ships
with, and 20,000 users with live state (5 events each). In the same run a no-op Serve
endpoint (constant JSON, no auth, same deployment settings) is measured: the floor. A lean
load generator in its own process (``bench/loadgen.py``) drives each at concurrency 1, 16 and
64 for a fixed duration, alternating floor and engine so both see the same machine.

Freshness: an event is published to JetStream and ``/v1/decide`` is polled for that user; the
time from the publish call to the first decision that reflects the event is recorded.

Identity verification: last, 64 clients run against the ingress deployed with ``off`` and
with ``required`` in pairs of neighbouring runs (off/required, required/off, ...), the Serve
app redeployed (shards and broker stay up) before the first run and at each change of mode, so
both see the same machine and, with an odd number of pairs (3; 1 with ``--quick``), each mode
gets as many runs on a fresh replica as the other. With
``required`` every request carries its user's ``user_hash``, computed before the run, so the
client pays nothing for it. A switch counts only once the ingress has one replica and a request
without a hash is refused (``required``) or answered (``off``); a run with any answer but 200
makes the benchmark fail, so it cannot time fast 403s.
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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import nats
import numpy as np
from fastapi import FastAPI, Response
from ray import serve

from actors.ingress import GC_GEN0_THRESHOLD
from actors.serving import APP_NAME
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
from headstart.web.identity import VerificationMode, user_hash

SECRET = b"bench-secret-not-for-production-use"
IDENTITY_SECRET = b"bench-identity-secret-not-for-production-use"
KEYS = {"frontend": "bench-frontend-key", "admin": "bench-admin-key"}
PARTITIONS = 64
CONCURRENCIES = (1, 16, 64)
#: Alternating floor/engine runs per concurrency; medians are reported (the machine is noisy:
#: single 8 s runs of the same code varied by ±15% here).
REPETITIONS = 3
#: Where verification ``required`` is compared with ``off`` (the ingress's loop is busiest there).
IDENTITY_CONCURRENCY = 64
#: Pairs of neighbouring off/required runs, and each run's seconds: this machine's rates move
#: 15-25% between runs at 64 clients, so many short pairs (their median) rather than a few long.
IDENTITY_PAIRS, IDENTITY_RUN_S = 7, 4.0


class BenchmarkInvalid(RuntimeError):
    """What was measured is not what the benchmark claims to measure."""


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

        def deploy(mode: VerificationMode) -> str:
            return start_app(
                settings.model_copy(update={"identity_verification": mode}),
                broker.url,
                catalog,
                SECRET,
                key_hashes(KEYS),
                grpc_port=grpc_port,
                identity_secret=IDENTITY_SECRET,
            )

        base = deploy("off")
        serve.run(NoOp.bind(), name="noop", route_prefix="/noop", blocking=False)  # type: ignore[attr-defined]
        _wait_ready(base)
        engine_file, floor_file = Path(tmp) / "engine.bin", Path(tmp) / "floor.bin"
        signed_file = Path(tmp) / "signed.bin"
        frontend = {"Authorization": f"Bearer {KEYS['frontend']}"}
        engine_file.write_bytes(_requests(port, "/v1/decide", users, frontend))
        signed_file.write_bytes(_requests(port, "/v1/decide", users, frontend, IDENTITY_SECRET))
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
        # Last: it leaves the app in the other mode.
        files: dict[VerificationMode, Path] = {"off": engine_file, "required": signed_file}
        pairs, run_s = (1, duration) if quick else (IDENTITY_PAIRS, IDENTITY_RUN_S)
        identity_runs, switches = _identity(deploy, base, files, pairs, run_s, tmp)
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
        # Verification required over off at 64 clients: the median of the per-pair ratios.
        **identity_metrics(identity_runs),
        "identity_switch_s": switches,
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
        "identity": f"{IDENTITY_CONCURRENCY} clients, {pairs} pairs of neighbouring {run_s:g} s "
        "off/required runs (ABBA order), the app redeployed first and at each change of mode; "
        "required: every request "
        "with its user_hash",
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


def _requests(
    port: int, path: str, users: int, headers: dict[str, str], identity_secret: bytes | None = None
) -> bytes:
    requests = []
    for i in range(0, users, max(1, users // 5000)):
        body = decide_body(i, identity_secret)
        requests.append(http_post("127.0.0.1", port, path, body, headers))
    return pack_requests(requests)


def decide_body(i: int, identity_secret: bytes | None = None) -> bytes:
    """User ``i``'s decide request; with ``identity_secret``, signed as the product's backend
    would sign it (``user_hash``), so the load generator only sends bytes.

    >>> decide_body(3)
    b'{"user_id": "user-3@example.com", "context": {"device_type": "mobile", "locale": "fr-FR"}}'
    >>> b'"user_hash": "' in decide_body(3, IDENTITY_SECRET)
    True
    """
    body: dict[str, Any] = {
        "user_id": user_id(i),
        "context": {"device_type": DEVICES[i % 3], "locale": LOCALES[i % len(LOCALES)]},
    }
    if identity_secret is not None:
        body["user_hash"] = user_hash(identity_secret, body["user_id"])
    return json.dumps(body).encode()


def identity_schedule(pairs: int) -> list[VerificationMode]:
    """The modes of the identity runs in order: pairs of neighbouring runs, the order reversed
    from one pair to the next (ABBA), so a slow drift of the machine favours neither mode and a
    redeploy is needed only where the mode changes.

    >>> identity_schedule(3)
    ['off', 'required', 'required', 'off', 'off', 'required']
    """
    pair: list[VerificationMode] = ["off", "required"]
    return [mode for k in range(pairs) for mode in (pair if k % 2 == 0 else pair[::-1])]


def identity_metrics(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """``identity_required_ratio_64`` (the median of the per-pair rps ratios, required over
    off; a pair is two neighbouring runs), the ratios, each mode's median run and every run."""
    pairs = [{r["mode"]: r for r in runs[k : k + 2]} for k in range(0, len(runs), 2)]
    ratios = [p["required"]["rps"] / p["off"]["rps"] if p["off"]["rps"] else float("nan") for p in pairs]
    offs = [p["off"] for p in pairs]
    required = [p["required"] for p in pairs]
    return {
        "identity_required_ratio_64": statistics.median(ratios),
        "identity_required_ratio_64_per_rep": ratios,
        "identity_by_mode_64": {"off": _median_of(offs), "required": _median_of(required)},
        "identity_runs": runs,
    }


def check_all_answered(runs: list[dict[str, Any]]) -> None:
    """Every identity run answered 200 to every request: a refused request (403 for a hash that
    does not match) is fast, and timing it would flatter ``required``."""
    refused = [
        f"{r['mode']} run {n}: {r['statuses']}, {r['errors']} errors"
        for n, r in enumerate(runs)
        if r["errors"] or set(r["statuses"]) != {"200"}
    ]
    if refused:
        raise BenchmarkInvalid("identity runs with answers other than 200: " + "; ".join(refused))


def _identity(
    deploy: Callable[[VerificationMode], str],
    base: str,
    files: dict[VerificationMode, Path],
    pairs: int,
    duration: float,
    tmp: str,
) -> tuple[list[dict[str, Any]], list[float]]:
    """The identity runs in :func:`identity_schedule`'s order, every answer checked; the runs
    and each redeploy's seconds. A redeploy comes first (the replica that served the runs before
    has had longer to warm up: this way, with an odd number of pairs, each mode gets the same
    number of fresh replicas) and wherever the mode changes."""
    port = int(base.rsplit(":", 1)[1])
    runs: list[dict[str, Any]] = []
    switches: list[float] = []
    for mode in identity_schedule(pairs):
        if not runs or runs[-1]["mode"] != mode:
            switches.append(_switch(deploy, base, mode))
        runs.append({"mode": mode, **_load(port, files[mode], IDENTITY_CONCURRENCY, duration, tmp)})
    check_all_answered(runs)
    return runs, switches


def _switch(deploy: Callable[[VerificationMode], str], base: str, mode: VerificationMode) -> float:
    """Redeploy the app with ``mode`` and wait until only a replica with it answers; seconds."""
    began = time.perf_counter()
    deploy(mode)  # returns once the app is RUNNING again
    _wait_one_replica()
    _wait_identity_mode(base, mode)
    return time.perf_counter() - began


def _wait_one_replica(timeout: float = 60) -> None:
    """Until the replaced ingress replica has stopped: requests must reach only the new one."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        states = serve.status().applications[APP_NAME].deployments["Ingress"].replica_states
        # Keys are replica states (plain strings here, str enums in Ray's annotation).
        running = sum(n for state, n in states.items() if state == "RUNNING")
        others = sum(n for state, n in states.items() if state not in ("RUNNING", "STOPPED"))
        if (running, others) == (1, 0):
            return
        time.sleep(0.1)
    raise TimeoutError(f"the ingress did not settle on one running replica within {timeout} s")


def _wait_identity_mode(base: str, mode: VerificationMode, timeout: float = 30, agreeing: int = 20) -> None:
    """Until ``agreeing`` requests in a row show ``mode``: without a hash, 403 under
    ``required`` and 200 under ``off``; with the user's hash, 200 under both."""
    unsigned, signed = decide_body(0), decide_body(0, IDENTITY_SECRET)
    expected = 403 if mode == "required" else 200
    headers = {"Authorization": f"Bearer {KEYS['frontend']}", "Content-Type": "application/json"}
    seen: list[int] = []
    deadline = time.monotonic() + timeout
    with httpx.Client(base_url=base, headers=headers) as http:
        in_a_row = 0
        while in_a_row < agreeing:
            if time.monotonic() > deadline:
                raise BenchmarkInvalid(
                    f"identity verification {mode!r} did not take effect within {timeout} s "
                    f"(last answers without a hash: {seen[-5:]})"
                )
            try:
                without = http.post("/v1/decide", content=unsigned).status_code
                with_hash = http.post("/v1/decide", content=signed).status_code
            except httpx.TransportError:  # the old replica's connection, closed as it stopped
                without = with_hash = 0
            seen.append(without)
            in_a_row = in_a_row + 1 if (without, with_hash) == (expected, 200) else 0


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
        "statuses": raw["statuses"],
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
    """Milliseconds from publishing an event to the first decision that reflects it: the
    engine's delay, so the probe's publisher sends at once (a publisher's linger, 5 ms by
    default, is the client's choice to wait for more of a user's events, added on top)."""
    nc = await nats.connect(url)
    publisher = EventPublisher(nc.jetstream(), pseudonymizer, linger_s=0.0)
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
    metrics = doc["metrics"]
    lines.append(f"freshness p99 {metrics['freshness_p99_ms']:.1f} ms")
    if "identity_required_ratio_64" in metrics:
        per_pair = ", ".join(f"{r:.2f}" for r in metrics["identity_required_ratio_64_per_rep"])
        lines.append(
            f"identity verification required / off at 64: {metrics['identity_required_ratio_64']:.2f} "
            f"(pairs {per_pair}; redeploys {', '.join(f'{s:.1f}' for s in metrics['identity_switch_s'])} s)"
        )
    return "\n".join(lines)
