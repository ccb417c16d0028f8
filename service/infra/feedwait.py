"""Wake long-polling feed readers when their enterprise appends events (LISTEN/NOTIFY).

One listening connection per process, not one per waiting request. A reader re-queries
only when woken for its enterprise: by a notification, by a write of this process (at
once, no round trip), or by the loss of the listening connection. While the listener is
down, readers also wake on a safety tick and re-query, so a lost notification or a
dropped connection only delays a reader, it never strands one.

The wake-up is sent AFTER the writer's commit, from the process that wrote (notify()):
a NOTIFY inside the writing transaction would make every write's commit queue behind
every other notifying commit of the cluster (PostgreSQL serializes them with one lock).
Notifications of many writes are coalesced: one statement per round trip, one payload per
enterprise. A group commit sends its own with the position it reads after its commit (one
round trip for both: app/groupcommit.py), on a connection of the pool, so the listener hears
it as another process's and wakes this process's readers once per group; its requests then
pass `announced` and send nothing (while the listener is down, they wake the readers here
themselves). The feed's correctness never depended on them: they are only wake-ups.

With read replicas, NOTIFY is not delivered on standbys (they run no transactions of
their own), so the listener stays on the primary, and a wake-up carries a WAL position:
the primary's insert position read on the listening connection after the notification
arrived, so past the notifying commit. A woken reader asks for data at least that new
(web/consistency.require), so a standby answers it once it has replayed that commit
(within REPLICA_WAIT_MS), else the primary does; it never re-reads a standby that has not
yet replayed the commit and goes back to sleep. A write of this process wakes its own
readers the same way, with a position read after its commit.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Awaitable, Callable

import asyncpg

from service.infra.replicas import UNKNOWN_POSITION

log = logging.getLogger(__name__)

# Re-query period of waiting readers while the listener is down (FEED_TICK_SECONDS).
TICK_SECONDS = 1.0
CLOSE_SECONDS = 2.0
ANY = "*"  # subscribe(ANY): woken by every enterprise's commits


@dataclass(frozen=True)
class FeedQueries:
    """The store's part (app/positions.py hands it over): infra runs no SQL of its own."""
    channel: str  # LISTEN/NOTIFY channel; the payload is an enterprise id
    notify: str  # one statement: $1 the enterprise ids to wake
    position: Callable[[asyncpg.Connection], Awaitable[int]]  # the primary's insert position


