"""Sessions the database ends under load (pg_terminate_backend): answers stay 200, 409 or a
503 envelope, no connection is used after asyncpg took it back or leaks, and the service
serves again as soon as the storm stops.

A connection the server ends is given back to the pool by asyncpg itself, which detaches
the proxy its holder keeps: group commit's lane kept such a connection between groups and
answered every change of the next group 503 ("connection has been released back to the
pool"), and a request whose position read failed never gave its connection back (the pool
shrank by one each time: `pool.close()` then waited for ever).
"""
from __future__ import annotations

import asyncio
import logging
import random

import pytest

from service.config import Config
from service.web.app import create_app
from service.web.keys import POOL
from tests.helpers import Api, as_runtime, wait_until

pytestmark = pytest.mark.own_db
STORM_SECONDS = 4.0
CLIENTS = 24


@pytest.fixture
def config(db_dsn) -> Config:
    return Config(database_url=as_runtime(db_dsn), pool_min=1, pool_max=8,
                  token_cache_seconds=60, pool_acquire_timeout=5.0, db_connect_timeout=2.0)


async def _storm(db, dsn_name: str, until: float) -> int:
    """Ends two of the service's sessions at a time, every few tens of milliseconds."""
    killed = 0
    loop = asyncio.get_running_loop()
    while loop.time() < until:
        killed += await db.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM (SELECT pid FROM pg_stat_activity"
            " WHERE datname = $1 AND application_name = 'pipeline-runs'"
            " ORDER BY random() LIMIT 2) AS s", dsn_name)
        await asyncio.sleep(random.uniform(0.01, 0.08))
    return killed


async def test_sessions_ended_under_load_leave_a_whole_pool_and_answers_in_envelopes(
        aiohttp_client, config, db, token, caplog):
    api = Api(await aiohttp_client(create_app(config)), token)
    pipeline = await api.pipeline()
    runs = [await api.move(await api.run(pipeline["id"]), "queued", "processing", "running")
            for _ in range(12)]
    name = await db.fetchval("SELECT current_database()")
    loop = asyncio.get_running_loop()
    until = loop.time() + STORM_SECONDS
    seen: dict[int, int] = {}

    async def client(i: int) -> None:
        flip = False
        while loop.time() < until:
            run = random.choice(runs)
            path = f"/pipelines/{run['pipeline_id']}/runs/{run['id']}/"
            if i % 2:  # writers: group commit's lane
                flip = not flip
                await api.put(path, {"status": "waiting" if flip else "running"},
                              status=(200, 409, 503))
            else:
                await api.get(path, status=(200, 503))
            seen[api.last.status] = seen.get(api.last.status, 0) + 1

    with caplog.at_level(logging.INFO):
        killed, *_ = await asyncio.gather(_storm(db, name, until),
                                          *(client(i) for i in range(CLIENTS)))
    assert killed > 0 and seen.get(200), (killed, seen)
    released = [r.getMessage() for r in caplog.records
                if "released back to the pool" in r.getMessage()]
    assert not released, released[:3]

    # Once the storm is over, every connection is back: as many idle as the pool holds.
    pool = api.client.app[POOL]
    await wait_until(lambda: pool.get_idle_size() == pool.get_size(), 10,
                     what="every pooled connection given back")
    # ... and the service answers as before, as many requests at once as the pool has.
    answers = await asyncio.gather(*(
        api.get(f"/pipelines/{r['pipeline_id']}/runs/{r['id']}/") for r in runs[:8]))
    assert [a["id"] for a in answers] == [r["id"] for r in runs[:8]]
    await asyncio.wait_for(pool.close(), 5)
