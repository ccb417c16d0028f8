"""Read replicas: which hot standby serves a read, their health, and read-your-writes waits.

Reads go round-robin to the standbys in rotation. A read that must see a given WAL
position (a consistency token, web/consistency.py) goes to a standby known to have replayed
it, else waits up to REPLICA_WAIT_MS on one for its replay to get there, else to the
primary. A standby leaves the rotation when it refuses connections, errors, is no longer in
recovery, or lags more than REPLICA_MAX_LAG_SECONDS; a probe every REPLICA_PROBE_SECONDS
brings it back. No read fails because of a standby: with none in rotation, reads go to the
primary (and a read that fails on a standby runs again on the primary, web/consistency.py).

The feed's no-skip guarantee holds on a standby too. On the primary, appends of one
enterprise hold its feed lock until commit (store/events.py), so the commit record of the
append that got position p is written to the WAL before the append that gets p+1 even takes
the lock. A standby replays the WAL strictly in order and a transaction becomes visible to
its snapshots when its commit record is replayed: what a standby shows of an enterprise's
feed is therefore always a prefix of the primary's commit order, i.e. every position up to
some p and none after. A reader resuming with after=p on another standby (or the primary)
sees that server's prefix: possibly nothing new yet, never a gap.
"""
from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import re
import time
from dataclasses import dataclass
from typing import Awaitable, Callable
from urllib.parse import parse_qs, urlsplit

import asyncpg

from service.config import Config
from service.infra import db

log = logging.getLogger(__name__)

# Fallbacks to the primary, by reason (the pipeline_runs_replica_fallbacks_total label).
NO_REPLICA = "no_replica"  # none in rotation
NOT_CAUGHT_UP = "not_caught_up"  # none replayed the token's position within REPLICA_WAIT_MS
REPLICA_ERROR = "replica_error"  # the standby failed while serving the read
UNKNOWN = "unknown_position"  # a wake-up whose commit position could not be read
# The position of such a wake-up: greater than any real one, it sends the read to the primary.
UNKNOWN_POSITION = 2 ** 63 - 1

# The token names the WAL position as hex after a format version, so a later scheme (one
# position per Citus node, say) can be told apart. Callers treat it as opaque.
_TOKEN = re.compile(r"1\.([0-9a-f]{1,16})", re.ASCII)
POLL_FIRST, POLL_MAX = 0.002, 0.025  # seconds between replay checks while a read waits


def format_token(lsn: int) -> str:
    return f"1.{lsn:x}"


def parse_token(raw: str) -> int:
    """The WAL position a token names; ValueError if it is not one this service issued."""
    match = _TOKEN.fullmatch(raw.strip())
    if match is None:
        raise ValueError(raw)
    return int(match.group(1), 16)


def replica_name(dsn: str) -> str:
    """host:port/dbname (no credentials): the replica's label in metrics and /health/ready."""
    parts = urlsplit(dsn)
    query = parse_qs(parts.query)  # a unix socket: ?host=/dir&port=N
    host = parts.hostname or query.get("host", ["local"])[0]
    port = parts.port or query.get("port", ["5432"])[0]
    return f"{host}:{port}{parts.path or '/'}"


@dataclass
class Replica:
    name: str
    dsn: str
    pool: asyncpg.Pool | None = None
    slots: asyncio.Semaphore | None = None  # arrival order, as for the primary (handlers/common)
    healthy: bool = False
    reason: str | None = "not probed yet"
    replayed: int = 0  # the newest replay position seen (positions only grow on a standby)
    lag_seconds: float | None = None

    def saw(self, replayed: int | None) -> None:
        if replayed is not None and replayed > self.replayed:
            self.replayed = replayed

    def leave(self, reason: str) -> None:
        if self.healthy:
            log.warning("replica %s leaves the rotation: %s", self.name, reason)
        self.healthy, self.reason = False, reason

    def report(self) -> dict:
        return {"name": self.name, "healthy": self.healthy, "reason": self.reason,
                "lag_seconds": self.lag_seconds,
                "replayed": format_token(self.replayed) if self.replayed else None}


@dataclass(frozen=True)
class StandbyQueries:
    """The store's part (app/positions.py hands it over): infra runs no SQL of its own."""
    # in_recovery, replayed (its position), lag_seconds
    state: Callable[[asyncpg.Connection], Awaitable[asyncpg.Record]]
    replayed: Callable[[asyncpg.Connection], Awaitable[int | None]]  # None: not a standby


