"""WAL positions (Consistency-Token), read replicas and feed wake-ups, given the store's SQL."""
from __future__ import annotations

import asyncpg

from service.config import Config
from service.infra.feedwait import FeedQueries, FeedWaiters
from service.infra.replicas import ReplicaSet, StandbyQueries
from service.store import replication
from service.store.locks import FEED_CHANNEL, NOTIFY_FEED

FEED_QUERIES = FeedQueries(FEED_CHANNEL, NOTIFY_FEED, replication.insert_lsn)
STANDBY_QUERIES = StandbyQueries(replication.standby_state, replication.replay_lsn)


async def primary_position(conn: asyncpg.Connection) -> int:
    """The primary's WAL position after the statements run on `conn` (store/replication.py)."""
    return await replication.insert_lsn(conn)


def noted_position(conn: asyncpg.Connection) -> int | None:
    """primary_position() when the last statement on `conn` answered it (a hot read's
    POSITION_COLUMN), without a round trip or a coroutine; else None: await that one."""
    return replication.noted(conn)


async def announced_position(conn: asyncpg.Connection, enterprise_ids: list[str]) -> int:
    """After a group's commit on `conn`: its enterprises' feed readers woken in every
    process (the wake-up FeedWaiters.notify would send) and the position past the commit."""
    return await replication.announce_commit(conn, enterprise_ids)


async def standby_position(conn: asyncpg.Connection) -> int | None:
    """How far the standby behind `conn` has replayed: all its statements saw is older."""
    return await replication.replay_lsn(conn)


def replica_set(config: Config) -> ReplicaSet:
    """READ_DATABASE_URLS' standbys, probed with the store's queries (not started yet)."""
    return ReplicaSet(config, STANDBY_QUERIES)


def feed_waiters(config: Config, pool: asyncpg.Pool | None = None,
                 track_position: bool = False) -> FeedWaiters:
    """The process's feed listener on DATABASE_URL (not started yet)."""
    return FeedWaiters(config.database_url, FEED_QUERIES, config.db_connect_timeout, pool,
                       config.feed_tick_seconds, track_position=track_position)
