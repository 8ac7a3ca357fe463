"""A lean closed-loop HTTP load generator, run as its own process by the benchmarks.

Why not httpx or aiohttp: an httpx client was itself the bottleneck at ~540 rps here. This
client keeps ``concurrency`` raw keep-alive HTTP/1.1 connections on uvloop, sends pre-built
request bytes and parses only the status line and Content-Length, so most of the machine is
left to the server being measured. It reports its own CPU time so the benchmark can say how
much of the machine the client took.

    python -m bench.loadgen --host 127.0.0.1 --port 8000 --requests reqs.bin \\
        --concurrency 16 --duration 10

With ``--rate R`` the workers pace themselves to R requests per second in all (a request
waits for its slot; a late one goes at once), for a steady load rather than the most the
server takes. With ``--versions`` it also reads each answer's ``"catalog_version"`` and the
``[vN]`` marker of its message (``bench catalog``), and reports every request's wall-clock
start, so the benchmark can split one run into windows.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import struct
import sys
import time
from array import array
from pathlib import Path


def pack_requests(requests: list[bytes]) -> bytes:
    """Length-prefixed request bytes, the file format ``--requests`` reads."""
    return b"".join(struct.pack("<I", len(r)) + r for r in requests)


def unpack_requests(data: bytes) -> list[bytes]:
    out, i = [], 0
    while i < len(data):
        (size,) = struct.unpack_from("<I", data, i)
        out.append(data[i + 4 : i + 4 + size])
        i += 4 + size
    return out


def http_post(host: str, port: int, path: str, body: bytes, headers: dict[str, str]) -> bytes:
    """One keep-alive HTTP/1.1 POST request as bytes."""
    head = [
        f"POST {path} HTTP/1.1",
        f"Host: {host}:{port}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        *(f"{k}: {v}" for k, v in headers.items()),
    ]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


_VERSION = re.compile(rb'"catalog_version":\s*(\d+)')
_MARKER = re.compile(rb"\[v(\d+)\]")


class Versions:
    """Per request (``--versions``): wall-clock start, status, the answer's catalog version and
    the version its ``[vN]`` markers name (-1: none, -2: markers of different versions)."""

    def __init__(self) -> None:
        self.started: array[float] = array("d")
        self.status: array[int] = array("i")
        self.version: array[int] = array("i")
        self.marker: array[int] = array("i")

    def add(self, started: float, status: int, body: bytes) -> None:
        version = _VERSION.search(body)
        markers = set(_MARKER.findall(body))
        self.started.append(started)
        self.status.append(status)
        self.version.append(int(version.group(1)) if version else -1)
        # Every marker in the answer (title, message...) must name one version: -2 if not.
        self.marker.append(int(markers.pop()) if len(markers) == 1 else -2 if markers else -1)


async def _worker(
    host: str,
    port: int,
    requests: list[bytes],
    offset: int,
    stop_at: float,
    latencies: array[float],
    statuses: dict[int, int],
    errors: list[str],
    interval: float = 0.0,
    versions: Versions | None = None,
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    i = offset
    n = len(requests)
    # Paced: this worker's requests go at its slots (offset by the worker, so workers interleave).
    next_at = time.perf_counter() + (offset % 997) / 997 * interval
    try:
        while time.perf_counter() < stop_at:
            if interval:
                delay = next_at - time.perf_counter()
                next_at = max(next_at, time.perf_counter() - interval) + interval
                if delay > 0:
                    await asyncio.sleep(delay)
                    if time.perf_counter() >= stop_at:
                        break
            request = requests[i % n]
            i += 1
            wall = time.time()
            t0 = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = 0
            lower = head.lower()
            at = lower.find(b"content-length:")
            if at >= 0:
                length = int(lower[at + 15 : lower.find(b"\r\n", at)])
            body = await reader.readexactly(length) if length else b""
            latencies.append(time.perf_counter() - t0)
            statuses[status] = statuses.get(status, 0) + 1
            if versions is not None:
                versions.add(wall, status, body)
            if b"connection: close" in lower:
                writer.close()
                reader, writer = await asyncio.open_connection(host, port)
    except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
        errors.append(type(exc).__name__)
    finally:
        writer.close()


async def run(
    host: str,
    port: int,
    requests: list[bytes],
    concurrency: int,
    duration: float,
    warmup: float,
    rate: float = 0.0,
    versions: bool = False,
) -> dict[str, object]:
    interval = concurrency / rate if rate else 0.0
    # Warm-up (connections, JIT-free but cache-warm server paths), not measured.
    await asyncio.gather(
        *(
            _worker(host, port, requests, k, time.perf_counter() + warmup, array("d"), {}, [], interval)
            for k in range(concurrency)
        )
    )
    latencies: array[float] = array("d")
    statuses: dict[int, int] = {}
    errors: list[str] = []
    seen = Versions() if versions else None
    cpu0, t0 = time.process_time(), time.perf_counter()
    stop_at = t0 + duration
    await asyncio.gather(
        *(
            _worker(host, port, requests, k * 7919, stop_at, latencies, statuses, errors, interval, seen)
            for k in range(concurrency)
        )
    )
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    result: dict[str, object] = {
        "latencies": latencies.tolist(),
        "statuses": statuses,
        "errors": errors,
        "wall_s": wall,
        "cpu_s": cpu,
    }
    if seen is not None:
        result["versions"] = {
            "started": seen.started.tolist(),
            "status": seen.status.tolist(),
            "version": seen.version.tolist(),
            "marker": seen.marker.tolist(),
        }
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--requests", type=Path, required=True)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument(
        "--rate", type=float, default=0.0, help="requests per second in all (0: as fast as answered)"
    )
    parser.add_argument("--versions", action="store_true", help="record each answer's catalog version")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        sys.exit("loadgen only targets loopback")
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - uvloop comes with ray[serve]
        pass
    requests = unpack_requests(args.requests.read_bytes())
    result = asyncio.run(
        run(
            args.host,
            args.port,
            requests,
            args.concurrency,
            args.duration,
            args.warmup,
            args.rate,
            args.versions,
        )
    )
    result["pid"] = os.getpid()
    args.out.write_text(json.dumps(result))


if __name__ == "__main__":
    main()
