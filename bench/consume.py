"""``headstart bench consume``: what a shard's consume loop costs per message and per event.

In this process, without Ray: one nats-server, the events stream with one partition, and a
:class:`~headstart.adapters.consumer.PartitionConsumer` draining it into a handler. The CPU
time of this process over each drain (``time.process_time``), and of nats-server (psutil),
divided by messages and by events:

- ``single``: one event per message (``Nats-Msg-Id``: its event id), as producers sent before
  batches; ``batched``: :data:`EVENTS_PER_MESSAGE` events of one user per message
  (:mod:`engine.batches`, what :class:`~headstart.adapters.streams.EventPublisher` sends);
- handler ``noop`` (the consume path alone: nats-py's parsing, the consumer's loop, acks) and
  ``apply`` (:meth:`engine.partition.PartitionState.apply_message`, no live segments or
  learning): the consume path's share is what ``noop`` costs.

Each drain starts a fresh consumer at the stream's start; the fastest of the repetitions is
kept (a shared machine only ever slows a drain down). ``decode_us_per_event`` compares, in
process, decoding a batch as one typed array with decoding its events one by one (why a
batch is a msgpack array: :mod:`engine.batches`). ``profile`` lists where a ``noop`` drain of
single-event messages spends this process's time (cProfile, own time, top functions).
"""

from __future__ import annotations

import asyncio
import cProfile
import datetime as dt
import json
import pstats
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import nats
from nats.aio.client import Client as NATS

from bench.common import cpu_seconds, embedded_broker, write_result
from bench.population import onboarding_events
from engine.batches import batch_decoder, batch_items, decode_batch, is_batch
from engine.events import AnyEvent, decode_event, event_from_object
from engine.keys import Pseudonymizer
from engine.partition import PartitionState
from headstart.adapters.broker import connect_nats
from headstart.adapters.consumer import PartitionConsumer
from headstart.adapters.lean_nats import LeanClient
from headstart.adapters.provision import ensure_streams
from headstart.adapters.streams import EventPublisher, Prepared, batch_messages, publish_prepared

SECRET = b"bench-secret-not-for-production-use"
EVENTS_PER_MESSAGE = 10
REPETITIONS = 3
Handler = Callable[[int, str, bytes], None]


def run(quick: bool = False, out_dir: Path | None = None) -> Path:
    started = dt.datetime.now(dt.UTC)
    n_events = 20_000 if quick else 100_000
    reps = 1 if quick else REPETITIONS
    singles, batched = _messages(n_events)
    metrics: dict[str, Any] = {"drains": {}}
    with embedded_broker() as single_broker, embedded_broker() as batch_broker:
        asyncio.run(_publish(single_broker.url, singles))
        asyncio.run(_publish(batch_broker.url, batched))
        for _ in range(reps):
            for mode, broker, messages in (
                ("single", single_broker, singles),
                ("batched", batch_broker, batched),
            ):
                for handler in ("noop", "apply"):
                    drain = asyncio.run(_drain(broker.url, broker.pid, len(messages), handler))
                    runs = metrics["drains"].setdefault(f"{mode}_{handler}", [])
                    runs.append({**drain, "events": n_events, "messages": len(messages)})
        profile = asyncio.run(_profiled(single_broker.url, len(singles)))
    for name, runs in metrics["drains"].items():
        best = min(runs, key=lambda r: r["cpu_s"])
        metrics[name] = {
            "cpu_us_per_message": best["cpu_s"] / best["messages"] * 1e6,
            "cpu_us_per_event": best["cpu_s"] / best["events"] * 1e6,
            "broker_cpu_us_per_event": best["broker_cpu_s"] / best["events"] * 1e6,
            "events_per_s": best["events"] / best["wall_s"],
        }
    metrics["decode_us_per_event"] = _decode_cost(batched)
    metrics["profile_single_noop"] = profile
    params = {
        "events": n_events,
        "events_per_message": EVENTS_PER_MESSAGE,
        "messages_single": len(singles),
        "messages_batched": len(batched),
        "repetitions": reps,
        "statistic": "fastest drain (least CPU) of the repetitions",
        "quick": quick,
    }
    return write_result("consume", params, metrics, out_dir=out_dir, started_at=started)


