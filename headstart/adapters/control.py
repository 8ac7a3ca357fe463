"""Operator requests to the running instance over NATS (``hs.admin.<action>``).

The supervisor that ``headstart up`` runs is the only process with a Ray driver; the CLI and
the HTTP admin API reach it with a NATS request instead of attaching to Ray themselves. The
supervisor answers on a thread of its own, one request at a time: a rescale calls Ray
synchronously and may take seconds. On the same connection it reports its health (the children
it watches and their restarts) to the status bucket every second, where ``/metrics`` reads it.

>>> encode_command(shards=4)
b'{"shards":4}'
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable
from typing import Any

import msgspec
import nats
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from headstart.adapters.broker import NatsAuth, connect_nats
from headstart.adapters.status import REPORT_EVERY_S, SUPERVISOR_STATUS_KEY, ensure_status_bucket
from headstart.adapters.topology import admin_subject

log = logging.getLogger(__name__)

#: How long a client waits for an admin action (a rescale moves partitions one pair at a time).
ADMIN_TIMEOUT_S = 300.0

Handler = Callable[[dict[str, Any]], dict[str, Any]]


class AdminError(Exception):
    """The action was refused (bad arguments) or failed; the message says why."""


def encode_command(**fields: Any) -> bytes:
    return msgspec.json.encode(fields)


class ControlServer:
    """Answers ``hs.admin.<action>`` with ``handlers[action](request)``, on its own thread;
    with ``health``, puts what it returns under the status bucket's ``supervisor`` key every
    second (entries expire: a supervisor gone stops being reported)."""

    def __init__(
        self,
        nats_url: str,
        handlers: dict[str, Handler],
        auth: NatsAuth | None = None,
        health: Callable[[], bytes] | None = None,
    ) -> None:
        self.nats_url = nats_url
        self.auth = auth
        self.handlers = handlers
        self.health = health
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, name="headstart-control", daemon=True)
        self._done: asyncio.Event | None = None

    def start(self) -> ControlServer:
        self._thread.start()
        self._started.wait(10)
        return self

    def stop(self) -> None:
        if self._loop is not None and self._done is not None:
            self._loop.call_soon_threadsafe(self._done.set)
        self._thread.join(10)

    def _run(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._loop.run_until_complete(self._serve())

    async def _serve(self) -> None:
        self._done = asyncio.Event()
        nc = await connect_nats(self.nats_url, self.auth, name="headstart-control", max_reconnect_attempts=-1)
        lock = asyncio.Lock()

        async def on_request(msg: Msg) -> None:
            action = msg.subject.rsplit(".", 1)[1]
            async with lock:  # one action at a time: two rescales must not interleave
                reply = await asyncio.to_thread(self._answer, action, msg.data)
            with contextlib.suppress(Exception):
                await msg.respond(reply)

        await nc.subscribe(admin_subject("*"), cb=on_request)
        reporting = asyncio.create_task(self._report_forever(nc)) if self.health is not None else None
        self._started.set()
        await self._done.wait()
        if reporting is not None:
            reporting.cancel()
        await nc.drain()

    async def _report_forever(self, nc: NATS) -> None:
        assert self.health is not None
        while True:
            # Opened again after a failure: a restarted broker has lost the bucket (memory
            # storage) until the supervisor creates it again.
            with contextlib.suppress(Exception):
                kv = await ensure_status_bucket(nc.jetstream())
                while True:
                    await kv.put(SUPERVISOR_STATUS_KEY, self.health())
                    await asyncio.sleep(REPORT_EVERY_S)
            await asyncio.sleep(REPORT_EVERY_S)

    def _answer(self, action: str, data: bytes) -> bytes:
        handler = self.handlers.get(action)
        if handler is None:
            return _error("unknown_action", f"no admin action {action!r}")
        try:
            request = msgspec.json.decode(data or b"{}")
            if not isinstance(request, dict):
                raise AdminError("the request must be a JSON object")
            return msgspec.json.encode(handler(request))
        except (AdminError, msgspec.DecodeError) as exc:
            return _error("bad_request", str(exc))
        except Exception as exc:
            log.exception("admin action %s failed", action)
            return _error("failed", f"{type(exc).__name__}: {exc}")


def _error(code: str, message: str) -> bytes:
    return msgspec.json.encode({"error": {"code": code, "message": message}})


async def request_admin(nc: NATS, action: str, timeout: float = ADMIN_TIMEOUT_S, **fields: Any) -> bytes:
    """Ask the supervisor; raises :class:`AdminError` when no supervisor listens."""
    try:
        msg = await nc.request(admin_subject(action), encode_command(**fields), timeout=timeout)
    except nats.errors.NoRespondersError as exc:
        raise AdminError("no Headstart supervisor answers (is `headstart up` running?)") from exc
    except nats.errors.TimeoutError as exc:
        raise AdminError(f"the supervisor did not answer within {timeout:.0f}s") from exc
    return bytes(msg.data)


def scale_request(request: dict[str, Any], maximum: int) -> int:
    """The shard count asked for, validated."""
    shards = request.get("shards")
    if not isinstance(shards, int) or isinstance(shards, bool) or not 1 <= shards <= maximum:
        raise AdminError(f"shards: an integer from 1 to {maximum} is needed, got {shards!r}")
    return shards
