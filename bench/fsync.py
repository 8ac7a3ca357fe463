"""``headstart bench fsync``: what JetStream's fsync setting costs on ingest.

nats-server's file store fsyncs every ``sync_interval`` (default 2 minutes): an OS crash or power
loss on a single server can lose acknowledged messages written since the last sync. Headstart's
embedded broker ships with ``1s``. This publishes the same events (population mix, 20,000 users,
pipelined publishes with acks, as ``EventPublisher`` does) to a fresh broker per setting,
alternating the settings over repetitions, and reports the median events/s stored per setting
and the ratio to nats-server's default.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import nats

from bench.common import write_result
from bench.population import onboarding_events
from engine.keys import Pseudonymizer
from headstart.adapters.broker import DEFAULT_SYNC_INTERVAL, EmbeddedNats
from headstart.adapters.provision import ensure_streams
from headstart.adapters.streams import EventPublisher, publish_prepared

SECRET = b"bench-secret-not-for-production-use"
#: nats-server's default first: it is the baseline.
SETTINGS = ("2m", DEFAULT_SYNC_INTERVAL, "always")


def run(quick: bool = False, out_dir: Path | None = None) -> Path:
    started = dt.datetime.now(dt.UTC)
    n_events = 20_000 if quick else 150_000
    reps = 1 if quick else 3
    pseudonymizer = Pseudonymizer(SECRET)
    publisher = EventPublisher(None, pseudonymizer)  # type: ignore[arg-type]  # prepare() only
    prepared = [publisher.prepare(e) for e in onboarding_events(users=20_000, events=n_events, seed=61)]
    runs: dict[str, list[float]] = {s: [] for s in SETTINGS}
    for _ in range(reps):
        for setting in SETTINGS:  # alternate, so every setting sees the same machine
            runs[setting].append(_publish_rate(setting, prepared))
    rates = {s: statistics.median(r) for s, r in runs.items()}
    metrics: dict[str, Any] = {
        "events_per_s_by_sync_interval": rates,
        "ratio_to_default": {s: rates[s] / rates["2m"] for s in SETTINGS},
        "shipped": DEFAULT_SYNC_INTERVAL,
        "runs": runs,
    }
    params = {"events": n_events, "repetitions": reps, "statistic": "median", "quick": quick}
    return write_result("fsync", params, metrics, {"events_per_s": rates["2m"]}, out_dir, started)


def _publish_rate(sync_interval: str, prepared: list[tuple[str, bytes, dict[str, str]]]) -> float:
    with (
        tempfile.TemporaryDirectory(prefix="hs-fsync-") as tmp,
        EmbeddedNats(Path(tmp), sync_interval=sync_interval) as broker,
    ):
        return asyncio.run(_publish(broker.url, prepared))


async def _publish(url: str, prepared: list[tuple[str, bytes, dict[str, str]]]) -> float:
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        await ensure_streams(js, 64)
        t0 = time.perf_counter()
        await publish_prepared(js, prepared)
        return len(prepared) / (time.perf_counter() - t0)
    finally:
        await nc.close()