class FeedWaiters:
    def __init__(self, dsn: str, queries: FeedQueries, connect_timeout: float = 5.0,
                 pool: asyncpg.Pool | None = None, tick_seconds: float = TICK_SECONDS,
                 track_position: bool = False):
        self._dsn = dsn
        self._queries = queries
        self._tick = tick_seconds
        self._track_position = track_position  # with read replicas: wake-ups carry positions
        self._woken: set[str] = set()  # notified enterprises whose position is being read
        self._stamper: asyncio.Task | None = None
        # The primary's position after the latest notification: past every notifying commit.
        self.position = 0
        self._connect_timeout = connect_timeout
        self._pool = pool  # sends the wake-ups while the listening connection is down
        self._events: dict[str, set[asyncio.Event]] = defaultdict(set)
        self._conn: asyncpg.Connection | None = None
        self._own_pid: int | None = None
        self._reconnect: asyncio.Task | None = None
        self._last_attempt = float("-inf")
        self._pending: set[str] = set()  # enterprises to notify other processes of
        self._sending: asyncio.Task | None = None
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
            await conn.add_listener(self._queries.channel, self._notified)
        except BaseException as exc:  # cancelled by stop() included: never leak the socket
            conn.terminate()
            if not isinstance(exc, Exception):
                raise
            log.warning("feed listener: LISTEN failed (%s); polling meanwhile", type(exc).__name__)
            return
        conn.add_termination_listener(self._lost)
        self._conn, self._own_pid = conn, conn.get_server_pid()

    def wake_all(self) -> None:
        """Shutdown: every waiting long-poll returns now instead of at its deadline."""
        self.closing = True
        self._wake_everyone()

    async def stop(self) -> None:
        self.closing = True
        for task in (self._reconnect, self._sending, self._stamper):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._conn is not None:
            try:
                await self._conn.close(timeout=CLOSE_SECONDS)
            except Exception:
                self._conn.terminate()
            self._conn = None

    def notify(self, enterprise_id: str, announced: bool = False) -> None:
        """The enterprise has committed new events: wake its readers here and elsewhere
        (`announced`: a NOTIFY was sent already, after that commit)."""
        if announced:
            # That NOTIFY, sent on another connection, wakes this process's readers too
            # once the listener hears it; with the listener down, they are woken here.
            if not self.listening:
                self._arrived(enterprise_id)
            return
        self._arrived(enterprise_id)
        self._pending.add(enterprise_id)
        if self._sending is None and not self.closing:
            self._sending = asyncio.ensure_future(self._send())

    async def _send(self) -> None:
        """Coalesced: whatever accumulates during one round trip goes in the next."""
        try:
            while self._pending:
                batch, self._pending = list(self._pending), set()
                try:
                    if self.listening:
                        await self._conn.execute(self._queries.notify, batch)
                    elif self._pool is not None:
                        async with asyncio.timeout(self._connect_timeout):
                            async with self._pool.acquire() as conn:
                                await conn.execute(self._queries.notify, batch)
                except Exception as exc:  # other processes' readers fall back to a tick
                    log.warning("feed wake-up not sent (%s)", type(exc).__name__)
        finally:
            self._sending = None

    def _notified(self, _conn, pid, _channel, enterprise_id: str) -> None:
        if pid != self._own_pid:  # our own were delivered at once by notify()
            self._arrived(enterprise_id)

    def _arrived(self, enterprise_id: str) -> None:
        """Wake the enterprise's readers; with replicas, once the position is known."""
        if not self._track_position:
            self._wake(enterprise_id)
            return
        self._woken.add(enterprise_id)
        if self._stamper is None or self._stamper.done():
            self._stamper = asyncio.create_task(self._stamp())

    def _wake(self, enterprise_id: str) -> None:
        for event in self._events.get(enterprise_id, ()):
            event.set()
        for event in self._events.get(ANY, ()):  # the webhook dispatcher: every enterprise
            event.set()

    def _wake_everyone(self) -> None:
        for events in self._events.values():
            for event in events:
                event.set()

    def _lost(self, _conn) -> None:
        """The listener's connection ended: readers re-query now, then tick until it is back."""
        self._wake_everyone()

    async def _stamp(self) -> None:
        """Read the position once per burst of notifications, then wake their readers."""
        while self._woken:
            woken, self._woken = self._woken, set()
            try:
                # The primary's insert position only grows; after UNKNOWN_POSITION, too.
                async with asyncio.timeout(self._connect_timeout):
                    self.position = await self._queries.position(self._conn)
            except Exception as exc:  # the listener broke: readers of this wake-up go primary
                log.warning("feed listener: position unknown (%s)", type(exc).__name__)
                self.position = UNKNOWN_POSITION
            for enterprise_id in woken:
                self._wake(enterprise_id)

    def _ensure_listening(self) -> None:
        """Reconnect in the background (at most once a tick): a reader never waits on it."""
        if self.listening or self.closing:
            return
        if self._reconnect is not None and not self._reconnect.done():
            return
        if time.monotonic() - self._last_attempt < self._tick:
            return
        self._conn = None
        self._reconnect = asyncio.create_task(self.start())

    def waiting(self, enterprise_id: str) -> int:
        """How many readers of the enterprise are subscribed now (for tests and probes)."""
        return len(self._events.get(enterprise_id, ()))

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
        """Return when woken for the subscribed enterprise or after `seconds`; while the
        listener is down, after a tick at most."""
        if self.closing:
            return
        self._ensure_listening()
        if not self.listening:
            seconds = min(seconds, self._tick)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(event.wait(), max(0.0, seconds))
