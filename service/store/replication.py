"""WAL positions: what a write's consistency token names, and how far a standby has replayed.

Positions are read as int8 byte offsets (pg_lsn minus '0/0'), so Python compares them as
integers.
"""
from __future__ import annotations

import asyncpg

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


async def insert_lsn(conn: asyncpg.Connection) -> int:
    return await conn.fetchval(INSERT_LSN)


async def replay_lsn(conn: asyncpg.Connection) -> int | None:
    """None on a server that is not (any more) a standby."""
    return await conn.fetchval(REPLAY_LSN)


async def standby_state(conn: asyncpg.Connection) -> asyncpg.Record:
    return await conn.fetchrow(STANDBY_STATE)
