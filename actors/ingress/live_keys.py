"""The API keys an ingress replica accepts, and how it follows the key store.

:class:`LiveKeys` holds one :class:`~headstart.web.auth.Authenticator`, built from one version
of the key set and replaced whole (one assignment on the replica's event loop) when a newer
version is stored: a request reads ``keys.authenticator`` once. A key in a rotation's grace
period carries the time it stops, checked at each request, so the grace ends on time with no
change to the store.

A replica connects to NATS as it starts, before its first request (bounded: with NATS down it
starts anyway); until then it accepts the keys it was given, the store's keys as they were when
the app was deployed (a key revoked before that is not among them). On each connection it reads
the latest set and follows the store. No set stored (a store never seeded, as in tests and
benchmarks that hand the keys over directly): the keys given stay.

It also records when each key was last used (a dict store per request) and writes the uses
that changed to ``HS_KEY_USAGE`` every few seconds (:class:`headstart.adapters.key_store.KeyUsage`).

>>> from headstart.web.auth import hash_key
>>> keys = LiveKeys({"admin": [hash_key("a-key")]})
>>> role, key_hash = keys.authenticator.identify("Bearer a-key")
>>> keys.used(key_hash); role, key_hash in keys.last_used
('admin', True)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from nats.js import JetStreamContext

from engine.api_keys import KEY_ID_CHARS
from headstart.adapters.key_store import KeySet, KeyStore, KeyUsage, Watch
from headstart.web.auth import Authenticator

log = logging.getLogger(__name__)

#: How often last uses are written: ``keys list`` shows them to the minute that matters to an
#: operator, and a write per key every few seconds costs nothing next to the requests.
FLUSH_S = 3.0
#: How often a replica that could not reach the store tries again to follow it.
FOLLOW_RETRY_S = 1.0


class LiveKeys:
    """One replica's accepted keys and their last uses (see the module's docstring)."""

    def __init__(
        self,
        initial_hashes: dict[str, list[str]],
        replicas: int = 1,
        expiries: dict[str, float] | None = None,
    ) -> None:
        #: What ``_require`` asks: the one reference every request reads.
        self.authenticator = Authenticator(initial_hashes, expiries)
        #: The key set's version served (0: the keys given at start).
        self.version = 0
        self.replicas = replicas
        #: Key hash -> when this replica last accepted it (Unix seconds).
        self.last_used: dict[str, float] = {}
        self._flushed: dict[str, float] = {}
        self._js: JetStreamContext | None = None
        self._watch: Watch | None = None
        self._retry: asyncio.Task[None] | None = None
        self._flusher: asyncio.Task[None] | None = None
        self._usage: KeyUsage | None = None

    def used(self, key_hash: str) -> None:
        """A request was accepted with the key ``key_hash`` (on the decision path: a dict store)."""
        self.last_used[key_hash] = time.time()

    def serve(self, keys: KeySet) -> bool:
        """Accept the keys of ``keys`` from now on if it is newer than the set served."""
        if keys.version <= self.version:
            return False
        self.authenticator = Authenticator(*keys.hashes(time.time()))
        self.version = keys.version
        log.info("serving key set version %d (%d keys)", keys.version, len(keys.records))
        return True

    async def _on_keys(self, keys: KeySet) -> None:
        self.serve(keys)

    # ------------------------------------------------------------------ the store

    async def connected(self, js: JetStreamContext) -> None:
        """Called on each (re)connection to NATS: serve the store's latest set, follow the store,
        and write last uses through ``js``. A store not reachable yet is retried in the
        background (the keys served stay meanwhile)."""
        await self.stop()
        self._js, self._usage = js, None
        try:
            await self._follow()
        except Exception as exc:  # noqa: BLE001 - the store may not be reachable yet
            log.warning("key store not followed yet (%s): retrying", exc)
            self._retry = asyncio.get_running_loop().create_task(self._follow_later())
        self._flusher = asyncio.get_running_loop().create_task(self._flush_every())

    async def _follow(self) -> None:
        assert self._js is not None
        store = await KeyStore.open(self._js, self.replicas)
        # Watch first, then read the latest: a set stored in between is served either way.
        watch = await store.watch(after=self.version, on_keys=self._on_keys)
        try:
            latest = await store.latest()
            if latest is not None:
                self.serve(latest)
        except BaseException:
            await watch.stop()
            raise
        self._watch = watch

    async def _follow_later(self) -> None:
        while True:
            await asyncio.sleep(FOLLOW_RETRY_S)
            try:
                await self._follow()
                return
            except Exception as exc:  # noqa: BLE001 - keep trying while the replica runs
                log.debug("key store still not followed: %s", exc)

    async def flush(self) -> None:
        """Write the last uses that changed since the last flush."""
        assert self._js is not None
        changed = {h: at for h, at in list(self.last_used.items()) if self._flushed.get(h) != at}
        if not changed:
            return
        if self._usage is None:
            self._usage = await KeyUsage.open(self._js, self.replicas)
        await self._usage.record({h[:KEY_ID_CHARS]: at for h, at in changed.items()})
        self._flushed.update(changed)

    async def _flush_every(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_S)
            try:
                await self.flush()
            except Exception as exc:  # noqa: BLE001 - written with the next flush
                log.debug("key uses not written yet: %s", exc)

    async def stop(self) -> None:
        """Stop following the store and writing uses (the keys served stay)."""
        for task in (self._retry, self._flusher):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        self._retry = self._flusher = None
        if self._watch is not None:
            await self._watch.stop()
            self._watch = None
