"""WAL positions: what a write's consistency token names, and how far a standby has replayed.

Positions are read as int8 byte offsets (pg_lsn minus '0/0'), so Python compares them as
integers.
"""
from __future__ import annotations

from contextvars import ContextVar

import asyncpg

from service.store.locks import ANNOUNCE_COMMIT

# Read after a commit: the insert position is past the end of every record inserted so far,
# the commit record included, whatever synchronous_commit says (pg_current_wal_lsn, the
# written position, may trail it when commits do not wait for their flush). This is what
# GitLab's load balancer records as a session's "primary write location".
INSERT_LSN = "SELECT (pg_current_wal_insert_lsn() - '0/0'::pg_lsn)::int8"
# On a standby: the end of the last record replayed; everything up to it is visible to the
# standby's new snapshots.
REPLAY_LSN = "SELECT (pg_last_wal_replay_lsn() - '0/0'::pg_lsn)::int8"
# A standby's health: still in recovery, how far replayed, and how many seconds behind.
# Lag counts only while received WAL waits to be replayed: a standby of an idle primary has
# an old last-replay timestamp, yet lags nothing. Just after a standby starts, nothing has
# been replayed yet (no timestamp): 0 then, the next probe knows better.
STANDBY_STATE = """
SELECT pg_is_in_recovery() AS in_recovery,
       (pg_last_wal_replay_lsn() - '0/0'::pg_lsn)::int8 AS replayed,
       CASE WHEN pg_last_wal_receive_lsn() IS NULL
              OR pg_last_wal_receive_lsn() <= pg_last_wal_replay_lsn() THEN 0.0
            ELSE coalesce(extract(epoch FROM clock_timestamp()
                                  - pg_last_xact_replay_timestamp())::float8, 0.0)
       END AS lag_seconds
"""


# A read can answer its own position as one more column, saving INSERT_LSN's round trip
# (the hot reads: a run, a page of runs). Evaluated while the statement runs, after its snapshot was taken;
# a commit is visible to a snapshot only once its commit record is in the WAL, so this is
# past every commit the statement saw. NULL on a standby, whose position is read after the
# statements instead (web/handlers/common.py).
POSITION_COLUMN = """CASE WHEN pg_is_in_recovery() THEN NULL
     ELSE (pg_current_wal_insert_lsn() - '0/0'::pg_lsn)::int8 END AS wal_position"""
# (connection, its query count just after the statement, the position it answered)
_NOTED: ContextVar[tuple[asyncpg.Connection, int, int] | None] = ContextVar(
    "noted_position", default=None)


def note(conn: asyncpg.Connection, position: int | None) -> None:
    """A statement on `conn` answered POSITION_COLUMN: `position`."""
    count = _queries(conn)
    if position is not None and count >= 0:
        _NOTED.set((conn, count, position))


def noted(conn: asyncpg.Connection) -> int | None:
    """What the last statement on `conn` answered as its position, if it is still the last
    one (no COMMIT or other query since); else None. Without a coroutine: the hot reads'
    case, and insert_lsn's first step."""
    noted = _NOTED.get()
    if noted is not None and noted[0] is conn and noted[1] == _queries(conn):
        return noted[2]
    return None


async def insert_lsn(conn: asyncpg.Connection) -> int:
    """The primary's position after everything `conn` ran: noted(), else read."""
    position = noted(conn)
    return position if position is not None else await conn.fetchval(INSERT_LSN)


def _queries(conn: asyncpg.Connection) -> int:
    # How many queries the connection has sent (asyncpg's pool reads the same counter to
    # retire connections); -1 when a driver version lacks it, so no note is ever trusted.
    # A pool's proxy: read its connection's (the proxy's own attribute lookup is slower).
    con = getattr(conn, "_con", None) or conn
    return getattr(getattr(con, "_protocol", None), "queries_count", -1)


async def announce_commit(conn: asyncpg.Connection, enterprise_ids: list[str]) -> int:
    """After a commit on `conn`: wake the enterprises' feed readers in every process
    (locks.ANNOUNCE_COMMIT) and read the position past that commit, in one round trip."""
    return await conn.fetchval(ANNOUNCE_COMMIT, enterprise_ids)


async def replay_lsn(conn: asyncpg.Connection) -> int | None:
    """None on a server that is not (any more) a standby."""
    return await conn.fetchval(REPLAY_LSN)


async def standby_state(conn: asyncpg.Connection) -> asyncpg.Record:
    return await conn.fetchrow(STANDBY_STATE)
