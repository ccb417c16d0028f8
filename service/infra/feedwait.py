"""Wake long-polling feed readers when their enterprise appends events (LISTEN/NOTIFY).

One listening connection per process, not one per waiting request. Waiters also wake on
a short tick and re-query, so a lost notification or a dropped listener connection
only delays a reader, it never strands one.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict

import asyncpg

from service.store.locks import FEED_CHANNEL

log = logging.getLogger(__name__)

TICK_SECONDS = 1.0
CLOSE_SECONDS = 2.0
ANY = "*"  # subscribe(ANY): woken by every enterprise's commits


class FeedWaiters:
    def __init__(self, dsn: str, connect_timeout: float = 5.0):
        self._dsn = dsn
        self._connect_timeout = connect_timeout
        self._events: dict[str, set[asyncio.Event]] = defaultdict(set)
        self._conn: asyncpg.Connection | None = None
        self._reconnect: asyncio.Task | None = None
        self._last_attempt = float("-inf")
        # Set on shutdown: waiting readers are woken and answer with what they have.
        self.closing = False

    @property
    def listening(self) -> bool:
        return self._conn is not None and not self._conn.is_closed()

    async def start(self) -> None:
        """Connect and LISTEN; on failure, waiters fall back to ticks until a retry works."""
        self._last_attempt = time.monotonic()
        try:
            conn = await asyncpg.connect(self._dsn, timeout=self._connect_timeout)
        except Exception as exc:
            log.warning("feed listener: cannot connect (%s); polling meanwhile", type(exc).__name__)
            return
        try:
            await conn.add_listener(FEED_CHANNEL, self._notified)
        except BaseException as exc:  # cancelled by stop() included: never leak the socket
            conn.terminate()
            if not isinstance(exc, Exception):
                raise
            log.warning("feed listener: LISTEN failed (%s); polling meanwhile", type(exc).__name__)
            return
        self._conn = conn

    def wake_all(self) -> None:
        """Shutdown: every waiting long-poll returns now instead of at its deadline."""
        self.closing = True
        for events in self._events.values():
            for event in events:
                event.set()

    async def stop(self) -> None:
        self.closing = True
        if self._reconnect is not None:
            self._reconnect.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reconnect
        if self._conn is not None:
            try:
                await self._conn.close(timeout=CLOSE_SECONDS)
            except Exception:
                self._conn.terminate()
            self._conn = None

    def _notified(self, _conn, _pid, _channel, enterprise_id: str) -> None:
        for event in self._events.get(enterprise_id, ()):
            event.set()
        for event in self._events.get(ANY, ()):  # the webhook dispatcher: every enterprise
            event.set()

    def _ensure_listening(self) -> None:
        """Reconnect in the background (at most once a tick): a reader never waits on it."""
        if self.listening or self.closing:
            return
        if self._reconnect is not None and not self._reconnect.done():
            return
        if time.monotonic() - self._last_attempt < TICK_SECONDS:
            return
        self._conn = None
        self._reconnect = asyncio.create_task(self.start())

    @contextlib.contextmanager
    def subscribe(self, enterprise_id: str):
        """Subscribe BEFORE querying, so a commit between query and wait is not missed."""
        event = asyncio.Event()
        waiters = self._events[enterprise_id]
        waiters.add(event)
        try:
            yield event
        finally:
            waiters.discard(event)
            if not waiters:
                self._events.pop(enterprise_id, None)

    async def wait(self, event: asyncio.Event, seconds: float) -> None:
        """Return on the subscribed enterprise's next commit, or after min(seconds, tick)."""
        if self.closing:
            return
        self._ensure_listening()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(event.wait(), max(0.0, min(seconds, TICK_SECONDS)))
