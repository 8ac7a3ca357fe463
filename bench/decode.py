"""``headstart bench decode``: the edge decoder, msgspec typed structs against msgpack + checks.

Decoding is on the hottest path. Both sides do the same job: bytes → a validated event.
The baseline is the ``msgpack`` package (C extension) producing a dict, followed by the checks
the typed decoder does implicitly (required fields, types, props per event type).
"""

from __future__ import annotations

import datetime as dt
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack

from bench.common import write_result
from bench.population import onboarding_events
from engine.errors import InvalidEvent
from engine.events import decode_event, encode_event

_REQUIRED_PROPS = {
    "step_viewed": (("step", str),),
    "step_completed": (("step", str),),
    "feature_clicked": (("feature", str),),
    "tutorial_started": (("tutorial", str), ("variant", str)),
    "tutorial_completed": (("tutorial", str), ("variant", str)),
}
_KNOWN = {
    "session_started",
    "onboarding_started",
    "onboarding_completed",
    "profile_updated",
    "consent_updated",
    *_REQUIRED_PROPS,
}


def msgpack_and_checks(data: bytes) -> dict[str, Any]:
    """The hand-written equivalent of the typed decoder, as lean as it can reasonably be."""
    event = msgpack.unpackb(data)
    if not isinstance(event, dict):
        raise InvalidEvent("malformed", "not a map")
    for field, kind in (("event_id", str), ("user_id", str), ("type", str)):
        if not isinstance(event.get(field), kind):
            raise InvalidEvent("missing_field", field)
    ts = event.get("ts")
    if not isinstance(ts, (int, float)) or not 0 <= ts < 1e11:
        raise InvalidEvent("invalid_field", "ts")
    if event["type"] not in _KNOWN:
        raise InvalidEvent("unknown_type", event["type"])
    props = event.get("props") or {}
    for field, kind in _REQUIRED_PROPS.get(event["type"], ()):
        if not isinstance(props.get(field), kind):
            raise InvalidEvent("missing_field", field)
    return event


def _time_per_call(fn: Callable[[bytes], object], payloads: list[bytes], rounds: int) -> list[float]:
    samples = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for payload in payloads:
            fn(payload)
        samples.append((time.perf_counter() - t0) / len(payloads) * 1e6)
    return samples


def run(quick: bool = False, out_dir: Path | None = None) -> Path:
    started = dt.datetime.now(dt.UTC)
    payloads = [encode_event(e) for e in onboarding_events(users=1000, events=20_000 if quick else 100_000)]
    rounds = 3 if quick else 7
    ours = _time_per_call(decode_event, payloads, rounds)
    base = _time_per_call(msgpack_and_checks, payloads, rounds)
    metrics = {
        "decode_us": statistics.median(ours),
        "speedup_vs_msgpack": statistics.median(base) / statistics.median(ours),
    }
    baseline = {"decode_us": statistics.median(base), "library": f"msgpack {msgpack.version}"}
    params = {"events": len(payloads), "rounds": rounds, "statistic": "median over rounds"}
    return write_result("decode", params, metrics, baseline, out_dir=out_dir, started_at=started)
