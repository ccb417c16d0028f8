"""An export whose database fails mid-stream is an incomplete download, never a truncated
file that looks whole; and no export holds a connection while its client is slow."""
from __future__ import annotations

import asyncio
import dataclasses
import json
import uuid

import aiohttp
import pytest

from service.web.keys import POOL
from tests.helpers import wait_until

EVENTS = 50_000  # ~15 MB of NDJSON: more than the socket buffers hold, so it cannot finish
# The service's connections (the pool's application_name) idle inside a transaction.
IDLE_IN_TX = """SELECT count(*) FROM pg_stat_activity
                WHERE datname = current_database() AND application_name = 'pipeline-runs'
                  AND state LIKE 'idle in transaction%'"""


@pytest.fixture
def db_dsn(own_db):
    return own_db  # nothing else's connections in pg_stat_activity


@pytest.fixture
def config(config):
    return dataclasses.replace(config, statement_timeout_ms=1000)  # a stuck chunk fails soon


async def many_events(db, enterprise: str) -> tuple[uuid.UUID, uuid.UUID]:
    pipeline_id, run_id = uuid.uuid4(), uuid.uuid4()
    await db.execute(
        """INSERT INTO run_events (enterprise_id, pipeline_id, run_id, version, type,
                                   from_status, to_status, actor, occurred_at)
           SELECT $1, $2, $3, v, CASE v WHEN 1 THEN 'run.created' ELSE 'run.status_changed' END,
                  NULL, 'pending', 'tester', now()
           FROM generate_series(1, $4) AS v""", enterprise, pipeline_id, run_id, EVENTS)
    return pipeline_id, run_id


async def test_an_export_cut_short_is_an_incomplete_download(api, db, enterprise):
    pipeline_id, run_id = await many_events(db, enterprise)
    resp = await api.client.get(
        api.url(f"/pipelines/{pipeline_id}/runs/{run_id}/events/?format=ndjson"),
        headers={"Authorization": f"Bearer {api.token}"})
    assert resp.status == 200
    assert json.loads(await resp.content.readline())["version"] == 1
    # Stuck on the client (a full socket), the export holds nothing: every pool connection
    # is back in the pool, none idle in a transaction.
    pool = api.client.app[POOL]
    await wait_until(lambda: pool.get_idle_size() == pool.get_size(),
                     what="every pool connection back in the pool")
    assert await db.fetchval(IDLE_IN_TX) == 0
    # The database stops answering the export: its next chunk waits on a lock past the
    # statement timeout.
    async with db.transaction():
        await db.execute("LOCK TABLE run_events IN ACCESS EXCLUSIVE MODE")
        with pytest.raises(aiohttp.ClientPayloadError):
            await asyncio.wait_for(resp.content.read(), 60)  # never hangs either
