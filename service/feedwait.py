"""Wake long-polling feed readers when their enterprise appends events (LISTEN/NOTIFY).

One listening connection per process, not one per waiting request. Waiters also wake on
a short tick and re-query, so a lost notification or a dropped listener connection
only delays a reader, it never strands one.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict

import asyncpg

from .store.feedlock import FEED_CHANNEL

log = logging.getLogger(__name__)

TICK_SECONDS = 1.0


class FeedWaiters:
    def __init__(self, dsn: str):
        self._dsn = dsn
        self._events: dict[str, set[asyncio.Event]] = defaultdict(set)
        self._conn: asyncpg.Connection | None = None

    async def start(self) -> None:
        with contextlib.suppress(Exception):  # without a listener, waiters fall back to ticks
            self._conn = await asyncpg.connect(self._dsn)
            await self._conn.add_listener(FEED_CHANNEL, self._notified)

    async def stop(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await self._conn.close()
            self._conn = None

    def _notified(self, _conn, _pid, _channel, enterprise_id: str) -> None:
        for event in self._events.get(enterprise_id, ()):
            event.set()

    async def _ensure_listening(self) -> None:
        if self._conn is None or self._conn.is_closed():
            self._conn = None
            await self.start()

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
        await self._ensure_listening()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(event.wait(), max(0.0, min(seconds, TICK_SECONDS)))
