"""A client that goes away costs nothing after it left: an abandoned export is one INFO
line and a 499; a closed stream frees its wait slot at once. Served as `serve` serves
(aiohttp without handler cancellation), not by the test server, which cancels handlers."""
from __future__ import annotations

import logging
import uuid

import aiohttp
import pytest
from aiohttp import web

from service.web.app import create_app
from service.web.keys import METRICS, WAIT_CAP
from tests.helpers import make_token, token_id, wait_until

MOUNT = "/pipelines/v0"


@pytest.fixture
def config(config):
    return config.with_(stream_heartbeat_seconds=60.0, max_waits_per_token=5)


@pytest.fixture
async def served(config):
    """(app, base URL) of the app on a real port, as `serve` runs it."""
    runner = web.AppRunner(create_app(config), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    yield runner.app, f"http://{host}:{port}{MOUNT}"
    await runner.cleanup()


async def test_an_abandoned_export_is_one_info_line_and_a_499(served, db, enterprise, caplog):
    app, base = served
    caplog.set_level(logging.INFO)
    token = await make_token(db, enterprise)
    await db.execute(
        """INSERT INTO run_events (enterprise_id, pipeline_id, run_id, version, type,
                                   from_status, to_status, actor, occurred_at, data)
           SELECT $1, $2, $3, v, CASE v WHEN 1 THEN 'run.created' ELSE 'run.status_changed' END,
                  NULL, 'pending', 'tester', now(), jsonb_build_object('pad', repeat('x', 2000))
           FROM generate_series(1, 5000) AS v""", enterprise, uuid.uuid4(), uuid.uuid4())
    route = f"{MOUNT}/events/export/"
    async with aiohttp.ClientSession() as session:
        resp = await session.get(f"{base}/events/export/?format=ndjson", headers={
            "Authorization": f"Bearer {token}", "X-Request-ID": "abandoned-1"})
        assert resp.status == 200
        await resp.content.readline()
        resp.close()  # ~10 MB left: the server is still writing when the client goes
    metrics = app[METRICS]
    await wait_until(lambda: metrics.requests.get(("GET", route, 499)), 30,
                     "the export recorded as 499")
    ours = [r for r in caplog.records if getattr(r, "request_id", None) == "abandoned-1"]
    assert [(r.name, r.levelname) for r in ours] == [("service.web.handlers.exports", "INFO")]
    assert "abandoned by the client" in ours[0].getMessage()
    access = [r for r in caplog.records if r.name == "service.access" and r.route == route]
    assert [r.status for r in access] == [499]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert ("GET", route, 200) not in metrics.requests


async def test_closed_streams_free_their_wait_slots_at_once(served, db, enterprise):
    app, base = served
    token = await make_token(db, enterprise)
    me, cap = await token_id(db, token), app[WAIT_CAP]
    headers = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession() as session:
        for _ in range(5):  # a browser reconnecting: each stream closed before the next
            resp = await session.get(f"{base}/events/stream/", headers=headers)
            assert resp.status == 200
            await wait_until(lambda: cap.open(me) >= 1, 10, "the stream to hold its slot")
            resp.close()
        # Noticed within a fraction of a second; before, a slot was held until the next
        # heartbeat or wake-up (60 s here).
        await wait_until(lambda: cap.open(me) == 0, 5, "every closed stream's slot back")
        streams = [await session.get(f"{base}/events/stream/", headers=headers)
                   for _ in range(5)]
        assert [r.status for r in streams] == [200] * 5
        over = await session.get(f"{base}/events/stream/", headers=headers)
        assert over.status == 429  # the cap itself still holds
        # Exports count against the same cap: the usual envelope, and when to retry.
        export = await session.get(f"{base}/events/export/?format=csv", headers=headers)
        assert export.status == 429 and "Retry-After" in export.headers
        assert (await export.json())["code"] == 429
        for resp in (*streams, over):
            resp.close()
