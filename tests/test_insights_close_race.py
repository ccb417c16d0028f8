"""A close of the insights hours committed while a writer waits for the feed lock: the
writer's statement took its snapshot before the close's commit, so it must read the
watermark afresh once it holds the lock, or the keys it moves in the hours just closed
miss the running totals."""
from __future__ import annotations

import asyncio

import asyncpg
import pytest

from service.domain import lifecycle
from service.infra.db import init_connection
from service.store import pipelines, runs as store_runs
from service.store.append import TAKE_FEED_LOCK
from service.store.locks import FEED_LOCK_CLASS
from tests.helpers import wait_until
from tests.test_insights_pass import (KEYS_FROM_RUNS, STORED_KEYS, TOTALS, _expected_totals,
                                      _stored)

pytestmark = pytest.mark.own_db
# Whether the backend $1 waits for a feed lock.
WAITING = ("SELECT count(*) FROM pg_locks WHERE pid = $1 AND locktype = 'advisory' "
           f"AND classid = {FEED_LOCK_CLASS} AND NOT granted")


async def test_a_delete_waiting_while_its_hour_closes(db, db_dsn, enterprise):
    pipeline = await pipelines.create_pipeline(db, enterprise, 1, {"name": "race"})
    run, _ = await store_runs.create_run(db, enterprise, pipeline["id"], "pending", "t", None,
                                         lifecycle.RUN_CREATED, {}, 3600, 3600)
    async with db.transaction():  # the run made an hour ago, its key with it (row trigger)
        await db.execute("SET LOCAL insights.by_trigger = 'on'")
        await db.execute("UPDATE pipeline_runs SET created_at = created_at - interval '1 hour'"
                         " WHERE id = $1", run["id"])
    # closed up to that hour: its key is in the hourly rows only
    await db.execute("INSERT INTO run_insights_closed VALUES "
                     "($1, insights_hour(now() - interval '1 hour'))", enterprise)
    closer, writer = await asyncpg.connect(db_dsn), await asyncpg.connect(db_dsn)
    try:
        await init_connection(writer)
        closing = closer.transaction()
        await closing.start()
        await closer.fetchval(TAKE_FEED_LOCK, enterprise)
        delete = asyncio.create_task(store_runs.delete_run(
            writer, enterprise, pipeline["id"], run["id"], "t", None, lifecycle.RUN_DELETED,
            {}, None))
        await wait_until(lambda: db.fetchval(WAITING, writer.get_server_pid()),
                         what="the delete waiting for the feed lock")
        assert await closer.fetchval("SELECT run_insights_close($1, now())", enterprise) > 0
        await closing.commit()
        assert (await delete)[1]
    finally:
        await closer.close()
        await writer.close()
    assert sorted(tuple(r) for r in await db.fetch(STORED_KEYS, enterprise)) == \
        sorted(tuple(r) for r in await db.fetch(KEYS_FROM_RUNS, enterprise))
    stored = {(r["pipeline_id"], r["at"]): _stored(r) for r in await db.fetch(TOTALS, enterprise)}
    assert stored == await _expected_totals(db, enterprise)