def _messages(n_events: int) -> tuple[list[Prepared], list[Prepared]]:
    """The same events as single-event messages and as batches of a user's events."""
    publisher = EventPublisher(None, Pseudonymizer(SECRET))  # type: ignore[arg-type]
    singles = [publisher.prepare(event) for event in onboarding_events(users=n_events // 10, events=n_events)]
    batched, _ = batch_messages(singles, EVENTS_PER_MESSAGE)
    return singles, batched


async def _publish(url: str, messages: list[Prepared]) -> None:
    nc = await nats.connect(url)
    try:
        await ensure_streams(nc.jetstream(), 1)
        await publish_prepared(nc.jetstream(), messages)
    finally:
        await nc.close()


def _handler(kind: str) -> Handler:
    if kind == "noop":
        return lambda seq, key, data: None
    return PartitionState(0).apply_message


async def _connect(url: str) -> NATS:
    """A connection for the consumers, as a shard makes it (actors/shard.py)."""
    return await connect_nats(url, client=LeanClient)


async def _drain(url: str, broker_pid: int | None, n_messages: int, handler: str) -> dict[str, float]:
    nc = await _connect(url)
    consumer = PartitionConsumer(nc, partition=0, handler=_handler(handler), batch=256)
    try:
        broker = [broker_pid] if broker_pid else []
        broker_before, cpu_before, wall_before = cpu_seconds(broker), time.process_time(), time.perf_counter()
        await _consume(consumer, n_messages)
        return {
            "cpu_s": time.process_time() - cpu_before,
            "wall_s": time.perf_counter() - wall_before,
            "broker_cpu_s": cpu_seconds(broker) - broker_before,
        }
    finally:
        await consumer.stop(delete=True)
        await nc.close()


async def _consume(consumer: PartitionConsumer, n_messages: int) -> None:
    await consumer.start(0)
    deadline = time.monotonic() + 300
    while consumer.handled < n_messages:
        if time.monotonic() > deadline:
            raise TimeoutError(f"drained {consumer.handled} of {n_messages} messages in 300 s")
        await asyncio.sleep(0.02)


async def _profiled(url: str, n_messages: int, top: int = 15) -> list[dict[str, Any]]:
    """The functions a ``noop`` drain of single-event messages spends most own time in."""
    nc = await _connect(url)
    consumer = PartitionConsumer(nc, partition=0, handler=_handler("noop"), batch=256)
    profiler = cProfile.Profile()
    try:
        profiler.enable()
        await _consume(consumer, n_messages)
        profiler.disable()
    finally:
        await consumer.stop(delete=True)
        await nc.close()
    stats = pstats.Stats(profiler)
    total = sum(row[2] for row in stats.stats.values())  # type: ignore[attr-defined]
    rows = sorted(stats.stats.items(), key=lambda item: item[1][2], reverse=True)[:top]  # type: ignore[attr-defined]
    return [
        {
            "function": f"{Path(file).name}:{line} {name}",
            "calls": calls,
            "own_share": own / total,
            "own_us_per_message": own / n_messages * 1e6,
        }
        for (file, line, name), (_, calls, own, _, _) in rows
    ]


def _decode_cost(batched: list[Prepared], rounds: int = 7) -> dict[str, float]:
    """Per event, each decoded event dropped at once (as a shard applies and drops it): a batch
    decoded as one typed array; its events decoded one by one (as separate messages); and the
    alternative to an array, the maps concatenated (a header saying how many), which needs a
    streaming decoder: ``msgpack``'s unpacker into dicts, then msgspec's typed conversion."""
    payloads = [payload for _, payload, _ in batched if is_batch(payload)]
    items = [item for payload in payloads for item in batch_items(payload)]
    concatenated = [b"".join(batch_items(payload)) for payload in payloads]
    decoder = batch_decoder(AnyEvent)

    def as_array() -> None:
        for payload in payloads:
            for _ in decode_batch(payload, decoder):
                pass

    def one_by_one() -> None:
        for item in items:
            decode_event(item)

    def streamed() -> None:
        for payload in concatenated:
            unpacker = msgpack.Unpacker()
            unpacker.feed(payload)
            for event in unpacker:
                event_from_object(event)

    return {
        name: min(_timed(work) for _ in range(rounds)) / len(items) * 1e6
        for name, work in (
            ("as_array", as_array),
            ("one_by_one", one_by_one),
            ("concatenated_maps", streamed),
        )
    }


def _timed(work: Callable[[], object]) -> float:
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


def summary(path: Path) -> str:
    metrics = json.loads(path.read_text())["metrics"]
    lines = [
        f"{name}: {m['cpu_us_per_event']:.2f} µs/event ({m['cpu_us_per_message']:.2f} µs/message) here, "
        f"{m['broker_cpu_us_per_event']:.2f} µs/event in nats-server"
        for name, m in metrics.items()
        if isinstance(m, dict) and "cpu_us_per_event" in m
    ]
    return "\n".join(lines)