class ReplicaSet:
    """The standbys of one process: pools, rotation, probes, and the counters of routing."""

    def __init__(self, config: Config, queries: StandbyQueries):
        self.config = config
        self._queries = queries
        self.replicas = [Replica(replica_name(dsn), dsn) for dsn in config.read_database_urls]
        self._turn = itertools.count()
        self._prober: asyncio.Task | None = None
        self.reads: dict[str, int] = {}  # served reads by target name ("primary" or a replica)
        self.fallbacks: dict[str, int] = {}  # reads sent to the primary instead, by reason

    # --- lifecycle ------------------------------------------------------------------

    async def start(self) -> None:
        for replica in self.replicas:
            # min_size=0: nothing connects yet, so a standby that is down delays nothing.
            replica.pool = await db.create_pool(self.config, replica.dsn, min_size=0)
            replica.slots = asyncio.Semaphore(self.config.pool_max)
        await self.probe_all()  # start with the standbys that answer in rotation
        self._prober = asyncio.create_task(self._probe_forever())

    async def stop(self) -> None:
        if self._prober is not None:
            self._prober.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._prober
        for replica in self.replicas:
            if replica.pool is not None:
                await db.close_pool(replica.pool, self.config.pool_acquire_timeout)

    # --- health ---------------------------------------------------------------------

    async def _probe_forever(self) -> None:
        while True:
            await asyncio.sleep(self.config.replica_probe_seconds)
            await self.probe_all()

    async def probe_all(self) -> None:
        await asyncio.gather(*(self._probe(replica) for replica in self.replicas))

    async def _probe(self, replica: Replica) -> None:
        try:
            async with asyncio.timeout(self.config.db_connect_timeout):
                async with replica.pool.acquire() as conn:
                    state = await self._queries.state(conn)
        except Exception as exc:  # refused, reset, timed out, erroring: all mean "not now"
            replica.lag_seconds = None
            replica.leave(f"probe failed: {type(exc).__name__}")
            return
        if not state["in_recovery"]:
            replica.leave("not a standby (promoted?)")
            return
        replica.saw(state["replayed"])
        replica.lag_seconds = state["lag_seconds"]
        if replica.lag_seconds > self.config.replica_max_lag_seconds:
            replica.leave(f"lagging {replica.lag_seconds:.1f}s")
            return
        if not replica.healthy:
            log.info("replica %s is in rotation", replica.name)
        replica.healthy, replica.reason = True, None

    # --- routing --------------------------------------------------------------------

    def in_rotation(self) -> list[Replica]:
        return [replica for replica in self.replicas if replica.healthy]

    def count_read(self, target: str) -> None:
        self.reads[target] = self.reads.get(target, 0) + 1

    def fall_back(self, reason: str) -> None:
        self.fallbacks[reason] = self.fallbacks.get(reason, 0) + 1

    def _choose(self, lsn: int) -> Replica | None:
        healthy = self.in_rotation()
        if not healthy:
            self.fall_back(NO_REPLICA)
            return None
        start = next(self._turn)
        rotated = healthy[start % len(healthy):] + healthy[:start % len(healthy)]
        # One known to be far enough needs no wait; else the next in turn (it may catch up).
        return next((r for r in rotated if r.replayed >= lsn), rotated[0])

    async def acquire(self, lsn: int) -> tuple[Replica, asyncpg.Connection] | None:
        """A standby connection that shows everything up to `lsn`, or None: use the primary.

        The caller releases it with release(). The slot is taken before the pool, as on the
        primary, so connections go first come, first served.
        """
        if lsn >= UNKNOWN_POSITION:
            self.fall_back(UNKNOWN)
            return None
        replica = self._choose(lsn)
        if replica is None:
            return None
        try:
            async with asyncio.timeout(self.config.pool_acquire_timeout):
                await replica.slots.acquire()
            try:
                async with asyncio.timeout(self.config.pool_acquire_timeout):
                    conn = await replica.pool.acquire()
            except BaseException:
                replica.slots.release()
                raise
        except (OSError, asyncio.TimeoutError, asyncpg.PostgresError,
                asyncpg.InterfaceError) as exc:
            replica.leave(f"connect failed: {type(exc).__name__}")
            self.fall_back(REPLICA_ERROR)
            return None
        try:
            caught_up = await self._caught_up(replica, conn, lsn)
        except BaseException as exc:
            await self.release(replica, conn, exc)
            if not isinstance(exc, Exception):
                raise
            replica.leave(f"error: {type(exc).__name__}")
            self.fall_back(REPLICA_ERROR)
            return None
        if not caught_up:
            await self.release(replica, conn)
            self.fall_back(NOT_CAUGHT_UP)
            return None
        return replica, conn

    async def _caught_up(self, replica: Replica, conn: asyncpg.Connection, lsn: int) -> bool:
        """Has the standby replayed `lsn`? Waits up to REPLICA_WAIT_MS for it to."""
        if replica.replayed >= lsn:
            return True
        deadline = time.monotonic() + self.config.replica_wait_ms / 1000
        pause = POLL_FIRST
        while True:
            replica.saw(await self._queries.replayed(conn))
            if replica.replayed >= lsn:
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            # Polling: PostgreSQL 15 has no "wait for LSN"; the pauses grow, so a standby
            # that is far behind is asked a handful of times, not hundreds.
            await asyncio.sleep(min(pause, left))
            pause = min(pause * 2, POLL_MAX)

    async def release(self, replica: Replica, conn: asyncpg.Connection,
                      failure: BaseException | None = None) -> None:
        try:
            if failure is not None:
                conn.terminate()  # it may be broken: the pool opens a fresh one
            await replica.pool.release(conn)
        except Exception:  # a broken connection: the pool replaces it
            pass
        finally:
            replica.slots.release()
