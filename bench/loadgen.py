"""A lean closed-loop HTTP load generator, run as its own process by the benchmarks.

Why not httpx or aiohttp: an httpx client was itself the bottleneck at ~540 rps here. This
client keeps ``concurrency`` raw keep-alive HTTP/1.1 connections on uvloop, sends pre-built
request bytes and parses only the status line and Content-Length, so most of the machine is
left to the server being measured. It reports its own CPU time so the benchmark can say how
much of the machine the client took.

    python -m bench.loadgen --host 127.0.0.1 --port 8000 --requests reqs.bin \\
        --concurrency 16 --duration 10
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
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


async def _worker(
    host: str,
    port: int,
    requests: list[bytes],
    offset: int,
    stop_at: float,
    latencies: array[float],
    statuses: dict[int, int],
    errors: list[str],
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    i = offset
    n = len(requests)
    try:
        while time.perf_counter() < stop_at:
            request = requests[i % n]
            i += 1
            t0 = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = 0
            lower = head.lower()
            at = lower.find(b"content-length:")
            if at >= 0:
                length = int(lower[at + 15 : lower.find(b"\r\n", at)])
            if length:
                await reader.readexactly(length)
            latencies.append(time.perf_counter() - t0)
            statuses[status] = statuses.get(status, 0) + 1
            if b"connection: close" in lower:
                writer.close()
                reader, writer = await asyncio.open_connection(host, port)
    except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
        errors.append(type(exc).__name__)
    finally:
        writer.close()


async def run(
    host: str, port: int, requests: list[bytes], concurrency: int, duration: float, warmup: float
) -> dict[str, object]:
    # Warm-up (connections, JIT-free but cache-warm server paths), not measured.
    await asyncio.gather(
        *(
            _worker(host, port, requests, k, time.perf_counter() + warmup, array("d"), {}, [])
            for k in range(concurrency)
        )
    )
    latencies: array[float] = array("d")
    statuses: dict[int, int] = {}
    errors: list[str] = []
    cpu0, t0 = time.process_time(), time.perf_counter()
    stop_at = t0 + duration
    await asyncio.gather(
        *(
            _worker(host, port, requests, k * 7919, stop_at, latencies, statuses, errors)
            for k in range(concurrency)
        )
    )
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    return {
        "latencies": latencies.tolist(),
        "statuses": statuses,
        "errors": errors,
        "wall_s": wall,
        "cpu_s": cpu,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--requests", type=Path, required=True)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=1.0)
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
    result = asyncio.run(run(args.host, args.port, requests, args.concurrency, args.duration, args.warmup))
    result["pid"] = os.getpid()
    args.out.write_text(json.dumps(result))


if __name__ == "__main__":
    main()
