"""An export whose database connection dies mid-stream is an incomplete download."""
from __future__ import annotations

import asyncio
import json
import uuid

import aiohttp
import pytest

from tests.helpers import wait_until

EVENTS = 50_000  # ~15 MB of NDJSON: more than the socket buffers hold, so it cannot finish
# The export's backend (the pool's application_name), its cursor open between fetches.
FIND = """SELECT pid FROM pg_stat_activity
          WHERE datname = current_database() AND application_name = 'pipeline-runs'
            AND query LIKE '%FROM run_events e%' AND state = 'idle in transaction'"""


@pytest.fixture
def db_dsn(own_db):
    return own_db  # nothing else's connections in pg_stat_activity


async def test_an_export_cut_short_is_an_incomplete_download(api, db, enterprise):
    pipeline_id, run_id = uuid.uuid4(), uuid.uuid4()
    await db.execute(
        """INSERT INTO run_events (enterprise_id, pipeline_id, run_id, version, type,
                                   from_status, to_status, actor, occurred_at)
           SELECT $1, $2, $3, v, CASE v WHEN 1 THEN 'run.created' ELSE 'run.status_changed' END,
                  NULL, 'pending', 'tester', now()
           FROM generate_series(1, $4) AS v""", enterprise, pipeline_id, run_id, EVENTS)
    resp = await api.client.get(
        api.url(f"/pipelines/{pipeline_id}/runs/{run_id}/events/?format=ndjson"),
        headers={"Authorization": f"Bearer {api.token}"})
    assert resp.status == 200
    assert json.loads(await resp.content.readline())["version"] == 1
    # The export is stuck on a full socket.
    pids = await wait_until(lambda: db.fetch(FIND), 60,
                            what="the export to pause between fetches")
    assert len(pids) == 1
    await db.execute("SELECT pg_terminate_backend($1)", pids[0]["pid"])
    with pytest.raises(aiohttp.ClientPayloadError):
        await asyncio.wait_for(resp.content.read(), 60)  # never hangs either
